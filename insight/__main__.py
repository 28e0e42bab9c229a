"""CLI: `python -m insight --model NAME --out DIR [--models-dir D] [--providers cpu|cuda] [--photos N] [--quick]`,
and `python -m insight retrieval` with the same flags plus `[--invariance insight.json]` (insight/retrieval.py).

Settings come from FEATURES_* variables (engine/settings.py), built once here; flags override them. Writes
DIR/insight.json (every figure), DIR/invariance.png and DIR/receptive_field.png, prints what it wrote and the
execution provider that ran; arguments or settings that cannot work print one `error:` line and exit 2, a study
that could not go on exits 1. `retrieval` writes DIR/retrieval.json and DIR/retrieval.png the same way.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shlex
import sys
import tempfile
from pathlib import Path

from engine.errors import FeaturesError, Misconfigured, Unavailable
from engine.settings import PROVIDERS, Settings
from insight.photos import PHOTOS
from insight.retrieval import read_invariance, run_retrieval, versus_invariance
from insight.study import open_model, run_study
from insight.views import select_views


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m insight",
        description="Measure, layer by layer, how invariant a model's pooled embeddings are to simple transforms.",
        epilog="python -m insight retrieval --help: what each layer retrieves in a vector index of the same views",
    )
    parser.add_argument("--model", required=True, help="exported model name, e.g. efficientnet_lite0")
    parser.add_argument("--out", type=Path, default=Path("docs/insight"), help="output folder (default docs/insight)")
    parser.add_argument("--models-dir", type=Path, help="default $FEATURES_MODELS_DIR or exported_models")
    parser.add_argument(
        "--providers", choices=tuple(PROVIDERS),
        help="ONNX Runtime execution providers: cpu, or cuda (CPU fallback with a warning); "
        "default $FEATURES_PROVIDERS or cpu",
    )  # fmt: skip
    parser.add_argument(
        "--photos", type=int, default=len(PHOTOS), metavar="N",
        help=f"use the first N of the {len(PHOTOS)} scikit-image photos (2 to {len(PHOTOS)}; default all)",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="one view per transform instead of every view")
    parser.add_argument(
        "--threads", type=int, help="ONNX Runtime threads (default $FEATURES_ORT_THREADS or 0: its default)"
    )
    return parser


def _versions() -> dict[str, str]:
    import numpy
    import onnxruntime
    import PIL

    return {"python": platform.python_version(), "numpy": numpy.__version__,
            "onnxruntime": onnxruntime.__version__, "pillow": PIL.__version__}  # fmt: skip


def _retrieval_parser() -> argparse.ArgumentParser:
    """The study's flags (copied from its parser, so both stay alike) plus --invariance."""
    parser = argparse.ArgumentParser(
        prog="python -m insight retrieval", parents=[_parser()], conflict_handler="resolve",
        description="Index every view of the study's photos (average-pooled, per layer) in a temporary vector "
        "index and measure, per layer and transform, how often a transformed view's nearest entry is its own photo.",
    )  # fmt: skip
    parser.add_argument(
        "--invariance", type=Path, metavar="FILE",
        help="the study's insight.json of the same model, photos and views: compare its scores cell by cell",
    )  # fmt: skip
    return parser


def _check_ranges(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not 2 <= args.photos <= len(PHOTOS):
        parser.error(f"--photos must be from 2 to {len(PHOTOS)}")
    if args.threads is not None and args.threads < 0:
        parser.error("--threads must be at least 0")


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    if given[:1] == ["retrieval"]:
        return _retrieval(given)
    parser = _parser()
    args = parser.parse_args(argv)
    _check_ranges(parser, args)
    _log_warnings()
    try:
        plot_invariance, plot_receptive_fields = _plots()
        model = open_model(_settings(args), args.model)
        result = run_study(model, list(PHOTOS[: args.photos]), select_views(args.quick))
    except FeaturesError as exc:
        return _error(exc)
    command = ["python", "-m", "insight", *(sys.argv[1:] if argv is None else argv)]
    result = {**result, "command": shlex.join(command), "quick": args.quick, "tools": _versions()}
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "insight.json"
    json_path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    written = [json_path, plot_invariance(result, args.out / "invariance.png"),
               plot_receptive_fields(result, args.out / "receptive_field.png")]  # fmt: skip
    print(f"ran {result['model']} on {result['provider']}")
    for path in written:
        print(f"wrote {path}")
    return 0


def _retrieval(given: list[str]) -> int:
    """`python -m insight retrieval ...`: both designs' figures, the plot, and the comparison with the study."""
    parser = _retrieval_parser()
    args = parser.parse_args(given[1:])
    _check_ranges(parser, args)
    _log_warnings()
    photos, views = list(PHOTOS[: args.photos]), select_views(args.quick)
    try:
        plot_retrieval = _retrieval_plot()
        study = read_invariance(args.invariance, args.model, photos, views) if args.invariance else None
        model = open_model(_settings(args), args.model)
        with tempfile.TemporaryDirectory(prefix="insight-retrieval-") as folder:
            result = run_retrieval(model, photos, views, Path(folder))
    except FeaturesError as exc:
        return _error(exc)
    comparison = versus_invariance(result, study) if study else None
    result = {**result, "versus_invariance": comparison, "command": shlex.join(["python", "-m", "insight", *given]),
              "quick": args.quick, "tools": _versions()}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "retrieval.json"
    json_path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"ran {result['model']} on {result['provider']}")
    for path in (json_path, plot_retrieval(result, args.out / "retrieval.png")):
        print(f"wrote {path}")
    return 0


def _retrieval_plot():
    """As _plots(), for the retrieval figure."""
    try:
        from insight.plots import plot_retrieval
    except ImportError as exc:
        raise Misconfigured(f"{exc.name or exc} is missing; pip install -e '.[insight]'") from None
    return plot_retrieval


def _plots():
    """The plotting functions; matplotlib is the `insight` extra, never a serving dependency."""
    try:
        from insight.plots import plot_invariance, plot_receptive_fields
    except ImportError as exc:
        raise Misconfigured(f"{exc.name or exc} is missing; pip install -e '.[insight]'") from None
    return plot_invariance, plot_receptive_fields


def _settings(args: argparse.Namespace) -> Settings:
    """FEATURES_* settings with the flags that override them."""
    return Settings.from_env().overridden(
        models_dir=args.models_dir, providers=args.providers, ort_threads=args.threads
    )


def _error(exc: FeaturesError) -> int:
    """The one place an error becomes this CLI's `error:` line and exit status."""
    print(f"error: {exc.detail}", file=sys.stderr)
    return 1 if isinstance(exc, Unavailable) else 2  # could not go on now / cannot work as given


class _Lines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def _log_warnings() -> None:
    """Log warnings (CUDA asked for but not there, ...) as `warning: ...` lines on stderr, like the `error:` line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Lines())
    logging.basicConfig(level=logging.WARNING, handlers=[handler])


if __name__ == "__main__":
    sys.exit(main())
