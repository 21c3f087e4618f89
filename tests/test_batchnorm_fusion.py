"""The fused inference form: a copy of an eval-mode model with every BatchNorm that follows a convolution feeding
nothing else folded into it, giving the unfused model's outputs (float64: to rounding; float32: to 1e-5) in the
module states users run it in."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from segdense import Predictor
from segdense.models import build_model
from segdense.models.batchnorm_fusion import fold_conv_batchnorms

from infer_fixtures import write_image
from test_export_int8 import randomise_batchnorms
from test_infer import compose_infer

FCHARDNET = ("fchardnet70", {"name": "tiramisu", "align_corners": True})


def tiny_densenet(head):
    return build_model("densenet_custom", head, num_classes=5, output_stride=16, num_units_per_block=[1, 1, 1, 1],
                       growth_rate=8)


def image(size=(64, 80), batch=2, dtype=torch.float32, seed=1):
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed)).to(dtype)


def norms(model):
    return [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def max_difference(model, fused, x):
    with torch.no_grad():
        expected, got = model(x), fused(x)
    return float((expected - got).abs().max() / expected.abs().max())


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_fchardnet70_folds_every_batchnorm_and_keeps_its_logits(dtype, tolerance):
    model = randomise_batchnorms(build_model(*FCHARDNET, num_classes=19)).to(dtype)
    fused = fold_conv_batchnorms(model, image(batch=1, dtype=dtype))
    assert len(norms(model)) == 69 and norms(fused) == []  # every ConvLayer is conv-BN-ReLU
    assert max_difference(model, fused, image(dtype=dtype)) <= tolerance
    assert len(norms(model)) == 69  # the model itself keeps its BatchNorms


@pytest.mark.parametrize("head", [{"name": "deeplabv3", "channels": 16}, {"name": "upernet", "channels": 16}])
def test_a_densenet_keeps_its_pre_activation_batchnorms_and_folds_the_rest(head):
    # DenseNet's norm1 (over a block's concatenation), the transitions' norm and norm5 follow a ReLU or a
    # concatenation, not a convolution; the stem's norm0, the bottleneck's norm2 and the heads' conv-BN units
    # (ConvBNReLU, UperNet's ConvModule) fold.
    model = randomise_batchnorms(tiny_densenet(head)).double()
    fused = fold_conv_batchnorms(model, image(batch=1, dtype=torch.float64))
    kept = set(norms(fused))
    assert kept and all(name.endswith(("norm1", "transition1.norm", "transition2.norm", "transition3.norm", "norm5"))
                        for name in kept)
    assert {"backbone.features.norm0", "backbone.features.denseblock1.denselayer1.norm2"} & kept == set()
    assert not [name for name in kept if name.startswith("head.")] and len(kept) < len(norms(model))
    assert max_difference(model, fused, image(dtype=torch.float64)) <= 1e-12


def test_channels_last_gives_the_same_logits():
    model = randomise_batchnorms(build_model(*FCHARDNET, num_classes=5)).to(memory_format=torch.channels_last)
    x = image().contiguous(memory_format=torch.channels_last)
    fused = fold_conv_batchnorms(model, x)
    assert norms(fused) == [] and max_difference(model, fused, x) <= 1e-5


def test_frozen_parameters_stay_frozen_and_trainable_ones_trainable():
    model = randomise_batchnorms(tiny_densenet({"name": "deeplabv3", "channels": 16}))
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    fused = fold_conv_batchnorms(model, image(batch=1))
    stem, head = fused.backbone.features.conv0, fused.head.aspp.project[0]
    assert not stem.weight.requires_grad and not stem.bias.requires_grad
    assert head.weight.requires_grad and head.bias.requires_grad
    assert max_difference(model, fused, image()) <= 1e-5


class ConvReadTwice(nn.Module):
    """conv_a's output goes to its BatchNorm and into a concatenation; one BatchNorm normalises two convolutions'
    outputs; only conv_c -> norm_c may fold."""

    def __init__(self):
        super().__init__()
        self.conv_a, self.norm_a = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv_b1, self.conv_b2, self.norm_b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)
        self.conv_c, self.norm_c = nn.Conv2d(16, 2, 1), nn.BatchNorm2d(2)

    def forward(self, x):
        a = self.conv_a(x)
        both = torch.cat([self.norm_a(a), a, self.norm_b(self.conv_b1(x)), self.norm_b(self.conv_b2(x))], 1)
        return self.norm_c(self.conv_c(both))


def test_a_batchnorm_is_folded_only_where_the_convolution_feeds_nothing_else():
    model = randomise_batchnorms(ConvReadTwice()).double()
    fused = fold_conv_batchnorms(model, image(batch=1, dtype=torch.float64))
    assert norms(fused) == ["norm_a", "norm_b"] and isinstance(fused.norm_c, nn.Identity)
    assert max_difference(model, fused, image(dtype=torch.float64)) <= 1e-12


def test_a_model_in_training_mode_is_refused_in_one_line():
    model = build_model(*FCHARDNET, num_classes=5).train()
    with pytest.raises(ValueError, match=r"needs a model in eval mode \(call model.eval\(\) first\)") as error:
        fold_conv_batchnorms(model, image(batch=1))
    assert "\n" not in str(error.value)
    model.eval().head.train()
    with pytest.raises(ValueError, match="head is in training mode"):
        fold_conv_batchnorms(model, image(batch=1))


def test_the_predictor_with_fold_batchnorms_predicts_what_the_unfused_model_predicts():
    model = randomise_batchnorms(build_model(*FCHARDNET, num_classes=5))
    plain = Predictor.from_model(model, device="cpu")
    fused = Predictor.from_model(model, device="cpu", fold_batchnorms=True)
    assert norms(plain.model) and norms(fused.model) == []
    picture = (torch.rand(70, 90, 3, generator=torch.Generator().manual_seed(2)) * 255).byte().numpy()
    expected, got = plain.predict_proba(picture), fused.predict_proba(picture)
    assert float(abs(expected - got).max()) <= 1e-5 and (plain.predict(picture) == fused.predict(picture)).all()


def test_infer_tool_with_fold_batchnorms_writes_the_same_probabilities(tiny_checkpoint, tmp_path, monkeypatch):
    import segdense.inference.predictor as predictor_module
    from segdense.config.infer_job import infer_job

    folded = []
    monkeypatch.setattr(predictor_module, "fold_conv_batchnorms",
                        lambda model, example: folded.append(model) or fold_conv_batchnorms(model, example))
    rng = np.random.default_rng(0)
    picture = write_image(tmp_path / "a.png", rng.integers(0, 255, (48, 56, 3), dtype=np.uint8))
    probabilities = []
    for fold in ("false", "true"):
        out = tmp_path / f"out_{fold}"
        infer_job(compose_infer([f"checkpoint={tiny_checkpoint}", f"input={picture}", f"output={out}",
                                 "progress=false", "overlay=false", "save_proba=true", f"fold_batchnorms={fold}"]))
        probabilities.append(np.load(out / "a_proba.npy").astype(np.float32))
        assert len(folded) == (fold == "true")
    # float16 files: equal to their rounding
    assert np.abs(probabilities[0] - probabilities[1]).max() <= 1e-3
