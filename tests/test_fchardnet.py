"""FC-HarDNet-70: the authors' module tree, parameter count and logits (golden file made from their code by
tests/make_fchardnet_golden.py), their training checkpoints and ImageNet encoder through tools/convert.py."""
import argparse
import hashlib
import io
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

import segdense
from segdense.backbones import build_backbone, fchardnet
from segdense.backbones.weights import git_blob_id
from segdense.errors import CheckpointError
from segdense.importers.fchardnet_ptsemseg import authors_to_segdense
from segdense.models.builder import build_model

from make_hardnet_golden import seeded_state
from test_convert import convert
from test_rdnet_imagenet import cache_dir, hub  # noqa: F401 (the loopback server fixture)

GOLDEN = Path(__file__).parent / "data" / "golden" / "fchardnet.pt"
HEAD = {"name": "tiramisu", "align_corners": True}


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=True)


@pytest.fixture(scope="module")
def authors_state(golden):
    """The weights the golden logits were made with, in the authors' names and order."""
    shapes = {k: v.shape for k, v in build_model("fchardnet70", HEAD, num_classes=19).state_dict().items()}
    template = {k: torch.zeros(shapes[n], dtype=torch.float64) if not n.endswith("num_batches_tracked")
                else torch.tensor(0) for k, n in zip(golden["keys"], authors_to_segdense(
                    dict.fromkeys(golden["keys"])))}
    return seeded_state(template)


def rel_error(ours, theirs):
    return float((ours - theirs).abs().max() / theirs.abs().max())


def test_parameter_count_and_names_at_19_classes_equal_the_authors(golden):
    model = build_model("fchardnet70", HEAD, num_classes=19)
    assert sum(p.numel() for p in model.parameters()) == 4_119_257 == golden["parameters"]
    assert list(model.state_dict()) == list(authors_to_segdense(dict.fromkeys(golden["keys"])))


def test_logits_equal_the_authors_code_on_the_same_weights_in_float64(golden, authors_state):
    model = build_model("fchardnet70", HEAD, num_classes=19).double().eval()
    model.load_state_dict(authors_to_segdense(authors_state), strict=True)
    with torch.no_grad():
        logits = model(golden["input"])
    assert logits.shape == golden["logits"].shape
    assert rel_error(logits, golden["logits"]) <= 1e-12


def test_align_corners_false_upsampling_would_differ_from_the_authors(golden, authors_state):
    model = build_model("fchardnet70", "tiramisu", num_classes=19).double().eval()
    model.load_state_dict(authors_to_segdense(authors_state), strict=True)
    with torch.no_grad():
        assert rel_error(model(golden["input"]), golden["logits"]) > 1e-3


def test_feature_info_names_channels_and_strides_of_every_map():
    net = build_backbone("fchardnet70").eval()
    with torch.no_grad():
        features = net.forward_features(torch.randn(1, 3, 128, 128))
    assert [s.name for s in net.feature_info] == list(features)
    for spec, value in zip(net.feature_info, features.values()):
        assert value.shape[1] == spec.channels and value.shape[-1] == 128 // spec.stride
    assert net.feature_info[-1].stride == 4 == net.output_stride


def test_an_input_smaller_than_the_encoder_takes_is_refused_in_one_line():
    with pytest.raises(ValueError, match="64"):
        build_backbone("fchardnet70")(torch.randn(1, 3, 32, 64))


def test_frozen_stages_freezes_the_stem_and_the_first_down_blocks():
    net = build_backbone("fchardnet70", frozen_stages=2)
    frozen = {n.split(".")[1] for n, p in net.named_parameters() if not p.requires_grad}
    with_parameters = {str(i) for i in range(len(net.base)) if any(True for _ in net.base[i].parameters())}
    assert frozen == {i for i in with_parameters if int(i) < net.block_indices[2]}  # stem, blocks 1-2, 1x1 convs
    assert all(p.requires_grad for n, p in net.named_parameters() if not n.startswith("base."))


# --- the authors' files through tools/convert.py ----------------------------------------------------------------

def training_checkpoint(state, best_iou=0.777):
    """What their train.py saves, from a DataParallel model: ``module.``-prefixed keys in an OrderedDict."""
    return {"epoch": 90000, "model_state": OrderedDict((f"module.{k}", v.float()) for k, v in state.items()),
            "optimizer_state": {"state": {}, "param_groups": [{"lr": 0.0, "momentum": 0.9, "params": [0, 1]}]},
            "scheduler_state": {"max_iter": 90000, "last_epoch": 90000, "base_lrs": [0.02]}, "best_iou": best_iou}


@pytest.fixture(scope="module")
def converted(tmp_path_factory, authors_state):
    folder = tmp_path_factory.mktemp("fchardnet")
    torch.save(training_checkpoint(authors_state), folder / "hardnet70_cityscapes_model.pkl")
    imported = convert(folder / "hardnet70_cityscapes_model.pkl", folder / "fchardnet70.pt")
    return imported, folder / "fchardnet70.pt"


def test_their_training_checkpoint_gives_their_logits_on_the_rgb_image(converted, golden):
    imported, path = converted
    assert imported.layout == "fchardnet-ptsemseg"
    model = segdense.load_model(path).double().eval()
    bgr = golden["input"]  # their loader feeds BGR: the converted model takes the same image in RGB
    with torch.no_grad():
        logits = model(bgr.flip(1))
    assert rel_error(logits, golden["logits"]) <= 1e-6  # the file is float32, as theirs
    assert model.class_names[:3] == ["road", "sidewalk", "building"] and len(model.class_names) == 19


def test_the_converted_eval_pipeline_is_their_normalisation(converted):
    pipeline = torch.load(converted[1], weights_only=True)["config"]["augmentation"]["eval"]
    assert pipeline == [{"type": "Normalize", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}]


def _as_numpy1_wrote_it(path):
    """A legacy-format file (as their 2019 torch wrote it) whose NumPy scalars name NumPy 1's module, as theirs do."""
    data = path.read_bytes()
    assert data.count(b"cnumpy._core.multiarray\nscalar\n") == 1  # protocol 2: GLOBAL, a text module and name
    path.write_bytes(data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))


@pytest.mark.parametrize("numpy1", [False, True])
def test_a_numpy_best_iou_converts_and_is_reported(tmp_path, authors_state, capsys, numpy1):
    torch.save(training_checkpoint(authors_state, best_iou=np.float64(0.777)), tmp_path / "model.pkl",
               _use_new_zipfile_serialization=not numpy1)
    if numpy1:
        _as_numpy1_wrote_it(tmp_path / "model.pkl")
    imported = convert(tmp_path / "model.pkl", tmp_path / "out.pt")
    assert imported.layout == "fchardnet-ptsemseg"
    assert "the file's training record: epoch 90000, best_iou 0.777" in capsys.readouterr().out
    converted = torch.load(tmp_path / "out.pt", weights_only=True)  # plain values only: no NumPy allowlist needed
    assert converted["converted_from"]["notes"][-1] == "the file's training record: epoch 90000, best_iou 0.777"
    assert torch.equal(converted["model"]["head.classifier.weight"], authors_state["finalConv.weight"].float())


def test_numpy_scalars_are_allowed_for_the_read_alone(tmp_path, authors_state):
    torch.save(training_checkpoint(authors_state, best_iou=np.float64(0.777)), tmp_path / "model.pkl")
    convert(tmp_path / "model.pkl", tmp_path / "out.pt")
    with pytest.raises(Exception, match="Weights only load failed"):  # torch's own allowlist is left as it was
        torch.load(tmp_path / "model.pkl", weights_only=True)


@pytest.mark.parametrize("unsafe", [np.array([0.7, 0.8]), argparse.Namespace(lr=0.02), Path("runs/best")],
                         ids=["numpy array", "argparse args", "a Path"])
def test_anything_else_unsafe_beside_a_numpy_scalar_is_refused_in_one_line(tmp_path, authors_state, unsafe):
    checkpoint = {**training_checkpoint(authors_state, best_iou=np.float64(0.777)), "extra": unsafe}
    torch.save(checkpoint, tmp_path / "model.pkl")
    with pytest.raises(CheckpointError) as error:
        convert(tmp_path / "model.pkl", tmp_path / "out.pt")
    message = str(error.value)
    assert "\n" not in message and "extra" in message and "scalar" not in message
    assert "weights_only=True only" in message and "trust" not in message and not (tmp_path / "out.pt").exists()


def test_their_imagenet_encoder_becomes_the_encoder_of_fchardnet70(tmp_path, authors_state):
    base = OrderedDict((k[len("base."):], v.float()) for k, v in authors_state.items() if k.startswith("base."))
    torch.save(base, tmp_path / "hardnet_petite_base.pth")
    imported = convert(tmp_path / "hardnet_petite_base.pth", tmp_path / "petite.pt")
    assert imported.layout == "hardnet-petite" and imported.backbone == {"name": "fchardnet70"}
    net = build_backbone("fchardnet70", pretrained=str(tmp_path / "petite.pt")).eval()
    theirs = build_backbone("fchardnet70").eval()
    theirs.base.load_state_dict(base)  # as their train.py loads it
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ours, expected = net.forward_features(x), theirs.forward_features(x.flip(1))
    for name in ("down1", "down3", "down5"):
        assert rel_error(ours[name], expected[name]) <= 1e-6


def _petite(authors_state):
    """Their hardnet_petite_base.pth as their repository holds it: their base's state_dict, an OrderedDict saved
    by their 2019 torch (the legacy format); and its git blob id."""
    buffer = io.BytesIO()
    torch.save(OrderedDict((k[len("base."):], v.float()) for k, v in authors_state.items() if k.startswith("base.")),
               buffer, _use_new_zipfile_serialization=False)
    body = buffer.getvalue()
    return body, hashlib.sha1(b"blob %d\0" % len(body) + body).hexdigest()


def test_imagenet_downloads_their_encoder_checks_its_git_blob_and_loads_it_as_converted(
        hub, monkeypatch, tmp_path, authors_state):
    body, blob = _petite(authors_state)
    hub.routes["/PingoLH/FCHarDNet/weights/hardnet_petite_base.pth"] = (200, {}, body)
    monkeypatch.setattr(fchardnet, "PETITE_URL", f"{hub.base}/PingoLH/FCHarDNet/weights/hardnet_petite_base.pth")
    monkeypatch.setattr(fchardnet, "PETITE_GIT_BLOB", blob)
    downloaded = build_backbone("fchardnet70", pretrained="imagenet")
    (tmp_path / "hardnet_petite_base.pth").write_bytes(body)
    convert(tmp_path / "hardnet_petite_base.pth", tmp_path / "petite.pt")
    converted = build_backbone("fchardnet70", pretrained=str(tmp_path / "petite.pt"))
    ours, theirs = downloaded.state_dict(), converted.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours if k.startswith("base."))
    assert torch.equal(ours["base.0.conv.weight"], authors_state["base.0.conv.weight"].float().flip(1))  # RGB
    assert [p.name for p in cache_dir(tmp_path).iterdir()] == ["hardnet_petite_base.pth"]


def test_a_petite_download_that_is_not_their_blob_is_refused_in_one_line(hub, monkeypatch, tmp_path, authors_state):
    hub.routes["/petite.pth"] = (200, {}, b"a truncated or altered download")
    monkeypatch.setattr(fchardnet, "PETITE_URL", f"{hub.base}/petite.pth")
    with pytest.raises(CheckpointError) as error:
        build_backbone("fchardnet70", pretrained="imagenet")
    message = str(error.value)
    assert "\n" not in message and f"but the repository holds {fchardnet.PETITE_GIT_BLOB}" in message
    assert "not kept" in message and list(cache_dir(tmp_path).iterdir()) == []


def test_git_blob_ids_are_gits(tmp_path):
    for body, blob in [(b"", "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"),
                       (b"hello\n", "ce013625030ba8dba906f756967f9e9ca394464a")]:  # git hash-object's
        (tmp_path / "f").write_bytes(body)
        assert git_blob_id(tmp_path / "f") == blob


def test_the_petite_url_is_their_repository_file():
    assert fchardnet.PETITE_URL.startswith("https://raw.githubusercontent.com/PingoLH/FCHarDNet/")
    assert fchardnet.PETITE_URL.endswith("/weights/hardnet_petite_base.pth")


def test_a_pretrained_file_of_another_shape_names_the_key(tmp_path):
    state = build_backbone("fchardnet70").state_dict()
    state["base.4.layers.0.conv.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save({"state_dict": state}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="base.4.layers.0.conv.weight"):
        build_backbone("fchardnet70", pretrained=str(tmp_path / "bad.pt"))


# --- experiment=fchardnet70_cityscapes ----------------------------------------------------------------------------

def test_the_cityscapes_recipe_is_the_authors_configuration():
    from omegaconf import OmegaConf

    from segdense.config.group_keys import validate_config
    from segdense.config.train_job import model_config
    from segdense.engine import build_optimizer, build_scheduler
    from segdense.losses import build_criterion
    from train_utils import compose_config

    cfg = compose_config(["experiment=fchardnet70_cityscapes"])
    validate_config(cfg)
    assert cfg.dataset.name == "cityscapes" and list(cfg.crop_size) == [1024, 1024]
    assert (cfg.batch_size, cfg.iterations, cfg.lr) == (16, 90000, 0.02)
    assert [s["type"] for s in cfg.augmentation.train] == ["RandomScale", "PadIfNeeded", "RandomCrop",
                                                           "HorizontalFlip", "Normalize"]
    criterion = build_criterion(OmegaConf.to_container(cfg.loss.terms), aux_weight=cfg.loss.aux_weight, num_classes=19)
    assert [(t.name, t.min_K, t.loss_th) for t in cfg.loss.terms] == [("bootstrapped_cross_entropy", 4096, 0.3)]
    model = build_model(**model_config(cfg, num_classes=19))
    assert sum(p.numel() for p in model.parameters()) == 4_119_257 and model.head.align_corners
    optimizer = build_optimizer(model=model, lr=cfg.lr, **OmegaConf.to_container(cfg.optimizer))
    assert type(optimizer) is torch.optim.SGD
    assert all((g["momentum"], g["weight_decay"]) == (0.9, 5e-4) for g in optimizer.param_groups)
    scheduler = build_scheduler(optimizer=optimizer, total_iterations=cfg.iterations,
                                **OmegaConf.to_container(cfg.scheduler))
    optimizer.step()
    for _ in range(45000):
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.02 * 0.5 ** 0.9, rel=1e-6)
    assert criterion.ignore_index == 255  # Cityscapes' void, their 250
