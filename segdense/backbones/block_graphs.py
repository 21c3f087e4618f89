"""CUDA graphs for dense blocks in training (opt-in: ``DenseNet(cuda_graphs=True)``).

A dense block launches a few dozen small kernels per layer in forward and again in backward. On a
fast GPU the memory-efficient step is bound by the host launching them, not by the kernels (the H100
profile is in docs/benchmarks.md). A CUDA graph replays a block's whole forward as one launch, and
its whole backward as another.

How (after ``torch.cuda.make_graphed_callables``, with two differences):

* A block is captured the first time it trains on an input signature (shape, strides, dtype,
  device, autocast state, whether the input needs a gradient): three eager warm-up passes on a
  side stream, then one forward and one backward capture into a private memory pool. The warm-up
  passes would count as BatchNorm updates, so every buffer of the block is restored afterwards:
  the running statistics and ``num_batches_tracked`` are those of eager training.
* Gradients leave the graph as copies. ``make_graphed_callables`` hands out views of the graph's
  static memory, which ``AccumulateGrad`` may adopt as ``param.grad``; the next replay then
  overwrites it, and gradient accumulation over several backward passes would double-count.
* A second training forward before the first one's backward (the graph's output memory is still
  in use) runs eagerly instead of overwriting it.

Two signatures are kept per block (the training crop and, say, a smaller last batch); the oldest
is dropped beyond that. The graph's output is static memory: it is valid until the block's next
graphed forward, like any CUDA-graph output.

Refused, each with its own error: a CPU input; ``BatchNorm`` with ``momentum=None`` (its
cumulative average reads the step count on the host, which a replay cannot); statistics synced
across processes (collectives are not captured here).
"""
from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import Callable, Sequence

import torch
import torch.nn as nn

from .block_stats import sync_group

WARMUP_PASSES = 3
MAX_SIGNATURES = 2


def check_graphable(x: torch.Tensor, block: nn.Module) -> None:
    """One clear error when ``block`` cannot be CUDA-graphed on input ``x``."""
    norms = [m for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if any(m.momentum is None and m.track_running_stats for m in norms):
        raise ValueError(
            "cuda_graphs=True needs BatchNorm momentum as a number: momentum=None (cumulative "
            "average) reads num_batches_tracked on the host, which a graph replay cannot")
    if sync_group(norms) is not None:
        raise ValueError(
            "cuda_graphs=True does not capture statistics synced across processes (SyncBatchNorm "
            "under a process group); use cuda_graphs=False for synced training")
    if not x.is_cuda:
        raise ValueError(
            f"cuda_graphs=True needs a CUDA input, got a {x.device.type} tensor; "
            "use cuda_graphs=False on this device")


def signature(x: torch.Tensor, params: Sequence[torch.Tensor], norm_modes: Sequence[bool] = ()) -> tuple:
    """What a captured pass is valid for: the input's layout and type, the autocast state, which
    tensors need gradients and which BatchNorms train (a frozen one normalises with its running
    statistics: another graph)."""
    autocast = torch.is_autocast_enabled("cuda")
    return (tuple(x.shape), x.stride(), x.dtype, x.device, x.requires_grad, autocast,
            torch.get_autocast_dtype("cuda") if autocast else None,
            tuple(p.requires_grad for p in params), tuple(norm_modes))


class _CapturedPass:
    """One captured forward and backward of ``run(x)`` with static input, output and gradients."""

    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                 params: Sequence[torch.Tensor], buffers: Sequence[torch.Tensor]) -> None:
        self.static_x = x.detach().clone(memory_format=torch.preserve_format)
        self.static_x.requires_grad_(x.requires_grad)
        surface = [self.static_x, *params]
        self.wants_grad = [t.requires_grad for t in surface]
        inputs = [t for t in surface if t.requires_grad]
        saved = [b.detach().clone() for b in buffers]
        # Autocast's weight cache would keep casts made inside the capture; capture without it.
        with torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"),
                            enabled=torch.is_autocast_enabled("cuda"), cache_enabled=False):
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm-up: cuDNN autotuning, lazy initialisation
                for _ in range(WARMUP_PASSES):
                    out = run(self.static_x)
                    torch.autograd.grad(out, inputs, torch.zeros_like(out), allow_unused=True)
            torch.cuda.current_stream().wait_stream(stream)
            torch.cuda.synchronize()
            pool = torch.cuda.graph_pool_handle()
            self.fwd, self.bwd = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.fwd, pool=pool, stream=stream, capture_error_mode="thread_local"):
                self.static_out = run(self.static_x)
            self.static_grad_out = torch.empty_like(self.static_out)
            with torch.cuda.graph(self.bwd, pool=pool, stream=stream, capture_error_mode="thread_local"):
                grads = iter(torch.autograd.grad(self.static_out, inputs, self.static_grad_out,
                                                 allow_unused=True))
        self.static_grads = [next(grads) if wants else None for wants in self.wants_grad]
        with torch.no_grad():  # the warm-up passes updated the running statistics: undo them
            for b, s in zip(buffers, saved):
                b.copy_(s)
        self.pending: weakref.ref | None = None  # the output whose backward has not run yet

    def busy(self) -> bool:
        """The last replay's output is alive and its backward has not run: replaying now would
        overwrite memory that backward still needs."""
        return self.pending is not None and self.pending() is not None

    def backward_done(self, grad: torch.Tensor) -> None:
        self.pending = None


class _Replay(torch.autograd.Function):
    @staticmethod
    def forward(ctx, captured: _CapturedPass, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        if captured.static_x.data_ptr() != x.data_ptr():
            captured.static_x.copy_(x)
        captured.fwd.replay()
        ctx.captured = captured
        return captured.static_out.detach()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        c = ctx.captured
        c.static_grad_out.copy_(grad_out)
        c.bwd.replay()
        return (None, *(None if g is None else g.clone() for g in c.static_grads))


class BlockGraphs:
    """The captured passes of one block, by input signature (at most ``MAX_SIGNATURES``)."""

    def __init__(self) -> None:
        self.passes: OrderedDict[tuple, _CapturedPass] = OrderedDict()

    # Graphs belong to one module on one device: a copy (deepcopy for an EMA model, pickling)
    # starts without them and captures its own.
    def __deepcopy__(self, memo) -> "BlockGraphs":
        return BlockGraphs()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.passes = OrderedDict()

    def __call__(self, block: nn.Module, run: Callable[[torch.Tensor], torch.Tensor],
                 x: torch.Tensor) -> torch.Tensor:
        params = list(block.parameters())
        if not (x.requires_grad or any(p.requires_grad for p in params)):
            return run(x)  # nothing to differentiate: no backward to capture
        modes = [m.training for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        key = signature(x, params, modes)
        captured = self.passes.get(key)
        if captured is None:
            check_graphable(x, block)
            captured = _CapturedPass(run, x, params, list(block.buffers()))
            self.passes[key] = captured
            while len(self.passes) > MAX_SIGNATURES:
                self.passes.popitem(last=False)
        elif captured.busy():
            return run(x)  # a second forward before the first one's backward: eager
        self.passes.move_to_end(key)
        out = _Replay.apply(captured, x, *params)
        if out.requires_grad:
            captured.pending = weakref.ref(out)
            out.register_hook(captured.backward_done)
        return out
