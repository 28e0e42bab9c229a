"""The first convolution's weights, read from the ONNX graph: the only filters that look at pixels.

Deeper filters act on feature maps, so only layers fed by the first Conv (through activations, padding,
batch-norm and the like, but no second weighted op) have filters worth drawing as little images. The graph
is read once per model file (cached by path and sha256).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from engine.errors import InvalidInput
from engine.manifest import Manifest

# ops that mix channels with learned weights: a layer behind one of them no longer sees pixels directly
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "Gemm", "MatMul", "MatMulInteger"})


class NoImageFilters(InvalidInput):
    """The model or layer has no first-convolution filters that can be shown as images."""


@dataclass(frozen=True)
class FirstConv:
    weights: np.ndarray  # [filters, input channels, kh, kw], float32
    node: str  # the Conv node's name (or its output tensor when unnamed)
    output: str  # tensor the Conv writes
    layers: tuple[str, ...]  # manifest layers fed by this Conv through weight-free ops only


def first_conv(path: Path, manifest: Manifest) -> FirstConv:
    """The first Conv on the image input and the layers that show its output; cached per model file."""
    layer_tensors = tuple((layer.name, layer.outputs["none"]) for layer in manifest.layers)
    return _first_conv(str(path), manifest.onnx.sha256, manifest.onnx.input, layer_tensors)


@lru_cache(maxsize=16)
def _first_conv(path: str, sha256: str, input_name: str, layer_tensors: tuple[tuple[str, str], ...]) -> FirstConv:
    del sha256  # part of the cache key only: a re-exported file gets read again
    graph = onnx.load(path).graph
    constants = _constants(graph)
    node = _first_conv_node(graph, input_name, constants)
    if node is None:
        raise NoImageFilters("the graph has no convolution on its image input")
    weights = constants.get(node.input[1])
    if weights is None:
        raise NoImageFilters(f"the first convolution's weights ({node.input[1]}) are not stored in the graph")
    direct = _direct_tensors(graph, node.output[0], constants)
    layers = tuple(name for name, tensor in layer_tensors if tensor in direct)
    return FirstConv(weights.astype(np.float32), node.name or node.output[0], node.output[0], layers)


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Initializers and Constant-node tensors by name."""
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attribute.t)
    return values


def _first_conv_node(graph: onnx.GraphProto, input_name: str, constants: dict) -> onnx.NodeProto | None:
    """Walk the (topologically ordered) nodes from the input; the first Conv reached is the one."""
    reached = {input_name}
    for node in graph.node:
        if not any(name in reached for name in node.input if name not in constants):
            continue
        if node.op_type == "Conv":
            return node if node.input[0] in reached else None
        reached.update(node.output)
    return None


def _direct_tensors(graph: onnx.GraphProto, conv_output: str, constants: dict) -> set[str]:
    """Tensors computed from the first Conv's output by weight-free ops only (every data input direct)."""
    direct = {conv_output}
    for node in graph.node:  # topological order
        data = [name for name in node.input if name and name not in constants]
        if node.op_type not in WEIGHTED_OPS and data and all(name in direct for name in data):
            direct.update(node.output)
    return direct


def image_filters(path: Path, manifest: Manifest, layer_name: str) -> np.ndarray:
    """The [filters, C, kh, kw] weights drawn for a layer, or NoImageFilters saying why there are none."""
    conv = first_conv(path, manifest)
    if layer_name not in conv.layers:
        shown = ", ".join(conv.layers) or "none of its layers"
        raise NoImageFilters(
            f"layer {layer_name!r} sees feature maps, not pixels, so its filters are not images; "
            f"the first convolution's filters are shown for {shown}"
        )
    channels = conv.weights.shape[1]
    if conv.weights.ndim != 4 or channels not in (1, 3):
        raise NoImageFilters(f"the first convolution has {channels} input channels; only 1 or 3 can be drawn")
    return conv.weights
