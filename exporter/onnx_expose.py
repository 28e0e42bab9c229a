"""Graph surgery on any ONNX image model: intermediate tensors become outputs, plus pooled variants.

Pooled heads are GlobalAveragePool/GlobalMaxPool + Flatten (valid in every opset), so ONNX Runtime hands
out [N, C] vectors directly and the service never pools full maps in Python.
"""

from __future__ import annotations

import onnx
from onnx import helper

from exporter.errors import ExportError, unknown_name
from exporter.receptive_field import Geometry, analyse

POOL_OPS = {"avg": "GlobalAveragePool", "max": "GlobalMaxPool"}


def output_name(layer: str, pooling: str) -> str:
    return layer if pooling == "none" else f"{layer}__{pooling}"


def image_input(model: onnx.ModelProto) -> tuple[str, list[int | str]]:
    """The single NCHW image input of a model, or ExportError saying why the model is not one."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise ExportError(f"not a CNN-like image model: expected one image input, found {len(inputs)} ({names})")
    tensor = inputs[0].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim]
    if tensor.elem_type != onnx.TensorProto.FLOAT:
        raise ExportError(f"not a CNN-like image model: input {inputs[0].name} is not float32")
    if len(dims) != 4 or dims[1] not in (1, 3):
        raise ExportError(
            f"not a CNN-like image model: input {inputs[0].name} has shape {dims}, expected [N, 1|3, H, W]"
        )
    return inputs[0].name, dims


def spatial_tensors(model: onnx.ModelProto, input_name: str) -> dict[str, Geometry]:
    """Every tensor computed from the image, in graph order, with its geometry."""
    return {name: geo for name, geo in analyse(model, input_name).items() if name != input_name}


def check_tensors(model: onnx.ModelProto, input_name: str, tensors: list[str]) -> None:
    known = spatial_tensors(model, input_name)
    for tensor in tensors:
        if tensor not in known:
            raise unknown_name("tensor", tensor, known, "`python -m exporter onnx MODEL --list-tensors`")


def auto_layers(model: onnx.ModelProto, input_name: str) -> dict[str, str]:
    """Layer name -> tensor: the last tensor at each stride (where the resolution changes) + final outputs."""
    last_at_stride: dict[float, str] = {}
    padded = {out for node in model.graph.node if node.op_type == "Pad" for out in node.output}
    for name, geo in spatial_tensors(model, input_name).items():
        if geo.spatial and geo.receptive_field > 1 and name not in padded:  # a padded map is not a feature
            last_at_stride.pop(geo.stride, None)  # re-insert: keeps the order of the *last* occurrence
            last_at_stride[geo.stride] = name
    layers = {f"stride{_stride_label(stride)}": tensor for stride, tensor in last_at_stride.items()}
    for output in model.graph.output:
        layers.setdefault(output.name, output.name)
    if not last_at_stride:
        raise ExportError("not a CNN-like image model: no spatial feature maps found in the graph")
    return layers


def _stride_label(stride: float) -> str:
    return str(int(stride)) if float(stride).is_integer() else f"{stride:g}".replace(".", "_")


def _inferred_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """Type (element type + shape, as far as known) of every tensor, from ONNX shape inference."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference is a nicety here; float32 of unknown shape is the fallback
        inferred = model
    values = [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]
    return {v.name: v.type for v in values if v.type.tensor_type.elem_type}


def expose(model: onnx.ModelProto, layers: dict[str, str]) -> onnx.ModelProto:
    """A copy of `model` in which each layer name is a graph output carrying its tensor."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    graph = exposed.graph
    types = _inferred_types(model)
    outputs = {o.name for o in graph.output}
    taken = {name for node in graph.node for name in node.output} | {i.name for i in graph.input}
    for layer, tensor in layers.items():
        pooled = [output_name(layer, pooling) for pooling in POOL_OPS]
        if any(name in taken for name in pooled):  # e.g. the graph is itself an export with pooled heads
            raise ExportError(f"layer {layer!r} would add outputs {' and '.join(pooled)}, but the graph already has "
                              "tensors of those names (an export of an export?); name the layer otherwise")  # fmt: skip
        if layer != tensor:
            if layer in taken:
                raise ExportError(f"layer name {layer!r} clashes with a tensor of the graph; choose another")
            _rename(graph, tensor, layer)
        if layer not in outputs:
            value = helper.make_tensor_value_info(layer, onnx.TensorProto.FLOAT, None)
            if tensor in types:  # inferred on the original graph, so keyed by the original name
                value.type.CopyFrom(types[tensor])
            graph.output.append(value)
            outputs.add(layer)
    return exposed


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Give a tensor a new name everywhere (an Identity alias trips ORT's Conv+Clip fusion)."""
    if old in {o.name for o in graph.output}:
        graph.node.append(helper.make_node("Identity", [old], [new], name=f"expose/{new}"))
        return
    for node in graph.node:
        node.output[:] = [new if name == old else name for name in node.output]
        node.input[:] = [new if name == old else name for name in node.input]
    for value in graph.value_info:
        if value.name == old:
            value.name = new


def add_pooled(model: onnx.ModelProto, spatial_layers: list[str], batch_dim) -> onnx.ModelProto:
    """Add `<layer>__avg` and `<layer>__max` [N, C] outputs for each spatial layer (already an output)."""
    pooled = onnx.ModelProto()
    pooled.CopyFrom(model)
    graph = pooled.graph
    types = {o.name: o.type.tensor_type.elem_type for o in graph.output}
    for layer in spatial_layers:
        for pooling, op in POOL_OPS.items():
            name = output_name(layer, pooling)
            graph.node.append(helper.make_node(op, [layer], [f"{name}__4d"], name=f"pool/{name}"))
            graph.node.append(helper.make_node("Flatten", [f"{name}__4d"], [name], axis=1, name=f"flat/{name}"))
            graph.output.append(helper.make_tensor_value_info(name, types[layer], [batch_dim, None]))
    return pooled
