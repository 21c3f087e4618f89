"""The DenseNet backbone family: exact architecture, output strides, features, registry."""
import pytest
import torch
import torch.nn as nn

from segdense.backbones import (
    FeatureSpec,
    build_backbone,
    densenet121,
    densenet_custom,
    list_backbones,
    register_backbone,
    valid_output_strides,
)

import torchvision  # noqa: E402


def tiny(**kwargs):
    return densenet_custom(num_units_per_block=(2, 3, 2, 2), growth_rate=8, **kwargs)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize(
    "name,expected",
    [
        ("densenet121", 7_978_856),
        ("densenet169", 14_149_480),
        ("densenet201", 20_013_928),
        ("densenet161", 28_681_000),
    ],
)
def test_parameter_counts_equal_torchvision(name, expected):
    model = build_backbone(name, num_classes=1000)
    assert n_params(model) == expected
    assert n_params(getattr(torchvision.models, name)()) == expected


def test_state_dict_keys_and_shapes_equal_torchvision():
    ours = densenet121(num_classes=1000).state_dict()
    theirs = torchvision.models.densenet121().state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


def test_seed_example_classification_shape():
    model = densenet121(num_classes=1000).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_seed_example_dense_logits_shape():
    model = densenet121(
        num_classes=21, global_pool=False, output_stride=16, initial_output_stride=2, spatial_squeeze=False
    ).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 21, 14, 14)


def test_global_pool_without_squeeze_keeps_spatial_dims():
    model = tiny(num_classes=5, spatial_squeeze=False).eval()
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5, 1, 1)


def test_features_only_forward_returns_final_feature_map():
    model = tiny(global_pool=False).eval()
    out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, model.num_features, 2, 2)
    assert (out >= 0).all()  # BN-ReLU applied


def test_growth_rates_and_first_unit_keep_the_block_input():
    # The seed library dropped each block's input in the first unit; here a block's output holds
    # its input unchanged in the first channels.
    model = densenet_custom(num_units_per_block=(3, 2), growth_rate=12, num_init_features=16).eval()
    block = model.features.denseblock1
    x = torch.randn(1, 16, 8, 8)
    y = block(x)
    assert y.shape[1] == 16 + 3 * 12
    assert torch.equal(y[:, :16], x)
    assert model.features.denseblock1.denselayer3.conv1.in_channels == 16 + 2 * 12


def test_transition_compresses_by_theta():
    model = densenet_custom(num_units_per_block=(3, 2), growth_rate=10, theta=0.3, num_init_features=20)
    assert model.features.transition1.conv.out_channels == int((20 + 30) * 0.3)


def test_initial_output_stride_two_skips_max_pool():
    model = densenet_custom(num_units_per_block=(2, 2), growth_rate=16, initial_output_stride=2)
    assert model.features.conv0.out_channels == 32  # 2 * growth_rate
    assert not hasattr(model.features, "pool0")
    feats = model.forward_features(torch.randn(1, 3, 32, 32))
    assert feats["block1"].shape[-1] == 16
    assert [f.stride for f in model.feature_info] == [2, 2, 4]


@pytest.mark.parametrize("output_stride", [4, 8, 16, 32])
def test_densenet121_every_output_stride(output_stride):
    model = densenet121(output_stride=output_stride).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, 64, 64))
    assert feats["block4"].shape[-2:] == (64 // output_stride, 64 // output_stride)
    assert model.feature_info[-1].stride == output_stride


@pytest.mark.parametrize("initial,valid", [(4, [4, 8, 16, 32]), (2, [2, 4, 8, 16])])
def test_custom_net_every_output_stride(initial, valid):
    assert valid_output_strides(4, initial) == valid
    for output_stride in valid:
        model = tiny(output_stride=output_stride, initial_output_stride=initial).eval()
        with torch.no_grad():
            feats = model.forward_features(torch.randn(1, 3, 64, 64))
        for spec, (name, f) in zip(model.feature_info, feats.items()):
            assert spec.name == name
            assert f.shape[1] == spec.channels
            assert f.shape[-1] == 64 // spec.stride


@pytest.mark.parametrize("bad", [1, 2, 3, 12, 64, 0])
def test_invalid_output_stride_lists_valid_ones(bad):
    with pytest.raises(ValueError, match=r"valid output strides: \[4, 8, 16, 32\]"):
        densenet121(output_stride=bad)


def test_invalid_output_stride_on_three_block_custom_net():
    with pytest.raises(ValueError, match=r"\[4, 8, 16\]"):
        densenet_custom(num_units_per_block=(2, 2, 2), growth_rate=8, output_stride=32)


def test_dilation_doubles_per_skipped_downsampling():
    model = densenet121(output_stride=8)
    assert model.features.denseblock2.denselayer1.conv2.dilation == (1, 1)
    assert model.features.denseblock3.denselayer1.conv2.dilation == (2, 2)
    assert model.features.denseblock4.denselayer16.conv2.dilation == (4, 4)
    assert model.features.denseblock4.denselayer16.conv2.padding == (4, 4)
    assert isinstance(model.features.transition3.pool, nn.Identity)
    assert isinstance(model.features.transition1.pool, nn.AvgPool2d)


def test_same_state_dict_at_every_output_stride():
    reference = densenet121().state_dict()
    for output_stride in (16, 8, 4):
        other = densenet121(output_stride=output_stride)
        other.load_state_dict(reference, strict=True)
        assert list(other.state_dict()) == list(reference)


def test_feature_info_matches_timm_taps_for_densenet121():
    model = densenet121()
    assert model.feature_info == [
        FeatureSpec("stem", 64, 2),
        FeatureSpec("block1", 256, 4),
        FeatureSpec("block2", 512, 8),
        FeatureSpec("block3", 1024, 16),
        FeatureSpec("block4", 1024, 32),
    ]
    with torch.no_grad():
        feats = model.eval().forward_features(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape[1:]) for f in feats.values()] == [
        (64, 32, 32), (256, 16, 16), (512, 8, 8), (1024, 4, 4), (1024, 2, 2)
    ]


@pytest.mark.parametrize("size", [(97, 131), (65, 33), (33, 70)])
def test_odd_input_sizes(size):
    model = tiny(output_stride=16).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, *size))
    h, w = size
    # Stem and max-pool round up, the average pools round down.
    assert feats["stem"].shape[-2:] == (-(-h // 2), -(-w // 2))
    assert feats["block4"].shape[-2:] == (-(-h // 4) // 4, -(-w // 4) // 4)


@pytest.mark.parametrize("size", [(513, 513), (375, 500)])  # the sizes docs/backbones.md names
@pytest.mark.parametrize("output_stride", [8, 16])
def test_documented_odd_sizes_513_and_375x500(size, output_stride):
    from segdense import build_model

    model = build_model("densenet_custom", {"name": "deeplabv3", "channels": 8}, num_classes=3,
                        output_stride=output_stride, num_units_per_block=[1, 1, 1, 1], growth_rate=4).eval()
    h, w = size
    with torch.no_grad():
        feats = model.backbone.forward_features(torch.randn(1, 3, h, w))
        logits = model(torch.randn(1, 3, h, w))
    # Stem and max-pool round up; each downsampling transition's average pool rounds down.
    quarter = (-(-h // 4), -(-w // 4))
    expected = {"block1": quarter, "block2": (quarter[0] // 2, quarter[1] // 2)}
    expected["block3"] = expected["block2"] if output_stride == 8 else (quarter[0] // 4, quarter[1] // 4)
    expected["block4"] = expected["block3"]
    for name, hw in expected.items():
        assert feats[name].shape[-2:] == hw, name
    assert logits.shape == (1, 3, h, w) and torch.isfinite(logits).all()


def test_too_small_input_has_clear_error():
    with pytest.raises(ValueError, match="at least 32"):
        tiny().forward_features(torch.randn(1, 3, 16, 40))


def test_wrong_channel_count_has_clear_error():
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        tiny()(torch.randn(1, 4, 64, 64))


def test_channels_last_gives_same_result():
    # Forced contiguous NCHW against channels-last weights and input: same values.
    model = tiny(output_stride=8, num_classes=4, global_pool=False, channels_last=False).eval()
    x = torch.randn(2, 3, 45, 61)
    with torch.no_grad():
        ref = model(x)
        assert ref.is_contiguous()
        model.channels_last = True
        out = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_cpu_runs_channels_last_by_default_with_the_same_values_and_gradients():
    # Float64: training-mode BN on 5x6 maps amplifies fp32 rounding past any fixed tolerance now
    # and then; in float64 the two memory formats must agree to rounding.
    auto = tiny(output_stride=8, global_pool=False).double()
    nchw = tiny(output_stride=8, global_pool=False, channels_last=False).double()
    nchw.load_state_dict(auto.state_dict())
    x = torch.randn(2, 3, 40, 48, dtype=torch.float64)
    feats_auto, feats_nchw = auto.forward_features(x), nchw.forward_features(x)
    for name in feats_auto:
        assert feats_auto[name].is_contiguous(memory_format=torch.channels_last), name
        assert feats_nchw[name].is_contiguous(), name
        torch.testing.assert_close(feats_auto[name], feats_nchw[name], rtol=1e-9, atol=1e-10)
    sum(f.square().mean() for f in feats_auto.values()).backward()
    sum(f.square().mean() for f in feats_nchw.values()).backward()
    for (name, p), q in zip(auto.named_parameters(), nchw.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-10, msg=name)


def test_traced_graph_stays_in_the_input_format():
    model = tiny(output_stride=16, global_pool=False).eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.randn(1, 3, 64, 64))
        out = traced(torch.randn(1, 3, 64, 64))
    assert out.is_contiguous()


def test_channels_last_must_be_none_or_bool():
    with pytest.raises(ValueError, match="channels_last must be None"):
        tiny(channels_last="yes")


def test_in_channels_other_than_three():
    model = tiny(in_channels=5, num_classes=2).eval()
    assert model(torch.randn(1, 5, 64, 64)).shape == (1, 2)


@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_memory_efficient_gradients_equal_plain(output_stride):
    torch.manual_seed(0)
    plain = tiny(output_stride=output_stride, num_classes=3, global_pool=False)
    efficient = tiny(output_stride=output_stride, num_classes=3, global_pool=False, memory_efficient=True)
    efficient.load_state_dict(plain.state_dict())
    # float64: at OS32 the deepest BatchNorms see 2 values per channel, which amplifies fp32
    # rounding (shared statistics sum in another order than BatchNorm) past any fixed tolerance.
    plain.double(), efficient.double()
    x = torch.randn(2, 3, 48, 48, dtype=torch.float64)
    for m in (plain, efficient):
        m.train()
        m(x).square().mean().backward()
    for (name, p), q in zip(plain.named_parameters(), efficient.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-7, atol=1e-10, msg=name)
    for (name, b), c in zip(plain.named_buffers(), efficient.buffers()):
        torch.testing.assert_close(c, b, rtol=1e-9, atol=1e-12, msg=name)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="initial_output_stride must be 2 or 4"):
        tiny(initial_output_stride=8)
    with pytest.raises(ValueError, match="theta"):
        tiny(theta=0.0)
    with pytest.raises(ValueError, match="num_units_per_block"):
        densenet_custom(num_units_per_block=())
    with pytest.raises(ValueError, match="num_classes"):
        tiny(num_classes=0)


def test_registry_lists_builtin_backbones():
    assert {"densenet121", "densenet169", "densenet201", "densenet161", "densenet_custom"} <= set(
        list_backbones()
    )


def test_unknown_backbone_lists_names_and_closest_match():
    with pytest.raises(ValueError) as err:
        build_backbone("densenet12")
    message = str(err.value)
    assert "unknown backbone 'densenet12'" in message
    assert "Did you mean 'densenet121'" in message
    assert "densenet161" in message and "densenet_custom" in message


def test_user_backbone_registered_from_outside():
    class Tiny(nn.Module):
        output_stride = 4
        feature_info = [FeatureSpec("only", 8, 4)]

        def __init__(self, **kwargs):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 4, stride=4)

        def forward_features(self, x):
            return {"only": self.conv(x)}

    register_backbone("test_user_tiny")(Tiny)
    try:
        model = build_backbone("test_user_tiny")
        assert model.forward_features(torch.randn(1, 3, 16, 16))["only"].shape == (1, 8, 4, 4)
        with pytest.raises(ValueError, match="already registered"):
            register_backbone("test_user_tiny")(lambda: None)
    finally:
        from segdense.backbones.registry import BACKBONES

        BACKBONES.unregister("test_user_tiny")


def test_importing_backbones_needs_only_torch():
    import subprocess
    import sys

    code = (
        "import sys; import segdense.backbones; "
        "print(','.join(m for m in ('hydra','omegaconf','albumentations','cv2','torchvision') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
