"""Stage-wise learning-rate decay (optimizer.layer_decay): the RDNet authors' RDNetLearningRateDecayOptimizerConstructor
rule, lr * decay ** (num_layers - id - 1) with num_layers = stages + 2, on every backbone that reports its stages."""
import re

import pytest
import torch.nn as nn

from segdense.backbones import build_backbone
from segdense.config.train_job import train
from segdense.engine import build_optimizer
from segdense.errors import ConfigError
from segdense.models import build_model

from train_utils import TINY, compose_config

LR, DECAY, WD = 8e-5, 0.9, 0.03


def tiny_densenet_model():
    return build_model(backbone={"name": "densenet_custom", "num_units_per_block": [1, 1, 1, 1], "growth_rate": 8},
                       head={"name": "fcn", "channels": 16, "num_convs": 1}, num_classes=5, aux_loss=True)


def densenet_stage(name):
    """The authors' ids spelled for DenseNet's parameter names: stem 0, dense block i (with the transition after
    it; norm5 with the last block) i, anything outside the backbone num_layers + 1 (None here)."""
    if not name.startswith("backbone."):
        return None
    if re.match(r"backbone\.features\.(conv0|norm0)\.", name):
        return 0
    if name.startswith("backbone.features.norm5."):
        return 4
    return int(re.match(r"backbone\.features\.(?:denseblock|transition)(\d)\.", name).group(1))


def lr_and_decay_by_name(model, optimizer):
    owner = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    return {name: (owner[id(p)]["lr"], owner[id(p)]["weight_decay"]) for name, p in model.named_parameters()}


@pytest.mark.parametrize("num_stages", [None, 2])
def test_every_parameter_gets_the_authors_rate_and_weight_decay(num_stages):
    model = tiny_densenet_model()
    optimizer = build_optimizer("adamw", model, LR, no_decay_norm_bias=True, layer_decay=DECAY,
                                layer_decay_num_stages=num_stages, betas=(0.9, 0.999), weight_decay=WD)
    num_layers = (4 if num_stages is None else num_stages) + 2
    seen = lr_and_decay_by_name(model, optimizer)
    assert len(seen) == len(list(model.parameters()))
    for name, p in model.named_parameters():
        stage = densenet_stage(name)
        layer_id = num_layers + 1 if stage is None else stage
        lr, wd = seen[name]
        assert lr == pytest.approx(LR * DECAY ** (num_layers - layer_id - 1), rel=1e-12), name
        assert wd == (0.0 if p.ndim == 1 or name.endswith(".bias") else WD), name


def test_the_heads_get_decay_to_the_minus_two_and_the_stem_decay_to_stages_plus_one():
    model = tiny_densenet_model()
    optimizer = build_optimizer("adamw", model, LR, no_decay_norm_bias=True, layer_decay=DECAY, weight_decay=WD)
    by_name = {group["name"]: group for group in optimizer.param_groups}
    assert by_name["head_decay"]["lr"] == pytest.approx(LR / 0.81) and by_name["head_decay"]["lr_scale"] > 1
    assert by_name["layer_0_decay"]["lr"] == pytest.approx(LR * 0.9 ** 5)
    assert by_name["layer_4_decay"]["lr"] == pytest.approx(LR * 0.9)
    assert by_name["head_no_decay"]["weight_decay"] == 0.0 and by_name["layer_2_decay"]["weight_decay"] == WD
    heads = {id(p) for p in model.parameters()} - {id(p) for p in model.backbone.parameters()}
    assert {id(p) for p in by_name["head_decay"]["params"] + by_name["head_no_decay"]["params"]} == heads


def test_densenet_and_resnet_report_their_stages():
    densenet = build_backbone("densenet_custom", num_units_per_block=[1, 1, 1], growth_rate=8)
    assert densenet.num_stages == 3
    assert [densenet.stage_of(n) for n in ("features.conv0.weight", "features.denseblock1.denselayer1.conv1.weight",
                                           "features.transition2.conv.weight", "features.norm5.bias")] == [0, 1, 2, 3]
    resnet = build_backbone("resnet50")
    assert resnet.num_stages == 4
    assert [resnet.stage_of(n) for n in ("conv1.weight", "bn1.bias", "layer1.0.conv1.weight",
                                         "layer4.2.bn3.weight")] == [0, 0, 1, 4]
    assert sorted({resnet.stage_of(n) for n, _ in resnet.named_parameters()}) == [0, 1, 2, 3, 4]


def test_rdnet_reports_its_stages_and_its_classifier_after_them():
    rdnet = build_backbone("rdnet_custom", growth_rates=[8, 8, 16], num_blocks_list=[1, 1, 1], num_init_features=16,
                           is_downsample_block=[False, True, True], block_type=["Block"] * 3, output_stride=16,
                           num_classes=3)
    by_name = {n: rdnet.stage_of(n) for n, _ in rdnet.named_parameters()}
    # By timm's names: stem.* is the stem, dense_stages.<i>.* stage i + 1 (with its transition), head.* after them.
    expected = {n: 0 if n.startswith("stem.") else int(n.split(".")[1]) + 1 if n.startswith("dense_stages.") else 4
                for n in by_name}
    assert by_name == expected and set(by_name.values()) == {0, 1, 2, 3, 4}
    densenet = build_backbone("densenet_custom", num_units_per_block=[1, 1], growth_rate=8, num_classes=3)
    with pytest.raises(ValueError, match="'classifier.weight' of DenseNet belongs to none of its stages"):
        densenet.stage_of("classifier.weight")


def test_frozen_parameters_are_left_out():
    model = tiny_densenet_model()
    model.backbone.features.conv0.weight.requires_grad_(False)
    optimizer = build_optimizer("adamw", model, LR, no_decay_norm_bias=True, layer_decay=DECAY, weight_decay=WD)
    kept = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert id(model.backbone.features.conv0.weight) not in kept and len(kept) == len(list(model.parameters())) - 1


def test_a_backbone_without_stages_is_one_clear_error():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone, self.head = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)

    with pytest.raises(ValueError, match=r"optimizer.layer_decay needs a backbone that reports its stages .*Conv2d "
                                         r"does not.*optimizer.layer_decay=null"):
        build_optimizer("adamw", Plain(), LR, layer_decay=DECAY)
    with pytest.raises(ValueError, match="layer_decay_num_stages is set but optimizer.layer_decay is null"):
        build_optimizer("adamw", tiny_densenet_model(), LR, layer_decay_num_stages=7)
    with pytest.raises(ValueError, match=r"layer_decay must lie in \(0, 1\]"):
        build_optimizer("adamw", tiny_densenet_model(), LR, layer_decay=1.5)


def test_training_with_layer_decay_on_a_backbone_without_stages_stops_with_one_config_error(tmp_path):
    cfg = compose_config(["backbone=fcdensenet_custom", "head=tiramisu", *TINY[6:], "optimizer=adamw",
                          "optimizer.layer_decay=0.9"])
    with pytest.raises(ConfigError, match="optimizer: optimizer.layer_decay needs a backbone that reports its stages"):
        train(cfg, run_dir=tmp_path)
