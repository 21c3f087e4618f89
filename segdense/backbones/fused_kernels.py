"""Triton kernels for the dense block's BatchNorm-ReLU traffic (imported only when used).

Every tensor is seen as a row-major matrix [M, C] with M = N*H*W pixels and C channels, channels
contiguous and rows ``row_stride`` apart: a channels-last tensor, or a channel slice of the block's
channels-last buffer, read in place (no compact copy). All arithmetic is float32; outputs take the
destination's dtype.

* ``bn_relu``: y = max(x * scale + shift, 0), one pass (PyTorch: copy, BatchNorm, ReLU).
* ``bn_relu_backward``: BatchNorm + ReLU backward with the ReLU mask recomputed from x, as a
  reduction kernel (per-program partial sums of dy and dy * x_hat, summed in a fixed order, so
  results are deterministic) and an elementwise kernel that writes, or accumulates in place into
  the block's gradient buffer, dx = gamma * invstd * (dy - mean(dy) - x_hat * mean(dy * x_hat)).

With ``TRITON_INTERPRET=1`` set before this module is imported, they run on CPU tensors (slowly,
exactly), which is how CI tests them.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_M = 64
BLOCK_C = 64
ROWS_PER_PROGRAM = 512  # rows one reduction program sums (then partials are summed by torch)


@triton.jit
def _bn_relu_kernel(X, Y, SCALE, SHIFT, M, C, sxm, sym, BM: tl.constexpr, BC: tl.constexpr):
    rm = (tl.program_id(0) * BM + tl.arange(0, BM)).to(tl.int64)
    rc = tl.program_id(1) * BC + tl.arange(0, BC)
    cmask = rc < C
    mask = (rm[:, None] < M) & cmask[None, :]
    x = tl.load(X + rm[:, None] * sxm + rc[None, :], mask=mask, other=0.0).to(tl.float32)
    s = tl.load(SCALE + rc, mask=cmask, other=0.0)
    b = tl.load(SHIFT + rc, mask=cmask, other=0.0)
    y = tl.maximum(x * s[None, :] + b[None, :], 0.0)
    tl.store(Y + rm[:, None] * sym + rc[None, :], y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _bn_relu_bwd_reduce_kernel(DY, X, SCALE, SHIFT, MEAN, INVSTD, PART, M, C, sdym, sxm,
                               ROWS: tl.constexpr, BM: tl.constexpr, BC: tl.constexpr):
    pid_m = tl.program_id(0)
    rc = tl.program_id(1) * BC + tl.arange(0, BC)
    cmask = rc < C
    s = tl.load(SCALE + rc, mask=cmask, other=0.0)
    b = tl.load(SHIFT + rc, mask=cmask, other=0.0)
    mu = tl.load(MEAN + rc, mask=cmask, other=0.0)
    inv = tl.load(INVSTD + rc, mask=cmask, other=0.0)
    acc_dy = tl.zeros([BC], dtype=tl.float32)
    acc_dyx = tl.zeros([BC], dtype=tl.float32)
    for start in range(0, ROWS, BM):
        rm = (pid_m * ROWS + start + tl.arange(0, BM)).to(tl.int64)
        mask = (rm[:, None] < M) & cmask[None, :]
        x = tl.load(X + rm[:, None] * sxm + rc[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rm[:, None] * sdym + rc[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.where(x * s[None, :] + b[None, :] > 0, dy, 0.0)
        xhat = (x - mu[None, :]) * inv[None, :]
        acc_dy += tl.sum(dy, axis=0)
        acc_dyx += tl.sum(dy * xhat, axis=0)
    out = PART + pid_m * 2 * C + rc
    tl.store(out, acc_dy, mask=cmask)
    tl.store(out + C, acc_dyx, mask=cmask)


@triton.jit
def _bn_relu_bwd_elemt_kernel(DY, X, OUT, SCALE, SHIFT, MEAN, INVSTD, GAMMA, MDY, MDYX, M, C,
                              sdym, sxm, som, ACCUMULATE: tl.constexpr, BM: tl.constexpr, BC: tl.constexpr):
    rm = (tl.program_id(0) * BM + tl.arange(0, BM)).to(tl.int64)
    rc = tl.program_id(1) * BC + tl.arange(0, BC)
    cmask = rc < C
    mask = (rm[:, None] < M) & cmask[None, :]
    s = tl.load(SCALE + rc, mask=cmask, other=0.0)
    b = tl.load(SHIFT + rc, mask=cmask, other=0.0)
    mu = tl.load(MEAN + rc, mask=cmask, other=0.0)
    inv = tl.load(INVSTD + rc, mask=cmask, other=0.0)
    g = tl.load(GAMMA + rc, mask=cmask, other=0.0)
    mdy = tl.load(MDY + rc, mask=cmask, other=0.0)
    mdyx = tl.load(MDYX + rc, mask=cmask, other=0.0)
    x = tl.load(X + rm[:, None] * sxm + rc[None, :], mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY + rm[:, None] * sdym + rc[None, :], mask=mask, other=0.0).to(tl.float32)
    dy = tl.where(x * s[None, :] + b[None, :] > 0, dy, 0.0)
    xhat = (x - mu[None, :]) * inv[None, :]
    dx = (g * inv)[None, :] * (dy - mdy[None, :] - xhat * mdyx[None, :])
    optr = OUT + rm[:, None] * som + rc[None, :]
    if ACCUMULATE:
        dx += tl.load(optr, mask=mask, other=0.0).to(tl.float32)
    tl.store(optr, dx.to(OUT.dtype.element_ty), mask=mask)


def rows(t: torch.Tensor) -> tuple[int, int, int] | None:
    """(M, C, row stride) when ``t`` (N, C, H, W) is a [M, C] matrix with contiguous channels:
    channels-last, or a channel slice of a channels-last tensor; else ``None``."""
    if t.dim() != 4 or t.stride(1) != 1:
        return None
    n, c, h, w = t.shape
    rs = t.stride(3)
    if (h > 1 and t.stride(2) != w * rs) or (n > 1 and t.stride(0) != h * w * rs) or rs < c:
        return None
    return n * h * w, c, rs


def _grid(m: int, c: int, bm: int = BLOCK_M, bc: int = BLOCK_C):
    return (triton.cdiv(m, bm), triton.cdiv(c, bc))


def bn_relu(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """max(x * scale + shift, 0) per channel, into a new channels-last tensor of x's dtype."""
    m, c, sx = rows(x)
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    _bn_relu_kernel[_grid(m, c)](x, y, scale.float().contiguous(), shift.float().contiguous(), m, c, sx, c,
                                 BM=BLOCK_M, BC=BLOCK_C)
    return y


def bn_relu_backward_reduce(dy, x, scale, shift, mean, invstd) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of dy, sum of dy * x_hat) per channel over the pixels where x * scale + shift > 0."""
    m, c, sx = rows(x)
    _, _, sdy = rows(dy)
    rows_pp = min(ROWS_PER_PROGRAM, triton.next_power_of_2(m))
    rows_pp = max(rows_pp, BLOCK_M)
    p = triton.cdiv(m, rows_pp)
    part = torch.empty((p, 2, c), dtype=torch.float32, device=x.device)
    _bn_relu_bwd_reduce_kernel[(p, triton.cdiv(c, BLOCK_C))](
        dy, x, scale, shift, mean, invstd, part, m, c, sdy, sx, ROWS=rows_pp, BM=BLOCK_M, BC=BLOCK_C)
    sums = part.sum(0)
    return sums[0], sums[1]


def bn_relu_backward_elemt(dy, x, out, scale, shift, mean, invstd, gamma, mean_dy, mean_dy_xhat,
                           accumulate: bool) -> None:
    """Write (or add, ``accumulate``) the input gradient into ``out`` (same [M, C] shape as x)."""
    m, c, sx = rows(x)
    _, _, sdy = rows(dy)
    _, _, so = rows(out)
    _bn_relu_bwd_elemt_kernel[_grid(m, c)](
        dy, x, out, scale, shift, mean, invstd, gamma, mean_dy, mean_dy_xhat, m, c, sdy, sx, so,
        ACCUMULATE=accumulate, BM=BLOCK_M, BC=BLOCK_C)
