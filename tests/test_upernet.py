"""The UperNet head against mmsegmentation's UPerHead (golden files from tests/make_mmseg_golden.py; mmseg itself
is not needed here), its parameter counts, feature choice, errors, training and export."""
import copy
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import segdense
from segdense.backbones import FeatureSpec, densenet_custom
from segdense.heads import build_head, pyramid_features
from segdense.heads.common import adaptive_avg_pool
from segdense.heads.upernet import batchnorm_batch

GOLDEN = Path(__file__).parent / "data" / "golden"
RDNET_TINY = [FeatureSpec("stage1", 256, 4), FeatureSpec("stage2", 440, 8), FeatureSpec("stage3", 744, 16),
              FeatureSpec("stage4", 1040, 32)]
RESNET50_OS16 = [FeatureSpec("stem", 64, 2), FeatureSpec("layer1", 256, 4), FeatureSpec("layer2", 512, 8),
                 FeatureSpec("layer3", 1024, 16), FeatureSpec("layer4", 2048, 16)]
TINY_DENSENET = dict(num_units_per_block=[1, 1, 1, 1], growth_rate=8)


def count(module):
    return sum(p.numel() for p in module.parameters())


def load(name):
    return torch.load(GOLDEN / name, weights_only=True)


def close_to(actual, expected, rel=1e-4):
    """Within ``rel`` of the largest |expected| everywhere (the tolerance the issue sets for mmseg parity)."""
    assert actual.shape == expected.shape
    err = (actual - expected).abs().max().item()
    assert err <= rel * expected.abs().max().item(), f"max |diff| {err:.3g} vs max |expected| {expected.abs().max():.3g}"


def test_parameters_on_rdnet_tiny_features_equal_mmseg_uperhead():
    c, k, ins = 512, 150, [256, 440, 744, 1040]
    bn = 2 * c
    ppm = 4 * (ins[-1] * c + bn)
    bottleneck = (ins[-1] + 4 * c) * 9 * c + bn
    laterals = sum(i * c + bn for i in ins[:-1])
    fpn = 3 * (c * 9 * c + bn)
    fuse = 4 * c * 9 * c + bn
    expected = ppm + bottleneck + laterals + fpn + fuse + (c * k + k)
    assert count(build_head("upernet", RDNET_TINY, k, 32)) == expected == 33_701_014


@pytest.mark.parametrize("output_stride", [16, 32])
def test_aux_head_on_rdnet_tiny_has_mmseg_fcnhead_parameters_on_stage3(output_stride):
    info = [s if s.stride <= output_stride else FeatureSpec(s.name, s.channels, output_stride) for s in RDNET_TINY]
    aux = build_head("aux", info, 150, output_stride)
    assert aux.in_feature == "stage3"  # at output stride 16 stage4 is at stride 16 too
    assert count(aux) == 744 * 9 * 256 + 2 * 256 + 256 * 150 + 150 == 1_753_238


def test_state_dict_keys_are_mmseg_uperhead_keys():
    golden = load("upernet_head.pt")
    head = _golden_head(golden["config"])
    assert sorted(head.state_dict()) == sorted(golden["state_dict"])


def _golden_head(cfg):
    info = [FeatureSpec(f"level{i}", c, 4 * 2 ** i) for i, c in enumerate(cfg["in_channels"])]
    return build_head("upernet", info, cfg["num_classes"], 32, channels=cfg["channels"],
                      pool_scales=list(cfg["pool_scales"]), dropout=cfg["dropout_ratio"])


def test_head_reproduces_mmseg_uperhead_logits_at_odd_sizes():
    golden = load("upernet_head.pt")
    head = _golden_head(golden["config"])
    head.load_state_dict(golden["state_dict"], strict=True)
    features = {f"level{i}": f for i, f in enumerate(golden["features"])}  # 17x25, 9x13, 5x7, 3x4
    with torch.no_grad():
        close_to(head.eval()(features), golden["logits"])


def test_head_reproduces_the_decode_head_of_an_mmseg_upernet_rdnet_checkpoint():
    checkpoint, io = load("upernet_rdnet_authors.pth"), load("upernet_rdnet_authors_io.pt")
    state = {k[len("decode_head."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("decode_head.")}
    info = [FeatureSpec(f"stage{i + 1}", f.shape[1], 4 * 2 ** i) for i, f in enumerate(io["features"])]
    head = build_head("upernet", info, io["num_classes"], 32, channels=io["decode_channels"]).eval()
    head.load_state_dict(state, strict=True)
    with torch.no_grad():
        close_to(head({s.name: f for s, f in zip(info, io["features"])}), io["head_logits"])


def test_aux_head_reproduces_mmseg_fcnhead_of_that_checkpoint():
    checkpoint, io = load("upernet_rdnet_authors.pth"), load("upernet_rdnet_authors_io.pt")
    names = {"convs.0.conv": "convs.0.0", "convs.0.bn": "convs.0.1", "conv_seg": "classifier.1"}
    state = {}
    for key, value in checkpoint["state_dict"].items():
        if key.startswith("auxiliary_head."):
            module, _, leaf = key[len("auxiliary_head."):].rpartition(".")
            state[f"{names[module]}.{leaf}"] = value
    info = [FeatureSpec(f"stage{i + 1}", f.shape[1], 4 * 2 ** i) for i, f in enumerate(io["features"])]
    aux = build_head("aux", info, io["num_classes"], 32, channels=io["aux_channels"]).eval()
    aux.load_state_dict(state, strict=True)
    with torch.no_grad():
        close_to(aux({s.name: f for s, f in zip(info, io["features"])}), io["aux_head_logits"])


@pytest.mark.parametrize("info, names", [
    (RDNET_TINY, ["stage1", "stage2", "stage3", "stage4"]),
    (RESNET50_OS16, ["layer1", "layer2", "layer3", "layer4"]),  # the stride-2 stem is left out
    (densenet_custom(output_stride=8, **TINY_DENSENET).feature_info, ["block1", "block2", "block3", "block4"]),
    ([FeatureSpec("down1", 96, 1), FeatureSpec("down3", 192, 4), FeatureSpec("bottleneck", 48, 32),
      FeatureSpec("up1", 48, 16), FeatureSpec("up5", 192, 1)], ["down3", "bottleneck"]),  # FC-DenseNet: no up path
    ([FeatureSpec("a", 8, 1), FeatureSpec("b", 8, 2)], ["a", "b"]),  # nothing at stride >= 4: all of them
])
def test_default_features_are_the_backbones_pyramid(info, names):
    assert [s.name for s in pyramid_features(info)] == names
    head = build_head("upernet", info, 3, 32, channels=8)
    assert head.in_features == names and head.output_stride == info[[s.name for s in info].index(names[0])].stride
    assert len(head.lateral_convs) == len(names) - 1 and head.bottleneck.conv.in_channels == 4 * 8 + \
        next(s.channels for s in info if s.name == names[-1])


def test_chosen_features_are_put_in_the_backbones_order():
    head = build_head("upernet", RESNET50_OS16, 3, 16, channels=8, in_features=["layer4", "layer2"])
    assert head.in_features == ["layer2", "layer4"] and head.output_stride == 8
    assert [c.conv.in_channels for c in head.lateral_convs] == [512]


@pytest.mark.parametrize("in_features, message", [
    (["layer2", "block9"], r"'upernet' was asked for feature 'block9'.*layer4 \(stride 16, 2048 ch\)"),
    ("layer3", r"in_features must be a non-empty list of feature names .*got 'layer3'"),
    ([], r"in_features must be a non-empty list"),
    (["layer3", "layer3"], r"names a feature twice"),
])
def test_bad_in_features_give_one_clear_error(in_features, message):
    with pytest.raises(ValueError, match=message):
        build_head("upernet", RESNET50_OS16, 3, 16, in_features=in_features)


@pytest.mark.parametrize("pool_scales", [[], [1, 0], [2.5]])
def test_bad_pool_scales_are_an_error(pool_scales):
    with pytest.raises(ValueError, match="pool_scales must be positive ints"):
        build_head("upernet", RDNET_TINY, 3, 32, pool_scales=pool_scales)


@pytest.mark.parametrize("output_stride", [8, 32])
def test_model_on_a_densenet_gives_logits_at_odd_input_sizes(output_stride):
    torch.manual_seed(0)
    model = segdense.build_model("densenet_custom", {"name": "upernet", "channels": 8}, num_classes=4,
                                 output_stride=output_stride, **TINY_DENSENET).eval()
    x = torch.randn(1, 3, 61, 83)
    with torch.no_grad():
        features = model.backbone.forward_features(x)
        head_logits = model.head(features)
        logits = model(x)
    assert head_logits.shape == (1, 4, *features["block1"].shape[-2:])  # fused at the shallowest level
    assert logits.shape == (1, 4, 61, 83) and torch.isfinite(logits).all()
    torch.testing.assert_close(logits, F.interpolate(head_logits, size=(61, 83), mode="bilinear",
                                                     align_corners=False))


def test_a_training_step_reaches_every_parameter():
    torch.manual_seed(0)
    model = segdense.build_model("densenet_custom", {"name": "upernet", "channels": 8}, num_classes=3,
                                 output_stride=32, aux_loss=True, **TINY_DENSENET).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    out = model(torch.randn(2, 3, 64, 64))
    target = torch.randint(0, 3, (2, 64, 64))
    loss = F.cross_entropy(out["out"], target) + 0.4 * F.cross_entropy(out["aux"], target)
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not no_grad, no_grad
    optimizer.step()
    after = model.state_dict()
    assert not torch.equal(before["head.psp_modules.3.1.conv.weight"], after["head.psp_modules.3.1.conv.weight"])
    assert not torch.equal(before["head.psp_modules.0.1.bn.running_mean"], after["head.psp_modules.0.1.bn.running_mean"])


def test_training_on_one_image_names_the_batchnorm_of_pool_scale_1():
    head = build_head("upernet", RDNET_TINY[:2], 3, 8, channels=8).train()
    features = {"stage1": torch.randn(1, 256, 8, 8), "stage2": torch.randn(1, 440, 4, 4)}
    with pytest.raises(ValueError, match="pool scale 1 has BatchNorm on a 1x1 map.*batch size of at least 2"):
        head(features)
    head.eval()(features)  # inference on one image is fine


def _one_image_per_process(rank: int, rendezvous: str) -> None:
    """In a 2-process gloo group: per-process BatchNorm on one image is refused; SyncBatchNorm over both processes
    normalises two images and passes upernet's check (on CPU, PyTorch's SyncBatchNorm then refuses to run, so what
    follows the check is its error); SyncBatchNorm over a one-process subgroup is refused again."""
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))
    try:
        solo = [dist.new_group([r]) for r in range(2)]  # every process creates every group
        features = {"stage1": torch.randn(1, 256, 8, 8), "stage2": torch.randn(1, 440, 4, 4)}
        head = build_head("upernet", RDNET_TINY[:2], 3, 8, channels=8).train()
        sync = torch.nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(head))
        own = torch.nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(head), process_group=solo[rank])
        assert batchnorm_batch(head.psp_modules[0][1].bn, 1) == 1
        assert batchnorm_batch(sync.psp_modules[0][1].bn, 1) == 2
        assert batchnorm_batch(own.psp_modules[0][1].bn, 1) == 1
        for module, refused in ((head, True), (sync, False), (own, True)):
            with pytest.raises(ValueError) as error:
                module.psp_modules(features["stage2"])
            assert ("pool scale 1 has BatchNorm on a 1x1 map" in str(error.value)) is refused, error.value
            if not refused:
                assert "SyncBatchNorm expected input tensor to be on GPU" in str(error.value)
    finally:
        dist.destroy_process_group()


def test_one_image_per_process_trains_when_syncbatchnorm_spans_the_processes(tmp_path):
    context = mp.start_processes(_one_image_per_process, args=(str(tmp_path / "rendezvous"),), nprocs=2, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the 2 processes did not finish within 120 s")


def test_a_syncbatchnorm_without_a_process_group_normalises_this_process_batch_alone():
    head = torch.nn.SyncBatchNorm.convert_sync_batchnorm(build_head("upernet", RDNET_TINY[:2], 3, 8, channels=8))
    assert batchnorm_batch(head.psp_modules[0][1].bn, 1) == 1
    with pytest.raises(ValueError, match="pool scale 1 has BatchNorm on a 1x1 map"):
        head.train().psp_modules(torch.randn(1, 440, 4, 4))


def test_traced_adaptive_pooling_keeps_sizes_dynamic_and_exact():
    traced = torch.jit.trace(lambda x: adaptive_avg_pool(x, 6), torch.randn(1, 2, 12, 12, dtype=torch.float64),
                             check_trace=False)
    for size in [(1, 2), (3, 5), (7, 11), (17, 25)]:
        x = torch.randn(2, 3, *size, dtype=torch.float64)
        torch.testing.assert_close(traced(x), F.adaptive_avg_pool2d(x, 6), rtol=0, atol=1e-12)


def test_model_with_upernet_exports_to_onnx_with_dynamic_sizes(tmp_path):
    from segdense.export import export_model
    from segdense.inference.loading import ModelBundle, default_palette

    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = segdense.build_model("densenet_custom", {"name": "upernet", "channels": 8}, num_classes=3,
                                 output_stride=16, **TINY_DENSENET)
    bundle = ModelBundle(model.eval(), ["a", "b", "c"], default_palette(3))
    results = export_model(bundle, "onnx", tmp_path / "m.onnx", sizes=[(50, 61), (97, 83)])
    assert len(results) == 2 and max(r["max_abs_diff"] for r in results) <= 1e-4


def test_conf_head_upernet_builds_the_model():
    from segdense.config.group_keys import validate_config
    from segdense.config.train_job import model_config

    from train_utils import compose_config

    cfg = compose_config(["head=upernet", "head.channels=8", "backbone=custom", "output_stride=32",
                          "backbone.num_units_per_block=[1,1,1,1]", "backbone.growth_rate=8"])
    validate_config(cfg)
    kwargs = model_config(cfg, num_classes=3)
    assert kwargs["head"] == {"name": "upernet", "channels": 8, "pool_scales": [1, 2, 3, 6], "dropout": 0.1,
                              "in_features": None}
    model = segdense.build_model(**kwargs)
    assert model.head.in_features == ["block1", "block2", "block3", "block4"]
    assert model.model_config["head"] == kwargs["head"]
