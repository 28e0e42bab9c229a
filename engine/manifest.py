"""The model.json schema: what an export contains, shared by the exporter (writer) and the service (reader).

Plain dataclasses so both sides agree on one definition; `load_manifest` rejects files that do not fit.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import Misconfigured

SCHEMA_VERSION = 1
LEVELS = ("low", "mid", "high")
POOLINGS = ("none", "avg", "max")
PRECISIONS = ("fp32", "int8", "fp16")


class ManifestError(Misconfigured):
    """A model.json that is missing, unreadable or does not follow the schema."""


@dataclass(frozen=True)
class OnnxInfo:
    file: str
    sha256: str
    opset: int
    input: str
    input_shape: list[int]  # [C, H, W], batch axis excluded
    layout: str = "NCHW"
    dynamic_batch: bool = True


@dataclass(frozen=True)
class Preprocess:
    """How an RGB image becomes the network input: resize shorter side, centre crop, (x - mean) / std.

    mean/std are in pixel units (0-255), so models trained on [0, 1] inputs use 255 x the usual values.
    """

    size: list[int]  # [H, W] of the network input
    resize: int  # shorter side before the centre crop
    crop: str = "center"
    interpolation: str = "bicubic"
    mean: list[float] = field(default_factory=lambda: [123.675, 116.28, 103.53])
    std: list[float] = field(default_factory=lambda: [58.395, 57.12, 57.375])
    channels: str = "RGB"


@dataclass(frozen=True)
class Layer:
    name: str
    level: str
    shape: list[int]  # batch axis excluded: [C, H, W] for maps, [C] for vectors
    stride: int | None  # input pixels per output cell; None for vectors
    receptive_field: int | None  # input pixels one cell sees (conv path); None for vectors
    outputs: dict[str, str]  # pooling -> ONNX output name ("none" always, "avg"/"max" for maps)
    source: str = ""  # module path or ONNX tensor this layer was taken from
    global_context: bool = False  # a global branch (e.g. squeeze-excite, attention) feeds into it
    token_grid: bool = False  # a vision transformer's patch tokens laid out as a [C, H/p, W/p] map

    @property
    def spatial(self) -> bool:
        return len(self.shape) == 3


@dataclass(frozen=True)
class Source:
    kind: str  # zoo | module | onnx
    origin: str  # recipe name, factory path or original ONNX file name
    weights: str | None = None  # package or file the weights came from
    version: str | None = None
    license: str | None = None


@dataclass(frozen=True)
class Verification:
    passed: bool
    reference: str  # what ONNX Runtime was compared with
    images: list[str]
    tolerance: str
    max_abs_error: float
    per_output: dict[str, float]


@dataclass(frozen=True)
class Quality:
    """How a lower-precision export compares with the fp32 export it was made from, on held-out photos.

    `cosine` is layer -> pooling -> {"mean", "min"} over the held-out images, each image's output flattened.
    """

    reference: str  # the fp32 export's name
    reference_sha256: str
    method: str
    kept_float: list[str]  # graph nodes left in float: the head, and leading convolutions by measurement
    calibration: str | None  # where the calibration photos came from (int8)
    held_out: list[str]
    images: int  # held-out views judged
    measured_with: str  # ONNX Runtime execution provider
    thresholds: dict[str, float]
    cosine: dict[str, dict[str, dict[str, float]]]
    top1_agreement: float | None  # argmax of the logits equal to fp32's; None without labels
    top1_flip_margin: float | None  # largest gap of fp32's top-2 probabilities where top-1 flipped
    passed: bool
    forced: bool = False  # written although it missed a threshold (--force)
    search: list[dict[str, float]] = field(default_factory=list)  # int8: each float_convs tried, on validation
    float_convs: int | None = None  # int8: the leading convolutions kept in float


@dataclass(frozen=True)
class Manifest:
    name: str
    onnx: OnnxInfo
    source: Source
    preprocess: Preprocess
    layers: list[Layer]
    verification: Verification
    labels: list[str] | None = None
    logits_layer: str | None = None  # the layer the labels index, when there are labels
    tools: dict[str, str] = field(default_factory=dict)  # versions that produced the export
    precision: str = "fp32"  # of the weights and arithmetic; inputs and outputs are float32 at every precision
    quality: Quality | None = None  # against the fp32 export, for int8 and fp16
    schema_version: int = SCHEMA_VERSION

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        try:
            if data.get("schema_version") != SCHEMA_VERSION:
                raise ManifestError(
                    f"schema_version {data.get('schema_version')!r} is not {SCHEMA_VERSION}; re-export the model"
                )
            manifest = cls(
                name=data["name"],
                onnx=OnnxInfo(**data["onnx"]),
                source=Source(**data["source"]),
                preprocess=Preprocess(**data["preprocess"]),
                layers=[Layer(**layer) for layer in data["layers"]],
                verification=Verification(**data["verification"]),
                labels=data.get("labels"),
                logits_layer=data.get("logits_layer"),
                tools=data.get("tools", {}),
                precision=data.get("precision", "fp32"),
                quality=Quality(**data["quality"]) if data.get("quality") else None,
            )
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"manifest does not follow the schema: {exc}") from exc
        manifest._check()
        return manifest

    def _check(self) -> None:
        if not self.layers:
            raise ManifestError(f"{self.name}: manifest lists no layers")
        names = [layer.name for layer in self.layers]
        if len(set(names)) != len(names):
            raise ManifestError(f"{self.name}: duplicate layer names")
        for layer in self.layers:
            if layer.level not in LEVELS:
                raise ManifestError(f"{self.name}: layer {layer.name} has level {layer.level!r}")
            if "none" not in layer.outputs or not set(layer.outputs) <= set(POOLINGS):
                raise ManifestError(f"{self.name}: layer {layer.name} has outputs {sorted(layer.outputs)}")
        if self.precision not in PRECISIONS:
            raise ManifestError(f"{self.name}: precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.logits_layer is not None and self.logits_layer not in names:
            raise ManifestError(f"{self.name}: logits_layer {self.logits_layer!r} is not a layer")


def load_manifest(path: Path) -> Manifest:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: not a JSON object")
    return Manifest.from_dict(data)


def load_verified(manifest_path: Path) -> tuple[Manifest, Path]:
    """A manifest and its ONNX file, which must exist and match the manifest's sha256; ManifestError says why not.

    The one check of an export, shared by the service's start-up, the batch extractor and the insight study.
    """
    manifest = load_manifest(manifest_path)
    onnx_path = Path(manifest_path).parent / manifest.onnx.file
    if not onnx_path.is_file():
        raise ManifestError(f"{onnx_path} is missing (listed in {manifest_path})")
    digest = sha256_of(onnx_path)
    if digest != manifest.onnx.sha256:
        raise ManifestError(
            f"{onnx_path} sha256 {digest[:12]}… does not match its manifest ({manifest.onnx.sha256[:12]}…); "
            "re-export the model"
        )
    return manifest, onnx_path


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
