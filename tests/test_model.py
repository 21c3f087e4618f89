"""SegmentationModel, build_model, param_groups and predict."""
import json
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn

import segdense
from segdense.backbones import FeatureSpec, register_backbone
from segdense.models import SegmentationModel, build_model, param_groups


HEADS = ["fcn", "deeplabv3", "deeplabv3plus", "denseaspp", "fpn", "aux"]
TINY = dict(num_units_per_block=(2, 2, 2, 2), growth_rate=8)


def tiny(head="deeplabv3", output_stride=16, num_classes=5, aux_loss=False, memory_efficient=False, **head_kwargs):
    backbone = {"name": "densenet_custom", "output_stride": output_stride, "memory_efficient": memory_efficient, **TINY}
    return build_model(backbone, {"name": head, **head_kwargs}, num_classes, aux_loss)


class UserBackbone(nn.Module):
    """A user's own backbone: three conv stages at strides 4, 8 and output_stride (8, 16 or 32)."""

    def __init__(self, output_stride=32):
        super().__init__()
        self.output_stride = output_stride
        s3 = min(output_stride, 16)
        self.c1 = nn.Sequential(nn.Conv2d(3, 12, 3, stride=4, padding=1), nn.ReLU())
        self.c2 = nn.Sequential(nn.Conv2d(12, 20, 3, stride=2, padding=1), nn.ReLU())
        self.c3 = nn.Sequential(nn.Conv2d(20, 28, 3, stride=s3 // 8, padding=1), nn.ReLU())
        self.c4 = nn.Sequential(nn.Conv2d(28, 36, 3, stride=output_stride // s3, padding=1), nn.ReLU())
        self.feature_info = [
            FeatureSpec("c1", 12, 4), FeatureSpec("c2", 20, 8), FeatureSpec("c3", 28, s3), FeatureSpec("c4", 36, output_stride)
        ]

    def forward_features(self, x):
        out = OrderedDict()
        for name in ("c1", "c2", "c3", "c4"):
            x = getattr(self, name)(x)
            out[name] = x
        return out


@register_backbone("test_user_backbone")
def build_user_backbone(output_stride=32):
    return UserBackbone(output_stride)


def test_build_model_is_exported_from_the_package():
    assert segdense.build_model is build_model


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("head", HEADS)
def test_logits_match_odd_input_size_with_batch_one_in_training(head, output_stride):
    model = tiny(head, output_stride, num_classes=4).train()
    out = model(torch.randn(1, 3, 97, 131))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 4, 97, 131)


@pytest.mark.parametrize("head", HEADS)
def test_gradients_reach_the_backbone(head):
    model = tiny(head).train()
    model(torch.randn(2, 3, 64, 64)).square().mean().backward()
    grad = model.backbone.features.conv0.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("head", ["fcn", "deeplabv3", "deeplabv3plus", "denseaspp", "fpn"])
def test_densenet121_gives_input_sized_logits(head):
    model = build_model("densenet121", head, num_classes=21, output_stride=16).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 65, 81)).shape == (1, 21, 65, 81)


def test_training_with_aux_returns_out_and_aux_of_input_size():
    out = tiny(aux_loss=True).train()(torch.randn(2, 3, 70, 90))
    assert set(out) == {"out", "aux"}
    assert out["out"].shape == out["aux"].shape == (2, 5, 70, 90)


def test_aux_output_only_when_asked_and_only_in_training():
    assert isinstance(tiny(aux_loss=False).train()(torch.randn(1, 3, 64, 64)), torch.Tensor)
    assert isinstance(tiny(aux_loss=True).eval()(torch.randn(1, 3, 64, 64)), torch.Tensor)
    assert tiny(aux_loss=False).aux_head is None


def test_aux_head_reads_block3():
    assert tiny(aux_loss=True, output_stride=8).aux_head.in_feature == "block3"


def test_model_config_is_json_and_rebuilds_the_same_architecture():
    model = tiny("deeplabv3plus", 8, aux_loss=True, atrous_rates=(4, 8, 12), channels=32)
    config = json.loads(json.dumps(model.model_config))
    assert "pretrained" not in config["backbone"] and config["head"]["atrous_rates"] == [4, 8, 12]
    assert config["backbone"]["num_units_per_block"] == [2, 2, 2, 2]  # the backbone block as given, JSON-typed
    rebuilt = build_model(**config)
    assert rebuilt.model_config == model.model_config
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes
    rebuilt.load_state_dict(model.state_dict())  # strict: the same keys


def test_model_config_records_memory_efficient():
    model = tiny(memory_efficient=True)
    assert model.model_config["backbone"]["memory_efficient"] is True
    assert model.train()(torch.randn(1, 3, 64, 64)).shape == (1, 5, 64, 64)


def test_non_json_head_argument_is_refused():
    with pytest.raises(TypeError, match="atrous_rates=.*not a plain JSON value"):
        tiny(atrous_rates=torch.tensor([6, 12, 18]))


@pytest.mark.parametrize("num_classes", [0, -1])
def test_build_model_rejects_num_classes_below_one(num_classes):
    with pytest.raises(ValueError, match=f"num_classes must be a positive int, got {num_classes}"):
        tiny(num_classes=num_classes)


def test_unknown_head_name_lists_the_heads():
    with pytest.raises(ValueError, match="unknown head 'aspp'.*Registered heads: .*deeplabv3"):
        tiny("aspp")


def test_unknown_backbone_name_lists_the_backbones():
    with pytest.raises(ValueError, match="unknown backbone 'densenet12'.*densenet121"):
        build_model("densenet12")


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("head", HEADS)
def test_a_users_registered_backbone_works_with_every_head(head, output_stride):
    model = build_model("test_user_backbone", head, num_classes=3, output_stride=output_stride).train()
    assert model(torch.randn(1, 3, 67, 75)).shape == (1, 3, 67, 75)


def test_stride4_head_on_a_backbone_without_stride4_feature_fails_clearly():
    @register_backbone("test_backbone_from_stride8")
    def builder(output_stride=32):
        net = UserBackbone(output_stride)
        net.feature_info = [FeatureSpec(f.name, f.channels, max(f.stride, 8)) for f in net.feature_info]
        return net

    with pytest.raises(ValueError, match="'deeplabv3plus' needs a stride-4 feature"):
        build_model("test_backbone_from_stride8", "deeplabv3plus", 3, output_stride=16)


def test_a_module_without_feature_info_is_not_a_backbone():
    with pytest.raises(TypeError, match="lacks feature_info, forward_features"):
        SegmentationModel(nn.Conv2d(3, 3, 1), nn.Identity())


def test_predict_returns_class_indices_and_restores_training_mode():
    model = tiny(num_classes=6).train()
    pred = model.predict(torch.randn(2, 3, 50, 66))
    assert pred.shape == (2, 50, 66) and pred.dtype == torch.long
    assert 0 <= int(pred.min()) and int(pred.max()) < 6
    assert model.training


def test_predict_is_argmax_of_eval_logits():
    model = tiny(num_classes=6).eval()
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        expected = model(x).argmax(1)
    assert torch.equal(model.predict(x), expected)


def test_param_groups_split_backbone_and_head_and_skip_decay_on_norms_and_biases():
    model = tiny(aux_loss=True)
    groups = param_groups(model, lr=0.01, head_lr_mult=10.0, weight_decay=5e-4)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"backbone", "backbone_no_decay", "head", "head_no_decay"}
    assert by_name["backbone"]["lr"] == 0.01 and by_name["head"]["lr"] == pytest.approx(0.1)
    assert by_name["backbone"]["weight_decay"] == 5e-4 and by_name["head_no_decay"]["weight_decay"] == 0.0
    ids = lambda g: {id(p) for p in g["params"]}  # noqa: E731
    all_ids = [id(p) for g in groups for p in g["params"]]
    assert len(all_ids) == len(set(all_ids)) == len(list(model.parameters()))
    assert id(model.backbone.features.norm0.weight) in ids(by_name["backbone_no_decay"])
    assert id(model.backbone.features.conv0.weight) in ids(by_name["backbone"])
    assert id(model.head.classifier.bias) in ids(by_name["head_no_decay"])
    assert id(model.aux_head.classifier[1].weight) in ids(by_name["head"])
    torch.optim.SGD(groups, lr=0.01, momentum=0.9)  # a valid optimizer configuration


def test_param_groups_can_decay_everything_and_skip_frozen_parameters():
    model = tiny()
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    groups = param_groups(model, lr=0.1, weight_decay=1e-4, no_decay_norm_bias=False)
    assert [g["name"] for g in groups] == ["head"]
    assert len(groups[0]["params"]) == len(list(model.head.parameters()))


def test_importing_segdense_needs_neither_hydra_nor_albumentations():
    import subprocess
    import sys

    code = "import sys, segdense, segdense.losses; print('hydra' in sys.modules or 'albumentations' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_onnx_export_at_one_size_runs_at_another_odd_size(tmp_path):
    import onnxruntime as ort
    import warnings

    model = tiny("fpn", output_stride=8, num_classes=3).eval()  # fpn resizes the most
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, 64, 96),), str(path), dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}})
    x = torch.randn(2, 3, 97, 131)
    got = ort.InferenceSession(str(path)).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        expected = model(x).numpy()
    assert got.shape == (2, 3, 97, 131)
    assert abs(got - expected).max() < 1e-4
