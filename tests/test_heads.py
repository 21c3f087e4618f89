"""Decoder heads: registry, shapes at every output stride, head-specific structure."""
import pytest
import torch
import torch.nn as nn

from segdense.backbones import FeatureSpec, densenet_custom
from segdense.heads import (
    aux_feature,
    build_head,
    default_atrous_rates,
    denseaspp_widths,
    list_heads,
    register_head,
)


HEADS = ["fcn", "deeplabv3", "deeplabv3plus", "denseaspp", "fpn", "aux"]
TINY = dict(num_units_per_block=(2, 2, 2, 2), growth_rate=8)


def tiny_backbone(output_stride):
    return densenet_custom(output_stride=output_stride, **TINY)


def test_every_head_is_registered():
    assert set(HEADS) <= set(list_heads())


def test_unknown_head_error_lists_valid_names_and_suggests_closest():
    with pytest.raises(ValueError) as err:
        build_head("deeplab3", tiny_backbone(16).feature_info, 5, 16)
    message = str(err.value)
    assert "unknown head 'deeplab3'" in message
    assert "Did you mean 'deeplabv3'" in message
    for name in HEADS:
        assert name in message


def test_registering_a_second_head_under_a_taken_name_fails():
    with pytest.raises(ValueError, match="already registered"):
        register_head("fcn")(type("OtherHead", (nn.Module,), {}))


@pytest.mark.parametrize("num_classes", [0, -3, 2.5])
def test_build_head_rejects_bad_num_classes(num_classes):
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        build_head("fcn", tiny_backbone(16).feature_info, num_classes, 16)


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("name", HEADS)
def test_head_logits_have_the_stride_it_reports(name, output_stride):
    backbone = tiny_backbone(output_stride)
    x = torch.randn(1, 3, 97, 131)
    head = build_head(name, backbone.feature_info, 7, output_stride).train()
    features = backbone.forward_features(x)
    logits = head(features)
    same_stride = [f.name for f in backbone.feature_info if f.stride == head.output_stride]
    assert same_stride, f"{name} reports stride {head.output_stride}, which no feature has"
    assert logits.shape == (1, 7, *features[same_stride[-1]].shape[-2:])


@pytest.mark.parametrize(
    "output_stride, rates", [(8, (12, 24, 36)), (16, (6, 12, 18)), (32, (3, 6, 9))]
)
def test_aspp_rates_follow_the_output_stride(output_stride, rates):
    assert default_atrous_rates(output_stride) == rates
    head = build_head("deeplabv3", tiny_backbone(output_stride).feature_info, 5, output_stride)
    dilations = [b[0].dilation[0] for b in head.aspp.branches[1:4]]
    assert tuple(dilations) == rates


def test_aspp_rates_can_be_overridden():
    head = build_head("deeplabv3plus", tiny_backbone(16).feature_info, 5, 16, atrous_rates=(2, 4, 8))
    assert [b[0].dilation[0] for b in head.aspp.branches[1:4]] == [2, 4, 8]


def test_aspp_has_five_branches_of_256_channels_by_default():
    head = build_head("deeplabv3", tiny_backbone(16).feature_info, 5, 16)
    assert len(head.aspp.branches) == 5
    assert head.aspp.project[0].in_channels == 5 * 256


def test_aspp_image_pooling_has_no_batchnorm_and_trains_with_batch_one():
    head = build_head("deeplabv3", tiny_backbone(16).feature_info, 5, 16).train()
    pooling = head.aspp.branches[-1]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in pooling.modules())
    features = {"block4": torch.randn(1, head.aspp.branches[0][0].in_channels, 3, 5, requires_grad=True)}
    head(features).sum().backward()
    assert torch.isfinite(pooling.conv.weight.grad).all() and pooling.conv.weight.grad.abs().sum() > 0


def test_deeplabv3plus_projects_the_stride4_feature_to_48_channels():
    backbone = tiny_backbone(16)
    head = build_head("deeplabv3plus", backbone.feature_info, 5, 16)
    assert head.low_level_feature == "block1"
    assert head.low_level_project[0].in_channels == backbone.feature_info[1].channels
    assert head.low_level_project[0].out_channels == 48


def test_deeplabv3plus_without_a_stride4_feature_names_the_problem():
    info = [FeatureSpec("c3", 16, 8), FeatureSpec("c4", 32, 16)]
    with pytest.raises(ValueError, match=r"'deeplabv3plus' needs a stride-4 feature.*c3 \(stride 8"):
        build_head("deeplabv3plus", info, 5, 16)


@pytest.mark.parametrize(
    "channels, widths",
    [(1024, (128, 64)), (1664, (336, 168)), (1920, (480, 240)), (2208, (512, 128)), (96, (12, 6)), (8, (1, 1))],
)
def test_denseaspp_widths_are_the_papers_or_derived_from_channels(channels, widths):
    assert denseaspp_widths(channels) == widths


def test_denseaspp_has_five_dense_units_with_the_paper_rates():
    info = [FeatureSpec("block1", 16, 4), FeatureSpec("block4", 1024, 8)]
    head = build_head("denseaspp", info, 19, 8)
    assert head.widths == (128, 64)
    assert [u[-2].dilation[0] for u in head.units] == [3, 6, 12, 18, 24]
    # unit i sees the feature plus the i earlier units' outputs
    assert [u[2 if i else 0].in_channels for i, u in enumerate(head.units)] == [1024 + 64 * i for i in range(5)]
    assert head.classifier[1].in_channels == 1024 + 5 * 64


def test_denseaspp_widths_argument_overrides():
    head = build_head("denseaspp", tiny_backbone(8).feature_info, 3, 8, widths=(10, 4))
    assert head.widths == (10, 4) and head.units[0][0].out_channels == 10


def test_fpn_uses_all_levels_from_stride4_and_outputs_at_stride4():
    head = build_head("fpn", tiny_backbone(8).feature_info, 5, 8)
    assert head.in_features == ["block1", "block2", "block3", "block4"]
    assert head.output_stride == 4
    # levels sharing stride 8 (dilated) each get one upsampling stage, block1 none
    assert [sum(s.upsample for s in b) for b in head.branches] == [0, 1, 1, 1]


def test_fpn_in_features_can_be_chosen():
    head = build_head("fpn", tiny_backbone(32).feature_info, 5, 32, in_features=["block4", "block2"])
    assert head.in_features == ["block2", "block4"] and head.output_stride == 8


def test_aux_head_uses_block3_then_stride16_then_second_deepest():
    assert aux_feature(tiny_backbone(8).feature_info).name == "block3"
    info = [FeatureSpec("a", 8, 4), FeatureSpec("b", 16, 16), FeatureSpec("c", 32, 32)]
    assert aux_feature(info).name == "b"
    info = [FeatureSpec("a", 8, 4), FeatureSpec("b", 16, 8), FeatureSpec("c", 32, 32)]
    assert aux_feature(info).name == "b"


def test_head_asked_for_a_missing_feature_lists_the_backbone_features():
    with pytest.raises(ValueError, match="feature 'block9'.*block4 \\(stride 16"):
        build_head("fcn", tiny_backbone(16).feature_info, 5, 16, in_feature="block9")


DENSENET121_OS16 = [
    FeatureSpec("stem", 64, 2), FeatureSpec("block1", 256, 4), FeatureSpec("block2", 512, 8),
    FeatureSpec("block3", 1024, 16), FeatureSpec("block4", 1024, 16),
]


def count(module):
    return sum(p.numel() for p in module.parameters())


def test_deeplabv3_parameter_count_on_densenet121_follows_the_architecture():
    c, k = 1024, 21
    aspp = (c * 256 + 512) + 3 * (c * 9 * 256 + 512) + (c * 256 + 256) + (5 * 256 * 256 + 512)
    expected = aspp + (256 * 9 * 256 + 512) + (256 * k + k)
    assert count(build_head("deeplabv3", DENSENET121_OS16, k, 16)) == expected == 8_528_405


def test_denseaspp_parameter_count_on_densenet121_follows_the_paper_widths():
    c, d0, d1, k = 1024, 128, 64, 21
    first = c * d0 + 2 * d0 + d0 * 9 * d1
    later = sum(2 * (c + i * d1) + (c + i * d1) * d0 + 2 * d0 + d0 * 9 * d1 for i in range(1, 5))
    expected = first + later + (c + 5 * d1) * k + k
    assert count(build_head("denseaspp", DENSENET121_OS16, k, 16)) == expected == 1_144_917
