"""Folding BatchNorms into the convolutions before them: the fused inference form of a model, in PyTorch.

In eval mode a BatchNorm is a per-channel affine map of its input. Where that input is a convolution's output that
nothing else reads (every conv-BN-ReLU unit, DenseNet's bottleneck ``conv1 -> norm2``, a stem's ``conv0 -> norm0``),
the map folds into the convolution's weight and bias (``torch.nn.utils.fusion.fuse_conv_bn_weights``) and the
BatchNorm becomes an ``nn.Identity``. Which pairs qualify is read from one forward pass on an example input, not from
module names: on every call, the convolution's output must go to that BatchNorm and to nothing else (no
concatenation, no skip connection; reading its shape is allowed), and the BatchNorm must read only that
convolution's outputs. A pre-activation BatchNorm (over a concatenation, after a ReLU) stays.

The ONNX exporter folds the same pairs itself (``segdense.export.batchnorm_folding`` handles what it leaves), so this
serves eager inference in PyTorch: the Predictor's ``fold_batchnorms`` option.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

__all__ = ["fold_conv_batchnorms"]

# Reads of a tensor that do not use its values (a BatchNorm checks its input's dim; decoders read a skip's shape).
_METADATA_READS = frozenset({"shape", "dtype", "device", "ndim", "size", "dim", "numel", "is_contiguous", "stride",
                             "requires_grad", "is_cuda", "layout", "is_floating_point", "__len__"})
FOLD_TOLERANCE = 1e-4  # largest relative output change folding may make on the example (float32 rounding)


def fold_conv_batchnorms(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A copy of ``model`` (in eval mode) with every BatchNorm that directly follows a convolution feeding nothing
    else folded into that convolution (see the module docstring); ``model`` is not changed. ``example``: an input
    batch the model takes, run once to find the pairs and once to check the copy against ``model``. The copy is for
    inference: its folded BatchNorms are gone, so training it is not training ``model``."""
    training = [name or "the model" for name, m in model.named_modules() if m.training]
    if training:
        raise ValueError(f"fold_conv_batchnorms needs a model in eval mode (call model.eval() first), but "
                         f"{training[0]} is in training mode: folding uses the BatchNorms' running statistics")
    fused = copy.deepcopy(model)
    with torch.no_grad():
        pairs = _foldable_pairs(fused, example)
        for conv, norm in pairs:
            _fold(conv, norm)
        _replace_with_identity(fused, {id(norm) for _, norm in pairs})
        _check_same_outputs(model, fused, example)
    return fused


class _ConvOutputUses(TorchFunctionMode):
    """Counts, for every convolution output recorded in ``self.outputs`` (id -> [conv, tensor, uses]), the torch
    functions that read its values."""

    def __init__(self):
        super().__init__()
        self.outputs: dict[int, list] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name == "__get__":  # a property: Tensor.shape, Tensor.T, ...
            name = getattr(getattr(func, "__self__", None), "__name__", name)
        if name not in _METADATA_READS:
            for leaf in tree_leaves((args, kwargs or {})):
                if isinstance(leaf, torch.Tensor) and id(leaf) in self.outputs:
                    self.outputs[id(leaf)][2] += 1
        return func(*args, **(kwargs or {}))


def _foldable_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[nn.Module, nn.Module]]:
    """(convolution, BatchNorm) pairs that qualify, found by running ``model`` on ``example``."""
    uses = _ConvOutputUses()
    norm_inputs: dict[nn.Module, list[int]] = {}
    convs = [m for m in model.modules() if isinstance(m, _ConvNd)]
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.running_mean is not None]

    def record_output(conv, _inputs, output):
        uses.outputs[id(output)] = [conv, output, 0]  # the tensor is kept, so its id is not reused

    def record_input(norm, inputs):  # None: an input no convolution wrote (its id may be reused once it is freed)
        norm_inputs.setdefault(norm, []).append(id(inputs[0]) if id(inputs[0]) in uses.outputs else None)

    handles = [m.register_forward_hook(record_output) for m in convs]
    handles += [m.register_forward_pre_hook(record_input) for m in norms]
    try:
        with uses:
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    followers: dict[nn.Module, set] = {}
    for conv, output, count in uses.outputs.values():
        readers = {norm for norm, ids in norm_inputs.items() if id(output) in ids}
        followers.setdefault(conv, set()).add(next(iter(readers)) if count == 1 and len(readers) == 1 else None)
    pairs = []
    for conv, found in followers.items():
        norm = next(iter(found))
        if len(found) == 1 and norm is not None and all(
                i is not None and uses.outputs[i][0] is conv for i in norm_inputs[norm]):
            pairs.append((conv, norm))
    return pairs


def _fold(conv: _ConvNd, norm: _BatchNorm) -> None:
    trainable = conv.weight.requires_grad
    weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps,
                                        norm.weight, norm.bias, transpose=isinstance(conv, _ConvTransposeNd))
    conv.weight, conv.bias = weight, nn.Parameter(bias.data, requires_grad=trainable)


def _replace_with_identity(model: nn.Module, norm_ids: set[int]) -> None:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if id(child) in norm_ids:
                setattr(parent, name, nn.Identity())


def _check_same_outputs(model: nn.Module, fused: nn.Module, example: torch.Tensor) -> None:
    """The folded copy gives ``model``'s outputs on ``example`` up to rounding; otherwise the folding is wrong,
    which is a bug, not a user's mistake."""
    for expected, got in zip(tree_leaves(model(example)), tree_leaves(fused(example))):
        if isinstance(expected, torch.Tensor) and expected.is_floating_point():
            diff = float((expected - got).abs().max())
            if not diff <= FOLD_TOLERANCE * max(1.0, float(expected.abs().max())):
                raise RuntimeError(f"folding the BatchNorms changed the model's output by {diff:.3g}")
