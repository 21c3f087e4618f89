"""HarDNet backbones: the authors' module tree, parameter counts and outputs (golden file made from their code by
tests/make_hardnet_golden.py), their ImageNet files loading strictly (downloaded by name from a loopback server, hash-checked), output strides by dilation with the maps
lined up with the strided ones, freezing and stage_of."""
import hashlib
import io
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from segdense.backbones import build_backbone
from segdense.backbones.hardnet import AUTHORS_URLS, load_hardnet_pretrained
from segdense.backbones.hardnet_block import harmonic_links, layer_width
from segdense.errors import CheckpointError, ConfigError

from make_hardnet_golden import NETS, seeded_state
from test_rdnet_imagenet import cache_dir, hub  # noqa: F401 (the loopback server fixture)

GOLDEN = Path(__file__).parent / "data" / "golden" / "hardnet.pt"
PARAMETERS = {"hardnet39ds": 3_488_228, "hardnet68ds": 4_180_602, "hardnet68": 17_565_348, "hardnet85": 36_670_212}
# A small HarDNet with three downsampling blocks (output strides 4 to 32), plain or depthwise.
SMALL = dict(stem_channels=(8, 12), transition_channels=(16, 24, 32, 40), grmul=1.6, growth_rates=(4, 6, 8, 8),
             num_layers=(2, 3, 2, 2), downsample=(1, 1, 1, 0), channels_last=False)


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=True)


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_parameter_count_with_the_1000_class_classifier_equals_the_authors(name, golden):
    model = build_backbone(name, num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS[name] == golden[name]["parameters"]
    assert list(model.state_dict()) == golden[name]["keys"]


@pytest.mark.parametrize("name", sorted(NETS))
def test_logits_and_last_map_equal_the_authors_code_on_the_same_weights(name, golden):
    model = build_backbone(name, num_classes=1000, channels_last=False).double().eval()
    model.load_state_dict(seeded_state(model.state_dict()), strict=True)
    x = golden["input"]
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
    torch.testing.assert_close(logits, golden[name]["logits"], rtol=0, atol=1e-10)
    torch.testing.assert_close(next(reversed(features.values())), golden[name]["features"], rtol=0, atol=1e-10)


def test_harmonic_links_and_widths_follow_the_paper():
    assert [harmonic_links(k) for k in (1, 2, 3, 4, 6, 8)] == [[0], [1, 0], [2], [3, 2, 0], [5, 4], [7, 6, 4, 0]]
    # int(int(c + 1) / 2) * 2: 17 -> 18, 28.9 -> 28, 49.13 -> 50
    assert [layer_width(k, 10, 1.7) for k in (1, 2, 4, 8)] == [10, 18, 28, 50]


def _authors_file(name, tmp_path, num_classes=1000):
    """A file in the authors' layout (their key names, 1000-class classifier) with seeded weights."""
    state = seeded_state(build_backbone(name, num_classes=num_classes).state_dict())
    path = tmp_path / f"{name}.pth"
    torch.save({k: v.float() for k, v in state.items()}, path)
    return path, state


def test_authors_file_loads_strictly_with_and_without_its_classifier(tmp_path, caplog):
    path, state = _authors_file("hardnet39ds", tmp_path)
    classifier = build_backbone("hardnet39ds", num_classes=1000, pretrained=str(path))
    assert torch.equal(classifier.base[-1][3].weight, state["base.14.3.weight"].float())
    with caplog.at_level("INFO"):
        backbone = build_backbone("hardnet39ds", pretrained=str(path), output_stride=8)
    assert "dropped base.14.3.weight" in caplog.text
    assert torch.equal(backbone.base[3].layers[0].layer2.dwconv.weight,
                       state["base.3.layers.0.layer2.dwconv.weight"].float())


def test_authors_file_adapts_the_stem_to_other_bands(tmp_path):
    path, state = _authors_file("hardnet39ds", tmp_path)
    model = build_backbone("hardnet39ds", pretrained=str(path), in_channels=1, channels_last=False).eval()
    rgb = build_backbone("hardnet39ds", pretrained=str(path), channels_last=False).eval()
    g = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(g), rgb(g.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-5)


def test_other_architectures_file_names_the_keys(tmp_path):
    path, _ = _authors_file("hardnet68ds", tmp_path)
    with pytest.raises(CheckpointError, match=r"do not fit this model \(hardnet39ds\).*wrong shape keys: base\.0"):
        build_backbone("hardnet39ds", pretrained=str(path))


def _publish(hub, monkeypatch, name, body, digest=None):
    """``body`` served as the authors' file of ``name``, its URL named with ``digest``'s (default: the body's SHA256)
    first 8 hex digits as theirs are (``hardnet68-5d684880.pth``)."""
    file = f"{name}-{(digest or hashlib.sha256(body).hexdigest())[:8]}.pth"
    hub.routes[f"/hardnet/{file}"] = (200, {}, body)
    monkeypatch.setitem(AUTHORS_URLS, name, f"{hub.base}/hardnet/{file}")
    return file


def test_imagenet_downloads_the_authors_file_checks_its_name_hash_and_loads_it(hub, monkeypatch, tmp_path):
    state = seeded_state(build_backbone("hardnet39ds", num_classes=1000).state_dict())
    buffer = io.BytesIO()  # their files predate torch's zip format
    torch.save(OrderedDict((k, v.float()) for k, v in state.items()), buffer, _use_new_zipfile_serialization=False)
    file = _publish(hub, monkeypatch, "hardnet39ds", buffer.getvalue())
    model = build_backbone("hardnet39ds", pretrained="imagenet", num_classes=1000)
    assert all(torch.equal(v, state[k].float()) for k, v in model.state_dict().items() if v.is_floating_point())
    assert [p.name for p in cache_dir(tmp_path).iterdir()] == [file]  # torch.hub's own name: one cache for both
    hub.routes.clear()  # the second time the cached copy is used: no request
    again = build_backbone("hardnet39ds", pretrained="imagenet")
    assert len(hub.requests) == 1 and torch.equal(again.base[0].conv.weight, state["base.0.conv.weight"].float())


def test_a_download_that_does_not_match_the_hash_in_its_name_is_refused_in_one_line(hub, monkeypatch, tmp_path):
    expected = hashlib.sha256(b"the authors' file").hexdigest()
    _publish(hub, monkeypatch, "hardnet68", b"a truncated or altered download", digest=expected)
    with pytest.raises(CheckpointError) as error:
        build_backbone("hardnet68", pretrained="imagenet")
    message = str(error.value)
    assert "\n" not in message and f"but its name says {expected[:8]}" in message and "not kept" in message
    assert list(cache_dir(tmp_path).iterdir()) == []


def test_imagenet_downloads_from_the_authors_urls():
    assert AUTHORS_URLS == {name: f"https://ping-chao.com/hardnet/{name}-{digest}.pth" for name, digest in [
        ("hardnet39ds", "0e6c6fa9"), ("hardnet68ds", "632474d2"), ("hardnet68", "5d684880"),
        ("hardnet85", "a28faa00")]}


def test_imagenet_for_a_custom_hardnet_is_refused_with_the_named_variants():
    with pytest.raises(ConfigError, match="pretrained='imagenet' needs a named HarDNet: hardnet39ds, hardnet68ds"):
        load_hardnet_pretrained(build_backbone("hardnet39ds", **SMALL), "imagenet")


def test_invalid_output_stride_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"output_stride=2 is not valid .* valid output strides: \[4, 8, 16, 32\]"):
        build_backbone("hardnet68", output_stride=2)


def _strided_and_dilated(output_stride, depthwise):
    torch.manual_seed(0)
    ref = build_backbone("hardnet39ds", depthwise=depthwise, **SMALL).double().eval()
    model = build_backbone("hardnet39ds", depthwise=depthwise, output_stride=output_stride, **SMALL).double().eval()
    model.load_state_dict(ref.state_dict(), strict=True)
    return ref, model


def _outputs(model, x):
    """Every ``base`` module's output, before forward_features moves any."""
    out = []
    with torch.no_grad():
        for module in model.base:
            x = module(x)
            out.append(x)
    return out


@pytest.mark.parametrize("depthwise", [False, True], ids=["maxpool", "depthwise"])
@pytest.mark.parametrize("output_stride", [16, 8, 4])
def test_dilated_maps_on_their_sub_grid_equal_the_strided_network(output_stride, depthwise):
    # A skipped 2x2 max pool at dilation 1 pads right and bottom, the later ones both sides: the sub-grid starts at
    # pixel step/2 - 1. A skipped stride-2 depthwise 3x3 conv pads its dilation on both sides: it starts at 0.
    ref, model = _strided_and_dilated(output_stride, depthwise)
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    for got, want in zip(_outputs(model, x), _outputs(ref, x), strict=True):
        step = got.shape[-1] // want.shape[-1]
        start = 0 if depthwise else max(step // 2 - 1, 0)
        torch.testing.assert_close(got[..., start::step, start::step], want, rtol=0, atol=1e-12)


def resampled(feature, size, image_size, shift=0):
    """``feature`` bilinearly resampled (align_corners=False) at the pixel centres of a ``size`` grid over the
    image, moved ``shift`` image pixels right and down; beyond the border the edge repeats."""
    ys, xs = ((torch.arange(n, dtype=feature.dtype) + 0.5) * 2 / n - 1 + 2 * shift / length
              for n, length in zip(size, image_size))
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], -1).expand(feature.shape[0], -1, -1, -1)
    return F.grid_sample(feature, grid, mode="bilinear", padding_mode="border", align_corners=False)


@pytest.mark.parametrize("depthwise", [False, True], ids=["maxpool", "depthwise"])
@pytest.mark.parametrize("output_stride", [16, 8, 4])
def test_dilated_feature_maps_resampled_to_output_stride_32_line_up_with_it_unshifted(output_stride, depthwise):
    # Resampled onto the strided network's grid, each dilated map is closest to the strided map with no shift
    # (among shifts in 2-pixel steps). The positions only show on maps smooth at the pixel scale: a smooth image
    # and non-negative averaging convs, compared away from the zero-padded border (the middle half of each map).
    ref, model = _strided_and_dilated(output_stride, depthwise)
    for conv in [m for m in ref.modules() if isinstance(m, torch.nn.Conv2d)]:
        w = torch.rand(conv.weight.shape, generator=torch.Generator().manual_seed(conv.weight.numel()),
                       dtype=torch.float64)
        conv.weight.data = w / w[0].sum()
    model.load_state_dict(ref.state_dict())
    coarse = torch.rand(1, 3, 5, 5, generator=torch.Generator().manual_seed(100), dtype=torch.float64)
    x = F.interpolate(coarse, size=(512, 512), mode="bicubic", align_corners=False)
    with torch.no_grad():
        want, got = ref.forward_features(x), model.forward_features(x)
    checked = 0
    for spec, nominal in zip(model.feature_info, ref.feature_info, strict=True):
        if spec.stride == nominal.stride:
            continue
        target = want[spec.name] - want[spec.name].mean((2, 3), keepdim=True)
        b = target.shape[-1] // 4
        inner = target[..., b:-b, b:-b]
        errors = {}
        for shift in range(-12, 13, 2):
            moved = resampled(got[spec.name], target.shape[-2:], x.shape[-2:], shift)
            moved = moved - want[spec.name].mean((2, 3), keepdim=True)
            errors[shift] = float((moved[..., b:-b, b:-b] - inner).norm() / inner.norm())
        assert min(errors, key=errors.get) == 0, f"{spec.name} lines up best moved by {errors}"
        checked += 1
    assert checked == {16: 1, 8: 2, 4: 3}[output_stride]


def test_frozen_stages_and_stage_of_count_the_stem_then_each_block():
    model = build_backbone("hardnet68", frozen_stages=2, num_classes=10)
    stage = {name: model.stage_of(name) for name, _ in model.named_parameters()}
    assert stage["base.0.conv.weight"] == stage["base.1.norm.bias"] == 0
    assert stage["base.3.layers.7.conv.weight"] == stage["base.4.conv.weight"] == 1  # block 1 and its 1x1 conv
    assert stage["base.6.layers.0.conv.weight"] == 2 and stage["base.15.conv.weight"] == 5
    assert stage["base.16.3.weight"] == 6  # the classifier, after the stages
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {name for name, s in stage.items() if s <= 2}
    model.train()
    assert not model.base[6].layers[0].norm.training and model.base[8].layers[0].norm.training
