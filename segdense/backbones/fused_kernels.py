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
def _affine(MEAN, INVSTD, GAMMA, BETA, rc, cmask):
    """Per-channel BatchNorm affine from the statistics and parameters: y = x * s + b."""
    mu = tl.load(MEAN + rc, mask=cmask, other=0.0).to(tl.float32)
    inv = tl.load(INVSTD + rc, mask=cmask, other=0.0).to(tl.float32)
    g = tl.load(GAMMA + rc, mask=cmask, other=0.0).to(tl.float32)
    beta = tl.load(BETA + rc, mask=cmask, other=0.0).to(tl.float32)
    s = inv * g
    return mu, inv, g, s, beta - mu * s


@triton.jit
def _bn_relu_kernel(X, Y, MEAN, INVSTD, GAMMA, BETA, M, C, sxm, sym, BM: tl.constexpr, BC: tl.constexpr):
    rm = (tl.program_id(0) * BM + tl.arange(0, BM)).to(tl.int64)
    rc = tl.program_id(1) * BC + tl.arange(0, BC)
    cmask = rc < C
    mask = (rm[:, None] < M) & cmask[None, :]
    x = tl.load(X + rm[:, None] * sxm + rc[None, :], mask=mask, other=0.0).to(tl.float32)
    mu, inv, g, s, b = _affine(MEAN, INVSTD, GAMMA, BETA, rc, cmask)
    y = tl.maximum(x * s[None, :] + b[None, :], 0.0)
    tl.store(Y + rm[:, None] * sym + rc[None, :], y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _bn_relu_bwd_reduce_kernel(DY, X, MEAN, INVSTD, GAMMA, BETA, PART, M, C, sdym, sxm,
                               ROWS: tl.constexpr, BM: tl.constexpr, BC: tl.constexpr):
    pid_m = tl.program_id(0)
    rc = tl.program_id(1) * BC + tl.arange(0, BC)
    cmask = rc < C
    mu, inv, g, s, b = _affine(MEAN, INVSTD, GAMMA, BETA, rc, cmask)
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
def _bn_relu_bwd_elemt_kernel(DY, X, OUT, MEAN, INVSTD, GAMMA, BETA, SUMS, inv_n, M, C,
                              sdym, sxm, som, ACCUMULATE: tl.constexpr, BM: tl.constexpr, BC: tl.constexpr):
    rm = (tl.program_id(0) * BM + tl.arange(0, BM)).to(tl.int64)
    rc = tl.program_id(1) * BC + tl.arange(0, BC)
    cmask = rc < C
    mask = (rm[:, None] < M) & cmask[None, :]
    mu, inv, g, s, b = _affine(MEAN, INVSTD, GAMMA, BETA, rc, cmask)
    mdy = tl.load(SUMS + rc, mask=cmask, other=0.0) * inv_n  # SUMS: [2, C] sums of dy, dy * x_hat
    mdyx = tl.load(SUMS + C + rc, mask=cmask, other=0.0) * inv_n
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


def bn_relu(x: torch.Tensor, mean, invstd, gamma, beta) -> torch.Tensor:
    """max((x - mean) * invstd * gamma + beta, 0) per channel, into a new channels-last tensor of
    x's dtype. The per-channel vectors must be contiguous."""
    m, c, sx = rows(x)
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    _bn_relu_kernel[_grid(m, c)](x, y, mean, invstd, gamma, beta, m, c, sx, c, BM=BLOCK_M, BC=BLOCK_C)
    return y


def bn_relu_backward_reduce(dy, x, mean, invstd, gamma, beta) -> torch.Tensor:
    """[2, C] float32: sums of dy and of dy * x_hat per channel over the pixels where the BN
    output is positive (the ReLU mask)."""
    m, c, sx = rows(x)
    _, _, sdy = rows(dy)
    rows_pp = max(min(ROWS_PER_PROGRAM, triton.next_power_of_2(m)), BLOCK_M)
    p = triton.cdiv(m, rows_pp)
    part = torch.empty((p, 2, c), dtype=torch.float32, device=x.device)
    _bn_relu_bwd_reduce_kernel[(p, triton.cdiv(c, BLOCK_C))](
        dy, x, mean, invstd, gamma, beta, part, m, c, sdy, sx, ROWS=rows_pp, BM=BLOCK_M, BC=BLOCK_C)
    return part.sum(0)


def bn_relu_backward_elemt(dy, x, out, mean, invstd, gamma, beta, sums, count: float, accumulate: bool) -> None:
    """Write (or add, ``accumulate``) the input gradient into ``out`` (same [M, C] shape as x);
    ``sums`` from :func:`bn_relu_backward_reduce` (all-reduced when statistics are synced) and
    ``count`` the elements per channel they were summed over."""
    m, c, sx = rows(x)
    _, _, sdy = rows(dy)
    _, _, so = rows(out)
    _bn_relu_bwd_elemt_kernel[_grid(m, c)](
        dy, x, out, mean, invstd, gamma, beta, sums, 1.0 / count, m, c, sdy, sx, so,
        ACCUMULATE=accumulate, BM=BLOCK_M, BC=BLOCK_C)
