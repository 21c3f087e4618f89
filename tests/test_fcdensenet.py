"""FC-DenseNet (the One Hundred Layers Tiramisu) on segdense's dense block: the paper's architecture and
parameter counts, any input size, memory-efficient training equal to plain through the down and up paths, and
the tools (train, eval, infer, ONNX export) on its checkpoint."""
import json

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

import segdense
from segdense.backbones import FCDenseNet, build_backbone
from segdense.backbones.densenet import DenseBlock

from test_memory_efficient import _saved_bytes
from test_memory_efficient_states import _assert_same_step, _eval_every_other_norm1, _randomise_norms
from train_utils import CONF, TINY, compose_config

SMALL = dict(down_blocks=(2, 3), bottleneck_layers=2, up_blocks=(3, 2), growth_rate=4, num_init_features=8)


@pytest.mark.parametrize("name, expected", [("fcdensenet56", 1_376_795), ("fcdensenet67", 3_463_243),
                                            ("fcdensenet103", 9_322_091)])
def test_parameter_counts_at_eleven_classes(name, expected):
    # Trainable parameters with every conv's bias, as bfortuner/pytorch_tiramisu builds it (the paper's
    # 1.5M / 3.5M / 9.4M count Lasagne's BatchNorm statistics too).
    model = segdense.build_model(name, "tiramisu", num_classes=11)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected


def test_fcdensenet103_layout_follows_the_paper():
    net = build_backbone("fcdensenet103")
    assert [len(getattr(net, f"denseblock_down{i}")) for i in range(1, 6)] == [4, 5, 7, 10, 12]
    assert len(net.bottleneck) == 15
    assert [len(getattr(net, f"denseblock_up{i}")) for i in range(1, 6)] == [12, 10, 7, 5, 4]
    # Paper Table 2 (with its typos corrected): skips 112, 192, 304, 464, 656; 256 channels into the classifier.
    assert [s.channels for s in net.feature_info if s.name.startswith("down")] == [112, 192, 304, 464, 656]
    assert net.feature_info[-1].channels == 256 and net.feature_info[-1].stride == 1
    layer = net.denseblock_down1.denselayer1
    assert layer.norm2 is None and layer.conv1.kernel_size == (3, 3) and layer.conv1.bias is not None
    assert net.firstconv.out_channels == 48 and net.transition_up1.conv.stride == (2, 2)


def test_state_dict_keys_are_stable():
    keys = list(build_backbone("fcdensenet_custom", **SMALL).state_dict())
    assert keys[:8] == ["firstconv.weight", "firstconv.bias", "denseblock_down1.denselayer1.norm1.weight",
                        "denseblock_down1.denselayer1.norm1.bias", "denseblock_down1.denselayer1.norm1.running_mean",
                        "denseblock_down1.denselayer1.norm1.running_var",
                        "denseblock_down1.denselayer1.norm1.num_batches_tracked",
                        "denseblock_down1.denselayer1.conv1.weight"]
    assert "transition_down1.conv.weight" in keys and "transition_up1.conv.weight" in keys
    assert "bottleneck.denselayer2.conv1.bias" in keys and keys[-1] == "denseblock_up2.denselayer2.conv1.bias"
    # first conv 2; 12 dense layers of norm1 (5) + conv1 (2); 2 transitions down (7 each), 2 up (2 each)
    assert len(keys) == 2 + 12 * 7 + 2 * 7 + 2 * 2


@pytest.mark.parametrize("size", [(97, 131), (32, 33), (64, 64)])
@pytest.mark.parametrize("memory_efficient", [False, True])
def test_logits_match_any_input_size(size, memory_efficient):
    model = segdense.build_model({"name": "fcdensenet_custom", **SMALL}, "tiramisu", num_classes=3,
                                 memory_efficient=memory_efficient)
    x = torch.randn(2, 3, *size)
    assert model(x).shape == (2, 3, *size)
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 3, *size)


def test_too_small_an_input_is_refused_with_the_minimum():
    net = build_backbone("fcdensenet_custom", **SMALL)
    with pytest.raises(ValueError, match="at least 4"):
        net(torch.randn(1, 3, 3, 8))


@pytest.mark.parametrize("bad, match", [({"up_blocks": (2,)}, "one entry per down block"),
                                        ({"drop_rate": 1.0}, "drop_rate"), ({"down_blocks": ()}, "positive")])
def test_bad_arguments_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        FCDenseNet(**{**SMALL, **bad})


def _pair(name, **kw):
    torch.manual_seed(0)
    plain, eff = (build_backbone(name, memory_efficient=me, **kw) for me in (False, True))
    _randomise_norms(plain)
    eff.load_state_dict(plain.state_dict())
    return plain.double(), eff.double()


def test_fcdensenet56_memory_efficient_equals_plain_in_float64():
    # Dropout off: the comparison is about the algorithm through down path, bottleneck and up path.
    plain, eff = _pair("fcdensenet56", drop_rate=0.0)
    assert all(b.memory_efficient for b in eff.modules() if isinstance(b, DenseBlock))
    _assert_same_step(plain, eff, torch.randn(2, 3, 40, 36, dtype=torch.float64))


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("state", ["training", "every other norm1 eval", "norm_eval"])
def test_small_fcdensenet_memory_efficient_equals_plain_with_dropout_and_frozen_norms(state, channels_last):
    plain, eff = _pair("fcdensenet_custom", drop_rate=0.2, channels_last=channels_last,
                       norm_eval=state == "norm_eval", **SMALL)
    if state == "every other norm1 eval":
        _eval_every_other_norm1(plain), _eval_every_other_norm1(eff)
    _assert_same_step(plain, eff, torch.randn(2, 3, 33, 37, dtype=torch.float64))


def test_memory_efficient_fcdensenet_saves_a_third_of_plain():
    torch.manual_seed(0)
    plain, eff = (build_backbone("fcdensenet56", memory_efficient=me) for me in (False, True))
    x = torch.randn(1, 3, 96, 96)
    assert _saved_bytes(eff, x.clone()) <= 0.35 * _saved_bytes(plain, x.clone())


# A tiny FC-DenseNet on synthetic_hard through the real jobs: train, evaluate, predict, export.
TINY_FC = [o for o in TINY if not o.startswith(("backbone", "head", "dataset.image_size", "crop_size"))] + [
    "backbone=fcdensenet_custom", "backbone.down_blocks=[1,1]", "backbone.bottleneck_layers=1",
    "backbone.growth_rate=4", "backbone.num_init_features=8", "backbone.memory_efficient=true",
    "head=tiramisu", "dataset=synthetic_hard", "dataset.num_samples=4", "dataset.min_size=40", "dataset.max_size=48",
    "crop_size=[36,36]", "batch_size=2", "iterations=2", "val_interval=2", "checkpoint_interval=2", "num_workers=0",
]


@pytest.fixture(scope="module")
def fc_checkpoint(tmp_path_factory):
    from segdense.config.train_job import train

    run_dir = tmp_path_factory.mktemp("fc_run")
    train(compose_config(TINY_FC), run_dir=run_dir)
    torch.use_deterministic_algorithms(False)
    return run_dir / "checkpoints" / "last.pt"


def _compose(config_name, overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def test_trained_checkpoint_rebuilds_the_fcdensenet_and_evaluates(fc_checkpoint, tmp_path):
    from segdense.config.eval_job import evaluate_job

    model = segdense.load_model(fc_checkpoint)
    assert isinstance(model.backbone, FCDenseNet) and model.model_config["head"]["name"] == "tiramisu"
    result = evaluate_job(_compose("eval", [f"checkpoint={fc_checkpoint}", "progress=false", "num_workers=0",
                                            f"output_dir={tmp_path}"]))
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["dataset"] == "synthetic_hard" and written["num_images"] == 4
    confusion = torch.tensor(result["confusion"], dtype=torch.float64)
    iou = confusion.diag() / (confusion.sum(0) + confusion.sum(1) - confusion.diag())
    assert result["mIoU"] == pytest.approx(float(iou.nanmean()))


def test_infer_writes_a_full_size_prediction_for_an_odd_sized_image(fc_checkpoint, tmp_path):
    from segdense.config.infer_job import infer_job

    folder = tmp_path / "images"
    folder.mkdir()
    rgb = np.random.default_rng(0).integers(0, 256, (45, 53, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "odd.png")
    infer_job(_compose("infer", [f"checkpoint={fc_checkpoint}", f"input={folder}", f"output={tmp_path / 'out'}",
                                 "progress=false"]))
    labels = np.asarray(Image.open(tmp_path / "out" / "odd.png"))  # palette PNG of class indices
    expected = segdense.Predictor.from_checkpoint(fc_checkpoint).predict(folder / "odd.png")
    assert labels.shape == (45, 53)
    assert np.array_equal(labels, np.asarray(expected))


def test_onnx_export_agrees_with_pytorch_at_odd_sizes(fc_checkpoint, tmp_path):
    from segdense.export import export_model
    from segdense.inference import load_bundle

    results = export_model(load_bundle(fc_checkpoint), "onnx", tmp_path / "fc.onnx", sizes=[(37, 45), (50, 61)])
    assert [r["size"] for r in results] == [[37, 45], [50, 61]]
    assert all(r["max_abs_diff"] <= 1e-4 for r in results)
