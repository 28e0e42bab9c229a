"""The export pipeline shared by every source: exposed ONNX -> pooled heads -> checks -> manifest -> files.

Whatever the source (zoo recipe, any nn.Module, a foreign ONNX file), the model reaching `finish` has one
graph output per layer, named after it. From there the steps are the same, and the model directory
appears only when every check passed (written to a temporary sibling, then renamed).
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from engine.manifest import (
    LEVELS,
    Layer,
    Manifest,
    ManifestError,
    OnnxInfo,
    Preprocess,
    Source,
    load_manifest,
    sha256_of,
)
from exporter import OPSET
from exporter.errors import ExportError
from exporter.onnx_expose import add_pooled, image_input, output_name
from exporter.receptive_field import Geometry, analyse
from exporter.verify import compare, photo_batch, session, with_pooled

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
ONNX_FILE = "model.onnx"
MANIFEST_FILE = "model.json"
RUN_CHUNK = 8  # images per ONNX Runtime run when checking an export: bounded memory for large models

Reference = Callable[[np.ndarray], dict[str, np.ndarray]]


@dataclass(frozen=True)
class LayerPlan:
    """A layer as the caller chose it: name (= graph output), where it came from, optional level."""

    name: str
    source: str
    level: str | None = None
    token_grid: bool = False  # patch tokens of a transformer block laid out as a map


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise ExportError(f"invalid model name {name!r}: use 1-64 of a-z 0-9 _ . - starting with a letter or digit")
    return name


def default_levels(count: int) -> list[str]:
    """Thirds by depth: the first third low, the middle third mid, the last third high."""
    return [LEVELS[min(2, 3 * i // count)] for i in range(count)]


def is_current(out_root: Path, name: str) -> bool:
    """True when a complete, intact export of `name` already exists (for --skip-existing)."""
    directory = Path(out_root) / name
    try:
        manifest = load_manifest(directory / MANIFEST_FILE)
        return sha256_of(directory / manifest.onnx.file) == manifest.onnx.sha256
    except (OSError, ManifestError):
        return False


def run_all(sess: ort.InferenceSession, batch: np.ndarray, dynamic: bool) -> dict[str, np.ndarray]:
    """All outputs for the batch, RUN_CHUNK images per run; one at a time when the model's batch axis is fixed."""
    names = [o.name for o in sess.get_outputs()]
    input_name = sess.get_inputs()[0].name
    step = RUN_CHUNK if dynamic else 1
    chunks = [batch[i : i + step] for i in range(0, len(batch), step)]
    try:
        runs = [sess.run(names, {input_name: chunk}) for chunk in chunks]
    except Exception as exc:  # ORT raises its own exception types; the first line says what broke
        raise ExportError(f"ONNX Runtime could not run the model: {str(exc).splitlines()[0]}") from exc
    return {name: np.concatenate([run[i] for run in runs]) for i, name in enumerate(names)}


def finish(
    name: str,
    model: onnx.ModelProto,
    plans: list[LayerPlan],
    preprocess: Preprocess,
    source: Source,
    reference: Reference,
    reference_label: str,
    out_root: Path,
    labels: list[str] | None = None,
) -> Path:
    """Add pooled heads, verify against the reference, describe every layer, write the model directory."""
    input_name, dims = image_input(model)
    dynamic = not isinstance(dims[0], int)
    if isinstance(dims[2], int) and isinstance(dims[3], int) and [dims[2], dims[3]] != preprocess.size:
        raise ExportError(f"the model's input is {dims[2]}x{dims[3]}, preprocessing makes {preprocess.size}")
    batch = photo_batch(preprocess)

    raw = run_all(session(model), batch, dynamic)
    spatial = [plan.name for plan in plans if raw[plan.name].ndim == 4]
    final = add_pooled(model, spatial, dims[0] if not dynamic else "batch")
    outputs = run_all(session(final), batch, dynamic)

    expected = with_pooled(reference(batch))
    # A foreign model has no reference for the maps we exposed: check our pooled heads against those maps.
    own = with_pooled({layer: outputs[layer] for layer in spatial})
    for pooled in (output_name(layer, pooling) for layer in spatial for pooling in ("avg", "max")):
        expected.setdefault(pooled, own[pooled])
    verification = compare(expected, outputs, reference_label)

    geometry = analyse(final, input_name)
    levels = [plan.level for plan in plans]
    if None in levels:
        levels = default_levels(len(plans))
    layers = []
    for plan, level in zip(plans, levels, strict=True):
        shape = list(outputs[plan.name].shape[1:])
        geo = _token_grid_geometry(shape, preprocess) if plan.token_grid else geometry[plan.name]
        spatial_layer = len(shape) == 3
        poolings = ("none", "avg", "max") if spatial_layer else ("none",)
        layers.append(
            Layer(
                name=plan.name,
                level=level,
                shape=shape,
                stride=_int(geo.stride) if spatial_layer else None,
                receptive_field=geo.receptive_field if spatial_layer else None,
                outputs={p: output_name(plan.name, p) for p in poolings},
                source=plan.source,
                global_context=geo.global_context,
                token_grid=plan.token_grid,
            )
        )
    logits = [layer.name for layer in layers if layer.shape == [len(labels or ())]]
    manifest = Manifest(
        name=name,
        onnx=OnnxInfo(
            file=ONNX_FILE,
            sha256="",
            opset=_opset(final),
            input=input_name,
            input_shape=[int(d) for d in dims[1:]]
            if all(isinstance(d, int) for d in dims[1:])
            else [int(dims[1]), *preprocess.size],
            dynamic_batch=dynamic,
        ),
        source=source,
        preprocess=preprocess,
        layers=layers,
        verification=verification,
        labels=labels if logits else None,
        logits_layer=logits[-1] if logits else None,
        tools=_tool_versions(),
    )
    return write(out_root, name, final, manifest)


def _token_grid_geometry(shape: list[int], preprocess: Preprocess) -> Geometry:
    """A cell of a transformer block's patch grid: one patch apart, but it has attended to the whole image."""
    return Geometry(stride=preprocess.size[0] / shape[1], receptive_field=max(preprocess.size), global_context=True)


def _int(stride: float | None) -> int | None:
    return None if stride is None else round(stride)


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), OPSET)


def _tool_versions() -> dict[str, str]:
    versions = {"exporter": importlib.metadata.version("cnn-features"), "onnx": onnx.__version__,
                "onnxruntime": ort.__version__}  # fmt: skip
    if "torch" in sys.modules:
        versions["torch"] = sys.modules["torch"].__version__
    return versions


def write(out_root: Path, name: str, model: onnx.ModelProto, manifest: Manifest) -> Path:
    """Write model.onnx + model.json into out_root/name, replacing any old export only once complete."""
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=out_root))
    staging.chmod(0o755)  # mkdtemp makes 0700; the server may run as another user
    try:
        onnx_path = staging / ONNX_FILE
        onnx.save_model(model, onnx_path)
        onnx.checker.check_model(str(onnx_path))
        final_manifest = replace(manifest, onnx=replace(manifest.onnx, sha256=sha256_of(onnx_path)))
        (staging / MANIFEST_FILE).write_text(final_manifest.to_json())
        load_manifest(staging / MANIFEST_FILE)  # what we wrote must read back
        return install(staging, out_root / name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def install(complete: Path, target: Path) -> Path:
    """Move a complete export folder to `target` (same file system), replacing an old one only at the end."""
    if target.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        target.rename(retired / target.name)
        complete.rename(target)
        shutil.rmtree(retired)
    else:
        complete.rename(target)
    return target
