"""CLI: `python -m insight --model NAME --out DIR [--models-dir D] [--photos N] [--quick]`.

Writes DIR/insight.json (every figure), DIR/invariance.png and DIR/receptive_field.png, prints what it wrote;
bad arguments print one `error:` line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
from pathlib import Path

from insight.photos import PHOTOS
from insight.study import StudyError, open_model, run_study
from insight.views import select_views


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m insight",
        description="Measure, layer by layer, how invariant a model's pooled embeddings are to simple transforms.",
    )
    parser.add_argument("--model", required=True, help="exported model name, e.g. efficientnet_lite0")
    parser.add_argument("--out", type=Path, default=Path("docs/insight"), help="output folder (default docs/insight)")
    parser.add_argument("--models-dir", type=Path, default=Path("exported_models"), help="default exported_models")
    parser.add_argument(
        "--photos", type=int, default=len(PHOTOS), metavar="N",
        help=f"use the first N of the {len(PHOTOS)} scikit-image photos (2 to {len(PHOTOS)}; default all)",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="one view per transform instead of every view")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: its default)")
    return parser


def _versions() -> dict[str, str]:
    import numpy
    import onnxruntime
    import PIL

    return {"python": platform.python_version(), "numpy": numpy.__version__,
            "onnxruntime": onnxruntime.__version__, "pillow": PIL.__version__}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not 2 <= args.photos <= len(PHOTOS):
        parser.error(f"--photos must be from 2 to {len(PHOTOS)}")
    try:
        from insight.plots import plot_invariance, plot_receptive_fields
    except ImportError as exc:  # matplotlib is not a serving dependency
        print(f"error: {exc.name or exc} is missing; pip install -e '.[insight]'", file=sys.stderr)
        return 2
    try:
        model = open_model(args.models_dir, args.model, args.threads)
        result = run_study(model, list(PHOTOS[: args.photos]), select_views(args.quick))
    except StudyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    command = ["python", "-m", "insight", *(sys.argv[1:] if argv is None else argv)]
    result = {**result, "command": shlex.join(command), "quick": args.quick, "tools": _versions()}
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "insight.json"
    json_path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    written = [json_path, plot_invariance(result, args.out / "invariance.png"),
               plot_receptive_fields(result, args.out / "receptive_field.png")]  # fmt: skip
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
