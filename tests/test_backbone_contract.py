"""The backbone contract every head relies on, checked on both families (DenseNet and torchvision's
ResNet registered as segdense backbones), and the ResNet specifics: torchvision's structure and
weights, output strides by dilation."""
import socket

import pytest
import torch
import torchvision

from segdense import build_model
from segdense.backbones import FeatureSpec, build_backbone, list_backbones, resnet50
from segdense.config.group_keys import validate_config
from segdense.config.train_job import model_config
from segdense.heads import list_heads

from train_utils import compose_config

SIZE = 64
# name, builder kwargs, valid output strides
FAMILIES = [
    ("densenet_custom", dict(num_units_per_block=(1, 2, 2, 1), growth_rate=8), (4, 8, 16, 32)),
    ("densenet121", {}, (4, 8, 16, 32)),
    ("resnet50", {}, (8, 16, 32)),
    ("hardnet39ds", {}, (4, 8, 16, 32)),
    ("hardnet68", dict(transition_channels=(16, 24, 32, 40, 48), growth_rates=(4, 6, 8, 8, 8),
                       num_layers=(2, 3, 2, 2, 1), stem_channels=(8, 12)), (4, 8, 16, 32)),
]
IDS = [f[0] for f in FAMILIES]


def _pairs():
    return [(name, kw, s) for name, kw, strides in FAMILIES for s in strides]


@pytest.mark.parametrize("name,kwargs,output_stride", _pairs(), ids=[f"{n}-os{s}" for n, _, s in _pairs()])
def test_features_match_feature_info_at_every_output_stride(name, kwargs, output_stride):
    net = build_backbone(name, output_stride=output_stride, **kwargs).eval()
    assert net.output_stride == output_stride
    assert net.feature_info[-1].stride == output_stride
    with torch.no_grad():
        feats = net.forward_features(torch.randn(1, 3, SIZE, SIZE))
    assert list(feats) == [spec.name for spec in net.feature_info]
    for spec, f in zip(net.feature_info, feats.values()):
        assert isinstance(spec, FeatureSpec)
        assert f.shape[1] == spec.channels, spec
        assert tuple(f.shape[-2:]) == (SIZE // spec.stride, SIZE // spec.stride), spec
    strides = [spec.stride for spec in net.feature_info]
    assert strides == sorted(strides)  # shallow to deep


@pytest.mark.parametrize("name,kwargs,strides", FAMILIES, ids=IDS)
def test_one_state_dict_loads_at_every_output_stride(name, kwargs, strides):
    reference = build_backbone(name, output_stride=strides[-1], **kwargs).state_dict()
    for output_stride in strides[:-1]:
        build_backbone(name, output_stride=output_stride, **kwargs).load_state_dict(reference, strict=True)


@pytest.mark.parametrize("name,kwargs,strides", FAMILIES, ids=IDS)
def test_invalid_output_stride_lists_the_valid_ones(name, kwargs, strides):
    with pytest.raises(ValueError, match=r"valid output strides: \[" + ", ".join(map(str, strides)) + r"\]"):
        build_backbone(name, output_stride=2, **kwargs)


@pytest.mark.parametrize("name,kwargs,strides", FAMILIES, ids=IDS)
def test_input_errors_name_the_expected_shape(name, kwargs, strides):
    net = build_backbone(name, output_stride=16, **kwargs)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        net.forward_features(torch.randn(1, 4, SIZE, SIZE))
    with pytest.raises(ValueError, match="at least 16"):
        net.forward_features(torch.randn(1, 3, 8, SIZE))


@pytest.mark.parametrize("name,kwargs,strides", FAMILIES, ids=IDS)
def test_cpu_channels_last_auto_gives_the_same_values_as_nchw(name, kwargs, strides):
    auto = build_backbone(name, output_stride=16, **kwargs).double()
    nchw = build_backbone(name, output_stride=16, channels_last=False, **kwargs).double()
    nchw.load_state_dict(auto.state_dict())
    x = torch.randn(2, 3, 40, 48, dtype=torch.float64)
    for (key, a), b in zip(auto.forward_features(x).items(), nchw.forward_features(x).values()):
        assert a.is_contiguous(memory_format=torch.channels_last), key
        assert b.is_contiguous(), key
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=key)


@pytest.mark.parametrize("head", sorted(set(list_heads()) - {"aux"}))
@pytest.mark.parametrize("output_stride", [8, 32])
def test_every_head_trains_on_resnet50(head, output_stride):
    torch.manual_seed(0)
    model = build_model("resnet50", head, num_classes=3, output_stride=output_stride, aux_loss=True)
    model.train()
    out = model(torch.randn(2, 3, SIZE, SIZE))
    assert out["out"].shape == (2, 3, SIZE, SIZE) and out["aux"].shape == (2, 3, SIZE, SIZE)
    (out["out"].square().mean() + out["aux"].square().mean()).backward()
    assert model.backbone.conv1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("head", sorted(set(list_heads()) - {"aux"}))
def test_every_head_trains_on_hardnet39ds_at_output_stride_16(head):
    torch.manual_seed(0)
    model = build_model("hardnet39ds", head, num_classes=3, output_stride=16, aux_loss=True)
    model.train()
    out = model(torch.randn(2, 3, SIZE, SIZE))
    assert out["out"].shape == (2, 3, SIZE, SIZE) and out["aux"].shape == (2, 3, SIZE, SIZE)
    (out["out"].square().mean() + out["aux"].square().mean()).backward()
    assert model.backbone.base[0].conv.weight.grad.abs().sum() > 0


def test_aux_head_reads_layer3_as_torchvision_does():
    for output_stride in (8, 16):
        model = build_model("resnet50", "fcn", num_classes=3, output_stride=output_stride, aux_loss=True)
        assert model.aux_head.in_feature == "layer3"
        assert model.aux_head.convs[0][0].in_channels == 1024  # layer3, not the 2048-channel layer4


def test_resnets_are_registered():
    assert {"resnet50", "resnet101"} <= set(list_backbones())


@pytest.mark.parametrize("name,params", [("resnet50", 23_508_032), ("resnet101", 42_500_160)])
def test_parameters_equal_torchvision_without_its_classifier(name, params):
    ours = build_backbone(name).state_dict()
    theirs = {k: v for k, v in getattr(torchvision.models, name)().state_dict().items() if not k.startswith("fc.")}
    assert list(ours) == list(theirs)
    assert sum(p.numel() for p in build_backbone(name).parameters()) == params


@pytest.mark.parametrize("output_stride,dilations", [(8, (2, 4)), (16, (1, 2)), (32, (1, 1))])
def test_dilation_replaces_stride_as_in_torchvision(output_stride, dilations):
    net = resnet50(output_stride=output_stride)
    assert net.layer3[-1].conv2.dilation == (dilations[0],) * 2
    assert net.layer4[-1].conv2.dilation == (dilations[1],) * 2


@pytest.fixture(scope="module")
def tv_resnet50():
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    for m in model.modules():  # non-trivial BN statistics, so loading them is checked too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def _tv_layer4(model, x):
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    return model.layer4(model.layer3(model.layer2(model.layer1(x))))


def test_torchvision_checkpoint_file_loads_with_equal_features(tv_resnet50, tmp_path):
    path = tmp_path / "resnet50.pth"
    torch.save(tv_resnet50.state_dict(), path)
    net = resnet50(pretrained=str(path), channels_last=False).eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(net(x), _tv_layer4(tv_resnet50, x))
    dilated = resnet50(output_stride=8, pretrained=str(path))
    torch.testing.assert_close(dilated.layer4[0].conv2.weight, tv_resnet50.layer4[0].conv2.weight)


def test_safetensors_file_loads(tv_resnet50, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "resnet50.safetensors"
    save_file({k: v.contiguous() for k, v in tv_resnet50.state_dict().items()}, str(path))
    net = resnet50(pretrained=str(path))
    assert torch.equal(net.bn1.running_var, tv_resnet50.bn1.running_var)


def test_wrong_architecture_file_names_the_keys(tmp_path):
    path = tmp_path / "resnet101.pth"
    torch.save(torchvision.models.resnet101().state_dict(), path)
    with pytest.raises(ValueError, match=r"do not fit resnet50: unexpected keys: layer3\.6\."):
        resnet50(pretrained=str(path))


def test_imagenet_without_network_fails_clearly(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def refuse(*args, **kwargs):
        raise socket.gaierror("name resolution disabled in test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    with pytest.raises(RuntimeError, match=r"could not download ImageNet weights for resnet50 from "
                                           r"https://download\.pytorch\.org/models/resnet50-0676ba61\.pth.*pretrained="):
        resnet50(pretrained="imagenet")
    assert not list((tmp_path / "checkpoints").iterdir())


def test_imagenet_uses_torchvisions_cached_file(tv_resnet50, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    url = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url
    target = tmp_path / "checkpoints" / url.rsplit("/", 1)[1]
    target.parent.mkdir(parents=True)
    torch.save(tv_resnet50.state_dict(), target)
    assert torch.equal(resnet50(pretrained="imagenet").conv1.weight, tv_resnet50.conv1.weight)


def test_config_option_composes_and_validates():
    cfg = compose_config(["backbone=resnet50", "head=deeplabv3", "output_stride=8"])
    assert cfg.backbone.name == "resnet50" and cfg.backbone.output_stride == 8
    validate_config(cfg)
    cfg = compose_config(["backbone=resnet101", "output_stride=4"])
    validate_config(cfg)  # the keys are resnet101's; its constructor refuses the value
    with pytest.raises(ValueError, match=r"output_stride=4 is not valid for resnet101; valid output strides: \[8, 16, 32\]"):
        build_model(**model_config(cfg, num_classes=3))
