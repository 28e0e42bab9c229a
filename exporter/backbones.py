"""torchvision and timm models by name: the architecture, its weights, its preprocessing and its labels.

Weights are the library's pretrained ones (downloaded into torch's or Hugging Face's cache the first time,
so a machine without network needs a filled cache), none (random initialisation, seeded: smoke runs and
tests), or a local file: safetensors, or a state dict read with torch.load(weights_only=True), never
unpickled code. Preprocessing comes from the library's own metadata for that architecture, so a model
exported with a weights file is fed exactly like the pretrained one.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from engine.manifest import Preprocess, Source
from exporter.errors import ExportError, unknown_name

RANDOM_SEED = 0  # --weights none: the same random model every time
INTERPOLATIONS = {"nearest", "bilinear", "bicubic", "lanczos"}


@dataclass
class Backbone:
    """A model ready to export, with what the manifest needs to know about it."""

    model: object  # torch nn.Module in eval mode
    preprocess: Preprocess
    source: Source
    labels: list[str] | None  # class names when the weights have them
    stage_modules: set[str] | None = None  # the library's own list of feature modules, when it has one


def _require(package: str):
    try:
        return importlib.import_module(package)
    except ImportError as exc:
        raise ExportError(
            f"the {package} route needs {package}: install the `hub` extra in its own environment "
            "(python3 -m venv .venv-hub && .venv-hub/bin/pip install -e '.[hub]')"
        ) from exc


def _preprocess(size: int, resize: int, interpolation: str, mean, std) -> Preprocess:
    if interpolation not in INTERPOLATIONS:
        offered = ", ".join(sorted(INTERPOLATIONS))
        raise ExportError(f"the model is preprocessed with {interpolation!r} interpolation, which the service does "
                          f"not offer ({offered}); export it with the module route and --interpolation")  # fmt: skip
    return Preprocess(size=[size, size], resize=resize, interpolation=interpolation,
                      mean=[round(255 * m, 4) for m in mean], std=[round(255 * s, 4) for s in std])  # fmt: skip


def _weights_kind(weights: str) -> str:
    """'pretrained', 'none' or 'file'."""
    if weights.lower() == "none":
        return "none"
    return "file" if Path(weights).exists() or Path(weights).suffix or "/" in weights else "pretrained"


def torchvision_backbone(name: str, weights: str, input_size: int | None) -> Backbone:
    """A torchvision classification model; weights DEFAULT (or any of its weight names), none or a file."""
    torchvision = _require("torchvision")
    from torchvision import models

    available = models.list_models(module=models)
    if name not in available:
        raise unknown_name("torchvision model", name, available, "torchvision.models.list_models()")
    enum = models.get_model_weights(name)
    kind = _weights_kind(weights)
    chosen = None
    if kind == "pretrained":
        try:
            chosen = enum[weights.upper()] if weights.upper() != "DEFAULT" else enum.DEFAULT
        except KeyError:
            raise ExportError(f"{name} has no weights {weights!r}; it has DEFAULT, "
                              f"{', '.join(w.name for w in enum)}, none or a file") from None  # fmt: skip
    described = chosen or enum.DEFAULT  # preprocessing and labels of the architecture's pretrained weights
    transforms = described.transforms()
    size = input_size or transforms.crop_size[0]
    resize = round(transforms.resize_size[0] * size / transforms.crop_size[0])
    preprocess = _preprocess(size, resize, transforms.interpolation.value, transforms.mean, transforms.std)
    import torch

    torch.manual_seed(RANDOM_SEED)
    if chosen is not None:
        model = _download(lambda: models.get_model(name, weights=chosen), f"{name} {chosen}", "torch hub")
    else:
        model = models.get_model(name, weights=None)
        if kind == "file":
            load_weights(model, Path(weights))
    categories = described.meta.get("categories")
    source = Source(kind="torchvision", origin=f"torchvision {torchvision.__version__} {name}",
                    weights=_weights_label(kind, weights, str(chosen)), version=torchvision.__version__,
                    license="BSD-3-Clause (code); see the weights' terms" if chosen else None)  # fmt: skip
    return Backbone(model.eval(), preprocess, source, categories if kind != "none" else None)


def timm_backbone(name: str, weights: str, input_size: int | None) -> Backbone:
    """A timm model; weights pretrained (the default tag, or NAME.TAG), none or a file."""
    timm = _require("timm")
    architecture = name.split(".")[0]
    if not timm.is_model(architecture):
        raise unknown_name("timm model", architecture, timm.list_models(), "timm.list_models()")
    kind = _weights_kind(weights)
    if kind == "pretrained" and weights.lower() != "pretrained":
        raise ExportError(f"--weights {weights!r}: give pretrained (pick a tag as NAME.TAG), none or a weights file")
    import torch

    torch.manual_seed(RANDOM_SEED)
    if kind == "pretrained":
        import logging

        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # one error line, not a warning per retry
        model = _download(lambda: _create_timm(timm, name, True, input_size), name, "Hugging Face hub")
    else:
        model = _create_timm(timm, name, False, input_size)
        if kind == "file":
            load_weights(model, Path(weights))
    config = timm.data.resolve_data_config({}, model=model)
    if config.get("crop_mode", "center") != "center":
        raise ExportError(f"{name} is preprocessed with crop mode {config['crop_mode']!r}; the service crops the "
                          "centre only: export it with the module route and its own --resize")  # fmt: skip
    size = input_size or config["input_size"][1]
    preprocess = _preprocess(size, int(size / config["crop_pct"]), config["interpolation"], config["mean"],
                             config["std"])  # fmt: skip
    cfg = model.pretrained_cfg
    stage_modules = {info["module"] for info in model.feature_info} if getattr(model, "feature_info", None) else None
    source = Source(kind="timm", origin=f"timm {timm.__version__} {name}",
                    weights=_weights_label(kind, weights, cfg.get("hf_hub_id") or cfg.get("url")),
                    version=timm.__version__, license=cfg.get("license") if kind == "pretrained" else None)  # fmt: skip
    return Backbone(model.eval(), preprocess, source, _timm_labels(model) if kind != "none" else None, stage_modules)


def _create_timm(timm, name: str, pretrained: bool, input_size: int | None):
    """Transformers are built for one input size (img_size); CNNs take any size and have no such argument."""
    if input_size:
        try:
            return timm.create_model(name, pretrained=pretrained, img_size=input_size)
        except TypeError:
            pass
    return timm.create_model(name, pretrained=pretrained)


def _timm_labels(model) -> list[str] | None:
    """ImageNet-1k class names for a 1000-class head (the same list the zoo attaches)."""
    if getattr(model, "num_classes", 0) != 1000:
        return None
    from exporter.zoo import imagenet_labels

    return imagenet_labels()


def _weights_label(kind: str, given: str, pretrained: str) -> str:
    if kind == "none":
        return f"none (random initialisation, seed {RANDOM_SEED})"
    return Path(given).name if kind == "file" else pretrained


def _download(build, what: str, where: str):
    """Build with pretrained weights; a failed download says how to work offline."""
    try:
        return build()
    except (OSError, RuntimeError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(
            f"could not get the pretrained weights of {what} from the {where} ({reason}); without network, "
            "fill the cache on a machine that has one, or pass --weights FILE (safetensors or a state dict)"
        ) from exc


def load_weights(model, path: Path) -> None:
    """Load weights safely into `model`: safetensors, or a state dict read with weights_only=True."""
    import torch

    if not path.is_file():
        raise ExportError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).split(". ")[0]
        raise ExportError(f"refused to load weights {path}: not a plain tensor file (weights_only=True): "
                          f"{reason}") from exc  # fmt: skip
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ExportError(f"weights file {path} does not hold a state dict")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ExportError(f"weights {path} do not fit the model: {_misfit(model.state_dict(), state) or exc}") from exc


def _misfit(own: dict, given: dict) -> str:
    """What differs between the model's keys and shapes and the file's, a few names of each kind."""
    missing = [key for key in own if key not in given]
    unexpected = [key for key in given if key not in own]
    resized = [key for key in own if key in given and tuple(given[key].shape) != tuple(own[key].shape)]
    parts = [f"{len(keys)} {what} ({', '.join(keys[:3])}{', …' if len(keys) > 3 else ''})"
             for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", resized))
             if keys]  # fmt: skip
    return "; ".join(parts)
