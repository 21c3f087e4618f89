"""`segdense.build_model()` with no arguments is the model `python tools/train.py` trains."""
import segdense
from segdense.config.group_keys import validate_config
from segdense.config.train_job import model_config
from segdense.heads import build_head
from segdense.heads.deeplab import DeepLabV3PlusHead

from test_docs import DENSENET121_OS16
from train_utils import compose_config


def _architecture(model):
    return [(name, type(module).__name__) for name, module in model.named_modules()], \
           {key: tuple(value.shape) for key, value in model.state_dict().items()}


def test_build_model_defaults_build_the_command_lines_default_model():
    cfg = compose_config()
    validate_config(cfg)
    from_cli = segdense.build_model(**model_config(cfg, num_classes=21))
    default = segdense.build_model()
    assert _architecture(default) == _architecture(from_cli)
    assert from_cli.backbone.output_stride == default.backbone.output_stride == 16
    assert default.aux_head is None and from_cli.aux_head is None
    assert default.model_config["head"]["name"] == cfg.head.name == "deeplabv3plus_lite"


def test_the_lite_head_is_deeplabv3plus_at_128_channels():
    lite = build_head("deeplabv3plus_lite", DENSENET121_OS16, 21, 16)
    full = build_head("deeplabv3plus", DENSENET121_OS16, 21, 16, channels=128)
    assert type(lite) is DeepLabV3PlusHead
    assert {k: v.shape for k, v in lite.state_dict().items()} == {k: v.shape for k, v in full.state_dict().items()}
    assert lite.state_dict()["aspp.project.0.weight"].shape == (128, 5 * 128, 1, 1)
