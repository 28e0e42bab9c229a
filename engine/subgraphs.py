"""Prefix sub-graphs: the network cut after each layer, so a request for early layers computes only those.

Asking ONNX Runtime for fewer outputs does not make it compute less; a graph that ends at the deepest
requested tensor does (EfficientNet-Lite0 at batch 8: ~2 ms to the stem vs ~70 ms for the whole model).
For the same reason the whole model may also get a pooled graph holding only the average-pooled outputs, the
default request: without the full maps and max pooling, int8 EfficientNet-Lite0 ran 1.15-1.2x faster (every
exposed map costs it a layout change and a dequantization), fp32 models 1.02-1.06x, for one more copy of the
weights (the service builds it for int8 exports by default). The level cuts get none: what they leave out
costs little, and each would be one more partial copy of the weights.
The cuts are made once per model at load time; their results are bit-identical to the full graph.

Each sub-graph is a session with its own copy of the weights it holds, so cutting after every layer costs
memory: ViT-B/16 (11 layers) held 5.1 GB warmed, 0.85 GB as one graph. Cutting where each level ends (the
default) serves level requests as cheaply and costs at most two partial copies (docs/operations.md).
"""

from __future__ import annotations

from pathlib import Path

import onnx
import onnx.utils

from engine.manifest import Manifest


def cut_points(manifest: Manifest, cuts: str = "levels") -> list[int]:
    """Indices of the layers a sub-graph ends at (the full model, ending at the last layer, is not one).

    `cuts` is one of engine.settings.PREFIX_CUTS: levels, layers or none.
    """
    last = len(manifest.layers) - 1
    if cuts == "layers":
        return list(range(last))
    if cuts == "levels":
        deepest = {layer.level: index for index, layer in enumerate(manifest.layers)}
        return sorted(index for index in deepest.values() if index < last)
    return []


def prefix_models(
    path: Path, manifest: Manifest, cuts: str = "levels", pooled: bool = True
) -> list[tuple[list[str], bytes]]:
    """(outputs, serialised sub-model) smallest first: each cut point's graph of every output up to it, then
    (with `pooled`) the whole model's graph of average-pooled outputs. The whole model itself is not one."""
    graphs = [[name for layer in manifest.layers[: point + 1] for name in layer.outputs.values()]
              for point in cut_points(manifest, cuts)]  # fmt: skip
    average = [layer.outputs.get("avg", layer.outputs["none"]) for layer in manifest.layers]
    if pooled and any(layer.spatial for layer in manifest.layers):  # else it would be the whole model again
        graphs.append(average)
    if not graphs:
        return []
    extractor = onnx.utils.Extractor(onnx.load(str(path)))
    return [(outputs, _extract(extractor, manifest, outputs)) for outputs in graphs]


def exact_model(path: Path, manifest: Manifest, outputs: list[str]) -> bytes:
    """The graph computing just `outputs` (batch extraction, which asks the same of every batch)."""
    return _extract(onnx.utils.Extractor(onnx.load(str(path))), manifest, list(dict.fromkeys(outputs)))


def _extract(extractor: onnx.utils.Extractor, manifest: Manifest, outputs: list[str]) -> bytes:
    return extractor.extract_model([manifest.onnx.input], outputs).SerializeToString()
