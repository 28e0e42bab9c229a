"""Stride and receptive field of every tensor of an ONNX image model, computed from the graph itself.

Walks the nodes in topological order from the image input: a convolution or pooling with kernel k,
stride s and dilation d turns (jump j, field r) into (j * s, r + (k - 1) * d * j); element-wise ops
keep the widest input; global pooling, flattening and products of two activations (attention) make a
tensor non-spatial. A matrix product with a constant weight is a per-position linear map (the channels-last
1x1 "Linear" layers of ConvNeXt and transformer MLPs), so it keeps the geometry.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import numpy_helper

# Ops whose output no longer has a spatial grid: every value sees the whole image.
_GLOBAL_OPS = {
    "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "Flatten", "Gemm", "MatMul", "Reshape",
    "ReduceMean", "ReduceMax", "ReduceSum", "ReduceMin", "ReduceL2", "Squeeze", "Softmax", "LogSoftmax",
}  # fmt: skip
_WINDOW_OPS = {"Conv", "ConvInteger", "QLinearConv", "MaxPool", "AveragePool", "LpPool"}
# Ops whose outputs carry no image information (shape arithmetic).
_SHAPE_OPS = {"Shape", "Size", "ConstantOfShape", "EyeLike", "RandomUniformLike", "RandomNormalLike"}


@dataclass(frozen=True)
class Geometry:
    """Where a tensor sits in the image: pixels per cell and pixels seen by one cell."""

    stride: float | None  # None once the tensor is no longer a spatial map
    receptive_field: int | None
    global_context: bool = False  # some path into it pooled over the whole image

    @property
    def spatial(self) -> bool:
        return self.stride is not None


_INPUT = Geometry(stride=1, receptive_field=1)
_GLOBAL = Geometry(stride=None, receptive_field=None, global_context=True)


def analyse(model: onnx.ModelProto, input_name: str) -> dict[str, Geometry]:
    """Geometry of every tensor that depends on `input_name`."""
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    constants = _constant_values(graph)
    geometry: dict[str, Geometry] = {input_name: _INPUT}
    for node in graph.node:
        inputs = [geometry[name] for name in node.input if name in geometry]
        if not inputs or node.op_type in _SHAPE_OPS:
            continue
        out = _propagate(node, inputs, initializers, constants)
        for name in node.output:
            geometry[name] = out
    return geometry


def _propagate(node, inputs: list[Geometry], initializers, constants) -> Geometry:
    if node.op_type == "MatMul" and len(inputs) == 1 and inputs[0].spatial:
        return inputs[0]  # activation x constant weight: position-wise, like a 1x1 convolution
    if node.op_type in _GLOBAL_OPS or not any(g.spatial for g in inputs):
        return _GLOBAL
    spatial = [g for g in inputs if g.spatial]
    context = any(g.global_context for g in inputs)
    if node.op_type in _WINDOW_OPS:
        first = inputs[0]
        kernel, stride, dilation = _window(node, initializers)
        return Geometry(
            stride=first.stride * stride,
            receptive_field=int(first.receptive_field + (kernel - 1) * dilation * first.stride),
            global_context=first.global_context,
        )
    if node.op_type in ("Resize", "Upsample"):
        factor = _upsample_factor(node, initializers, constants)
        first = inputs[0]
        return Geometry(first.stride / factor, first.receptive_field, first.global_context)
    widest = max(spatial, key=lambda g: (g.receptive_field, g.stride))
    return Geometry(widest.stride, widest.receptive_field, context)


def _attribute(node, name: str, default):
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def _window(node, initializers) -> tuple[int, int, int]:
    """Kernel, stride and dilation along the larger spatial axis (square in practice)."""
    kernel = _attribute(node, "kernel_shape", None)
    if kernel is None:
        weight_index = 3 if node.op_type == "QLinearConv" else 1
        weight = initializers.get(node.input[weight_index]) if len(node.input) > weight_index else None
        kernel = list(weight.dims[2:]) if weight is not None else [1]
    strides = _attribute(node, "strides", [1] * len(kernel))
    dilations = _attribute(node, "dilations", [1] * len(kernel))
    return max(kernel), max(strides), max(dilations)


def _constant_values(graph) -> dict[str, object]:
    values = {}
    for node in graph.node:
        if node.op_type == "Constant":
            value = _attribute(node, "value", None)
            if value is not None:
                values[node.output[0]] = numpy_helper.to_array(value)
    return values


def _upsample_factor(node, initializers, constants) -> float:
    """The spatial scale of a Resize/Upsample when it is a constant; 1 when it cannot be known."""
    for name in node.input[1:]:
        array = constants.get(name)
        if array is None and name in initializers:
            array = numpy_helper.to_array(initializers[name])
        if array is not None and array.size == 4 and array.dtype.kind == "f":
            return float(max(array[2:]))
    return 1.0
