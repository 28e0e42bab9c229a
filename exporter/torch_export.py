"""A torch nn.Module + chosen sub-modules -> ONNX whose outputs are those sub-modules' activations.

Forward hooks capture each tapped module's output (or input, for activations computed by a shared
functional module); the wrapper returns them in depth order and torch.onnx (dynamo) exports it with a
dynamic batch axis. A vision transformer block's [N, T, C] tokens are turned into what the rest of the
project reads: the patch tokens as an [N, C, h, w] map, the class token as an [N, C] vector.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass

import onnx
import torch
from torch import nn

from exporter import OPSET
from exporter.errors import ExportError, unknown_name

INPUT_NAME = "input"


@dataclass(frozen=True)
class TokenLayout:
    """How a transformer's [N, T, C] tokens are laid out: `prefix` class/register tokens, then h x w patches."""

    prefix: int
    grid: tuple[int, int]


@dataclass(frozen=True)
class Tap:
    """One exposed layer: its name in the manifest and the module activation it reads."""

    name: str
    module: str  # path as named_modules() prints it
    port: str = "output"  # "input" reads what flows into the module
    tokens: TokenLayout | None = None  # set when the module gives transformer tokens [N, T, C]
    view: str = "as_is"  # with tokens: "patch_grid" -> [N, C, h, w] or "class_token" -> [N, C] (token 0)

    @property
    def source(self) -> str:
        """Where the layer comes from, as the manifest says it."""
        where = self.module + (":input" if self.port == "input" else "")
        return {"patch_grid": f"{where}[patch tokens]", "class_token": f"{where}[class token]"}.get(self.view, where)

    def select(self, value: torch.Tensor) -> torch.Tensor:
        """The part of the module's activation this layer is: all of it, the patch grid or the class token."""
        if self.view == "class_token":
            return value[:, 0]
        if self.view == "patch_grid":
            height, width = self.tokens.grid
            patches = value[:, self.tokens.prefix :]
            return patches.transpose(1, 2).reshape(value.shape[0], value.shape[2], height, width)
        return value


def _hook(module: nn.Module, port: str, record):
    """Call record(activation) with what flows into (port="input") or out of the module."""
    if port == "input":
        return module.register_forward_pre_hook(lambda _m, args: record(args[0]))
    return module.register_forward_hook(lambda _m, _args, out: record(out))


class TapModel(nn.Module):
    """Runs the model and returns the tapped activations (in the order of `taps`)."""

    def __init__(self, model: nn.Module, taps: list[Tap]):
        super().__init__()
        self.model = model
        self.taps = taps

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        points = {(tap.module, tap.port) for tap in self.taps}  # a block's grid and class token share one hook
        captured: dict[tuple[str, str], list[torch.Tensor]] = {point: [] for point in points}
        modules = dict(self.model.named_modules())
        handles = [_hook(modules[module], port, captured[module, port].append) for module, port in points]
        try:
            self.model(x)
        finally:
            for handle in handles:
                handle.remove()
        return tuple(self._single(tap, captured[tap.module, tap.port]) for tap in self.taps)

    @staticmethod
    def _single(tap: Tap, values: list) -> torch.Tensor:
        if len(values) != 1:
            raise ExportError(
                f"module {tap.module!r} runs {len(values)} times in one forward pass; "
                "choose a module that runs exactly once"
            )
        value = values[0]
        dims = (3,) if tap.tokens else (2, 4)
        if not isinstance(value, torch.Tensor) or value.dim() not in dims:
            kind = type(value).__name__ if not isinstance(value, torch.Tensor) else f"{value.dim()}-D tensor"
            expected = "[N, T, C] tokens" if tap.tokens else "an [N, C, H, W] map or [N, C] vector"
            raise ExportError(f"module {tap.module!r} gives a {kind}, expected {expected}")
        return tap.select(value)


def check_module_paths(model: nn.Module, taps: list[Tap]) -> None:
    names = [name for name, _ in model.named_modules() if name]
    for tap in taps:
        if tap.module not in names:
            raise unknown_name("layer", tap.module, names, "the model's named_modules()")


def order_by_depth(model: nn.Module, taps: list[Tap], input_size: tuple[int, int]) -> list[Tap]:
    """Taps sorted by when they fire in a forward pass; also proves the model takes an image."""
    check_module_paths(model, taps)
    order: list[str] = []
    modules = dict(model.named_modules())
    handles = []
    for tap in taps:
        handles.append(_hook(modules[tap.module], tap.port, lambda _value, n=tap.name: order.append(n)))
    try:
        with torch.no_grad():
            TapModel(model, taps)(torch.zeros(1, 3, *input_size))
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(
            f"not a CNN-like image model: forward on a 1x3x{input_size[0]}x{input_size[1]} image failed: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    finally:
        for handle in handles:
            handle.remove()
    first_seen = {name: i for i, name in reversed(list(enumerate(order)))}
    return sorted(taps, key=lambda tap: first_seen[tap.name])


def export_taps(model: nn.Module, taps: list[Tap], input_size: tuple[int, int]) -> onnx.ModelProto:
    """ONNX model with one output per tap (named after the tap) and a dynamic batch axis."""
    wrapper = TapModel(model.eval(), taps).eval()
    example = torch.zeros(2, 3, *input_size)
    log = io.StringIO()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # notices about optional torchvision ops
    try:
        with contextlib.redirect_stdout(log), torch.no_grad():
            program = torch.onnx.export(
                wrapper,
                (example,),
                input_names=[INPUT_NAME],
                output_names=[tap.name for tap in taps],
                dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
                opset_version=OPSET,
                dynamo=True,
            )
    except Exception as exc:
        last = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"torch.onnx.export failed: {last}") from exc
    return program.model_proto
