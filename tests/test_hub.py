"""torch.hub entry points from a local clone."""
from pathlib import Path

import torch


ROOT = Path(__file__).resolve().parents[1]


def test_hub_builds_a_backbone_at_the_asked_output_stride():
    net = torch.hub.load(str(ROOT), "densenet121", source="local", output_stride=16)
    assert net.output_stride == 16
    deepest = [(f.name, f.channels, f.stride) for f in net.feature_info][-2:]
    assert deepest == [("block3", 1024, 16), ("block4", 1024, 16)]


def test_hub_builds_a_segmentation_model():
    model = torch.hub.load(str(ROOT), "build_model", source="local", backbone="densenet_custom", head="fcn",
                           num_classes=3, output_stride=16,
                           backbone_kwargs={"num_units_per_block": [1, 1, 1, 1], "growth_rate": 8})
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 35, 41)).shape == (1, 3, 35, 41)


def test_hub_loads_a_trained_model_from_its_checkpoint(tiny_checkpoint):
    model = torch.hub.load(str(ROOT), "load_model", source="local", path=str(tiny_checkpoint))
    assert model.class_names[0] == "background" and not model.training
    with torch.no_grad():
        assert model(torch.randn(1, 3, 40, 40)).shape == (1, 5, 40, 40)
