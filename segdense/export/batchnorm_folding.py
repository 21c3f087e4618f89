"""Removing every BatchNormalization from an ONNX graph before INT8 quantization, without changing its outputs.

An inference BatchNorm is a per-channel affine map ``y = x * s + t`` with ``s = gamma / sqrt(var + eps)`` and
``t = beta - mean * s``. Where it sits decides where it can go:

- **After a convolution that feeds nothing else** (a head's conv-BN-ReLU, DenseNet's ``conv1 -> norm2`` in a
  bottleneck layer, the stem's ``conv0 -> norm0``): folded into the convolution's output channels,
  ``W' = W * s`` and ``b' = b * s + t``. The TorchScript exporter already does this for plain conv-BN pairs;
  the pass repeats it for any graph that still holds one.
- **DenseNet's pre-activation BatchNorms** (``norm1`` over a dense block's concatenation, the transitions'
  ``norm``, ``norm5``; every BN of an FC-DenseNet's dense layers): their input is a concatenation of many
  layers' outputs, and each of those outputs is also read by every later layer through a *different* BN, so
  there is no single producer to fold into. They cannot fold into the next convolution either, because a ReLU
  sits between. They become a depthwise 1x1 convolution (``group = C``, weight ``s``, bias ``t``): the same
  arithmetic, but an operator the quantizer handles like every other convolution, with one int8 weight scale per
  channel (exact for a per-channel scale) and an int32 bias. Left as BatchNormalization, the quantizer cannot
  quantize ``gamma`` per channel (``per_channel=True`` quantizes along axis 1, which a 1-D tensor lacks: "Axis 1
  is out-of-range for weight ... with rank 1", once per BatchNorm) and falls back to one int8 scale for all of a
  BatchNorm's ``gamma``, which costs channels with a small ``gamma`` most of their precision.
"""
from __future__ import annotations

from collections import Counter

import numpy as np


def _attribute(node, name: str, default):
    import onnx

    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def _affine(bn, arrays: dict) -> tuple[np.ndarray, np.ndarray]:
    """(s, t) of a BatchNormalization node with constant parameters: ``y = x * s + t`` per channel."""
    try:
        gamma, beta, mean, var = (arrays[name].astype(np.float64) for name in bn.input[1:5])
    except KeyError:
        raise ValueError(f"BatchNormalization {bn.name!r} has parameters that are not constants") from None
    scale = gamma / np.sqrt(var + float(_attribute(bn, "epsilon", 1e-5)))
    return scale, beta - mean * scale


def fold_batchnorms(model):
    """A copy of the ONNX ``model`` without BatchNormalization nodes (see the module's docstring), and
    ``{"folded": n, "affine": m}``: how many went into the preceding convolution and how many became depthwise
    1x1 convolutions."""
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    arrays = {**initializers, **_constants_behind_nodes(initializers, producer)}
    readers = Counter(name for node in graph.node for name in node.input)
    readers.update(out.name for out in graph.output)
    counts = {"folded": 0, "affine": 0}
    nodes, new_arrays = [], {}
    for node in graph.node:
        if node.op_type != "BatchNormalization":
            nodes.append(node)
            continue
        scale, shift = _affine(node, arrays)
        conv = producer.get(node.input[0])
        if conv is not None and conv.op_type == "Conv" and readers[node.input[0]] == 1 and conv.input[1] in arrays:
            _fold_into_conv(conv, node, scale, shift, arrays, new_arrays)
            counts["folded"] += 1
        else:
            nodes.append(_depthwise_affine(node, scale, shift, new_arrays))
            counts["affine"] += 1
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [numpy_helper.from_array(array, name) for name, array in {**initializers, **new_arrays}.items()
            if name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model, counts


def _constants_behind_nodes(initializers: dict, producer: dict) -> dict:
    """The values of node outputs that are constants: Constant nodes, and Identity nodes passing an initializer
    or a constant on (the exporter reads a parameter that appears twice through them)."""
    from onnx import numpy_helper

    found = {name: numpy_helper.to_array(node.attribute[0].t) for name, node in producer.items()
             if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value"}
    for name in list(producer):
        source = name
        while source in producer and producer[source].op_type == "Identity":
            source = producer[source].input[0]
        if source != name and (source in initializers or source in found):
            found[name] = initializers.get(source, found.get(source))
    return found


def _fold_into_conv(conv, bn, scale, shift, arrays: dict, new_arrays: dict) -> None:
    """``conv`` then ``bn`` as one convolution writing ``bn``'s output (new weight and bias tensors, so that a
    weight shared with another node stays as it was)."""
    weight = arrays[conv.input[1]].astype(np.float64)
    bias = arrays[conv.input[2]].astype(np.float64) if len(conv.input) > 2 and conv.input[2] else 0.0
    w_name, b_name = f"{conv.name or conv.output[0]}.folded_weight", f"{conv.name or conv.output[0]}.folded_bias"
    new_arrays[w_name] = (weight * scale.reshape(-1, *[1] * (weight.ndim - 1))).astype(np.float32)
    new_arrays[b_name] = (bias * scale + shift).astype(np.float32)
    inputs = [conv.input[0], w_name, b_name]
    del conv.input[:]
    conv.input.extend(inputs)
    conv.output[0] = bn.output[0]


def _depthwise_affine(bn, scale, shift, new_arrays: dict):
    """A depthwise 1x1 Conv computing ``x * scale + shift`` per channel, in place of ``bn``."""
    import onnx

    name = bn.name or bn.output[0]
    channels = scale.shape[0]
    new_arrays[f"{name}.affine_weight"] = scale.reshape(channels, 1, 1, 1).astype(np.float32)
    new_arrays[f"{name}.affine_bias"] = shift.astype(np.float32)
    return onnx.helper.make_node(
        "Conv", [bn.input[0], f"{name}.affine_weight", f"{name}.affine_bias"], [bn.output[0]],
        name=f"{name}.affine", group=channels, kernel_shape=[1, 1])
