"""The fused dense-block kernels (Triton) against PyTorch references. Without a GPU they run in
Triton's interpreter (conftest sets TRITON_INTERPRET=1), on small shapes: odd channel counts,
channel slices of a channels-last buffer, batch 1, fp32 and bf16.

Tolerances: fp32 kernels against a float64 reference, 1e-5 relative to the tensor's scale (float32
arithmetic, sums of a few hundred terms); bf16 inputs and outputs, 1e-2 (bf16 keeps 8 bits)."""
import pytest
import torch
import torch.nn.functional as F

from segdense.backbones import densenet_custom
from segdense.backbones.efficient_block import TorchOps, TritonOps, choose_ops

K = pytest.importorskip("segdense.backbones.fused_kernels")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cuda":  # fp32 comparisons mean fp32: no TF32 convolutions or matmuls
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def _close(actual, expected, rel, what):
    err = (actual.double() - expected.double()).abs().max().item()
    scale = expected.double().abs().max().item()
    assert err <= rel * scale + 1e-12, f"{what}: max deviation {err:.3g} at scale {scale:.3g}"


def _slice_of_buffer(n, c, c_total, h, w, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    buf = (torch.randn(n, c_total, h, w, generator=g) * 2 + 0.3).to(DEVICE, dtype)
    buf = buf.contiguous(memory_format=torch.channels_last)
    return buf, buf[:, :c]


def _stats(c, seed):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(c, generator=g).to(DEVICE)
    invstd = (torch.rand(c, generator=g) + 0.5).to(DEVICE)
    gamma = (torch.rand(c, generator=g) + 0.5).to(DEVICE)
    beta = torch.randn(c, generator=g).to(DEVICE) * 0.5
    return mean, invstd, gamma, beta


def test_rows_describes_channel_slices_of_channels_last_tensors():
    buf, view = _slice_of_buffer(2, 37, 70, 5, 7, torch.float32, 0)
    assert K.rows(view) == (2 * 5 * 7, 37, 70)
    assert K.rows(buf) == (70, 70, 70)
    assert K.rows(buf.contiguous()) is None  # NCHW: channels not contiguous


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n, c, c_total, h, w", [(1, 37, 70, 5, 7), (2, 64, 64, 4, 4), (3, 5, 131, 1, 9)])
def test_bn_relu_equals_pytorch_on_a_buffer_slice(dtype, n, c, c_total, h, w):
    buf, x = _slice_of_buffer(n, c, c_total, h, w, dtype, 1)
    mean, invstd, gamma, beta = _stats(c, 2)
    scale, shift = invstd * gamma, beta - mean * invstd * gamma
    y = K.bn_relu(x, mean, invstd, gamma, beta)
    ref = torch.relu(x.double() * scale.double().view(1, -1, 1, 1) + shift.double().view(1, -1, 1, 1))
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    _close(y, ref, TOL[dtype], "bn_relu")
    assert (y == 0).any() and (y > 0).any()  # both sides of the ReLU are exercised


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("n, c, c_total, h, w", [(1, 37, 70, 5, 7), (2, 3, 9, 11, 13)])
def test_bn_relu_backward_equals_autograd(dtype, accumulate, n, c, c_total, h, w):
    """dx, dgamma, dbeta of ReLU(BatchNorm(x)) in training mode (statistics of x itself)."""
    buf, x = _slice_of_buffer(n, c, c_total, h, w, dtype, 3)
    x64 = x.double().detach().requires_grad_()
    _, _, gamma, beta = _stats(c, 4)
    g64, b64 = gamma.double().requires_grad_(), beta.double().requires_grad_()
    y = torch.relu(F.batch_norm(x64, None, None, g64, b64, training=True, eps=1e-5))
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(5)).to(DEVICE, dtype)
    dy = dy.contiguous(memory_format=torch.channels_last)
    y.backward(dy.double())
    var, mean = torch.var_mean(x.float(), dim=(0, 2, 3), unbiased=False)
    invstd = (var + 1e-5).rsqrt()
    sums = K.bn_relu_backward_reduce(dy, x, mean, invstd, gamma, beta)
    sum_dy, sum_dy_xhat = sums
    _close(sum_dy_xhat, g64.grad, TOL[dtype], "dgamma")
    _close(sum_dy, b64.grad, TOL[dtype], "dbeta")
    m = x.numel() // c
    gbuf = torch.randn(buf.shape, generator=torch.Generator().manual_seed(6)).to(DEVICE, dtype)
    gbuf = gbuf.contiguous(memory_format=torch.channels_last)
    before = gbuf.clone()
    out = gbuf[:, :c] if accumulate else torch.empty_like(x, memory_format=torch.channels_last)
    K.bn_relu_backward_elemt(dy, x, out, mean, invstd, gamma, beta, sums, m, accumulate=accumulate)
    expected = x64.grad + (before[:, :c].double() if accumulate else 0)
    _close(out, expected, TOL[dtype] * (4 if accumulate else 1), "dx")
    if accumulate:  # channels past the slice are untouched
        assert torch.equal(gbuf[:, c:], before[:, c:])


def _pair(drop_rate=0.0, **kw):
    torch.manual_seed(0)
    kw = dict(num_units_per_block=(2, 3, 2), growth_rate=5, num_init_features=7, drop_rate=drop_rate, **kw)
    plain = densenet_custom(**kw)
    for bn in plain.modules():  # non-trivial affine parameters
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.weight.data.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(1))
            bn.bias.data.uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(2))
    fused = densenet_custom(memory_efficient=True, fused=True, **kw)
    fused.load_state_dict(plain.state_dict())
    return [m.to(DEVICE, memory_format=torch.channels_last) for m in (plain, fused)]


def _step(net, x):
    x = x.clone().requires_grad_()
    torch.manual_seed(3)
    out = net.forward_features(x)
    loss = sum((f.float() * torch.linspace(-1, 1, f.shape[1], device=f.device).view(1, -1, 1, 1)).square().mean()
               for f in out.values())
    loss.backward()
    return out, x.grad


@pytest.mark.parametrize("output_stride", [16, 8, 4])  # the last block's 3x3 convs dilated 1, 2 and 4
@pytest.mark.parametrize("drop_rate", [0.0, 0.2])
def test_fused_block_gradients_and_buffers_equal_plain_fp32(output_stride, drop_rate):
    plain, fused = _pair(drop_rate, output_stride=output_stride)
    x = torch.randn(2, 3, 32, 32).to(DEVICE).contiguous(memory_format=torch.channels_last)
    fp, gp = _step(plain, x)
    ff, gf = _step(fused, x)
    for name in fp:
        _close(ff[name], fp[name], 1e-4, f"forward {name}")
    _close(gf, gp, 1e-4, "input gradient")
    for (name, p), q in zip(plain.named_parameters(), fused.parameters()):
        _close(q.grad, p.grad, 1e-4, f"gradient of {name}")
    for (name, b), c in zip(plain.named_buffers(), fused.buffers()):
        if "num_batches_tracked" not in name:
            _close(c, b, 1e-5, f"buffer {name}")
    probe = torch.randn(1, 7, 8, 8, device=DEVICE, requires_grad=True).contiguous(memory_format=torch.channels_last)
    assert "EfficientDenseBlock" in type(fused.features.denseblock1(probe).grad_fn).__name__


def _relative_grad_error(net, ref):
    a = torch.cat([p.grad.float().flatten() for p in net.parameters()])
    b = torch.cat([p.grad.float().flatten() for p in ref.parameters()])
    return ((a - b).norm() / b.norm()).item()


def test_fused_block_under_bf16_autocast_is_as_accurate_as_plain():
    """bf16 gradients of a small random net are far from fp32 ones in any implementation (~25% here,
    BatchNorm over few pixels amplifies rounding); the fused path must be about as close as plain."""
    plain, fused = _pair()
    ref, _ = _pair()
    x = torch.randn(2, 3, 64, 64).to(DEVICE).contiguous(memory_format=torch.channels_last)
    fr, _ = _step(ref, x)
    with torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16):
        fp, _ = _step(plain, x)
        ff, _ = _step(fused, x)
    _close(ff["block3"].float(), fp["block3"].float(), 3e-2, "forward")
    for p, q in zip(plain.parameters(), fused.parameters()):
        assert q.grad.dtype == p.dtype
    err_plain, err_fused = _relative_grad_error(plain, ref), _relative_grad_error(fused, ref)
    assert err_fused <= 1.5 * err_plain + 0.02, (err_fused, err_plain)


def test_fused_kernels_are_opt_in():
    x = torch.randn(1, 4, 3, 3).contiguous(memory_format=torch.channels_last).to(DEVICE)
    assert choose_ops(x, None) is TorchOps
    assert choose_ops(x, False) is TorchOps
    assert choose_ops(x, True) is TritonOps  # CUDA, or the interpreter on CPU (CI)
