"""Lower-precision copies of an fp32 export: int8 for CPUs, fp16 for GPUs, each judged against fp32.

int8 (docs/precision.md has the measurements behind each choice): ONNX Runtime's static quantization in
QDQ form, per-channel int8 weights, uint8 activations with MinMax ranges over the calibration photos.
Entropy and percentile ranges, symmetric activations and more calibration photos did not help on
EfficientNet-Lite0; the loss came from the int8 weights of the first convolutions, whose error every later
layer carries. So the fewest leading convolutions that bring every pooled output of the validation photos
(a part of the calibration set) to the cosine threshold stay in float, found by trying 0, 1, 2, 3, … of them.
The head after the last feature map (pooling, classifier) stays in float: in int8 its outputs had 256 levels,
and near-tied logits became equal, which flipped top-1.

fp16: every float tensor and weight in float16, inputs and outputs kept float32 (Casts at the edges), for
CUDA; ONNX Runtime's CPU provider runs it too, which is where the export measures it when no GPU is here.

Every derived export is judged on held-out photos (exporter/calibration.py) against its fp32 export: per
layer and pooling, the cosine of each image's output, and the top-1 agreement of the logits. Below the
thresholds it is refused (nothing written) unless forced.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from engine.manifest import Manifest, ManifestError, Quality, load_manifest, load_verified
from exporter.build import MANIFEST_FILE, RUN_CHUNK, check_name, install, is_current, run_all, write
from exporter.calibration import HELD_OUT_PHOTOS, calibration, held_out
from exporter.errors import ExportError
from exporter.verify import session

MIN_COSINE = 0.99  # mean over held-out images, every pooled output and vector
MIN_TOP1_AGREEMENT = 0.95
FLOAT_LEADING_CONVS = (0, 1, 2, 3, 4, 6, 8, 12)  # tried in order; the first that passes is kept
INT8_METHOD = "static QDQ (ONNX Runtime), per-channel int8 weights, uint8 activations, MinMax ranges"
FP16_METHOD = "float16 weights and arithmetic, float32 inputs and outputs"


def derived_name(name: str, precision: str) -> str:
    return check_name(f"{name}-{precision}")


def is_derived_current(out_root: Path, name: str, precision: str) -> bool:
    """True when NAME-PRECISION is intact and was derived from the fp32 export NAME as it is now."""
    derived = derived_name(name, precision)
    if not (is_current(out_root, name) and is_current(out_root, derived)):
        return False
    quality = load_manifest(Path(out_root) / derived / MANIFEST_FILE).quality
    return (
        quality is not None
        and quality.reference_sha256 == load_manifest(Path(out_root) / name / MANIFEST_FILE).onnx.sha256
    )


def export_at(precision: str, export_fp32: Callable[[Path], Path], out_root: Path, **derive_options) -> list[Path]:
    """Run an export route, and for int8/fp16 derive from it; both appear only if both succeed.

    `export_fp32(folder)` writes the fp32 export into `folder` and returns its directory.
    """
    if precision == "fp32":
        return [export_fp32(out_root)]
    Path(out_root).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".precision-", dir=out_root))
    try:
        fp32 = export_fp32(staging)
        derived = derive(fp32, precision, staging, **derive_options)
        return [install(fp32, Path(out_root) / fp32.name), install(derived, Path(out_root) / derived.name)]
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def derive(source: Path, precision: str, out_root: Path, calibration_folder: Path | None = None,
           float_convs: int | None = None, force: bool = False) -> Path:  # fmt: skip
    """Write out_root/NAME-PRECISION from the fp32 export in `source`; ExportError if it misses a threshold."""
    try:
        manifest, model_path = load_verified(Path(source) / MANIFEST_FILE)
    except ManifestError as exc:
        raise ExportError(f"{source} is not an intact export: {exc}") from exc
    if manifest.precision != "fp32":
        raise ExportError(f"{manifest.name} is already {manifest.precision}; derive from an fp32 export")
    name = derived_name(manifest.name, precision)
    if precision == "int8":
        if not any(layer.spatial for layer in manifest.layers):
            raise ExportError("int8 quantizes the network up to its last feature map, and this export has none "
                              "(only vector layers); export a map layer too, or use fp16")  # fmt: skip
        model, kept, calibrated, trials, float_convs = _int8(model_path, manifest, calibration_folder, float_convs)
        method, provider = INT8_METHOD, "CPUExecutionProvider"
    elif precision == "fp16":
        model, kept, calibrated, trials = _fp16(model_path), [], None, []
        method, provider = FP16_METHOD, _fp16_provider()
    else:
        raise ExportError(f"unknown precision {precision!r}; int8 or fp16")
    photos = held_out(manifest.preprocess)
    reference = run_all(session(model_path), photos, manifest.onnx.dynamic_batch)
    candidate = run_all(session(model, provider), photos, manifest.onnx.dynamic_batch)
    quality = Quality(
        reference=manifest.name,
        reference_sha256=manifest.onnx.sha256,
        method=method,
        kept_float=kept,
        calibration=calibrated,
        search=trials,
        float_convs=float_convs,
        held_out=[f"skimage.data.{photo}" for photo in HELD_OUT_PHOTOS],
        images=len(photos),
        measured_with=provider,
        thresholds={"cosine": MIN_COSINE, "top1_agreement": MIN_TOP1_AGREEMENT},
        **judge(manifest, reference, candidate, force=force),
    )
    return write(out_root, name, model, replace(manifest, name=name, precision=precision, quality=quality))


def judge(manifest: Manifest, reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
          force: bool) -> dict:  # fmt: skip
    """cosine, top1_agreement, passed, forced; ExportError naming what missed unless `force`."""
    cosine, missed = {}, []
    for layer in manifest.layers:
        cosine[layer.name] = {}
        for pooling, output in layer.outputs.items():
            values = cosines(reference[output], candidate[output])
            mean = float(values.mean())
            cosine[layer.name][pooling] = {"mean": round(mean, 5), "min": round(float(values.min()), 5)}
            if (pooling != "none" or not layer.spatial) and mean < MIN_COSINE:  # full maps: recorded only
                missed.append(f"{layer.name} {pooling} cosine {mean:.4f}")
    top1 = top1_agreement(manifest, reference, candidate)
    margin = flip_margin(manifest, reference, candidate)
    if top1 is not None and top1 < MIN_TOP1_AGREEMENT:
        missed.append(f"top-1 agreement {top1:.1%} (where it flipped, fp32's own top-2 probabilities were at most "
                      f"{margin:.1%} apart)")  # fmt: skip
    if missed and not force:
        raise ExportError(f"below the thresholds (cosine >= {MIN_COSINE}, top-1 agreement >= "
                          f"{MIN_TOP1_AGREEMENT:.0%}) on held-out photos: {'; '.join(missed)}; "
                          "--force writes it anyway, its manifest saying so")  # fmt: skip
    return {"cosine": cosine, "top1_agreement": top1, "top1_flip_margin": margin, "passed": not missed,
            "forced": bool(missed)}  # fmt: skip


def top1_agreement(manifest: Manifest, reference: dict, candidate: dict) -> float | None:
    """How often the logits' argmax equals fp32's; None for a model without labels."""
    if not manifest.logits_layer:
        return None
    logits = manifest.layer(manifest.logits_layer).outputs["none"]
    return round(float(np.mean(reference[logits].argmax(1) == candidate[logits].argmax(1))), 4)


def flip_margin(manifest: Manifest, reference: dict, candidate: dict) -> float | None:
    """The largest gap between fp32's top two class probabilities among the images whose top-1 flipped: small
    means the flips were near-ties that any rounding decides. None without labels or without flips."""
    if not manifest.logits_layer:
        return None
    logits = manifest.layer(manifest.logits_layer).outputs["none"]
    flipped = reference[logits].argmax(1) != candidate[logits].argmax(1)
    if not flipped.any():
        return None
    scores = reference[logits][flipped].astype(np.float64)
    probabilities = np.exp(scores - scores.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    top_two = np.sort(probabilities, axis=1)[:, -2:]
    return round(float((top_two[:, 1] - top_two[:, 0]).max()), 4)


def cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Per image: cosine of the flattened outputs (1 where both are zero, 0 where only one is)."""
    a = reference.reshape(len(reference), -1).astype(np.float64)
    b = candidate.reshape(len(candidate), -1).astype(np.float64)
    norm_a, norm_b = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    norms = norm_a * norm_b
    return np.where((norm_a == 0) & (norm_b == 0), 1.0, (a * b).sum(1) / np.where(norms == 0, 1.0, norms))


def _fp16_provider() -> str:
    """Where fp16 is measured: CUDA when this ONNX Runtime has it (the precision's target), else the CPU."""
    return (
        "CUDAExecutionProvider" if "CUDAExecutionProvider" in ort.get_available_providers() else "CPUExecutionProvider"
    )


def _fp16(model_path: Path) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return _topologically_sorted(convert_float_to_float16(onnx.load(str(model_path)), keep_io_types=True))


def _topologically_sorted(model: onnx.ModelProto) -> onnx.ModelProto:
    """The converter appends the input Casts after their consumers; ONNX requires producers first."""
    graph = model.graph
    ready = {""} | {i.name for i in graph.input} | {i.name for i in graph.initializer}
    pending, ordered = list(graph.node), []
    while pending:
        runnable = [all(name in ready for name in node.input) for node in pending]
        if not any(runnable):
            raise ExportError("the float16 graph has a cycle or an input nothing produces")
        for node, now in zip(pending, runnable, strict=True):
            if now:
                ordered.append(node)
                ready.update(node.output)
        pending = [node for node, now in zip(pending, runnable, strict=True) if not now]
    del graph.node[:]
    graph.node.extend(ordered)
    return model


def _int8(model_path: Path, manifest: Manifest, folder: Path | None, float_convs: int | None):
    """(int8 model, nodes kept in float, where the calibration photos came from, trials, float convolutions).

    The head (pooling and classifier) is always float. Each trial keeps the first `count` convolutions in float
    too and records, on the validation photos (never the held-out ones), the worst mean cosine of a pooled output
    and the top-1 agreement; the search stops at the first whose cosine meets the threshold (or runs only
    `float_convs` when given). Top-1 is recorded but not searched on: on a few photos its flips are near-ties.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batch, validation, described = calibration(manifest.preprocess, folder)
    reference = run_all(session(model_path), validation, manifest.onnx.dynamic_batch)
    work = Path(tempfile.mkdtemp(prefix="int8-"))
    try:
        prepared = work / "prepared.onnx"  # constants folded, shapes inferred: what the quantizer expects
        quant_pre_process(str(model_path), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared)).graph
        convs = [node.name for node in graph.node if node.op_type == "Conv"]
        tail = head_nodes(graph, manifest)
        if float_convs is not None and float_convs > len(convs):
            raise ExportError(f"--float-convs {float_convs}: the model has {len(convs)} convolutions")
        counts = [float_convs] if float_convs is not None else [c for c in FLOAT_LEADING_CONVS if c <= len(convs)]
        best, trials = None, []
        for count in counts:
            quantized = work / f"float{count}.onnx"
            quantize_static(
                str(prepared), str(quantized), _Reader(manifest.onnx.input, batch),
                quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=convs[:count] + tail, calibration_cache_path=str(work / "ranges.json"),
            )  # fmt: skip
            model = onnx.load(str(quantized))
            trial = {
                "float_convs": count,
                **_trial(manifest, reference, run_all(session(model), validation, manifest.onnx.dynamic_batch)),
            }
            trials.append(trial)
            if best is None or trial["worst_pooled_cosine"] > best[0]:
                best = (trial["worst_pooled_cosine"], model, count)
            if trial["worst_pooled_cosine"] >= MIN_COSINE:
                break
        return best[1], convs[: best[2]] + tail, described, trials, best[2]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def head_nodes(graph: onnx.GraphProto, manifest: Manifest) -> list[str]:
    """Nodes after the last feature map: the pooling heads and the classifier. Cheap, and what users read: in
    int8 their outputs would be rounded to 256 levels, which made near-tied logits equal (top-1 flipped)."""
    needed = {layer.outputs["none"] for layer in manifest.layers if layer.spatial}
    producer = {out: node for node in graph.node for out in node.output}
    ancestors, stack = set(), list(needed)
    while stack:
        node = producer.get(stack.pop())
        if node is not None and node.name not in ancestors:
            ancestors.add(node.name)
            stack.extend(node.input)
    return [node.name for node in graph.node if node.name not in ancestors]


def _trial(manifest: Manifest, reference: dict, candidate: dict) -> dict[str, float]:
    """The worst mean cosine of a pooled output or vector, and the top-1 agreement when there are labels."""
    judged = [o for layer in manifest.layers for p, o in layer.outputs.items() if p != "none" or not layer.spatial]
    result = {"worst_pooled_cosine": round(min(float(cosines(reference[o], candidate[o]).mean()) for o in judged), 5)}
    top1 = top1_agreement(manifest, reference, candidate)
    return result if top1 is None else {**result, "top1_agreement": top1}


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over an in-memory batch, RUN_CHUNK images at a time."""

    def __init__(self, input_name: str, batch: np.ndarray):
        self.chunks = iter([{input_name: batch[i : i + RUN_CHUNK]} for i in range(0, len(batch), RUN_CHUNK)])

    def get_next(self) -> dict | None:
        return next(self.chunks, None)
