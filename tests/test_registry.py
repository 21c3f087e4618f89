"""segdense.registry.Registry: one class for every kind of part, and the lookups config validation uses."""
import pytest

from segdense.backbones.registry import BACKBONES
from segdense.data.registry import DATASETS
from segdense.engine.optimizers import OPTIMIZERS, SCHEDULERS
from segdense.heads.registry import HEADS
from segdense.losses.base import LOSSES
from segdense.registry import Registry


def test_every_kind_uses_the_one_registry_class():
    registries = {"backbone": BACKBONES, "head": HEADS, "loss": LOSSES, "dataset": DATASETS,
                  "optimizer": OPTIMIZERS, "scheduler": SCHEDULERS}
    assert all(type(r) is Registry and r.kind == kind for kind, r in registries.items())
    assert OPTIMIZERS.names() == ["adam", "adamw", "rmsprop", "sgd"] and SCHEDULERS.names() == ["constant", "cosine", "exponential", "poly"]


def test_register_as_decorator_call_or_with_a_name_and_refuse_a_taken_name():
    reg = Registry("widget")

    @reg.register
    def plain(a=1):
        return a

    @reg.register("named")
    def other(b=2):
        return b

    reg.register(dict, "as_call")
    assert reg.names() == ["as_call", "named", "plain"] and reg.get("named") is other and "plain" in reg
    with pytest.raises(ValueError, match="a widget named 'plain' is already registered"):
        reg.register(lambda: None, "plain")
    assert reg.unregister("as_call") is dict and reg.names() == ["named", "plain"]


def test_an_unknown_name_lists_the_registered_ones_and_the_closest():
    with pytest.raises(ValueError, match=r"unknown backbone 'densnet121'\. Did you mean 'densenet121'\? "
                                         r"Registered backbones: densenet121, densenet161"):
        BACKBONES.get("densnet121")


def test_signature_follows_a_builder_to_the_class_it_forwards_to():
    accepted, open_ended = BACKBONES.signature("densenet121")
    # densenet121's own pretrained, then DenseNet's arguments (through kwargs_to=DenseNet)
    assert not open_ended and accepted[0] == "pretrained"
    assert {"output_stride", "initial_output_stride", "memory_efficient", "growth_rate"} <= set(accepted)
    accepted, open_ended = DATASETS.signature("voc_aug")  # a function forwarding to VOCSegmentation
    assert not open_ended and {"split", "root", "transform"} <= set(accepted)
    assert SCHEDULERS.signature("poly") == (["t", "total", "power", "min_lr_ratio"], False)
    assert HEADS.signature("fcn") == (["feature_info", "num_classes", "output_stride", "channels", "num_convs",
                                       "dropout", "in_feature"], False)


def test_a_constructor_that_takes_any_keyword_is_open_ended():
    reg = Registry("widget")
    reg.register(lambda size=1, **anything: None, "loose")
    assert reg.signature("loose") == (["size"], True)
