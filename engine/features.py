"""The core of a feature request, free of HTTP: options -> layers -> ONNX outputs -> the answer (engine/answers.py).

Shared by the web app and the batch extractor. Pooled vectors come from the graph's own pooled outputs;
full maps are fetched only for pooling=none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.answers import Features, Tensor, first_non_finite_row, prepare, top_classes
from engine.errors import InvalidInput, UnknownName, Unprocessable
from engine.manifest import LEVELS, POOLINGS, Layer, Manifest

ENCODINGS = ("json", "base64")
DTYPES = ("float32", "float16")
OPTION_NAMES = ("levels", "layers", "pooling", "normalize", "encoding", "dtype", "top")
MAX_TOP = 1000
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}


@dataclass(frozen=True)
class FeatureOptions:
    levels: tuple[str, ...] = LEVELS
    layers: tuple[str, ...] | None = None  # overrides levels
    poolings: tuple[str, ...] = ("avg",)  # one or several, each answered for every layer
    normalize: bool = False
    encoding: str = "json"
    dtype: str = "float32"
    top: int | None = None  # the k most probable classes per input, for models with labels

    @property
    def pooling(self) -> str:
        """The pooling of a request that takes exactly one (search, batch extraction): they refuse several."""
        return self.poolings[0]


def _names(value, option: str) -> tuple[str, ...]:
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",")]
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        items = [item.strip() for item in value]
    else:
        raise InvalidInput(f"option {option!r} must be a list of names or a comma-separated string")
    items = [item for item in items if item]
    if not items:
        raise InvalidInput(f"option {option!r} is empty")
    return tuple(dict.fromkeys(items))  # drop repeats, keep order


def _choice(value, option: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value.strip().lower() not in choices:
        raise InvalidInput(f"option {option}={value!r} is not one of {', '.join(choices)}", valid=list(choices))
    return value.strip().lower()


def whole_number(value, option: str, low: int, high: int) -> int:
    """An integer option from JSON (a number) or a query/form field (ASCII digits: not '²' or '٣')."""
    number = value if isinstance(value, int) and not isinstance(value, bool) else None
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        number = int(value.strip())
    if number is None or not low <= number <= high:
        raise InvalidInput(f"option {option}={value!r} must be a whole number from {low} to {high}")
    return number


def _flag(value, option: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise InvalidInput(f"option {option}={value!r} must be true or false")


def parse_options(raw: dict[str, object]) -> FeatureOptions:
    """Options from JSON fields, form fields or query parameters (values may be strings, lists or bools).

    A JSON null means "the default", so the options a response echoes (`"layers": null` among them) can be
    sent back as they are."""
    unknown = sorted(set(raw) - set(OPTION_NAMES))
    if unknown:
        raise InvalidInput(
            f"unknown option {unknown[0]!r}; options are {', '.join(OPTION_NAMES)}", valid=list(OPTION_NAMES)
        )
    raw = {name: value for name, value in raw.items() if value is not None}
    options = {}
    if "levels" in raw:
        levels = _names(raw["levels"], "levels")
        for level in levels:
            _choice(level, "levels", LEVELS)
        options["levels"] = tuple(level.lower() for level in levels)
    if "layers" in raw:
        options["layers"] = _names(raw["layers"], "layers")
    if "pooling" in raw:
        options["poolings"] = tuple(
            dict.fromkeys(_choice(pooling, "pooling", POOLINGS) for pooling in _names(raw["pooling"], "pooling"))
        )
    if "normalize" in raw:
        options["normalize"] = _flag(raw["normalize"], "normalize")
    if "encoding" in raw:
        options["encoding"] = _choice(raw["encoding"], "encoding", ENCODINGS)
    if "dtype" in raw:
        options["dtype"] = _choice(raw["dtype"], "dtype", DTYPES)
    if "top" in raw:
        options["top"] = whole_number(raw["top"], "top", 1, MAX_TOP)
    return FeatureOptions(**options)


def select_layers(manifest: Manifest, options: FeatureOptions) -> list[Layer]:
    """The layers a request asks for, in depth order; UnknownName lists the valid names."""
    if options.layers is None:
        return [layer for layer in manifest.layers if layer.level in options.levels]
    known = {layer.name for layer in manifest.layers}
    for name in options.layers:
        if name not in known:
            valid = [layer.name for layer in manifest.layers]
            raise UnknownName(
                f"model {manifest.name} has no layer {name!r}; layers are {', '.join(valid)}", valid=valid
            )
    return [layer for layer in manifest.layers if layer.name in options.layers]


def output_name(layer: Layer, pooling: str) -> str:
    """The ONNX output serving a layer at a pooling; vectors have nothing to pool and use their only output."""
    return layer.outputs.get(pooling, layer.outputs["none"])


def classifier_layer(manifest: Manifest, options: FeatureOptions) -> Layer | None:
    """The layer whose outputs the labels index, when top classes are asked; InvalidInput when the model has no
    labels or fewer than asked. Checked before any decoding, as the layers are."""
    if options.top is None:
        return None
    if not manifest.labels or manifest.logits_layer is None:
        raise InvalidInput(f"model {manifest.name} has no labels, so it has no top classes; leave out top")
    if options.top > len(manifest.labels):
        raise InvalidInput(f"option top={options.top} asks for more classes than the {len(manifest.labels)} labels")
    return next(layer for layer in manifest.layers if layer.name == manifest.logits_layer)


def check_request(manifest: Manifest, options: FeatureOptions) -> None:
    """Unknown layers and impossible top classes fail before any image is decoded."""
    select_layers(manifest, options)
    classifier_layer(manifest, options)


def check_finite(outputs: list[np.ndarray], names: list[str]) -> None:
    """A finite but extreme input tensor can overflow float32 inside the network: refuse that input (422)
    instead of answering null for every value."""
    for name, array in zip(names, outputs, strict=True):
        index = first_non_finite_row(array)
        if index is not None:
            raise Unprocessable(
                f"input {index} makes output {name} overflow to infinity or NaN; send images, or tensors "
                "preprocessed as the model's manifest says (GET /v1/models/{model})",
                index=index,
            )


def run_outputs(runtime, names: list[str], batch: np.ndarray) -> dict[str, np.ndarray]:
    """Each named graph output, [len(batch), …], from one run that fetches every distinct name once."""
    unique = list(dict.fromkeys(names))
    outputs = runtime.run(unique, batch)
    check_finite(outputs, unique)
    return dict(zip(unique, outputs, strict=True))


def compute(runtime, layers: list[Layer], pooling: str, batch: np.ndarray) -> list[np.ndarray]:
    """One array per layer, [len(batch), *shape], from one run of the outputs they need."""
    by_name = run_outputs(runtime, [output_name(layer, pooling) for layer in layers], batch)
    return [by_name[output_name(layer, pooling)] for layer in layers]


def extract(runtime, manifest: Manifest, batch: np.ndarray, options: FeatureOptions) -> Features:
    """The requested layers at every requested pooling (and the top classes), from one run of the graph."""
    layers = select_layers(manifest, options)
    classifier = classifier_layer(manifest, options)
    wanted = [(layer, pooling) for pooling in options.poolings for layer in layers]
    names = [output_name(layer, pooling) for layer, pooling in wanted]
    if classifier is not None:
        names.append(output_name(classifier, "none"))
    by_name = run_outputs(runtime, names, batch)
    tensors = [
        Tensor(lay, pooling, prepare(by_name[output_name(lay, pooling)], options, f"layer {lay.name} ({pooling})"))
        for lay, pooling in wanted
    ]
    top = None
    if classifier is not None:
        top = top_classes(by_name[output_name(classifier, "none")], options.top, manifest.labels)
    return Features(tensors, top, len(batch))
