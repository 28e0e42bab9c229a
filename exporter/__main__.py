"""CLI: `python -m exporter list | zoo | torchvision | timm | module | onnx | quantize` (see --help of each).

Every failure the user can fix ends in one line on stderr and exit status 2; nothing half-written remains.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

from engine.manifest import Preprocess, load_manifest
from exporter.errors import ExportError

DEFAULT_OUT = Path("exported_models")


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _whole(low: int, high: int, unit: str = ""):
    """An argparse type: a whole number from `low` to `high`, the refusal naming the unit."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number{' of ' + unit if unit else ''}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is outside {low}..{high}{' ' + unit if unit else ''}")
        return value

    return parse


_side = _whole(8, 4096, "pixels")  # an image side
_count = _whole(0, 10_000)


def _floats(text: str) -> list[float]:
    values = [float(v) for v in _csv(text)]
    if len(values) != 3:
        raise argparse.ArgumentTypeError("give three comma-separated numbers (R,G,B)")
    return values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m exporter", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = parser.add_subparsers(dest="command", required=True)

    listing = sub.add_parser("list", help="built-in models and whether their weights are installed")
    listing.add_argument("--out", type=Path, default=DEFAULT_OUT)

    zoo = sub.add_parser("zoo", help="export a built-in pretrained model")
    zoo.add_argument("model")
    zoo.add_argument("--out", type=Path, default=DEFAULT_OUT)
    zoo.add_argument("--skip-existing", action="store_true", help="do nothing if an intact export exists")
    _precision_options(zoo)

    for library, pretrained in (("torchvision", "DEFAULT"), ("timm", "pretrained")):
        hub = sub.add_parser(library, help=f"export a {library} model by name (needs the `hub` extra)")
        hub.add_argument("model", help=f"architecture name as {library} lists it" +
                         (" (NAME.TAG picks a pretrained tag)" if library == "timm" else ""))  # fmt: skip
        hub.add_argument("--weights", default=pretrained,
                         help=f"{pretrained} (the hub, or its cache), none (random, seeded) or a file "
                              "(.safetensors or a state dict, loaded weights-only)")  # fmt: skip
        hub.add_argument("--name", help="the export's directory and API name (default: the model name)")
        hub.add_argument("--layers", type=_csv, help="module paths instead of the automatic stage ends")
        hub.add_argument("--levels", type=_csv, help="low|mid|high per layer (default: by stride or depth)")
        hub.add_argument("--input-size", type=_side, help="square input side (default: the weights' own)")
        hub.add_argument("--no-labels", action="store_true", help="do not attach the weights' class names")
        hub.add_argument("--out", type=Path, default=DEFAULT_OUT)
        _precision_options(hub)

    module = sub.add_parser("module", help="export any torch nn.Module from an importable factory")
    module.add_argument("factory", help="'package.module:function' returning an nn.Module")
    module.add_argument("--name", required=True)
    module.add_argument("--layers", type=_csv,
                        help="module paths as named_modules() prints them (default: the stage ends, found as for "
                             "torchvision models)")  # fmt: skip
    _common(module)
    module.add_argument("--weights", type=Path, help="state dict, loaded with torch.load(weights_only=True)")

    foreign = sub.add_parser("onnx", help="expose intermediate tensors of an existing ONNX model")
    foreign.add_argument("path", type=Path)
    foreign.add_argument("--name")
    picks = foreign.add_mutually_exclusive_group()
    picks.add_argument("--layers", type=_csv, help="tensor names to expose")
    picks.add_argument("--auto", action="store_true", help="last tensor at each stride + the final outputs")
    picks.add_argument("--list-tensors", action="store_true", help="print candidate tensors and exit")
    _common(foreign)

    lower = sub.add_parser("quantize", help="derive an int8 or fp16 export from an existing fp32 export")
    lower.add_argument("export", type=Path, help="the fp32 export's folder (holding model.json)")
    _precision_options(lower, required=True)
    lower.add_argument("--out", type=Path, help="where NAME-PRECISION goes (default: beside the fp32 export)")
    return parser


def _precision_options(parser: argparse.ArgumentParser, required: bool = False) -> None:
    choices = ["int8", "fp16"] if required else ["fp32", "int8", "fp16"]
    parser.add_argument("--precision", choices=choices, required=required, default=None if required else "fp32",
                        help="int8 (CPU) or fp16 (CUDA): also write NAME-PRECISION, judged against fp32 on "
                             "held-out photos (docs/precision.md)")  # fmt: skip
    parser.add_argument("--calibration", type=Path, metavar="FOLDER",
                        help="int8: calibrate on these photos (default: a built-in set of real photos)")  # fmt: skip
    parser.add_argument("--float-convs", type=_count, metavar="N",
                        help="int8: keep exactly the first N convolutions in float (default: the fewest that "
                             "meet the cosine threshold on the validation photos)")  # fmt: skip
    parser.add_argument("--force", action="store_true", help="write a derived export that misses its thresholds")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--levels", type=_csv, help="low|mid|high per layer (default: thirds by depth)")
    parser.add_argument("--input-size", type=_side, help="square input side (default 224, or the ONNX input's)")
    parser.add_argument("--resize", type=_side, help="shorter side before the centre crop (default size/0.875)")
    parser.add_argument("--mean", type=_floats, help="per-channel mean in 0-255 units (default ImageNet)")
    parser.add_argument("--std", type=_floats, help="per-channel std in 0-255 units (default ImageNet)")
    parser.add_argument("--interpolation", choices=["nearest", "bilinear", "bicubic", "lanczos"], default="bilinear")
    parser.add_argument("--no-labels", action="store_true", help="do not attach ImageNet labels to [1000] outputs")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    _precision_options(parser)


def _preprocess(args, size: int) -> Preprocess:
    defaults = Preprocess(size=[size, size], resize=round(size / 0.875))
    return Preprocess(
        size=[size, size],
        resize=args.resize or defaults.resize,
        interpolation=args.interpolation,
        mean=args.mean or defaults.mean,
        std=args.std or defaults.std,
    )


def _labels(args):
    if args.no_labels:
        return None
    from exporter.zoo import imagenet_labels

    return imagenet_labels()


def _report(directory: Path) -> None:
    manifest = load_manifest(directory / "model.json")
    print(f"wrote {directory / manifest.onnx.file} (sha256 {manifest.onnx.sha256[:12]}…, opset {manifest.onnx.opset})")
    if manifest.quality is not None:
        return _report_quality(directory, manifest)
    print(f"wrote {directory / 'model.json'} (verified against {manifest.verification.reference}: "
          f"max abs error {manifest.verification.max_abs_error:.2e})")  # fmt: skip
    print(f"  {'layer':<24} {'level':<5} {'shape':<16} {'stride':>6} {'RF':>5}")
    for layer in manifest.layers:
        shape = "x".join(map(str, layer.shape))
        print(f"  {layer.name:<24} {layer.level:<5} {shape:<16} {layer.stride or '-':>6} "
              f"{layer.receptive_field or '-':>5}")  # fmt: skip


def _report_quality(directory: Path, manifest) -> None:
    """A derived export: its cosine to fp32 per layer and pooling on the held-out photos, and top-1 agreement."""
    quality = manifest.quality
    state = "FORCED although below the thresholds" if quality.forced else "passed the thresholds"
    print(f"wrote {directory / 'model.json'} ({manifest.precision} of {quality.reference}, judged on "
          f"{quality.images} views of held-out photos: {state})")  # fmt: skip
    if quality.kept_float:
        print(f"  kept in float: the first {quality.float_convs} convolutions and the head after the last map, "
              f"{len(quality.kept_float)} nodes (docs/precision.md)")  # fmt: skip
    print(f"  {'layer':<24} " + " ".join(f"{'cos ' + p:>10}" for p in ("none", "avg", "max")))
    for layer in manifest.layers:
        means = [quality.cosine[layer.name].get(p, {}).get("mean") for p in ("none", "avg", "max")]
        print(f"  {layer.name:<24} " + " ".join(f"{m:>10.4f}" if m is not None else f"{'-':>10}" for m in means))
    if quality.top1_agreement is not None:
        print(f"  top-1 agreement with fp32: {quality.top1_agreement:.1%}")


def _list(args) -> None:
    from exporter.build import is_current
    from exporter.zoo import RECIPES

    print(f"{'model':<22} {'input':>5}  {'weights package':<36} {'weights':<13} export")
    for recipe in RECIPES.values():
        installed = "installed" if recipe.installed else "not installed"
        exported = str(args.out / recipe.name) if is_current(args.out, recipe.name) else "-"
        print(f"{recipe.name:<22} {recipe.image_size:>5}  {recipe.weights_package:<36} {installed:<13} {exported}")


def _run(args) -> None:
    from exporter import sources

    if args.command == "list":
        return _list(args)
    if args.command == "quantize":
        return _quantize(args)
    if args.command == "zoo":
        return _zoo(args, sources)
    if args.command in ("torchvision", "timm"):
        return _export(args, lambda out: sources.export_backbone(
            args.command, args.model, args.weights, args.name, args.layers, args.levels, args.input_size, out,
            not args.no_labels))  # fmt: skip
    if args.command == "module":
        pre, labels = _preprocess(args, args.input_size or 224), _labels(args)
        return _export(args, lambda out: sources.export_module(
            args.factory, args.name, args.layers, args.levels, pre, args.weights, out, labels))  # fmt: skip
    return _run_onnx(args, sources)


def _derive_options(args) -> dict:
    if args.precision != "int8" and (args.calibration or args.float_convs is not None):
        raise ExportError("--calibration and --float-convs apply to --precision int8 only")
    return {"calibration_folder": args.calibration, "float_convs": args.float_convs, "force": args.force}


def _export(args, export_fp32) -> None:
    """One export route at the asked precision: the fp32 export, plus NAME-PRECISION when asked."""
    from exporter.precision import export_at

    for directory in export_at(args.precision, export_fp32, args.out, **_derive_options(args)):
        _report(directory)


def _zoo(args, sources) -> None:
    from exporter.build import is_current
    from exporter.precision import derive, is_derived_current
    from exporter.zoo import recipe

    recipe(args.model)
    options = _derive_options(args)
    if args.skip_existing and is_current(args.out, args.model):
        if args.precision == "fp32" or is_derived_current(args.out, args.model, args.precision):
            print(f"{args.out / args.model} is up to date; nothing to do")
            return None
        return _report(derive(args.out / args.model, args.precision, args.out, **options))
    return _export(args, lambda out: sources.export_zoo(args.model, out))


def _quantize(args) -> None:
    from exporter.precision import derive

    options = _derive_options(args)
    _report(derive(args.export, args.precision, args.out or args.export.resolve().parent, **options))


def _run_onnx(args, sources) -> None:
    from exporter.onnx_expose import image_input, spatial_tensors

    model = sources.read_onnx(args.path)
    input_name, dims = image_input(model)
    if args.list_tensors:
        producer = {out: node.op_type for node in model.graph.node for out in node.output}
        for tensor, geo in spatial_tensors(model, input_name).items():
            print(f"{tensor}\top={producer[tensor]}\tstride={geo.stride}\treceptive_field={geo.receptive_field}")
        return None
    if not args.name:
        raise ExportError("--name is required (the model's directory and API name)")
    if not (args.layers or args.auto):
        raise ExportError("choose the tensors: --layers t1,t2,… or --auto (see --list-tensors)")
    fixed = [d for d in dims[2:] if isinstance(d, int)]
    if len(fixed) == 2 and fixed[0] != fixed[1]:
        raise ExportError(f"non-square fixed inputs ({fixed[0]}x{fixed[1]}) are not supported")
    if fixed and args.input_size and args.input_size != fixed[0]:
        raise ExportError(f"--input-size {args.input_size} but the model's input is fixed at {fixed[0]}")
    size = fixed[0] if fixed else (args.input_size or 224)
    return _export(args, lambda out: sources.export_onnx(
        args.path, args.name, args.layers, args.levels, _preprocess(args, size), out, _labels(args)))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # torch.onnx logs optional-dependency notices at WARNING
    if not args.debug:  # torch/onnx internals warn a lot; what the user must know comes as an error line
        warnings.simplefilter("ignore")
    try:
        _run(args)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"error: unexpected {type(exc).__name__}: {first} (rerun with --debug for details)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
