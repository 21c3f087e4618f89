"""RDNet backbones against timm's ``rdnet`` (the reference implementation) on the same weights."""
import logging

import pytest
import timm
import torch
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


@pytest.mark.parametrize("output_stride", [16, 8])
def test_dilated_maps_sampled_on_the_strided_grid_equal_output_stride_32(output_stride):
    # Without squeeze-excitation (a global mean over every pixel), the a-trous network sampled every
    # 32 / output_stride pixels is the strided one exactly: same taps, same zero padding.
    torch.manual_seed(0)
    ref = rdnet_custom(**TINY_KW).double().eval()
    model = rdnet_custom(output_stride=output_stride, **TINY_KW).double().eval()
    model.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        want, got = ref.forward_features(x), model.forward_features(x)
    for name in want:
        step = got[name].shape[-1] // want[name].shape[-1]
        torch.testing.assert_close(got[name][..., ::step, ::step], want[name], rtol=0, atol=1e-12)


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
