"""CLI: `python -m extract INPUT… --model NAME --out DIR [options]` (see --help).

Settings come from FEATURES_* variables (engine/settings.py), built once here; flags override them. Exit status
0 when every input is either a row or a line of failed.csv, 2 with one `error:` line for arguments (or settings)
that cannot work, 1 when the run itself could not go on, 130 when interrupted (rerun to resume).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from engine.errors import FeaturesError, Unavailable
from engine.features import DTYPES
from engine.manifest import POOLINGS
from engine.settings import PROVIDERS, Settings, read_api_key_file
from extract.errors import UsageError
from extract.job import DEFAULT_BATCH_SIZE, ENGINES, run
from extract.local import POOLS
from extract.plan import FORMATS


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m extract",
        description="Extract per-layer CNN features of whole image collections into .npy or Parquet files.",
    )
    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="image folder (recursive), glob pattern, or a .txt/.csv file listing paths",
    )
    parser.add_argument("--model", required=True, help="exported model name, e.g. efficientnet_lite0")
    parser.add_argument("--out", required=True, type=Path, help="output folder (created; reruns resume it)")
    parser.add_argument(
        "--models-dir", type=Path, help="exported models (default $FEATURES_MODELS_DIR or exported_models)"
    )
    parser.add_argument(
        "--providers",
        choices=tuple(PROVIDERS),
        help="ONNX Runtime execution providers: cpu, or cuda (CPU fallback with a warning); "
        "default $FEATURES_PROVIDERS or cpu",
    )
    parser.add_argument("--levels", type=_csv, help="low,mid,high (default all)")
    parser.add_argument("--layers", type=_csv, help="layer names; overrides --levels")
    parser.add_argument("--pooling", default="avg", choices=POOLINGS, help="avg or max vectors; none keeps full maps")
    parser.add_argument("--format", default="npy", choices=FORMATS)
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="images per inference or request")
    parser.add_argument("--server", help="URL of a running service to send the images to instead of computing here")
    parser.add_argument(
        "--api-key-file", type=Path, help="file holding the service's API key (default $FEATURES_API_KEY[_FILE])"
    )
    parser.add_argument("--engine", default="local", choices=ENGINES)
    parser.add_argument("--ray-address", help="Ray cluster to join (default: start a local Ray)")
    parser.add_argument(
        "--workers", type=int, help="decode workers (local), requests in flight (--server) or actors (ray)"
    )
    parser.add_argument("--pool", default="thread", choices=POOLS, help="local decode workers: threads or processes")
    parser.add_argument("--overwrite", action="store_true", help="replace a different extraction found in --out")
    parser.add_argument(
        "--update",
        action="store_true",
        help="let a finished --out follow changed inputs: compute new and changed files only, drop deleted ones",
    )
    parser.add_argument(
        "--index",
        nargs="?",
        const="",
        metavar="TARGET",
        help="also mirror the vectors into a search index: a folder, or a postgresql:// URL "
        "(default $FEATURES_INDEX); implies --update",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    """FEATURES_* settings with the flags that override them."""
    key = read_api_key_file(args.api_key_file, "--api-key-file") if args.api_key_file is not None else None
    return Settings.from_env().overridden(models_dir=args.models_dir, providers=args.providers, api_key=key)


def _index_target(flag: str | None, settings: Settings) -> str | None:
    """--index TARGET, or bare --index for $FEATURES_INDEX; None when not asked for."""
    if flag is None:
        return None
    target = flag or settings.index
    if not target:
        raise UsageError("--index needs a TARGET (a folder or a postgresql:// URL) or $FEATURES_INDEX")
    return target


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _log_warnings()
    try:
        settings = _settings(args)
        summary = run(
            args.inputs,
            args.model,
            args.out,
            settings=settings,
            levels=args.levels,
            layers=args.layers,
            pooling=args.pooling,
            format=args.format,
            dtype=args.dtype,
            batch_size=args.batch_size,
            server=args.server,
            engine=args.engine,
            ray_address=args.ray_address,
            workers=args.workers,
            pool=args.pool,
            overwrite=args.overwrite,
            update=args.update,
            index=_index_target(args.index, settings),
            progress=not args.no_progress,
        )
    except FeaturesError as exc:
        return _error(exc)
    except KeyboardInterrupt:
        print(
            f"interrupted; finished batches are kept in {args.out}: rerun the same command to resume", file=sys.stderr
        )
        return 130
    _report(summary)
    return 0


def _error(exc: FeaturesError) -> int:
    """The one place an error becomes this CLI's `error:` line and exit status."""
    if isinstance(exc, Unavailable):  # ExtractError among them: the run could not go on
        print(f"error: {exc.detail} (finished batches are kept; rerun the same command to resume)", file=sys.stderr)
        return 1
    print(f"error: {exc.detail}", file=sys.stderr)  # what was asked cannot work as given
    return 2


class _Lines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def _log_warnings() -> None:
    """Log warnings (CUDA asked for but not there, ...) as `warning: ...` lines on stderr, like the `error:` line.

    basicConfig does nothing where logging is set up already (a program calling main(), a test runner).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Lines())
    logging.basicConfig(level=logging.WARNING, handlers=[handler])


def _report(summary: dict) -> None:
    out = summary["out"]
    if summary["state"] == "complete":
        print(f"{out} already holds this extraction: {summary['rows']} rows, {summary['failed']} failed; nothing to do")
        _report_index(summary["index"])
        return
    resumed = f", {summary['resumed_from']} done by an earlier run" if summary["resumed_from"] else ""
    resumed += f", {summary['carried']} unchanged files carried over" if summary["carried"] else ""
    print(f"{summary['inputs']} inputs: {summary['rows']} rows, {summary['failed']} failed{resumed}")
    ran_on = f" on {summary['provider']}" if summary["provider"] else ""
    ran_on += f", {summary['precision']}" if summary["precision"] != "fp32" else ""
    print(
        f"processed {summary['processed']} images in {summary['seconds']:.1f} s "
        f"({summary['images_per_second']:.1f} images/s, {summary['engine']} engine{ran_on})"
    )
    if summary["failed"]:
        print(f"failures with reasons: {Path(out) / 'failed.csv'}")
    print(f"wrote {out}")
    _report_index(summary["index"])


def _report_index(index: dict | None) -> None:
    if index:
        print(
            f"index {index['target']} collection {index['collection']}: {index['added']} added, "
            f"{index['removed']} removed, {index['entries']} entries"
        )


if __name__ == "__main__":
    sys.exit(main())
