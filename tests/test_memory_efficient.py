"""The memory-efficient DenseNet path (shared block buffer, BN-ReLU recomputed in backward) is the
plain network: same forward, same gradients, same BN running statistics, far less saved memory."""
import io

import pytest
import torch

from segdense.backbones import build_backbone, densenet_custom

TOL = dict(rtol=1e-4, atol=1e-6)


def assert_close_scaled(actual, expected, what, rel):
    """Equal up to rounding: the largest deviation is below ``rel`` of the tensor's scale."""
    err = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= rel * scale + 1e-12, f"{what}: max deviation {err:.3g} at scale {scale:.3g}"


def _pair(builder: str, **kw):
    torch.manual_seed(0)
    plain = build_backbone(builder, memory_efficient=False, **kw)
    eff = build_backbone(builder, memory_efficient=True, **kw)
    eff.load_state_dict(plain.state_dict())
    return plain, eff


def _train_step(net, x, seed=1):
    x = x.clone().requires_grad_()
    torch.manual_seed(seed)  # same dropout masks in both modes
    feats = net.forward_features(x)
    # A loss that weighs channels differently, so every gradient path is exercised.
    w = lambda f: torch.linspace(-1, 1, f.shape[1], dtype=f.dtype).view(1, -1, 1, 1)
    loss = sum((f * w(f)).square().mean() for f in feats.values())
    loss.backward()
    return feats, x.grad


def _assert_same_step(plain, eff, x, rel):
    fp, gp = _train_step(plain, x)
    fe, ge = _train_step(eff, x)
    for name in fp:
        assert_close_scaled(fe[name], fp[name], f"forward {name}", rel)
    assert_close_scaled(ge, gp, "input gradient", rel)
    for (name, p), q in zip(plain.named_parameters(), eff.parameters()):
        assert_close_scaled(q.grad, p.grad, f"gradient of {name}", rel)
    for (name, b), c in zip(plain.named_buffers(), eff.buffers()):
        assert_close_scaled(c.double(), b.double(), f"buffer {name}", rel)


def _relative_error(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    a, b = torch.cat([t.flatten() for t in a]), torch.cat([t.flatten() for t in b])
    return ((a - b).norm() / b.norm()).item()


# Every output stride with and without dropout on densenet121; the deeper and wider builders once each, at other
# strides (they differ from densenet121 only in depth, width and growth rate: the same blocks and transitions).
@pytest.mark.parametrize("builder, output_stride, drop_rate",
                         [("densenet121", os_, drop) for os_ in (32, 16, 8, 4) for drop in (0.0, 0.2)]
                         + [("densenet169", 32, 0.2), ("densenet201", 16, 0.0), ("densenet161", 8, 0.2)])
def test_builder_memory_efficient_equals_plain(builder, output_stride, drop_rate):
    # float64, so the comparison is about the algorithm (shared statistics, recomputation), not
    # fp32 rounding, which 100-200 randomly initialised BN layers amplify to ~1% of a gradient.
    # Batch 1 at 64x64: the deepest maps at OS32 still hold 4 values per channel.
    plain, eff = _pair(builder, output_stride=output_stride, drop_rate=drop_rate)
    plain.double(), eff.double()
    _assert_same_step(plain, eff, torch.randn(1, 3, 64, 64, dtype=torch.float64), rel=1e-8)


@pytest.mark.parametrize(
    "output_stride, initial_output_stride",
    [(os_, 4) for os_ in (4, 8, 16, 32)] + [(os_, 2) for os_ in (2, 4, 8, 16)],
)
def test_custom_memory_efficient_equals_plain(output_stride, initial_output_stride):
    kw = dict(num_units_per_block=(2, 3, 2, 2), growth_rate=8, output_stride=output_stride,
              initial_output_stride=initial_output_stride)
    plain, eff = _pair("densenet_custom", **kw)
    plain.double(), eff.double()
    _assert_same_step(plain, eff, torch.randn(2, 3, 64, 64, dtype=torch.float64), rel=1e-9)


def test_memory_efficient_with_dropout_equals_plain():
    plain, eff = _pair("densenet_custom", num_units_per_block=(3, 2), growth_rate=8, drop_rate=0.3)
    plain.double(), eff.double()
    _assert_same_step(plain, eff, torch.randn(2, 3, 32, 32, dtype=torch.float64), rel=1e-9)


def test_running_stats_updated_once_per_training_forward():
    _, eff = _pair("densenet_custom", num_units_per_block=(2, 2), growth_rate=8)
    _train_step(eff, torch.randn(2, 3, 32, 32))
    bn = eff.features.denseblock1.denselayer2.norm1
    assert bn.num_batches_tracked.item() == 1
    # One momentum-0.1 update from (0, 1) towards the batch mean: |mean| must be small but nonzero.
    assert 0 < bn.running_mean.abs().max() < 1


def test_block_input_gradient_reaches_stem():
    _, eff = _pair("densenet_custom", num_units_per_block=(2, 2), growth_rate=8)
    _train_step(eff, torch.randn(2, 3, 32, 32))
    assert eff.features.conv0.weight.grad is not None
    assert eff.features.conv0.weight.grad.abs().sum() > 0


def _saved_bytes(net, x, parameters: bool = True) -> int:
    """Bytes of distinct storages autograd keeps for backward after a forward pass (without ``parameters``, not
    counting the net's parameters, which autograd refers to without copying: the activations alone)."""
    storages = {}
    skipped = set() if parameters else {p.untyped_storage().data_ptr() for p in net.parameters()}

    def pack(t):
        if t.untyped_storage().data_ptr() not in skipped:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net.forward_features(x.requires_grad_())
    return sum(storages.values())


def test_memory_efficient_saves_under_half_of_plain():
    plain, eff = _pair("densenet_custom", num_units_per_block=(6, 12, 24, 16), growth_rate=8,
                       output_stride=8)
    x = torch.randn(1, 3, 64, 64)
    assert _saved_bytes(eff, x.clone()) < 0.5 * _saved_bytes(plain, x.clone())


def test_saved_memory_grows_linearly_with_depth():
    def saved(units):
        _, eff = _pair("densenet_custom", num_units_per_block=(units,), growth_rate=8)
        return _saved_bytes(eff, torch.randn(1, 3, 32, 32))

    s8, s16, s32 = saved(8), saved(16), saved(32)
    # Linear: doubling depth adds the same amount each time (plain mode would grow ~4x).
    assert (s32 - s16) == pytest.approx(2 * (s16 - s8), rel=0.05)


def test_channels_last_and_bf16_autocast_match_plain():
    plain, eff = _pair("densenet_custom", num_units_per_block=(2, 2), growth_rate=8)
    plain, eff = (m.to(memory_format=torch.channels_last) for m in (plain, eff))
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fp, gp = _train_step(plain, x)
        fe, ge = _train_step(eff, x)
    torch.testing.assert_close(fe["block2"].float(), fp["block2"].float(), rtol=2e-2, atol=2e-2)
    for p, q in zip(plain.parameters(), eff.parameters()):
        assert q.grad.dtype == p.dtype
        torch.testing.assert_close(q.grad, p.grad, rtol=5e-2, atol=5e-3)


def test_eval_mode_output_equals_plain():
    plain, eff = _pair("densenet_custom", num_units_per_block=(2, 3), growth_rate=8)
    x = torch.randn(2, 3, 32, 32)
    _train_step(plain, x), _train_step(eff, x)  # non-trivial running statistics
    plain.eval(), eff.eval()
    with torch.no_grad():
        torch.testing.assert_close(eff(x), plain(x), **TOL)


def test_torch_compile_works_in_eval_mode():
    net = densenet_custom(num_units_per_block=(2, 2), growth_rate=8, memory_efficient=True).eval()
    x = torch.randn(1, 3, 32, 32)
    # aot_eager runs Dynamo and AOTAutograd (the graph capture that could break) without
    # spending ~20 s of C++ compilation in Inductor on a 2-core CI machine.
    compiled = torch.compile(net, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), net(x), **TOL)


def test_onnx_export_works_in_eval_mode():
    import onnxruntime as ort
    net = densenet_custom(num_units_per_block=(2, 2), growth_rate=8, memory_efficient=True,
                          output_stride=8).eval()
    x = torch.randn(1, 3, 32, 32)
    buf = io.BytesIO()
    torch.onnx.export(net, (x,), buf, dynamo=False, input_names=["x"])
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"x": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), net(x), rtol=1e-4, atol=1e-5)


def test_torch_compile_training_step_gives_plain_gradients():
    plain, eff = _pair("densenet_custom", num_units_per_block=(2, 2), growth_rate=8)
    plain.double(), eff.double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    torch.compile(eff, backend="aot_eager")(x).square().mean().backward()
    plain(x).square().mean().backward()
    for p, q in zip(plain.parameters(), eff.parameters()):
        assert_close_scaled(q.grad, p.grad, "compiled gradient", rel=1e-9)


def test_channels_last_memory_efficient_equals_plain():
    plain, eff = _pair("densenet_custom", num_units_per_block=(2, 3), growth_rate=8, output_stride=8)
    plain, eff = (m.double().to(memory_format=torch.channels_last) for m in (plain, eff))
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    _assert_same_step(plain, eff, x, rel=1e-9)


def test_sync_batchnorm_without_process_group_takes_the_efficient_path():
    plain, eff = _pair("densenet_custom", num_units_per_block=(2, 3), growth_rate=8, drop_rate=0.2)
    eff = torch.nn.SyncBatchNorm.convert_sync_batchnorm(eff)
    plain.double(), eff.double()
    # Outside the dense blocks SyncBatchNorm needs a process group on CPU; compare the blocks.
    for name in ("denseblock1", "denseblock2"):
        x = torch.randn(2, getattr(plain.features, name).denselayer1.norm1.num_features, 8, 8,
                        dtype=torch.float64)
        _assert_same_step(_BlockNet(getattr(plain.features, name)), _BlockNet(getattr(eff.features, name)),
                          x, rel=1e-9)
    out = eff.features.denseblock1(torch.randn(2, 16, 8, 8, dtype=torch.float64, requires_grad=True))
    assert "EfficientDenseBlock" in type(out.grad_fn).__name__


class _BlockNet(torch.nn.Module):
    """A dense block with ``forward_features``, for the comparison helpers."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward_features(self, x):
        return {"out": self.block(x)}


def test_norm1_statistics_are_computed_once_per_channel(monkeypatch):
    """Shared statistics: a block of L layers reduces each channel once (block input, then each
    layer's new channels), not once per reading layer."""
    import segdense.backbones.block_stats as bs

    reduced = []
    real = torch.batch_norm_update_stats

    def counting_stats(x, *a, **kw):
        reduced.append(x.shape[1])
        return real(x, *a, **kw)

    monkeypatch.setattr(bs.torch, "batch_norm_update_stats", counting_stats)
    _, eff = _pair("densenet_custom", num_units_per_block=(6,), growth_rate=4, num_init_features=16)
    eff.features.denseblock1(torch.randn(2, 16, 8, 8, requires_grad=True))
    # block input (16) and the new channels of layers 1..5 (4 each); layer 6's are read by no norm1
    assert reduced == [16] + [4] * 5


def test_momentum_none_and_running_stats_match_batchnorm():
    plain, eff = _pair("densenet_custom", num_units_per_block=(3,), growth_rate=4)
    for m in list(plain.modules()) + list(eff.modules()):
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative moving average
    plain.double(), eff.double()
    for seed in range(3):
        x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        _assert_same_step(plain, eff, x, rel=1e-9)
    assert eff.features.denseblock1.denselayer3.norm1.num_batches_tracked.item() == 3


def test_nchw_memory_efficient_equals_plain():
    """channels_last=False keeps the block buffer NCHW: its channel slices are strided across the batch and take
    the multiply-add BN-ReLU and an NCHW compact copy for BatchNorm's backward."""
    plain, eff = _pair("densenet_custom", num_units_per_block=(2, 3), growth_rate=8, output_stride=8,
                       channels_last=False)
    plain, eff = plain.double(), eff.double()
    _assert_same_step(plain, eff, torch.randn(2, 3, 32, 32, dtype=torch.float64), rel=1e-9)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_backward_copies_a_buffer_slice_in_the_buffer_format(memory_format):
    # An NCHW slice used to be copied to channels-last: a transposing copy, then a mixed-layout BatchNorm
    # backward and a strided accumulation into the NCHW gradient buffer (5 ms per layer at 800 channels).
    from segdense.backbones.efficient_block import TorchOps

    buf = torch.randn(2, 96, 8, 8).contiguous(memory_format=memory_format)
    view = buf[:, :40]
    copy = TorchOps.backward_input(view)
    assert copy.is_contiguous(memory_format=memory_format)
    assert copy.data_ptr() != buf.data_ptr()
    assert torch.equal(copy, view)
