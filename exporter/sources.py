"""The three ways a model enters the exporter (zoo recipe, importable nn.Module, foreign ONNX file).

Each turns its input into an ONNX graph with one output per layer plus a reference to verify against,
then hands over to build.finish.
"""

from __future__ import annotations

import contextlib
import importlib
import io
from pathlib import Path

import numpy as np
import onnx

from engine.manifest import LEVELS, Preprocess, Source
from exporter.backbones import load_weights
from exporter.build import LayerPlan, check_name, finish, run_all
from exporter.errors import ExportError
from exporter.onnx_expose import auto_layers, check_tensors, expose, image_input
from exporter.verify import session


def _torch_reference(model, taps):
    import torch

    from exporter.torch_export import TapModel

    wrapper = TapModel(model, taps).eval()

    def run(batch: np.ndarray) -> dict[str, np.ndarray]:
        with torch.no_grad():
            outputs = wrapper(torch.from_numpy(batch))
        return {tap.name: out.numpy() for tap, out in zip(taps, outputs, strict=True)}

    return run


def _export_torch(name, model, taps, levels, preprocess, source, out_root, labels) -> Path:
    from exporter.torch_export import export_taps, order_by_depth

    level_of = dict(zip((t.name for t in taps), levels, strict=True)) if levels else {}
    taps = order_by_depth(model, taps, tuple(preprocess.size))
    onnx_model = export_taps(model, taps, tuple(preprocess.size))
    plans = [LayerPlan(t.name, t.source, level_of.get(t.name), token_grid=t.view == "patch_grid") for t in taps]
    import torch

    reference = _torch_reference(model, taps)
    return finish(name, onnx_model, plans, preprocess, source, reference, f"torch {torch.__version__}",
                  out_root, labels)  # fmt: skip


def export_zoo(model_name: str, out_root: Path) -> Path:
    from exporter.zoo import imagenet_labels, recipe

    chosen = recipe(model_name)
    with contextlib.redirect_stdout(io.StringIO()):  # the weights package prints on load
        model = chosen.build()
    taps, levels = chosen.taps(model)
    return _export_torch(model_name, model, taps, levels, chosen.preprocess, chosen.source, out_root,
                         imagenet_labels())  # fmt: skip


def _choose_taps(model, size: int, layers: list[str] | None, levels: list[str] | None, stage_modules=None):
    """The named modules (a transformer block as its token map + class token), or the automatic choice."""
    from exporter import auto_taps

    if layers:
        check_levels(levels, layers)
        return auto_taps.named(model, size, layers, levels)
    taps, chosen = auto_taps.choose(model, size, stage_modules)
    check_levels(levels, [tap.name for tap in taps])
    return taps, levels or chosen


def export_backbone(
    library: str, model_name: str, weights: str, name: str | None, layers: list[str] | None,
    levels: list[str] | None, input_size: int | None, out_root: Path, with_labels: bool,
) -> Path:  # fmt: skip
    """A torchvision or timm model by name, with the stage ends (or the named modules) as layers."""
    from exporter import backbones

    build = {"torchvision": backbones.torchvision_backbone, "timm": backbones.timm_backbone}[library]
    name = check_name(name or model_name.replace("/", "_").lower())
    if layers:
        check_levels(levels, layers)
    backbone = build(model_name, weights, input_size)
    taps, levels = _choose_taps(backbone.model, backbone.preprocess.size[0], layers, levels, backbone.stage_modules)
    labels = backbone.labels if with_labels else None
    return _export_torch(name, backbone.model, taps, levels, backbone.preprocess, backbone.source, out_root, labels)


def load_factory(spec: str):
    """'package.module:factory' -> the nn.Module the factory returns."""
    from torch import nn

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ExportError(f"factory {spec!r} must look like 'package.module:function'")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except ImportError as exc:
        raise ExportError(f"cannot import {module_name!r}: {exc}") from exc
    except AttributeError as exc:
        raise ExportError(f"module {module_name!r} has no attribute {attr!r}") from exc
    model = factory() if callable(factory) and not isinstance(factory, nn.Module) else factory
    if not isinstance(model, nn.Module):
        raise ExportError(f"not a CNN-like image model: {spec} gave a {type(model).__name__}, not a torch nn.Module")
    return model


def export_module(
    factory: str, name: str, layers: list[str] | None, levels: list[str] | None, preprocess: Preprocess,
    weights: Path | None, out_root: Path, labels: list[str] | None,
) -> Path:  # fmt: skip
    check_name(name)
    if layers:
        check_levels(levels, layers)
    model = load_factory(factory)
    if weights is not None:
        load_weights(model, weights)
    source = Source(kind="module", origin=factory, weights=str(weights.name) if weights else None)
    taps, levels = _choose_taps(model.eval(), preprocess.size[0], layers, levels)
    return _export_torch(name, model, taps, levels, preprocess, source, out_root, labels)


def read_onnx(path: Path) -> onnx.ModelProto:
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except FileNotFoundError as exc:
        raise ExportError(f"ONNX file not found: {path}") from exc
    except Exception as exc:
        raise ExportError(f"cannot read {path} as an ONNX model: {str(exc).splitlines()[0]}") from exc
    return model


def export_onnx(
    path: Path, name: str, tensors: list[str] | None, levels: list[str] | None, preprocess: Preprocess,
    out_root: Path, labels: list[str] | None,
) -> Path:  # fmt: skip
    check_name(name)
    original = read_onnx(path)
    input_name, dims = image_input(original)
    if tensors:
        check_tensors(original, input_name, tensors)
        chosen = {tensor: tensor for tensor in tensors}
    else:
        chosen = auto_layers(original, input_name)
    check_levels(levels, list(chosen))
    exposed = expose(original, chosen)
    depth = {out: i for i, node in enumerate(original.graph.node) for out in node.output}
    ordered = sorted(chosen, key=lambda layer: depth[chosen[layer]])
    level_of = dict(zip(chosen, levels, strict=True)) if levels else {}
    plans = [LayerPlan(layer, chosen[layer], level_of.get(layer)) for layer in ordered]
    original_session = session(original)

    def reference(batch: np.ndarray) -> dict[str, np.ndarray]:
        """The untouched model's own outputs: the exposed graph must still give exactly these."""
        return run_all(original_session, batch, dynamic=not isinstance(dims[0], int))

    source = Source(kind="onnx", origin=Path(path).name)
    return finish(name, exposed, plans, preprocess, source, reference, f"the original {Path(path).name}",
                  out_root, labels)  # fmt: skip


def check_levels(levels: list[str] | None, layers: list[str]) -> None:
    if levels is None:
        return
    bad = [level for level in levels if level not in LEVELS]
    if bad:
        raise ExportError(f"unknown level {bad[0]!r}; levels are {', '.join(LEVELS)}")
    if len(levels) != len(layers):
        raise ExportError(f"{len(levels)} levels given for {len(layers)} layers; give one level per layer")
