"""The HarDNets' memory-efficient mode (each HarDBlock layer, and each stem, transition and downsampling module,
recomputed in backward) is the plain network: in float64
the same features, input gradient, parameter gradients and BatchNorm buffers (running statistics updated once, a
frozen BatchNorm's left alone) in every module state users create while training (BatchNorms in eval mode, frozen
parameters, ``norm_eval``, ``frozen_stages``, output strides, channels-last and NCHW, plain and depthwise layers),
as accurate as plain in bf16 autocast, the same checkpoint, and at most half the activation bytes autograd keeps
for backward."""
import pytest
import torch

from segdense.backbones import build_backbone
from segdense.backbones.hardnet import ConvLayer
from segdense.backbones.hardnet_block import HarDBlock
from tests.test_memory_efficient import _BlockNet, _saved_bytes
from tests.test_memory_efficient_states import (
    _assert_same_step, _norms, _randomise_norms, assert_as_accurate_as_plain_in_bf16,
)

# Blocks of 4 to 8 layers (links up to 2^3 back), both layer kinds, downsampling between blocks.
SMALL = dict(stem_channels=(8, 12), transition_channels=(16, 24, 32), grmul=1.6, growth_rates=(4, 6, 8),
             num_layers=(4, 8, 4), downsample=(1, 1, 0))


def _blocks(net):
    return [m for m in net.modules() if isinstance(m, HarDBlock)]


def _eval_every_other_layer(net):
    for block in _blocks(net):
        for i, layer in enumerate(block.layers):
            if i % 2:
                for m in _norms(layer):
                    m.eval()


def _freeze(params):
    for p in params:
        p.requires_grad_(False)


STATES = {
    "all training": ({}, lambda net: None),
    "every BN eval": ({}, lambda net: [m.eval() for m in _norms(net)]),
    "one block's BNs eval": ({}, lambda net: [m.eval() for m in _norms(_blocks(net)[1])]),
    "every other layer's BNs eval": ({}, _eval_every_other_layer),
    "stem frozen": ({}, lambda net: _freeze(p for m in net.base[:3] for p in m.parameters())),
    "a block frozen": ({}, lambda net: _freeze(_blocks(net)[1].parameters())),
    "every other layer frozen": ({}, lambda net: _freeze(p for b in _blocks(net) for layer in b.layers[1::2]
                                                         for p in layer.parameters())),
    "BN affines frozen": ({}, lambda net: _freeze(p for m in _norms(net) for p in m.parameters())),
    "norm_eval=True": ({"norm_eval": True}, lambda net: None),
    "frozen_stages=2": ({"frozen_stages": 2}, lambda net: None),
}
SETTINGS = [(False, 8, True), (True, 16, False)]  # depthwise, output stride, channels-last


def _pair(state, depthwise, output_stride, channels_last, dtype=torch.float64):
    options, apply = STATES[state]
    kw = dict(SMALL, depthwise=depthwise, output_stride=output_stride, channels_last=channels_last, **options)
    torch.manual_seed(0)
    nets = [build_backbone("hardnet39ds", memory_efficient=me, **kw) for me in (False, True)]
    _randomise_norms(nets[0])
    nets[1].load_state_dict(nets[0].state_dict())
    for net in nets:
        net.to(dtype).train()
        apply(net)
    return nets


def _input(channels_last, dtype=torch.float64):
    x = torch.randn(2, 3, 64, 64, dtype=dtype, generator=torch.Generator().manual_seed(7))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("depthwise, output_stride, channels_last", SETTINGS)
@pytest.mark.parametrize("state", list(STATES))
def test_memory_efficient_equals_plain_in_every_training_state(state, depthwise, output_stride, channels_last):
    plain, eff = _pair(state, depthwise, output_stride, channels_last)
    x = _input(channels_last)
    _assert_same_step(plain, eff, x)
    last = _blocks(eff)[-1]  # never frozen here
    out = last(torch.randn(1, last.widths[0], 8, 8, dtype=torch.float64, requires_grad=True))
    assert type(out.grad_fn).__name__ == "_EfficientHarDBlockBackward"  # the efficient path really ran
    transition = eff._run(eff.base[4], torch.randn(1, eff.base[4].conv.in_channels, 8, 8, dtype=torch.float64,
                                                   requires_grad=True))
    assert type(transition.grad_fn).__name__ == "_RecomputedBackward"  # and the recomputed transitions


def test_running_statistics_are_updated_once_per_step():
    plain, eff = _pair("all training", True, 16, False)
    for _ in range(2):
        _assert_same_step(plain, eff, _input(False))
    assert all(int(m.num_batches_tracked) == 2 for m in _norms(eff))  # two training forwards


@pytest.mark.parametrize("keep_base", [False, True])
def test_a_block_keeping_its_input_equals_plain(keep_base):
    torch.manual_seed(1)
    block_p = HarDBlock(10, 4, 1.7, 8, ConvLayer, keep_base=keep_base).double()
    block_e = HarDBlock(10, 4, 1.7, 8, ConvLayer, keep_base=keep_base, memory_efficient=True).double()
    _randomise_norms(block_p)
    block_e.load_state_dict(block_p.state_dict())
    _assert_same_step(_BlockNet(block_p), _BlockNet(block_e), torch.randn(2, 10, 8, 8, dtype=torch.float64))


@pytest.mark.parametrize("training, grad", [(True, False), (False, True), (False, False)])
def test_without_gradients_or_in_eval_the_plain_block_runs(training, grad):
    plain, eff = _pair("all training", True, 16, False)
    for net in (plain, eff):
        net.train(training)
    x = _input(False)
    with torch.set_grad_enabled(grad):
        fp, fe = plain.forward_features(x.clone().requires_grad_(grad)), eff.forward_features(x.clone())
        out = _blocks(eff)[0](torch.randn(1, _blocks(eff)[0].widths[0], 8, 8, dtype=torch.float64,
                                          requires_grad=grad))
    assert "EfficientHarDBlock" not in type(out.grad_fn).__name__
    for name in fp:
        torch.testing.assert_close(fe[name], fp[name], rtol=0, atol=0)


@pytest.mark.parametrize("state", ["all training", "every other layer's BNs eval"])
def test_bf16_autocast_is_as_accurate_as_plain_bf16(state):
    plain, eff = _pair(state, True, 16, True, dtype=torch.float32)
    ref, _ = _pair(state, True, 16, True)
    assert_as_accurate_as_plain_in_bf16(plain, eff, ref, _input(True))


def test_same_module_tree_and_checkpoint():
    plain, eff = _pair("all training", True, 16, False)
    assert [n for n, _ in plain.named_modules()] == [n for n, _ in eff.named_modules()]
    sp, se = plain.state_dict(), eff.state_dict()
    assert list(sp) == list(se) and all(torch.equal(sp[k], se[k]) for k in sp)
    plain.load_state_dict(se, strict=True)


@pytest.mark.parametrize("name", ["hardnet39ds", "hardnet68ds", "hardnet68", "hardnet85"])
def test_published_hardnets_save_at_most_half_of_plain_for_backward(name):
    # Activations only: the parameters autograd refers to are no copies, and would hide the activations here.
    torch.manual_seed(0)
    plain, eff = build_backbone(name), build_backbone(name, memory_efficient=True)
    x = torch.randn(1, 3, 64, 64)
    ratio = _saved_bytes(eff, x.clone(), parameters=False) / _saved_bytes(plain, x.clone(), parameters=False)
    assert ratio <= 0.5, f"memory-efficient {name} saves {ratio:.2f}x plain's activations for backward"


def test_every_hardnet39ds_block_saves_at_most_a_quarter_of_plain_for_backward():
    torch.manual_seed(0)
    net = build_backbone("hardnet39ds")
    for block in _blocks(net):
        x = torch.randn(1, block.widths[0], 16, 16)
        plain = _saved_bytes(_BlockNet(block), x.clone())
        block.memory_efficient = True
        ratio = _saved_bytes(_BlockNet(block), x.clone()) / plain
        assert ratio <= 0.25, f"a memory-efficient hardnet39ds block saves {ratio:.2f}x plain's bytes"
