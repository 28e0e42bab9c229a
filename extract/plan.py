"""What one extraction job computes: the model, its layers as output files, and the signature of the job.

Layer choice goes through the service's own option parsing and layer selection, so `--levels`/`--layers`
/`--pooling` mean exactly what the HTTP options mean. The signature is what a rerun must match to resume.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from engine.exports import MANIFEST, open_export
from engine.features import output_name, parse_options, select_layers
from engine.manifest import Layer, Manifest
from extract.errors import UsageError

FORMATS = ("npy", "parquet")
JOB_VERSION = 1


@dataclass(frozen=True)
class ModelInfo:
    """A model as the chosen engine sees it: a local export, or a running service's catalogue."""

    name: str
    sha256: str
    layers: list[Layer]
    manifest_text: str  # copied to DIR/model.json
    manifest: Manifest | None = None  # local exports only
    onnx_path: Path | None = None
    precision: str = "fp32"


@dataclass(frozen=True)
class LayerOutput:
    name: str
    level: str
    output: str  # ONNX output name (local engines); the layer name is what the server answers with
    shape: tuple[int, ...]  # one image's array: [C] pooled or vector, [C, H, W] with pooling=none
    file: str  # file name stem, safe on any file system


@dataclass(frozen=True)
class Plan:
    sources: list[str]
    model: ModelInfo
    layers: list[LayerOutput]
    pooling: str
    dtype: str
    format: str

    def signature(self) -> dict:
        """Everything that decides the output files; engine, batch size and workers do not."""
        listing = hashlib.sha256("\n".join(self.sources).encode()).hexdigest()
        return {
            "version": JOB_VERSION,
            "inputs": len(self.sources),
            "inputs_sha256": listing,
            "model": self.model.name,
            "model_sha256": self.model.sha256,
            "layers": [layer.name for layer in self.layers],
            "pooling": self.pooling,
            "dtype": self.dtype,
            "format": self.format,
        }


def local_model(models_dir: Path, name: str) -> ModelInfo:
    """The exported model `name` in `models_dir`, with its ONNX file checked against the manifest's sha256.

    UnknownName (listing the exports) or Misconfigured (no such folder, a broken export) as engine.exports says.
    """
    manifest, onnx_path = open_export(models_dir, name)
    text = (Path(models_dir) / name / MANIFEST).read_text()  # copied to DIR/model.json as it is
    return ModelInfo(name, manifest.onnx.sha256, manifest.layers, text, manifest, onnx_path, manifest.precision)


def make_plan(sources: list[str], model: ModelInfo, levels, layers, pooling: str, dtype: str, fmt: str) -> Plan:
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    raw: dict[str, object] = {"pooling": pooling, "dtype": dtype}
    if levels:
        raw["levels"] = levels
    if layers:
        raw["layers"] = layers
    options = parse_options(raw)  # InvalidInput, UnknownName: the CLI prints them as they are (exit status 2)
    chosen = select_layers(model, options)
    if not chosen:
        raise UsageError(f"no layer of {model.name} is at the levels {', '.join(options.levels)}")
    files = file_names([layer.name for layer in chosen])
    outputs = [_layer_output(layer, options.pooling, file) for layer, file in zip(chosen, files, strict=True)]
    return Plan(sources, model, outputs, options.pooling, options.dtype, fmt)


def _layer_output(layer: Layer, pooling: str, file: str) -> LayerOutput:
    name = output_name(layer, pooling)
    pooled = layer.spatial and pooling != "none" and pooling in layer.outputs
    shape = (layer.shape[0],) if pooled else tuple(layer.shape)
    return LayerOutput(layer.name, layer.level, name, shape, file)


def file_names(layer_names: list[str]) -> list[str]:
    """One distinct, tame file stem per layer (also the Parquet column name, hence 'row' and 'path' are taken)."""
    taken = {"row", "path"}
    files = []
    for layer_name in layer_names:
        file = stem = safe_file_name(layer_name)
        suffix = 1
        while file.lower() in taken:  # tamed alike, or alike on a case-insensitive file system
            suffix += 1
            file = f"{stem}_{suffix}"
        taken.add(file.lower())
        files.append(file)
    return files


def safe_file_name(layer_name: str) -> str:
    """Layer names can be module paths or ONNX tensor names ('/blocks.0/Add'); files get a tame version."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", layer_name).strip("._") or "layer"


def signature_difference(expected: dict, found: dict) -> str:
    """The keys in which a job on disk differs from the one asked for, for the refusal message."""
    keys = [key for key in expected if expected.get(key) != found.get(key)]
    return ", ".join(keys) or json.dumps(found)
