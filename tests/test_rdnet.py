"""RDNet backbones against timm's ``rdnet`` (the reference implementation) on the same weights."""
import logging

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from segdense.backbones import build_backbone, rdnet_custom, rdnet_timm_keys, rdnet_tiny
from segdense.errors import CheckpointError

# timm 1.0.31's parameter counts (shared/REFERENCE.md): features only, and with the 1000-class classifier.
COUNTS = {
    "rdnet_tiny": (22_819_928, 23_863_008),
    "rdnet_small": (49_168_920, 50_436_448),
    "rdnet_base": (85_686_576, 87_451_096),
    "rdnet_large": (184_264_632, 186_269_632),
}
# rdnet_tiny's structure (7 stages, ESE from the third, downsampling at stages 2, 3 and 7) at a tenth of its width.
NARROW = dict(num_init_features=16, growth_rates=[8, 12, 16, 16, 16, 16, 24])
TINY_KW = dict(growth_rates=[8, 8, 16, 16], num_blocks_list=[2, 2, 2, 2], is_downsample_block=[False, True, True, True],
               block_type=["Block", "Block", "Block", "Block"], num_init_features=16, ls_init_value=0.5)


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def timm_tiny():
    torch.manual_seed(0)
    model = timm.create_model("rdnet_tiny", ls_init_value=0.3).eval()  # layer scale large enough to matter
    with torch.no_grad():
        for m in model.modules():  # non-trivial norms
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


@pytest.fixture(scope="module")
def timm_narrow():
    torch.manual_seed(0)
    return timm.create_model("rdnet_tiny", ls_init_value=0.3, **NARROW).eval()


def timm_features(model, x):
    with torch.no_grad():
        return model.forward_intermediates(x, intermediates_only=True)


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_parameter_counts_equal_timm(name):
    with torch.device("meta"):
        ours, ours_cls = build_backbone(name), build_backbone(name, num_classes=1000)
        ref = timm.create_model(name)
    assert (count(ours), count(ours_cls)) == COUNTS[name]
    assert count(ours_cls) == count(ref)
    assert list(ours_cls.state_dict()) == list(ref.state_dict())  # the same names, in the same order


def test_rdnet_custom_and_the_class_default_to_rdnet_tiny():
    from segdense.backbones import RDNet

    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}
    with torch.device("meta"):
        ref = {k: v for k, v in shapes(timm.create_model("rdnet_tiny")).items() if not k.startswith("head.")}
        assert shapes(build_backbone("rdnet_custom")) == shapes(RDNet()) == shapes(rdnet_tiny()) == ref


def test_tiny_feature_maps_equal_timm_float64(timm_tiny):
    ref = timm_tiny.double()
    model = rdnet_tiny(num_classes=1000).double().eval()
    model.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 32, dtype=torch.float64)
    with torch.no_grad():
        ours = model.forward_features(x)
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=1e-12)
    for got, want, spec in zip(ours.values(), timm_features(ref, x), model.feature_info):
        assert got.shape == want.shape == (1, spec.channels, 64 // spec.stride, 32 // spec.stride)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12 * want.abs().max().item())
    timm_tiny.float()


def test_tiny_feature_maps_equal_timm_float32_and_feature_info(timm_tiny):
    model = rdnet_tiny().eval()
    model.load_state_dict({k: v for k, v in timm_tiny.state_dict().items() if not k.startswith("head.")})
    assert [(s.name, s.channels, s.stride) for s in model.feature_info] == [
        ("stage1", 256, 4), ("stage2", 440, 8), ("stage3", 744, 16), ("stage4", 1040, 32)]
    assert [f["num_chs"] for f in timm_tiny.feature_info] == [s.channels for s in model.feature_info]
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ours = list(model.forward_features(x).values())
    for got, want in zip(ours, timm_features(timm_tiny, x)):
        assert (got - want).abs().max() <= 1e-5 * want.abs().max()


def weighted_loss(features):
    # Channels weighted differently, so a gradient routed to the wrong channel shows.
    return sum((f * torch.linspace(-1, 1, f.shape[1], dtype=f.dtype).view(1, -1, 1, 1)).square().mean()
               for f in features)


@pytest.mark.parametrize("mode", ["plain", "memory_efficient", "no_grad"])
def test_training_with_drop_path_equals_timm_under_the_same_seed(mode):
    # The same masks in the same order as timm's DropPath: features and every gradient equal timm's in float64.
    torch.manual_seed(0)
    ref = timm.create_model("rdnet_tiny", ls_init_value=0.3, drop_path_rate=0.5, **NARROW).double().train()
    model = rdnet_tiny(num_classes=1000, drop_path_rate=0.5, memory_efficient=mode == "memory_efficient",
                       **NARROW).double().train()
    model.load_state_dict(ref.state_dict())
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.set_grad_enabled(mode != "no_grad"):
        torch.manual_seed(7)
        want = ref.forward_intermediates(x, intermediates_only=True)
        torch.manual_seed(7)
        got = list(model.forward_features(x).values())
    for ours, theirs in zip(got, want, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12 * theirs.abs().max().item())
    with torch.no_grad():
        undropped = list(model.eval().forward_features(x).values())
    assert (undropped[-1] - got[-1]).abs().max() > 0.1 * got[-1].abs().max()  # drop path was live
    if mode != "no_grad":
        weighted_loss(got).backward()
        weighted_loss(want).backward()
        theirs = dict(ref.named_parameters())
        for name, p in model.named_parameters():
            if not name.startswith("head."):
                torch.testing.assert_close(p.grad, theirs[name].grad, rtol=0,
                                           atol=1e-10 * theirs[name].grad.abs().max().item(), msg=name)


def test_training_with_drop_path_under_bf16_autocast_equals_timm_bit_for_bit():
    # timm scales its mask by 1/keep in the layer output's dtype: float32 under autocast (the layer scale is
    # float32), though the stage's input is bfloat16.
    torch.manual_seed(0)
    ref = timm.create_model("rdnet_tiny", ls_init_value=0.3, drop_path_rate=0.5, **NARROW).train()
    model = rdnet_tiny(num_classes=1000, drop_path_rate=0.5, **NARROW).train()
    model.load_state_dict(ref.state_dict())
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(7)
        want = ref.forward_intermediates(x, intermediates_only=True)
        torch.manual_seed(7)
        got = list(model.forward_features(x).values())
    for ours, theirs in zip(got, want, strict=True):
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("output_stride", [16, 8])
def test_dilated_net_loads_the_same_file_and_keeps_the_maps_before_the_dilation_point(timm_narrow, tmp_path,
                                                                                     output_stride):
    path = tmp_path / "rdnet.pth"
    torch.save(timm_narrow.state_dict(), path)
    model = rdnet_tiny(output_stride=output_stride, pretrained=str(path), **NARROW).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours = model.forward_features(x)
    want = timm_features(timm_narrow, x)
    assert ours["stage4"].shape[-1] == 64 // output_stride
    unchanged = [s.name for s in model.feature_info if s.stride < output_stride]
    unchanged.append(next(s.name for s in model.feature_info if s.stride == output_stride))
    for name, ref in zip(ours, want):
        if name in unchanged:
            torch.testing.assert_close(ours[name], ref, rtol=0, atol=1e-5 * ref.abs().max().item())


def stage_outputs(model, x):
    """Every stage's raw output (``dense_stages.i``), before forward_features resamples any."""
    outputs = []
    hooks = [stage.register_forward_hook(lambda m, args, out: outputs.append(out)) for stage in model.dense_stages]
    with torch.no_grad():
        model.forward_features(x)
    for hook in hooks:
        hook.remove()
    return outputs


def strided_and_dilated(output_stride):
    """The SE-free TINY_KW network at output stride 32 and at ``output_stride``, float64, with the same weights."""
    torch.manual_seed(0)
    ref = rdnet_custom(**TINY_KW).double().eval()
    model = rdnet_custom(output_stride=output_stride, **TINY_KW).double().eval()
    model.load_state_dict(ref.state_dict())
    return ref, model


def resampled(feature, size, image_size, shift=0):
    """``feature`` bilinearly resampled (align_corners=False, as F.interpolate) at the pixel centres of a ``size``
    grid over the image, moved ``shift`` image pixels right and down; beyond the border the edge repeats."""
    ys, xs = ((torch.arange(n, dtype=feature.dtype) + 0.5) * 2 / n - 1 + 2 * shift / length
              for n, length in zip(size, image_size))
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], -1).expand(feature.shape[0], -1, -1, -1)
    return F.grid_sample(feature, grid, mode="bilinear", padding_mode="border", align_corners=False)


@pytest.mark.parametrize("output_stride", [16, 8, 4])
def test_dilated_stage_outputs_on_their_strided_grid_equal_output_stride_32(output_stride):
    # Without squeeze-excitation (a global mean over every pixel), the a-trous network's stage outputs, sampled
    # every 2**skipped pixels from pixel 2**(skipped - 1) - 1, are the strided network's exactly: same taps, same
    # zero padding (the first skipped transition pads right and bottom, the later ones both sides).
    ref, model = strided_and_dilated(output_stride)
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    for got, want in zip(stage_outputs(model, x), stage_outputs(ref, x), strict=True):
        step = got.shape[-1] // want.shape[-1]
        start = max(step // 2 - 1, 0)
        torch.testing.assert_close(got[..., start::step, start::step], want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("output_stride", [16, 8, 4])
def test_dilated_feature_maps_are_their_stage_outputs_moved_half_a_pixel_onto_the_centres(output_stride):
    # TINY_KW downsamples in every stage but the first, so each stage's output is a feature map.
    torch.manual_seed(0)
    nominal = [spec.stride for spec in rdnet_custom(**TINY_KW).feature_info]
    model = rdnet_custom(output_stride=output_stride, **TINY_KW).double().eval()
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        features = model.forward_features(x)
    moved = 0
    for spec, stride, raw in zip(model.feature_info, nominal, stage_outputs(model, x), strict=True):
        want = raw
        if spec.stride < stride:  # after the dilation point
            want, moved = resampled(raw, raw.shape[-2:], x.shape[-2:], -spec.stride / 2), moved + 1
        torch.testing.assert_close(features[spec.name], want, rtol=0, atol=1e-12)
    assert moved == {16: 1, 8: 2, 4: 3}[output_stride]


@pytest.mark.parametrize("output_stride", [16, 8, 4])
def test_dilated_feature_maps_resampled_to_output_stride_32_line_up_with_it_unshifted(output_stride):
    # Resampled onto the strided network's grid, each dilated map is closest to the strided map with no shift
    # (among shifts in 2-pixel steps): it is centred as align_corners=False upsampling assumes. The strided map's
    # border pixels are left out: the padding there is one-sided.
    ref, model = strided_and_dilated(output_stride)
    x = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(100), dtype=torch.float64)
    with torch.no_grad():
        want, got = ref.forward_features(x), model.forward_features(x)
    for spec, nominal in zip(model.feature_info, ref.feature_info, strict=True):
        if spec.stride == nominal.stride:
            continue
        target = want[spec.name]
        inner = target[..., 1:-1, 1:-1]
        errors = {shift: float((resampled(got[spec.name], target.shape[-2:], x.shape[-2:], shift)[..., 1:-1, 1:-1]
                                - inner).norm() / inner.norm()) for shift in range(-12, 13, 2)}
        best = min(errors, key=errors.get)
        assert best == 0, f"{spec.name} lines up best moved by {best} pixels: {errors}"


def authors_keys(state):
    return {("stem.stem." + k[len("stem."):] if k.startswith("stem.") else k): v for k, v in state.items()}


@pytest.mark.parametrize("spelling", ["timm_pth", "timm_safetensors", "authors_pth", "features_only"])
def test_pretrained_reads_timm_and_authors_spellings_strictly(timm_narrow, tmp_path, spelling):
    state = timm_narrow.state_dict()
    if spelling == "timm_safetensors":
        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        if spelling == "authors_pth":
            state = authors_keys(state)
        elif spelling == "features_only":  # timm features_only module names: stem_0, dense_stages_3
            state = {k.replace("stem.", "stem_", 1).replace("dense_stages.", "dense_stages_", 1): v
                     for k, v in state.items() if not k.startswith("head.")}
        path = tmp_path / "model.pth"
        torch.save({"model": state} if spelling == "authors_pth" else state, path)
    model = rdnet_tiny(pretrained=str(path), num_classes=None if spelling == "features_only" else 1000, **NARROW)
    for key, value in model.state_dict().items():
        assert torch.equal(value, timm_narrow.state_dict()[key]), key
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for got, want in zip(model.eval().forward_features(x).values(), timm_features(timm_narrow, x)):
            assert (got - want).abs().max() <= 1e-4 * want.abs().max()


def test_pretrained_drops_the_classifier_for_segmentation_and_says_so(timm_narrow, tmp_path, caplog):
    path = tmp_path / "model.pth"
    torch.save(timm_narrow.state_dict(), path)
    with caplog.at_level(logging.INFO, logger="segdense.backbones.rdnet_weights"):
        model = rdnet_tiny(pretrained=str(path), **NARROW)
    assert model.head is None and "head.fc.weight" in caplog.text


def test_pretrained_of_another_architecture_names_the_first_mismatch(tmp_path):
    path = tmp_path / "custom.pth"
    torch.save(rdnet_custom(**TINY_KW).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"custom\.pth do not fit.*wrong shape keys: stem\.0\.weight"):
        rdnet_tiny(pretrained=str(path))


def test_rdnet_timm_keys_maps_every_spelling():
    t = torch.zeros(1)
    state = {"stem.stem.0.weight": t, "stem_1.bias": t, "dense_stages_3.2.dense_block0.gamma": t,
             "dense_stages.1.0.weight": t, "head.fc.bias": t}
    assert list(rdnet_timm_keys(state)) == ["stem.0.weight", "stem.1.bias", "dense_stages.3.2.dense_block0.gamma",
                                            "dense_stages.1.0.weight", "head.fc.bias"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(output_stride=4 * 3), r"output_stride must be one of \[4, 8, 16, 32\]"),
    (dict(growth_rates=[8, 8]), "one entry per stage, got 2, 4, 4 and 4"),
    (dict(block_type=["Block", "Block", "Block", "SE"]), "'Block' or 'BlockESE', got 'SE'"),
    (dict(frozen_stages=5), "frozen_stages must be an int from -1"),
    (dict(drop_path_rate=1.0), r"drop_path_rate must be in \[0, 1\), got 1.0"),
    (dict(drop_path_rate=-0.1), r"drop_path_rate must be in \[0, 1\), got -0.1"),
    (dict(drop_path_rate=float("nan")), r"drop_path_rate must be in \[0, 1\), got nan"),
])
def test_bad_arguments_get_one_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rdnet_custom(**{**TINY_KW, **kwargs})


def test_too_small_input_names_the_minimum():
    with pytest.raises(ValueError, match=r"at least 32 at output_stride=32"):
        rdnet_custom(**TINY_KW).forward_features(torch.randn(1, 3, 16, 64))


def test_frozen_stages_freeze_the_stem_and_the_first_stages():
    model = rdnet_custom(frozen_stages=2, **TINY_KW).train()
    frozen = {n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("dense_stages") else "")
              for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"stem", "dense_stages.0", "dense_stages.1"}
    assert not model.dense_stages[1].training and model.dense_stages[2].training
    assert [model.stage_of(n) for n in ("stem.0.weight", "dense_stages.3.1.weight")] == [0, 4]
