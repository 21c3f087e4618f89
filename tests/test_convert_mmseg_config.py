"""What the RDNet importer reads from the mmseg config a checkpoint's meta carries (``meta['config']``, the text
mmcv's ``Config.pretty_text`` writes): every key from its own dict, and the keys segdense cannot represent
refused by name."""
import pytest
import torch

import segdense
from segdense.errors import CheckpointError
from segdense.importers import import_file

from test_convert import SMALL_RDNET, authors_layout

# An mmseg 0.x config as mmcv's pretty_text writes it into a checkpoint's meta (the RDNet authors' rdnet_tiny
# config, model part and the ADE20K pipeline), with the decode head's, the aux head's and test_cfg's own lines
# filled in by each test. Every key a head lacks is present in another dict further down the text.
CONFIG = """\
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    type='EncoderDecoder',
    pretrained=None,
    backbone=dict(
        type='RDNetBackbone',
        model_name='rdnet_tiny',
        features_only=True,
        pretrained=True,
        drop_path_rate=0.1),
    decode_head=dict(
        type='UPerHead',
{decode}
        channels=16,
        num_classes=5,
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(
        type='FCNHead',
{aux}
        channels=8,
        num_convs=1,
        concat_input=False,
        num_classes=5,
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    test_cfg={test_cfg})
dataset_type = 'ADE20KDataset'
data_root = 'data/ade/ADEChallengeData2016'
img_norm_cfg = dict(
    mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
crop_size = (640, 640)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='Resize', img_scale=(2048, 512), ratio_range=(0.5, 2.0)),
    dict(type='RandomCrop', crop_size=(640, 640), cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='Normalize', **img_norm_cfg),
    dict(type='Pad', size=(640, 640), pad_val=0, seg_pad_val=255),
    dict(type='DefaultFormatBundle'),
    dict(type='Collect', keys=['img', 'gt_semantic_seg'])
]
optimizer = dict(
    type='AdamW', lr=8e-05, betas=(0.9, 0.999), weight_decay=0.03,
    paramwise_cfg=dict(num_layers=7, layer_decay_rate=0.9, align_corners=True))
"""
DECODE = ("in_channels=[32, 28, 32, 32]", "in_index=[0, 1, 2, 3]", "pool_scales=(1, 2, 3, 6)", "dropout_ratio=0.1",
          "align_corners=False")
AUX = ("in_channels=32", "in_index=2", "dropout_ratio=0.1", "align_corners=False")
SLIDE = "dict(mode='slide', crop_size=(384, 384), stride=(256, 256))"


def config_text(decode=DECODE, aux=AUX, test_cfg=SLIDE) -> str:
    lines = lambda keys: "\n".join(f"        {key}," for key in keys)  # noqa: E731
    return CONFIG.format(decode=lines(decode), aux=lines(aux), test_cfg=test_cfg)


def replaced(keys, **values):
    """``keys`` with the ``name=value`` entries of ``values`` replaced (None: left out)."""
    out = [k for k in keys if k.split("=")[0] not in values]
    return tuple(out) + tuple(f"{k}={v}" for k, v in values.items() if v is not None)


def authors_file(folder, config, in_features=None, aux_feature=None, seed=0):
    """A small UperNet-RDNet (+ aux head) in the authors' layout with ``config`` as its meta's config; returns
    (path, model)."""
    torch.manual_seed(seed)
    head = {"name": "upernet", "channels": 16, **({"in_features": in_features} if in_features else {})}
    aux = {"channels": 8, **({"in_feature": aux_feature} if aux_feature else {})}
    model = segdense.build_model({"name": "rdnet_custom", **SMALL_RDNET, "output_stride": 32}, head, num_classes=5,
                                 aux_loss=True, aux_head=aux).eval()
    path = folder / f"authors_{seed}.pth"
    torch.save({"meta": {"config": config}, "state_dict": authors_layout(model.state_dict())}, path)
    return path, model


def test_the_pretty_text_layout_is_read_from_its_own_dicts(tmp_path):
    path, _ = authors_file(tmp_path, config_text())
    imported = import_file(path)
    assert imported.model_config["head"] == {"name": "upernet", "channels": 16, "pool_scales": [1, 2, 3, 6],
                                             "dropout": 0.1}
    assert imported.model_config["aux_head"] == {"channels": 8}
    assert imported.config["crop_size"] == [384, 384]


def test_a_dropout_the_decode_head_lacks_is_mmsegs_default_not_the_aux_heads(tmp_path):
    text = config_text(decode=replaced(DECODE, dropout_ratio=None), aux=replaced(AUX, dropout_ratio=0.5))
    path, _ = authors_file(tmp_path, text)
    config = import_file(path).model_config
    assert config["head"]["dropout"] == 0.1  # mmseg's BaseDecodeHead default
    assert config["aux_head"]["dropout"] == 0.5  # the aux head keeps its own
    model = segdense.build_model(**config)
    assert model.head.dropout.p == 0.1 and model.aux_head.classifier[0].p == 0.5


def test_a_dropout_of_zero_is_read_as_zero(tmp_path):
    path, _ = authors_file(tmp_path, config_text(decode=replaced(DECODE, dropout_ratio=0)))
    assert import_file(path).model_config["head"]["dropout"] == 0.0


def test_the_slide_window_comes_from_test_cfg_never_from_the_training_pipeline(tmp_path):
    path, _ = authors_file(tmp_path, config_text(test_cfg="dict(mode='whole')"))
    imported = import_file(path)
    assert imported.config["crop_size"] == [512, 512]  # not RandomCrop's or the top-level crop_size's 640
    assert any("crop size 512x512" in note and "test_cfg" in note for note in imported.notes)


def test_align_corners_true_in_the_decode_head_is_refused_by_name(tmp_path):
    path, _ = authors_file(tmp_path, config_text(decode=replaced(DECODE, align_corners=True)))
    with pytest.raises(CheckpointError) as error:
        import_file(path)
    message = str(error.value)
    assert str(path) in message and "decode_head.align_corners=True" in message and "expected False" in message


def test_align_corners_true_in_a_kept_aux_head_is_refused_and_aux_false_drops_it(tmp_path):
    path, _ = authors_file(tmp_path, config_text(aux=replaced(AUX, align_corners=True)))
    with pytest.raises(CheckpointError, match=r"auxiliary_head\.align_corners=True.*expected False.*aux=false"):
        import_file(path)
    assert import_file(path, aux=False).model_config["aux_loss"] is False


def test_an_in_index_segdense_can_name_becomes_in_features_and_in_feature(tmp_path):
    """mmseg's in_index picks backbone outputs by position; segdense's UperNet and aux head name them."""
    text = config_text(decode=replaced(DECODE, in_index=[1, 2, -1]), aux=replaced(AUX, in_index=3))
    path, model = authors_file(tmp_path, text, in_features=["stage2", "stage3", "stage4"], aux_feature="stage4")
    config = import_file(path).model_config
    assert config["head"]["in_features"] == ["stage2", "stage3", "stage4"]
    assert config["aux_head"]["in_feature"] == "stage4"
    converted = segdense.build_model(**config)
    converted.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        features = model.backbone.forward_features(x)
        assert torch.equal(converted.eval()(x), model(x))
        assert torch.equal(converted.aux_head(features), model.aux_head(features))


@pytest.mark.parametrize("part, value, expected", [
    ("decode_head", "[2, 1, 3]", "a list of increasing positions"),
    ("decode_head", "[0, 1, 2, 3, 4]", "the backbone's 4 outputs (stage1, stage2, stage3, stage4)"),
    ("auxiliary_head", "[1, 2]", "one int"),
])
def test_an_in_index_segdense_cannot_represent_is_refused_by_name(tmp_path, part, value, expected):
    decode = replaced(DECODE, in_index=value) if part == "decode_head" else DECODE
    aux = replaced(AUX, in_index=value) if part == "auxiliary_head" else AUX
    path, _ = authors_file(tmp_path, config_text(decode=decode, aux=aux))
    with pytest.raises(CheckpointError) as error:
        import_file(path)
    message = str(error.value)
    assert f"{part}.in_index={value}" in message and expected in message and str(path) in message


def test_a_config_that_is_not_python_is_refused_with_its_line(tmp_path):
    text = config_text().replace("num_convs=1,", "num_convs=1,,", 1)
    line = next(i for i, text_line in enumerate(text.splitlines(), 1) if ",," in text_line)
    path, _ = authors_file(tmp_path, text)
    with pytest.raises(CheckpointError, match=rf"meta\['config'\] is not Python \(line {line}: invalid syntax\)"):
        import_file(path)


def test_pool_scales_that_disagree_with_the_weights_are_refused(tmp_path):
    path, _ = authors_file(tmp_path, config_text(decode=replaced(DECODE, pool_scales=(1, 2, 3))))
    with pytest.raises(CheckpointError, match=r"decode_head\.pool_scales=\(1, 2, 3\): expected 4 scales"):
        import_file(path)


def test_an_expression_is_named_as_written_and_never_run(tmp_path):
    path, _ = authors_file(tmp_path, config_text(decode=replaced(DECODE, dropout_ratio="__import__('os').getpid()")))
    with pytest.raises(CheckpointError, match=r"decode_head\.dropout_ratio=__import__\('os'\)\.getpid\(\): expected a "
                                              r"number in \[0, 1\)"):
        import_file(path)


def test_a_top_level_test_cfg_of_older_mmseg_configs_gives_the_window(tmp_path):
    text = config_text(test_cfg="None") + "test_cfg = dict(mode='slide', crop_size=(256, 320), stride=(171, 213))\n"
    path, _ = authors_file(tmp_path, text)
    assert import_file(path).config["crop_size"] == [256, 320]
