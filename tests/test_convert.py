"""tools/convert.py: the RDNet authors' mmseg ADE20K checkpoints against mmseg's own outputs (golden files from
tests/make_mmseg_golden.py), RDNet ImageNet files against timm's model, torchvision DenseNets, the tools on a
converted file, and every error path."""
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image

import segdense
from segdense.backbones.rdnet import EffectiveSE
from segdense.errors import CheckpointError, ConfigError

from train_utils import CONF, compose_config

GOLDEN = Path(__file__).resolve().parent / "data" / "golden"
AUTHORS = GOLDEN / "upernet_rdnet_authors.pth"
AUTHORS_IO = GOLDEN / "upernet_rdnet_authors_io.pt"
SMALL_RDNET = {"num_init_features": 16, "growth_rates": [8, 12, 12, 16], "num_blocks_list": [2, 1, 2, 1],
               "is_downsample_block": [False, True, True, True], "block_type": ["Block", "Block", "BlockESE",
                                                                                 "BlockESE"]}


def compose(config_name, overrides):
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def convert(input, output, *overrides):
    from segdense.config.convert_job import convert_job

    return convert_job(compose("convert", [f"input={input}", f"output={output}", *overrides]))


def max_rel_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


@pytest.fixture(scope="module")
def golden_io():
    return torch.load(AUTHORS_IO, weights_only=True)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("convert") / "upernet_rdnet.pt"
    convert(AUTHORS, out)
    return out


@pytest.fixture(scope="module")
def os16(tmp_path_factory):
    out = tmp_path_factory.mktemp("convert") / "upernet_rdnet_os16.pt"
    convert(AUTHORS, out, "output_stride=16")
    return out


# --- the authors' ADE20K checkpoint layout, against mmseg -------------------------------------------------------

def test_the_authors_checkpoint_gives_mmsegs_logits_with_the_ade20k_classes(converted, golden_io):
    model = segdense.load_model(converted)
    x = golden_io["input"]
    with torch.no_grad():
        logits = model(x)
        features = list(model.backbone.forward_features(x).values())
    expected = F.interpolate(golden_io["head_logits"], size=x.shape[-2:], mode="bilinear", align_corners=False)
    assert max_rel_error(logits, expected) <= 1e-4
    for ours, theirs in zip(features, golden_io["features"], strict=True):
        assert max_rel_error(ours, theirs) <= 1e-4
    meta = torch.load(AUTHORS, weights_only=True)["meta"]
    assert model.class_names == list(meta["CLASSES"]) and len(model.class_names) == 150
    assert model.class_names[:3] == ["wall", "building", "sky"]
    assert model.palette == [list(c) for c in meta["PALETTE"]]


def test_the_converted_eval_pipeline_is_the_authors_test_pipeline(converted):
    pipeline = torch.load(converted, weights_only=True)["config"]["augmentation"]["eval"]
    assert [step["type"] for step in pipeline] == ["KeepRatioResize", "Normalize"]
    assert pipeline[0]["scale"] == [2048, 512]


def test_the_kept_aux_head_gives_mmsegs_aux_logits(converted, golden_io):
    model = segdense.load_model(converted)
    assert model.model_config["aux_loss"] is True
    with torch.no_grad():
        aux = model.aux_head(model.backbone.forward_features(golden_io["input"]))
    assert max_rel_error(aux, golden_io["aux_head_logits"]) <= 1e-4


def test_the_architecture_is_read_off_the_shapes(converted, golden_io):
    config = torch.load(converted, weights_only=True)["model_config"]
    args = golden_io["rdnet_args"]
    backbone = config["backbone"]
    assert backbone["name"] == "rdnet_custom" and backbone["output_stride"] == 32
    for key in ("growth_rates", "num_blocks_list", "block_type", "num_init_features"):
        assert backbone[key] == args[key], key
    assert [bool(d) for d in backbone["is_downsample_block"]] == [bool(d) for d in args["is_downsample_block"]]
    assert config["head"] == {"name": "upernet", "channels": golden_io["decode_channels"], "pool_scales": [1, 2, 3, 6],
                              "dropout": 0.1}
    assert config["aux_head"]["channels"] == golden_io["aux_channels"] and config["num_classes"] == 150


def test_aux_false_drops_the_aux_head_and_says_so(tmp_path, golden_io, capsys):
    convert(AUTHORS, tmp_path / "no_aux.pt", "aux=false")
    assert "aux head dropped" in capsys.readouterr().out
    state = torch.load(tmp_path / "no_aux.pt", weights_only=True)
    assert state["model_config"]["aux_loss"] is False and not any(k.startswith("aux_head.") for k in state["model"])
    model = segdense.load_model(tmp_path / "no_aux.pt")
    with torch.no_grad():
        logits = model(golden_io["input"])
    expected = F.interpolate(golden_io["head_logits"], size=logits.shape[-2:], mode="bilinear", align_corners=False)
    assert model.aux_head is None and max_rel_error(logits, expected) <= 1e-4


def test_output_stride_16_writes_the_same_weights_and_keeps_mmsegs_maps_before_the_dilation_point(converted, os16,
                                                                                                 golden_io):
    state, os32 = torch.load(os16, weights_only=True), torch.load(converted, weights_only=True)
    assert state["model_config"]["backbone"]["output_stride"] == 16
    assert all(torch.equal(state["model"][k], v) for k, v in os32["model"].items())
    x = golden_io["input"]
    with torch.no_grad():
        features = segdense.load_model(os16).backbone.forward_features(x)
    assert [f.shape[-1] for f in features.values()] == [x.shape[-1] // s for s in (4, 8, 16, 16)]
    for name, theirs in zip(["stage1", "stage2", "stage3"], golden_io["features"]):  # stride 16 reached: no change
        assert max_rel_error(features[name], theirs) <= 1e-4, name


def test_output_stride_16_dilates_the_last_stage_into_the_strided_models_a_trous_twin(converted, os16):
    # With every squeeze-excitation gate held at 1 (its global mean would see the pixels in between), the dilated
    # last stage's output, sampled every other pixel, is the converted stride-32 model's (which equals mmseg's):
    # the 2x2 transition at stride 1 and the depthwise 7x7 convs dilated by 2 read the same taps.
    outputs = []
    for path in (converted, os16):
        backbone = segdense.load_model(path).backbone.double()
        with torch.no_grad():
            for module in backbone.modules():
                if isinstance(module, EffectiveSE):
                    module.fc.weight.zero_()
                    module.fc.bias.fill_(3.0)  # hardsigmoid(3) = 1
        hook = backbone.dense_stages[-1].register_forward_hook(lambda m, args, out: outputs.append(out))
        with torch.no_grad():
            backbone.forward_features(torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0),
                                                  dtype=torch.float64))
        hook.remove()
    strided, dilated = outputs
    assert dilated.shape[-2:] == (4, 6) and strided.shape[-2:] == (2, 3)
    torch.testing.assert_close(dilated[..., ::2, ::2], strided, rtol=0, atol=1e-12 * strided.abs().max().item())


def test_the_authors_layout_with_plain_meta_reads_with_weights_only():
    from segdense.importers.reading import read_weights_file

    checkpoint = torch.load(AUTHORS, weights_only=True)  # would raise on any object in meta
    assert set(checkpoint) == {"meta", "state_dict", "optimizer"}
    assert read_weights_file(AUTHORS)["meta"]["CLASSES"][0] == "wall"


def test_a_numpy_scalar_in_meta_converts(tmp_path):
    checkpoint = torch.load(AUTHORS, weights_only=True)
    checkpoint["meta"]["seed"] = np.int64(7)  # as mmseg 0.x's single-GPU runs stored it
    checkpoint["state_dict"] = OrderedDict(checkpoint["state_dict"])  # as mmcv saved it
    torch.save(checkpoint, tmp_path / "numpy_meta.pth")
    assert convert(tmp_path / "numpy_meta.pth", tmp_path / "out.pt").layout == "rdnet-mmseg"


def test_a_meta_entry_that_needs_weights_only_false_is_named_and_the_file_refused(tmp_path):
    checkpoint = torch.load(AUTHORS, weights_only=True)
    checkpoint["meta"]["seed"] = np.array([7])  # an array: only NumPy scalars are read
    checkpoint["state_dict"] = OrderedDict(checkpoint["state_dict"])  # as mmcv saved it
    torch.save(checkpoint, tmp_path / "numpy_meta.pth")
    with pytest.raises(CheckpointError) as error:
        convert(tmp_path / "numpy_meta.pth", tmp_path / "out.pt")
    message = str(error.value)
    assert str(tmp_path / "numpy_meta.pth") in message and "only unpickles with weights_only=False" in message
    assert "meta['seed'] holds numpy" in message
    assert "to `False`" not in message and "trust" not in message  # torch's advice is not passed on
    assert not (tmp_path / "out.pt").exists()


def test_the_published_variants_are_named_and_others_become_rdnet_custom():
    from segdense.backbones.registry import BACKBONES
    from segdense.importers.architecture import RDNET_NAMES, chosen_block, rdnet_arguments

    for name in ("rdnet_base", "rdnet_tiny"):
        with torch.device("meta"):
            state = BACKBONES.get(name)().state_dict()
        assert chosen_block(None, RDNET_NAMES, "rdnet_custom", (state, "f")) == {"name": name}
    assert rdnet_arguments(state, "f") == {  # rdnet_tiny's, as timm defines it
        "growth_rates": [64, 104, 128, 128, 128, 128, 224], "num_blocks_list": [3] * 7,
        "is_downsample_block": [False, True, True, False, False, False, True],
        "block_type": ["Block", "Block"] + ["BlockESE"] * 5, "num_init_features": 64}
    with torch.device("meta"):
        state = BACKBONES.get("rdnet_custom")(**SMALL_RDNET).state_dict()
    assert chosen_block(None, RDNET_NAMES, "rdnet_custom", (state, "f")) == {"name": "rdnet_custom", **SMALL_RDNET}


# --- RDNet ImageNet files ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def timm_rdnet():
    timm = pytest.importorskip("timm")
    args = {**SMALL_RDNET, "is_downsample_block": [None, True, True, True]}
    return timm.create_model("rdnet_tiny", pretrained=False, **args).eval()


def authors_hub_spelling(state):
    return {re.sub(r"^stem\.", "stem.stem.", k): v for k, v in state.items()}


@pytest.mark.parametrize("spelling", ["timm.safetensors", "authors.pth"])
def test_rdnet_imagenet_files_become_backbone_weights_that_load_strictly(spelling, timm_rdnet, tmp_path, capsys):
    from safetensors.torch import save_file

    from segdense.backbones.registry import BACKBONES

    state = {k: v.clone() for k, v in timm_rdnet.state_dict().items()}
    source = tmp_path / f"rdnet.{spelling.split('.')[1]}"
    if spelling.startswith("timm"):
        save_file(state, str(source))
    else:
        torch.save(authors_hub_spelling(state), source)
    imported = convert(source, tmp_path / "backbone.pt")
    assert imported.layout == "rdnet-imagenet" and imported.backbone == {"name": "rdnet_custom", **SMALL_RDNET}
    out = capsys.readouterr().out
    assert "head.fc.weight" in out  # the classifier left out, and said so
    command = next(line for line in out.splitlines() if "tools/train.py" in line).split("tools/train.py ")[1]
    block = OmegaConf.to_container(compose_config(command.split() + ["output_stride=32"]).backbone, resolve=True)
    net = BACKBONES.get(block.pop("name"))(**block).eval()  # what the printed training command builds
    ours = net.state_dict()
    assert ours.keys() == {k for k in state if not k.startswith("head.")}
    assert all(torch.equal(ours[k], state[k]) for k in ours)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert max_rel_error(list(net.forward_features(x).values())[-1], timm_rdnet.forward_features(x)) <= 1e-5


# --- torchvision DenseNets --------------------------------------------------------------------------------------

def torchvision_old_keys(state):
    """torchvision's hosted-file spelling: ``denselayer1.norm.1.weight``, no BatchNorm batch counters."""
    return {re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", k): v for k, v in state.items()
            if not k.endswith("num_batches_tracked")}


@pytest.fixture(scope="module")
def densenet_file(tmp_path_factory):
    torchvision = pytest.importorskip("torchvision")
    net = torchvision.models.DenseNet(growth_rate=8, block_config=(2, 3, 2, 2), num_init_features=16, bn_size=2,
                                      num_classes=10)
    path = tmp_path_factory.mktemp("tv") / "densenet_tiny.pth"
    torch.save(torchvision_old_keys(net.state_dict()), path)
    return path, net.state_dict()


def test_a_torchvision_densenet_with_old_keys_becomes_backbone_weights(densenet_file, tmp_path, capsys):
    from segdense.backbones.registry import BACKBONES

    path, state = densenet_file
    imported = convert(path, tmp_path / "densenet.pt")
    assert imported.layout == "torchvision-densenet"
    assert imported.backbone == {"name": "densenet_custom", "num_units_per_block": [2, 3, 2, 2], "growth_rate": 8,
                                 "num_init_features": 16, "bn_size": 2}
    out = capsys.readouterr().out
    assert "classifier.weight" in out and "num_batches_tracked" in out
    command = next(line for line in out.splitlines() if "tools/train.py" in line).split("tools/train.py ")[1]
    assert command == ("backbone=custom backbone.num_units_per_block=[2,3,2,2] backbone.growth_rate=8 "
                       f"backbone.num_init_features=16 backbone.bn_size=2 backbone.pretrained={tmp_path / 'densenet.pt'}")
    block = OmegaConf.to_container(compose_config(command.split()).backbone, resolve=True)
    ours = BACKBONES.get(block.pop("name"))(**block).state_dict()  # what the printed training command builds
    assert all(torch.equal(ours[k], state[k]) for k in ours if not k.endswith("num_batches_tracked"))


# --- the tools on a converted file ------------------------------------------------------------------------------

def authors_layout(state):
    """A segdense UperNet state_dict in the RDNet authors' mmseg layout (the inverse of the importer's renaming)."""
    aux = {"convs.0.0.": "convs.0.conv.", "convs.0.1.": "convs.0.bn.", "classifier.1.": "conv_seg."}
    out = {}
    for key, value in state.items():
        if key.startswith("backbone."):
            rest = re.sub(r"^dense_stages\.(\d+)\.", r"dense_stages_\1.", key[len("backbone."):])
            key = "backbone.timm_model." + re.sub(r"^stem\.", "stem.stem.", rest)
        elif key.startswith("head."):
            key = "decode_head." + key[len("head."):]
        elif key.startswith("aux_head."):
            rest = key[len("aux_head."):]
            prefix = next(p for p in aux if rest.startswith(p))
            key = "auxiliary_head." + aux[prefix] + rest[len(prefix):]
        out[key] = value
    return out


@pytest.fixture(scope="module")
def five_class(tmp_path_factory):
    """A 5-class UperNet-RDNet (the synthetic dataset's classes) in the authors' layout, converted."""
    torch.manual_seed(0)
    model = segdense.build_model({"name": "rdnet_custom", **SMALL_RDNET, "output_stride": 32},
                                 {"name": "upernet", "channels": 16}, num_classes=5, aux_loss=True,
                                 aux_head={"channels": 8}).eval()
    folder = tmp_path_factory.mktemp("five")
    names = ["background", "circle", "rectangle", "triangle", "ring"]
    palette = [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]]
    torch.save({"meta": {"CLASSES": tuple(names), "PALETTE": palette},
                "state_dict": authors_layout(model.state_dict())}, folder / "authors.pth")
    convert(folder / "authors.pth", folder / "converted.pt")
    return model, folder / "converted.pt", names, palette


def test_load_model_and_the_predictor_use_a_converted_file_as_their_own(five_class):
    model, path, names, palette = five_class
    loaded = segdense.load_model(path)
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.class_names == names and loaded.palette == palette
    predictor = segdense.Predictor.from_checkpoint(path, device="cpu")
    image = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    assert predictor.class_names == names and predictor.predict(image).shape == (40, 56)


def test_eval_infer_and_export_run_on_a_converted_file(five_class, tmp_path, capsys):
    from segdense.config.eval_job import evaluate_job
    from segdense.config.export_job import export_job
    from segdense.config.infer_job import infer_job

    _, path, names, _ = five_class
    result = evaluate_job(compose("eval", [f"checkpoint={path}", "dataset=synthetic", "dataset.num_samples=2",
                                           "dataset.image_size=32", "progress=false", "num_workers=0",
                                           f"output_dir={tmp_path / 'eval'}"]))
    assert [c["name"] for c in result["per_class"]] == names and 0 <= result["mIoU"] <= 1
    (tmp_path / "images").mkdir()
    Image.fromarray(np.full((36, 44, 3), 90, np.uint8)).save(tmp_path / "images" / "a.png")
    report = infer_job(compose("infer", [f"checkpoint={path}", f"input={tmp_path / 'images'}",
                                         f"output={tmp_path / 'pred'}", "progress=false"]))
    assert report.ok and Image.open(tmp_path / "pred" / "a.png").size == (44, 36)
    export_job(compose("export", [f"checkpoint={path}", "format=safetensors", f"output={tmp_path / 'm.safetensors'}",
                                  "verify_images=0", "sizes=[[32,32]]"]))
    assert "wrote" in capsys.readouterr().out
    assert segdense.load_model(tmp_path / "m.safetensors").class_names == names


# --- errors -----------------------------------------------------------------------------------------------------

def test_an_unknown_layout_names_the_layouts_it_knows(tmp_path):
    torch.save({"encoder.conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="unknown layout") as error:
        convert(tmp_path / "other.pth", tmp_path / "out.pt")
    assert str(tmp_path / "other.pth") in str(error.value)
    assert all(name in str(error.value) for name in ("rdnet-mmseg", "rdnet-imagenet", "torchvision-densenet"))


def test_a_shape_mismatch_names_the_first_key_and_both_shapes(densenet_file, tmp_path):
    path, _ = densenet_file
    with pytest.raises(CheckpointError) as error:
        convert(path, tmp_path / "out.pt", "backbone=densenet121")
    assert str(error.value) == (f"{path}: shape mismatch at features.conv0.weight: the file has (16, 3, 7, 7), "
                                "densenet121 expects (64, 3, 7, 7)")


def test_a_named_backbone_the_authors_file_does_not_fit_is_refused_at_the_first_tensor(tmp_path):
    with pytest.raises(CheckpointError) as error:
        convert(AUTHORS, tmp_path / "out.pt", "backbone=rdnet_tiny")
    assert str(error.value) == (f"{AUTHORS}: shape mismatch at backbone.stem.0.weight: the file has (16, 3, 4, 4), "
                                "rdnet_tiny + upernet + aux, 150 classes expects (64, 3, 4, 4)")
    assert not (tmp_path / "out.pt").exists()


def test_the_tool_prints_one_error_line_and_exits_2(tmp_path, capsys):
    from segdense.config.cli import run_tool
    from segdense.config.convert_job import convert_job

    (tmp_path / "notes.pth").write_text("not a checkpoint")
    cfg = compose("convert", [f"input={tmp_path / 'notes.pth'}", f"output={tmp_path / 'out.pt'}"])
    with pytest.raises(SystemExit) as exit_:
        run_tool(convert_job, cfg)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1
    assert err[0] == f"error: {tmp_path / 'notes.pth'} is not a PyTorch or safetensors file"


def test_an_existing_output_is_kept_unless_overwrite_is_given(densenet_file, tmp_path):
    path, _ = densenet_file
    (tmp_path / "out.pt").write_bytes(b"mine")
    with pytest.raises(ConfigError, match="exists; pass overwrite=true"):
        convert(path, tmp_path / "out.pt")
    assert (tmp_path / "out.pt").read_bytes() == b"mine"
    convert(path, tmp_path / "out.pt", "overwrite=true")
    assert "state_dict" in torch.load(tmp_path / "out.pt", weights_only=True)
    assert [p.name for p in tmp_path.iterdir()] == ["out.pt"]  # no temporary file left behind


def test_build_model_takes_the_aux_heads_width_and_records_it():
    model = segdense.build_model("densenet_custom", "fcn", num_classes=3, aux_loss=True, aux_head={"channels": 8},
                                 num_units_per_block=[1, 1, 1, 1], growth_rate=4)
    assert model.aux_head.convs[0][0].out_channels == 8 and model.model_config["aux_head"] == {"channels": 8}
    rebuilt = segdense.build_model(**model.model_config)
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    with pytest.raises(ValueError, match="needs aux_loss=True"):
        segdense.build_model("densenet_custom", "fcn", aux_head={"channels": 8})


def test_a_segdense_checkpoint_is_not_converted_again(densenet_file, tmp_path):
    model = segdense.build_model("densenet_custom", "fcn", num_classes=2, num_units_per_block=[1, 1, 1, 1],
                                 growth_rate=4)
    torch.save({"model": model.state_dict(), "model_config": model.model_config}, tmp_path / "own.pt")
    with pytest.raises(CheckpointError, match="is a segdense checkpoint already: use it as it is"):
        convert(tmp_path / "own.pt", tmp_path / "out.pt")


def test_the_tool_refuses_an_unknown_key_and_runs_from_the_command_line(densenet_file, tmp_path, monkeypatch,
                                                                         capsys):
    from test_tool_overrides import run_tool_main

    assert run_tool_main("convert", "input=a.pth", "output=b.pt", "overwrit=true", monkeypatch=monkeypatch) == 2
    assert "unknown key 'overwrit' (did you mean 'overwrite'?)" in capsys.readouterr().err
    path, _ = densenet_file
    assert run_tool_main("convert", f"input={path}", f"output={path}", monkeypatch=monkeypatch) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: output={path} exists; pass overwrite=true to replace it"]
