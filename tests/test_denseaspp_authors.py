"""The DenseASPP authors' DenseASPP-161 (DeepMotionAIResearch/DenseASPP) converted by tools/convert.py: a file in
their real layout (PyTorch 0.3.1's legacy format, DataParallel's ``module.`` prefix, dotted key names, no batch
counters) with seeded weights becomes a segdense model whose logits equal their code's (golden file from
tests/make_denseaspp_golden.py) and whose parameter count equals theirs."""
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import segdense
from segdense.backbones.registry import build_backbone
from segdense.config.convert_job import convert_job
from segdense.errors import CheckpointError
from segdense.importers.convert import convert_checkpoint
from segdense.importers.denseaspp_authors import AUTHORS_NORMALIZE
from segdense.models.builder import build_model

from make_denseaspp_golden import seeded_checkpoint

GOLDEN = Path(__file__).parent / "data" / "golden" / "denseaspp161.pt"
MODEL = {"backbone": {"name": "densenet161", "output_stride": 8, "final_transition": True},
         "head": {"name": "denseaspp", "original": True, "widths": [512, 128]}, "num_classes": 19, "aux_loss": False}
AUTHORS_PARAMETERS = 35_395_427  # DenseASPP(Model_CFG of cfgs/DenseASPP161.py, n_class=19, output_stride=8)


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=True)


def _write_authors_file(path: Path, state: dict[str, torch.Tensor]) -> Path:
    torch.save({f"module.{k}": v for k, v in state.items()}, path, _use_new_zipfile_serialization=False)
    return path


def test_the_tool_points_to_a_cityscapes_evaluation(golden, tmp_path, capsys):
    keys = golden["keys"]
    source = _write_authors_file(tmp_path / "a.pkl", {k: v.float() for k, v in seeded_checkpoint(keys).items()})
    cfg = OmegaConf.create({"input": str(source), "output": str(tmp_path / "c.pt"), "backbone": None, "aux": True,
                            "output_stride": 32, "overwrite": False})
    convert_job(cfg)
    out = capsys.readouterr().out
    assert "denseaspp-authors" in out and "dataset=cityscapes dataset.root=DIR;" in out and "ade20k" not in out


def test_parameter_count_equals_the_authors_model(golden):
    model = build_model(**MODEL)
    assert sum(p.numel() for p in model.parameters()) == AUTHORS_PARAMETERS == golden["parameters"]


def test_converted_checkpoint_gives_the_authors_logits(golden, tmp_path):
    source = _write_authors_file(tmp_path / "denseaspp161.pkl", seeded_checkpoint(golden["keys"]))
    imported = convert_checkpoint(source, tmp_path / "converted.pt")
    assert imported.layout == "denseaspp-authors" and imported.model_config == MODEL
    source.unlink()
    converted = torch.load(tmp_path / "converted.pt", weights_only=True)
    assert converted["config"]["augmentation"]["eval"] == [AUTHORS_NORMALIZE]  # their inference.py's statistics
    assert AUTHORS_NORMALIZE["mean"] == [0.290101, 0.328081, 0.286964]
    model = build_model(**converted["model_config"]).double().eval()  # float64 throughout, as the golden run
    model.load_state_dict(converted["model"], strict=True)
    with torch.no_grad():
        logits = model(golden["input"])
    assert logits.abs().max() > 1e-2  # the comparison below is not between near-zero maps
    torch.testing.assert_close(logits, golden["logits"], rtol=0, atol=1e-10)
    loaded = segdense.load_model(tmp_path / "converted.pt")  # what users load: float32
    assert loaded.class_names[:3] == ["road", "sidewalk", "building"] and len(loaded.class_names) == 19
    with torch.no_grad():
        torch.testing.assert_close(loaded(golden["input"].float()).double(), golden["logits"], rtol=0, atol=1e-5)


def test_a_file_without_the_fourth_transition_is_refused_naming_it(golden, tmp_path):
    state = seeded_checkpoint(golden["keys"])
    del state["features.transition4.conv.weight"]
    with pytest.raises(CheckpointError, match="transition4.conv.weight"):
        convert_checkpoint(_write_authors_file(tmp_path / "a.pkl", state), tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_original_head_units_have_conv_biases_and_the_authors_bn_momentum():
    head = build_model(**MODEL).head
    norms = [m for m in head.units.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    convs = [m for m in head.units.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(norms) == 9 and {m.momentum for m in norms} == {0.0003}
    assert len(convs) == 10 and all(c.bias is not None for c in convs)
    plain = build_model(**{**MODEL, "head": {"name": "denseaspp"}}).head
    assert all(c.bias is None for c in plain.units.modules() if isinstance(c, torch.nn.Conv2d))


def test_an_unknown_head_key_is_named(golden, tmp_path):
    state = seeded_checkpoint(golden["keys"])
    state["ASPP_9.conv.1.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="ASPP_9.conv.1.weight"):
        convert_checkpoint(_write_authors_file(tmp_path / "x.pkl", state), tmp_path / "out.pt")


def test_final_transition_belongs_to_the_last_stage_and_keeps_the_stride():
    net = build_backbone("densenet_custom", num_units_per_block=(2, 2, 2, 2), growth_rate=8, output_stride=8,
                         final_transition=True, frozen_stages=4)
    assert net.stage_of("features.transition4.conv.weight") == net.stage_of("features.norm5.weight") == 4
    assert not any(p.requires_grad for p in net.features.transition4.parameters())
    assert net.feature_info[-1].channels == net.features.norm5.num_features == net.features.transition4.conv.out_channels
    out = net.forward_features(torch.randn(1, 3, 32, 32))["block4"]
    assert out.shape[-2:] == (4, 4) and out.shape[1] == net.feature_info[-1].channels and out.min() >= 0
