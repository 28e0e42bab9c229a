"""The layers worth exposing in a model nobody wrote a recipe for: found by watching one forward pass.

CNNs: the end of the stem and of every stage, i.e. the last module whose output is a square map at each
stride (1, 2, 4, … 64), then the classifier's input (the pooled embedding) and its output (the logits).
Vision transformers: the patch embedding's map, four blocks at quarter depths (each as a patch-token map and
its class token), then the embedding and logits. Levels follow the stride (CNNs) or the depth (blocks).
Only modules that run exactly once are candidates: a shared activation module has no single output.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn

from exporter.errors import ExportError, unknown_name
from exporter.torch_export import Tap, TokenLayout

STRIDES = (1, 2, 4, 8, 16, 32, 64)
BLOCK_TAPS = 4  # transformer blocks exposed: at 1/4, 1/2, 3/4 and the end of the stack
MAX_PREFIX_TOKENS = 16  # class + register tokens a ViT may put before its patches


@dataclass(frozen=True)
class Activation:
    """What one module produced in the traced forward pass, in the order modules finished."""

    module: str
    kind: str  # the module's class name
    shape: tuple[int, ...]
    input_shape: tuple[int, ...] | None


def trace(model: nn.Module, size: int) -> list[Activation]:
    """Every module that ran exactly once on a 1x3xsize x size image, with its output (and input) shape."""
    finished: list[Activation] = []
    calls: Counter[str] = Counter()

    def record(name):
        def hook(module, args, output):
            calls[name] += 1
            first = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if isinstance(output, torch.Tensor):
                shape = None if first is None else tuple(first.shape)
                finished.append(Activation(name, type(module).__name__, tuple(output.shape), shape))

        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in model.named_modules() if name]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    except Exception as exc:
        raise ExportError(
            f"not an image model: forward on a 1x3x{size}x{size} image failed: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    finally:
        for handle in handles:
            handle.remove()
    return [act for act in finished if calls[act.module] == 1]


def choose(model: nn.Module, size: int, stage_modules: set[str] | None = None) -> tuple[list[Tap], list[str]]:
    """Automatic taps and their levels; `stage_modules` narrows the CNN stage candidates (timm's feature_info)."""
    activations = trace(model, size)
    taps, levels = _transformer_taps(model, activations, size) or _stage_ends(activations, size, stage_modules)
    head = _head(activations)
    if not taps and not head:
        raise ExportError("found no layer to expose automatically: name the modules with --layers")
    return taps + head, levels + ["high"] * len(head)


def _map_stride(shape: tuple[int, ...], size: int) -> int | None:
    """The stride of an [N, C, H, W] square map of a size x size image (None for anything else)."""
    if len(shape) != 4 or shape[2] != shape[3] or shape[2] < 2:
        return None
    stride = round(size / shape[2])
    return stride if stride in STRIDES and abs(stride * shape[2] - size) < stride else None


def _stage_ends(activations, size, allowed) -> tuple[list[Tap], list[str]]:
    """The last square map at each stride: the end of the stem and of every stage.

    A module inside a block that halves the resolution does not count: the first convolutions of a stage's
    first (downsampling) block still run at the old stride, but they are not where the old stage ends.
    """
    strides_of = {act.module: (_map_stride(act.input_shape or (), size), _map_stride(act.shape, size))
                  for act in activations}  # fmt: skip
    downsamplers = {name for name, (into, out) in strides_of.items() if into and out == 2 * into}
    last_at: dict[int, str] = {}
    for act in activations:
        stride = strides_of[act.module][1]
        parts = act.module.split(".")
        inside = any(".".join(parts[:i]) in downsamplers for i in range(1, len(parts)))
        if stride is not None and (act.module in allowed if allowed is not None else not inside):
            last_at[stride] = act.module
    strides = sorted(last_at)
    taps = [Tap(f"stride{stride}", last_at[stride]) for stride in strides]
    levels = ["low" if stride <= 4 else "mid" if stride <= 16 else "high" for stride in strides]
    return taps, levels


def _head(activations) -> list[Tap]:
    """The classifier's input (the embedding) and output (the logits), or a headless model's output vector."""
    linears = [index for index, act in enumerate(activations) if act.kind == "Linear"]
    last = activations[linears[-1]] if linears else None
    # the classifier only if nothing after it changes the vector (a squeeze-excite Linear in a headless model)
    if (last is not None and len(last.shape) == 2 and last.input_shape is not None and len(last.input_shape) == 2
            and all(act.shape == last.shape for act in activations[linears[-1] + 1 :])):  # fmt: skip
        return [Tap("embedding", last.module, "input"), Tap("logits", last.module)]
    final = activations[-1] if activations else None
    if final is not None and len(final.shape) == 2:  # num_classes=0: the model's output is the embedding
        return [Tap("embedding", final.module)]
    return []


def _transformer_taps(model: nn.Module, activations, size) -> tuple[list[Tap], list[str]] | None:
    """Patch embedding + blocks at quarter depths for a ViT-like model, or None when it is not one."""
    patch = _patch_embedding(model)
    if patch is None:
        return None
    conv_name, stride = patch
    grid = (size // stride, size // stride)
    blocks = _blocks(activations, grid[0] * grid[1])
    if not blocks:  # a CNN with a patchify stem (ConvNeXt)
        return None
    if size % stride:
        raise ExportError(f"input size {size} is not a multiple of the patch size {stride}")
    picks = sorted({max(0, round(len(blocks) * (k + 1) / BLOCK_TAPS) - 1) for k in range(BLOCK_TAPS)})
    taps, levels = [Tap("patch_embed", conv_name)], ["low"]
    for index in picks:
        block, number = blocks[index], index + 1
        layout = TokenLayout(prefix=block.shape[1] - grid[0] * grid[1], grid=grid)
        level = "low" if number * 3 <= len(blocks) else "mid" if number * 3 <= 2 * len(blocks) else "high"
        taps.append(Tap(f"block{number}", block.module, tokens=layout, view="patch_grid"))
        levels.append(level)
        if layout.prefix:
            taps.append(Tap(f"block{number}_cls", block.module, tokens=layout, view="class_token"))
            levels.append(level)
    return taps, levels


def _blocks(activations, patches: int) -> list[Activation]:
    """The transformer blocks: the longest run of same-class siblings that map [N, T, C] tokens to themselves."""
    siblings: dict[tuple[str, str], list[Activation]] = {}
    for act in activations:
        if len(act.shape) == 3 and 0 <= act.shape[1] - patches <= MAX_PREFIX_TOKENS and act.input_shape == act.shape:
            siblings.setdefault((act.module.rpartition(".")[0], act.kind), []).append(act)
    if not siblings:
        return []
    return max(siblings.values(), key=lambda run: (len(run), -run[0].module.count(".")))


def _patch_embedding(model: nn.Module) -> tuple[str, int] | None:
    """The first convolution, when it cuts the image into non-overlapping patches (kernel = stride > 2)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            kernel, stride = module.kernel_size[0], module.stride[0]
            return (name, stride) if kernel == stride and stride > 2 else None
    return None


def named(model: nn.Module, size: int, layers: list[str], levels: list[str] | None) -> tuple[list[Tap], list[str]]:
    """Taps for module paths the user named; a transformer block's tokens become a map and a class token."""
    modules = dict(model.named_modules())
    for layer in layers:
        if layer not in modules or not layer:
            raise unknown_name("layer", layer, [n for n in modules if n], "the model's named_modules()")
    patch = _patch_embedding(model)
    shapes = {act.module: act.shape for act in trace(model, size)}
    taps, chosen_levels = [], []
    for index, layer in enumerate(layers):
        shape = shapes.get(layer, ())
        level = levels[index] if levels else None
        if patch and len(shape) == 3 and 0 <= shape[1] - (size // patch[1]) ** 2 <= MAX_PREFIX_TOKENS:
            grid = (size // patch[1], size // patch[1])
            layout = TokenLayout(prefix=shape[1] - grid[0] * grid[1], grid=grid)
            taps.append(Tap(layer, layer, tokens=layout, view="patch_grid"))
            chosen_levels.append(level)
            if layout.prefix:
                taps.append(Tap(f"{layer}_cls", layer, tokens=layout, view="class_token"))
                chosen_levels.append(level)
        else:
            taps.append(Tap(layer, layer))
            chosen_levels.append(level)
    return taps, chosen_levels
