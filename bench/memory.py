"""python -m bench.memory [--models-dir D] [--models a,b] [--cuts levels,none] [--together] [--env FEATURES_X=Y]

Memory per loaded model, as the service holds it: for each model and each FEATURES_PREFIX_GRAPHS value, the
real service (gunicorn, one worker) is started on a folder holding only that model, and the worker's resident
memory is read once /readyz says it is loaded and warmed up at the micro-batcher's largest batch. The worker
of the smallest model, with nothing else, shows what the process itself costs. --together adds a row for all
the chosen models served by one worker. Results: memory.json and memory.md in --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from bench import servers
from engine.errors import FeaturesError
from engine.exports import export_names, open_export
from engine.manifest import load_verified
from engine.settings import PREFIX_CUTS

REPO = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n")[0])
    parser.add_argument("--models-dir", type=Path, default=REPO / "exported_models")
    parser.add_argument("--models", help="comma-separated names (default: every export in --models-dir)")
    parser.add_argument("--cuts", default="levels,none", help=f"FEATURES_PREFIX_GRAPHS values: {','.join(PREFIX_CUTS)}")
    parser.add_argument("--together", action="store_true", help="also measure all the models in one worker")
    parser.add_argument("--env", action="append", default=[], metavar="FEATURES_X=Y", help="service setting")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    args.cuts = [cut.strip() for cut in args.cuts.split(",") if cut.strip()]
    unknown = [cut for cut in args.cuts if cut not in PREFIX_CUTS]
    if unknown:
        parser.error(f"unknown --cuts value {unknown[0]!r}; use {', '.join(PREFIX_CUTS)}")
    return args


def worker_mib(models_dir: Path, cuts: str, log: Path, env: dict[str, str]) -> float:
    """Resident MiB of the one worker serving `models_dir`, loaded and warmed."""
    server = servers.service(models_dir, log, **env, FEATURES_WORKERS="1", FEATURES_PREFIX_GRAPHS=cuts)
    try:
        server.wait_ready(timeout=300)
        workers = servers.worker_pids(server.process.pid)
        return sum(servers.rss_kib(pid) for pid in workers) / 1024
    finally:
        server.stop()


def measure(models_dir: Path, names: list[str], cuts: list[str], scratch: Path, together: bool,
            env: dict[str, str]) -> list[dict]:  # fmt: skip
    groups = [[name] for name in names] + ([names] if together and len(names) > 1 else [])
    rows = []
    for group in groups:
        label = " + ".join(group)
        folder = scratch / f"group{len(rows)}"
        folder.mkdir()
        row = {"model": label, "onnx_mib": 0.0, "layers": 0}
        for name in group:
            manifest, onnx_path = load_verified(models_dir / name / "model.json")
            (folder / name).symlink_to((models_dir / name).resolve(), target_is_directory=True)
            row["onnx_mib"] = round(row["onnx_mib"] + onnx_path.stat().st_size / 2**20, 1)
            row["layers"] += len(manifest.layers)
        for cut in cuts:
            row[f"worker_mib_{cut}"] = round(worker_mib(folder, cut, scratch / f"{folder.name}-{cut}.log", env))
            print(f"{label:<34} {cut:<7} {row[f'worker_mib_{cut}']:>6} MiB", file=sys.stderr)
        rows.append(row)
    return rows


def markdown(rows: list[dict], cuts: list[str]) -> str:
    head = "| model | ONNX MiB | layers | " + " | ".join(f"worker MiB, `{cut}`" for cut in cuts) + " |"
    lines = [head, "|" + "---|" * (3 + len(cuts))]
    for row in rows:
        cells = [row["model"], row["onnx_mib"], row["layers"], *(row[f"worker_mib_{cut}"] for cut in cuts)]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        names = [name.strip() for name in args.models.split(",")] if args.models else export_names(args.models_dir)
        for name in names:
            open_export(args.models_dir, name)
    except FeaturesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as scratch:
        env = dict(item.split("=", 1) for item in args.env)
        rows = measure(args.models_dir, names, args.cuts, Path(scratch), args.together, env)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory.json").write_text(json.dumps({"cuts": args.cuts, "env": env, "models": rows}, indent=2) + "\n")
    (args.out / "memory.md").write_text(markdown(rows, args.cuts))
    print(markdown(rows, args.cuts), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
