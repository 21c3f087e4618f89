"""torch.hub entry points from a local clone."""
from pathlib import Path

import pytest
import torch


ROOT = Path(__file__).resolve().parents[1]


def test_hub_builds_a_backbone_at_the_asked_output_stride():
    net = torch.hub.load(str(ROOT), "densenet121", source="local", output_stride=16)
    assert net.output_stride == 16
    deepest = [(f.name, f.channels, f.stride) for f in net.feature_info][-2:]
    assert deepest == [("block3", 1024, 16), ("block4", 1024, 16)]


# torchvision's ImageNet classifiers: the parameter counts segdense's builders must reproduce (1000 classes)
TORCHVISION_PARAMS = {"densenet121": 7_978_856, "densenet169": 14_149_480, "densenet201": 20_013_928,
                      "densenet161": 28_681_000}


def test_hub_lists_an_entry_point_for_every_backbone_builder():
    from segdense.backbones.registry import BACKBONES

    builders = {name for name, fn in BACKBONES.items() if fn.__module__.startswith("segdense.")}  # not tests'

    import importlib.util

    spec = importlib.util.spec_from_file_location("hubconf", ROOT / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    # torch.hub.list's rule: the public callables of hubconf.py
    entries = {name for name in dir(hubconf) if callable(getattr(hubconf, name)) and not name.startswith("_")}
    assert builders and builders <= entries and {"build_model", "load_model"} <= entries


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_every_named_densenet_hub_entry_builds_torchvisions_architecture(name):
    net = torch.hub.load(str(ROOT), name, source="local", num_classes=1000)
    assert sum(p.numel() for p in net.parameters()) == TORCHVISION_PARAMS[name]
    assert net.output_stride == 32


def test_hub_custom_densenet_entry_takes_the_builders_arguments():
    net = torch.hub.load(str(ROOT), "densenet_custom", source="local", num_units_per_block=[1, 2],
                         growth_rate=4, output_stride=8)
    assert [(f.name, f.stride) for f in net.feature_info][-2:] == [("block1", 4), ("block2", 8)]
    with torch.no_grad():
        assert net.forward_features(torch.randn(1, 3, 40, 48))["block2"].shape[-2:] == (5, 6)


def test_hub_builds_a_segmentation_model():
    model = torch.hub.load(str(ROOT), "build_model", source="local", backbone="densenet_custom", head="fcn",
                           num_classes=3, output_stride=16, num_units_per_block=[1, 1, 1, 1], growth_rate=8)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 35, 41)).shape == (1, 3, 35, 41)


def test_hub_loads_a_trained_model_from_its_checkpoint(tiny_checkpoint):
    model = torch.hub.load(str(ROOT), "load_model", source="local", path=str(tiny_checkpoint))
    assert model.class_names[0] == "background" and not model.training
    with torch.no_grad():
        assert model(torch.randn(1, 3, 40, 40)).shape == (1, 5, 40, 40)
