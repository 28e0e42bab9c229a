"""Prefix sub-graphs: the network cut after each layer, so a request for early layers computes only those.

Asking ONNX Runtime for fewer outputs does not make it compute less; a graph that ends at the deepest
requested tensor does (EfficientNet-Lite0 at batch 8: ~2 ms to the stem vs ~70 ms for the whole model).
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


def prefix_models(path: Path, manifest: Manifest, cuts: str = "levels") -> list[tuple[list[str], bytes]]:
    """For each cut point, (outputs of every layer up to it, serialised sub-model ending there)."""
    points = cut_points(manifest, cuts)
    if not points:
        return []
    model = onnx.load(str(path))
    extractor = onnx.utils.Extractor(model)
    prefixes = []
    for point in points:
        outputs = [name for layer in manifest.layers[: point + 1] for name in layer.outputs.values()]
        sub = extractor.extract_model([manifest.onnx.input], outputs)
        prefixes.append((outputs, sub.SerializeToString()))
    return prefixes
