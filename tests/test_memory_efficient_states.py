"""Memory-efficient equals plain in every module state users create while training: BatchNorms in eval mode
(all, per block, per layer, only the bottlenecks'; ``norm_eval``), frozen parameters (stem, a block, BatchNorm
affines; ``frozen_stages``), dropout, channels-last and NCHW, output strides 8/16/32, SyncBatchNorm conversions,
bf16 autocast. float64, gradients and every buffer; a frozen BatchNorm's statistics stay as they were."""
import pytest
import torch
import torch.nn as nn

from segdense.backbones import densenet_custom
from segdense.backbones.block_stats import DenseSyncBatchNorm
from segdense.backbones.efficient_block import sync_dense_layer_norms

UNITS = (2, 3, 2, 2)


def _norms(module):
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _dense_layers(net):
    return [m for m in net.modules() if hasattr(m, "drop_rate") and hasattr(m, "norm1")]


def _eval_all(net):
    for m in _norms(net):
        m.eval()


def _eval_dense_layers(net):
    for layer in _dense_layers(net):
        layer.norm1.eval(), layer.norm2.eval()


def _eval_one_block(net):
    for m in _norms(net.features.denseblock2):
        m.eval()


def _eval_bottlenecks(net):  # norm2 frozen, norm1 training: mixed within every layer
    for layer in _dense_layers(net):
        layer.norm2.eval()


def _eval_every_other_norm1(net):  # shared statistics for some readers of a channel, running ones for others
    for i, layer in enumerate(_dense_layers(net)):
        if i % 2:
            layer.norm1.eval()


def _freeze(params):
    for p in params:
        p.requires_grad_(False)


STATES = {
    "all training": ({}, lambda net: None),
    "every BN eval": ({}, _eval_all),
    "dense layers' BNs eval": ({}, _eval_dense_layers),
    "one block's BNs eval": ({}, _eval_one_block),
    "bottleneck BNs eval": ({}, _eval_bottlenecks),
    "every other norm1 eval": ({}, _eval_every_other_norm1),
    "stem frozen": ({}, lambda net: _freeze([net.features.conv0.weight, *net.features.norm0.parameters()])),
    "a block frozen": ({}, lambda net: _freeze(net.features.denseblock2.parameters())),
    "BN affines frozen": ({}, lambda net: _freeze(p for m in _norms(net) for p in m.parameters())),
    "norm_eval=True": ({"norm_eval": True}, lambda net: None),
    "frozen_stages=2": ({"frozen_stages": 2}, lambda net: None),
}
SETTINGS = [(8, 0.2, True), (16, 0.0, False), (32, 0.2, False)]  # output stride, dropout, channels-last


def _randomise_norms(net, seed=3):
    """Non-trivial affine parameters and running statistics, so eval mode differs from training mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in _norms(net):
            c = m.num_features
            m.weight.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.copy_(torch.rand(c, generator=g) - 0.5)
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)


def _pair(state, output_stride, drop_rate, channels_last, convert=None):
    options, apply = STATES[state]
    kw = dict(num_units_per_block=UNITS, growth_rate=8, output_stride=output_stride, drop_rate=drop_rate,
              channels_last=channels_last, **options)
    torch.manual_seed(0)
    nets = [densenet_custom(memory_efficient=me, **kw) for me in (False, True)]
    _randomise_norms(nets[0])
    nets[1].load_state_dict(nets[0].state_dict())
    for net in nets:
        if convert is not None:
            convert(net)
        net.double().train()
        apply(net)
    return nets


def _step(net, x, seed=1):
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)  # the same dropout masks in both modes
    feats = net.forward_features(x)
    w = lambda f: torch.linspace(-1, 1, f.shape[1], dtype=f.dtype).view(1, -1, 1, 1)
    sum((f.double() * w(f)).square().mean() for f in feats.values()).backward()
    return feats, x.grad


def _close(a, b, what, rel):
    err, scale = (a - b).abs().max().item(), b.abs().max().item()
    assert err <= rel * scale + 1e-12, f"{what}: max deviation {err:.3g} at scale {scale:.3g}"


def _assert_same_step(plain, eff, x, rel=1e-9):
    frozen = {name: b.clone() for m_name, m in plain.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
              and not m.training for name, b in [(f"{m_name}.running_mean", m.running_mean),
                                                  (f"{m_name}.running_var", m.running_var)]}
    fp, gp = _step(plain, x)
    fe, ge = _step(eff, x)
    for name in fp:
        _close(fe[name], fp[name], f"forward {name}", rel)
    _close(ge, gp, "input gradient", rel)
    for (name, p), q in zip(plain.named_parameters(), eff.parameters()):
        assert (p.grad is None) == (q.grad is None) == (not p.requires_grad), f"gradient presence of {name}"
        if p.grad is not None:
            _close(q.grad, p.grad, f"gradient of {name}", rel)
    for (name, b), c in zip(plain.named_buffers(), eff.buffers()):
        _close(c.double(), b.double(), f"buffer {name}", rel)
        if name in frozen:
            assert torch.equal(c, frozen[name]), f"{name} of a BatchNorm in eval mode changed"


@pytest.mark.parametrize("output_stride, drop_rate, channels_last", SETTINGS)
@pytest.mark.parametrize("state", list(STATES))
def test_memory_efficient_equals_plain_in_every_training_state(state, output_stride, drop_rate, channels_last):
    plain, eff = _pair(state, output_stride, drop_rate, channels_last)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    _assert_same_step(plain, eff, x)


@pytest.mark.parametrize("state", ["all training", "dense layers' BNs eval", "every other norm1 eval"])
def test_dense_sync_batchnorm_conversion_keeps_the_equality(state):
    plain, eff = _pair(state, 16, 0.2, True, convert=sync_dense_layer_norms)
    assert isinstance(eff.features.denseblock1.denselayer1.norm1, DenseSyncBatchNorm)
    _assert_same_step(plain, eff, torch.randn(2, 3, 64, 64, dtype=torch.float64))


class _BlockNet(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward_features(self, x):
        return {"out": self.block(x)}


def test_sync_batchnorm_blocks_with_frozen_layers_equal_plain():
    # Outside a process group PyTorch's SyncBatchNorm runs only inside the efficient blocks on CPU: compare blocks.
    plain, eff = _pair("every other norm1 eval", 16, 0.0, False)
    eff = nn.SyncBatchNorm.convert_sync_batchnorm(eff)
    _eval_every_other_norm1(eff)
    block_p, block_e = plain.features.denseblock2, eff.features.denseblock2
    x = torch.randn(2, block_p.num_input_features, 8, 8, dtype=torch.float64)
    _assert_same_step(_BlockNet(block_p), _BlockNet(block_e), x)
    out = block_e(x.clone().requires_grad_())
    assert "EfficientDenseBlock" in type(out.grad_fn).__name__


@pytest.mark.parametrize("state", ["every BN eval", "every other norm1 eval"])
def test_bf16_autocast_is_as_accurate_as_plain_bf16(state):
    plain, eff = _pair(state, 16, 0.0, True)
    ref, _ = _pair(state, 16, 0.0, True)
    for net in (plain, eff):
        net.float()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    assert_as_accurate_as_plain_in_bf16(plain, eff, ref, x)


def assert_as_accurate_as_plain_in_bf16(plain, eff, ref, x):
    """A bf16-autocast step of ``eff`` is at most twice as far from ``ref``'s float64 step on ``x`` as ``plain``'s
    (``plain`` and ``eff`` float32, ``ref`` float64, the same weights)."""
    exact, exact_gx = _step(ref, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fp, gp = _step(plain, x.float())
        fe, ge = _step(eff, x.float())

    def err(a, b):
        return ((a.double() - b).norm() / b.norm()).item()

    for name in exact:
        assert err(fe[name], exact[name]) <= 2 * err(fp[name], exact[name]) + 1e-3, name
    assert err(ge, exact_gx) <= 2 * err(gp, exact_gx) + 1e-3
    grads = lambda net: torch.cat([p.grad.flatten().double() for p in net.parameters()])
    assert err(grads(eff), grads(ref)) <= 2 * err(grads(plain), grads(ref)) + 1e-3


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_sync_conversion_keeps_the_dtype(dtype):
    net = densenet_custom(num_units_per_block=(2, 2), growth_rate=4, memory_efficient=True).to(dtype)
    bn = net.features.denseblock1.denselayer1.norm1
    bn.running_mean.normal_()
    before = bn.running_mean.clone()
    sync_dense_layer_norms(net)
    new = net.features.denseblock1.denselayer1.norm1
    assert new.weight.dtype == new.running_mean.dtype == dtype
    assert torch.equal(new.running_mean, before)  # no round trip through float32
    net(torch.randn(2, 3, 32, 32, dtype=dtype)).sum().backward()  # no mixed-dtype error


def test_norm_eval_and_frozen_stages_survive_train():
    net = densenet_custom(num_units_per_block=UNITS, growth_rate=8, norm_eval=True, frozen_stages=1)
    net.eval().train()
    assert not any(m.training for m in _norms(net))
    assert net.training and net.features.denseblock2.training
    assert not any(p.requires_grad for p in [*net.features.conv0.parameters(), *net.features.denseblock1.parameters(),
                                             *net.features.transition1.parameters()])
    assert all(p.requires_grad for p in net.features.denseblock2.parameters())


@pytest.mark.parametrize("bad", [{"frozen_stages": 5}, {"frozen_stages": -2}, {"norm_eval": "yes"}])
def test_freezing_options_are_checked(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        densenet_custom(num_units_per_block=UNITS, growth_rate=8, **bad)
