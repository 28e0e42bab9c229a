"""CLI: `python -m extract INPUT… --model NAME --out DIR [options]` (see --help).

Exit status 0 when every input is either a row or a line of failed.csv, 2 with one `error:` line for
arguments that cannot work, 1 when the run itself could not go on, 130 when interrupted (rerun to resume).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from engine.features import DTYPES
from engine.manifest import POOLINGS
from extract.errors import ExtractError, UsageError
from extract.job import DEFAULT_BATCH_SIZE, ENGINES, default_models_dir, run
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
        "--models-dir",
        type=Path,
        default=None,
        help=f"exported models (default $FEATURES_MODELS_DIR or {default_models_dir()})",
    )
    parser.add_argument("--levels", type=_csv, help="low,mid,high (default all)")
    parser.add_argument("--layers", type=_csv, help="layer names; overrides --levels")
    parser.add_argument("--pooling", default="avg", choices=POOLINGS, help="avg or max vectors; none keeps full maps")
    parser.add_argument("--format", default="npy", choices=FORMATS)
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="images per inference or request")
    parser.add_argument("--server", help="URL of a running service to send the images to instead of computing here")
    parser.add_argument("--api-key-file", type=Path, help="file holding the service's API key ($FEATURES_API_KEY)")
    parser.add_argument("--engine", default="local", choices=ENGINES)
    parser.add_argument("--ray-address", help="Ray cluster to join (default: start a local Ray)")
    parser.add_argument(
        "--workers", type=int, help="decode workers (local), requests in flight (--server) or actors (ray)"
    )
    parser.add_argument("--pool", default="thread", choices=POOLS, help="local decode workers: threads or processes")
    parser.add_argument("--overwrite", action="store_true", help="replace a different extraction found in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _api_key(args) -> str | None:
    if args.api_key_file is None:
        return os.environ.get("FEATURES_API_KEY") or None
    try:
        key = args.api_key_file.read_text().strip()
    except OSError as exc:
        raise UsageError(f"cannot read --api-key-file {args.api_key_file}: {exc.strerror}") from None
    if not key:
        raise UsageError(f"--api-key-file {args.api_key_file} is empty")
    return key


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        summary = run(
            args.inputs,
            args.model,
            args.out,
            models_dir=args.models_dir,
            levels=args.levels,
            layers=args.layers,
            pooling=args.pooling,
            format=args.format,
            dtype=args.dtype,
            batch_size=args.batch_size,
            server=args.server,
            api_key=_api_key(args),
            engine=args.engine,
            ray_address=args.ray_address,
            workers=args.workers,
            pool=args.pool,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ExtractError as exc:
        print(f"error: {exc} (finished batches are kept; rerun the same command to resume)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"interrupted; finished batches are kept in {args.out}: rerun the same command to resume", file=sys.stderr
        )
        return 130
    _report(summary)
    return 0


def _report(summary: dict) -> None:
    out = summary["out"]
    if summary["state"] == "complete":
        print(f"{out} already holds this extraction: {summary['rows']} rows, {summary['failed']} failed; nothing to do")
        return
    resumed = f", {summary['resumed_from']} done by an earlier run" if summary["resumed_from"] else ""
    print(f"{summary['inputs']} inputs: {summary['rows']} rows, {summary['failed']} failed{resumed}")
    print(
        f"processed {summary['processed']} images in {summary['seconds']:.1f} s "
        f"({summary['images_per_second']:.1f} images/s, {summary['engine']} engine)"
    )
    if summary["failed"]:
        print(f"failures with reasons: {Path(out) / 'failed.csv'}")
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
