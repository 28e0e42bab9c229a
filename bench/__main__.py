"""python -m bench [--quick] [--seconds S] [--out bench/results] [--env FEATURES_X=Y ...]

One run, same photos, same model (EfficientNet-Lite0 and its int8 export, made if missing), pooled embeddings
of every level:
  1. ceiling: in-process decode + ONNX Runtime, pipelined (and sequential, for per-image latency), and
     inference alone at batch 8 in fp32 and int8;
  2. service: the repo's gunicorn config at concurrency 1, 8, 32 with raw, multipart and base64-JSON bodies,
     the Open Inference Protocol (KServe V2) infer route at 1 and 8 (the image as a binary BYTES input, the
     default outputs, every layer's avg vector, as binary), the int8 export at 1 and 8, and small photos only
     at 8;
  3. hand-written Flask + ONNX Runtime route; 4. hand-written Flask + PyTorch eager route; each swept over a
     few simple gunicorn/thread configurations (bench/baseline_sweep.py), the fastest then timed in full;
  5. early layers only vs all levels; full maps of the stem (one image's 1.6 MB) as JSON numbers, base64 float16
     in JSON, binary safetensors in float32 and float16 (Accept: application/x-safetensors), and V2 binary
     tensor data (output `stem` with binary_data), with answer sizes;
  6. batch extraction (python -m extract, local engine) of a folder of copies of the photos.
Before timing, the service's answers are checked against the in-process numbers, and its V2 answers against
/v1's. Load comes from wrk in its own process. Results: results.json, results.md and chart.png in --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime

from bench import baseline_sweep, ceiling, load, photos, report, servers, verify
from engine.manifest import load_manifest

REPO = Path(__file__).resolve().parent.parent
MODEL = "efficientnet_lite0"
INT8 = f"{MODEL}-int8"
FEATURES = f"/v1/models/{MODEL}/features"
V2_INFER = f"/v2/models/{MODEL}/infer"
INT8_FEATURES = f"/v1/models/{INT8}/features"
STEM_MAP_FORMS = [  # (row name, extra query, Accept): one stem map per answer, in each form a client can ask for
    ("json", "", ""),
    ("base64", "&encoding=base64&dtype=float16", ""),
    ("safetensors", "", "application/x-safetensors"),
    ("safetensors fp16", "&dtype=float16", "application/x-safetensors"),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--models-dir", type=Path, default=REPO / "exported_models")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each timed run")
    parser.add_argument("--quick", action="store_true", help="1 s runs: checks the harness, not the machine")
    parser.add_argument("--env", action="append", default=[], metavar="FEATURES_X=Y", help="service setting")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = 1.0
    return args


def ensure_model(models_dir: Path) -> Path:
    """The fp32 export and its int8 sibling (docs/precision.md), each made only if missing or stale."""
    import subprocess

    command = [sys.executable, "-m", "exporter", "zoo", MODEL, "--out", str(models_dir), "--skip-existing",
               "--precision", "int8"]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"exporting {MODEL} failed: {done.stderr.strip()}")
    return models_dir / MODEL


def run(args: argparse.Namespace) -> dict:
    """The whole benchmark in a scratch folder (photos, bodies, logs: ~200 MB) that is removed afterwards, failed
    or not; a failure's message already quotes the server log's end."""
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        return _run(args, Path(scratch))


def _run(args: argparse.Namespace, work: Path) -> dict:
    model_dir = ensure_model(args.models_dir)
    manifest = load_manifest(model_dir / "model.json")
    model_path = str(model_dir / "model.onnx")
    images = [path.read_bytes() for path in photos.write_photos(work / "photos")]
    seconds = args.seconds
    results: dict = {
        "machine": machine(),
        "seconds_per_run": seconds,
        "photos": [p[0] for p in photos.PHOTOS],
        "runs": [],
        "service_env": dict(item.split("=", 1) for item in args.env),
    }

    def record(scenario: str, concurrency: int, body: str, summary: dict, **extra) -> None:
        row = {"scenario": scenario, "concurrency": concurrency, "body": body, **summary, **extra}
        results["runs"].append(row)
        print(f"{scenario:<28} c={concurrency:<3} {body:<10} {row['images_per_s']:7.1f} img/s", flush=True)

    print("ceiling (in-process)…", flush=True)
    record("ceiling pipelined", 0, "-", ceiling.pipelined(manifest, model_path, images, seconds))
    record("ceiling sequential", 1, "-", ceiling.sequential(manifest, model_path, images, seconds))
    int8_dir = args.models_dir / INT8
    int8 = (load_manifest(int8_dir / "model.json"), str(int8_dir / "model.onnx"))
    record("ceiling pipelined int8", 0, "-", ceiling.pipelined(*int8, images, seconds))
    for _ in range(2):  # fp32 and int8 alternated, twice: the noise of a shared machine hits both alike
        record("ceiling compute fp32", 0, "-", ceiling.compute(manifest, model_path, images, seconds / 2))
        record("ceiling compute int8", 0, "-", ceiling.compute(*int8, images, seconds / 2))

    record("batch extract (local engine)", 0, "-", batch_extract(args.models_dir, work, seconds))

    bodies = {kind: load.prepare_bodies(images, kind, work / kind) for kind in ("raw", "multipart", "json")}
    v2_default = load.prepare_bodies(images, "v2", work / "v2", verify.V2_DEFAULT)
    v2_stem = load.prepare_bodies(images, "v2", work / "v2-stem", verify.V2_STEM)
    server = servers.service(args.models_dir, work / "service.log", **results["service_env"]).wait_ready()
    try:
        results["checks"] = verify.check_service(server.url + FEATURES, manifest, model_path, images)
        results["checks"] |= verify.check_v2(server.url + FEATURES, server.url + V2_INFER, manifest, images)
        repeats = 1 if args.quick else 10
        results["server_timings_ms"] = {
            query or "all levels": verify.server_timings(server.url + FEATURES, images, query, repeats)
            for query in ("", "levels=low")
        }
        load.wrk(server.url, FEATURES, bodies["json"], 32, min(2, seconds))  # warm up at the highest load, then RSS
        results["service_rss_mib_before"] = server.rss_mib()
        for concurrency in (1, 8, 32):
            for kind in ("raw", "multipart", "json"):
                summary = load.wrk(server.url, FEATURES, bodies[kind], concurrency, seconds)
                record("service", concurrency, kind, summary, rss_mib=server.rss_mib())
            if concurrency in (1, 8):
                summary = load.wrk(server.url, V2_INFER, v2_default, concurrency, seconds)
                record("service v2 binary", concurrency, "v2", summary, rss_mib=server.rss_mib())
        small = load.prepare_bodies(baseline_sweep.small_photos(images), "raw", work / "small")
        summary = load.wrk(server.url, FEATURES, small, 8, seconds)
        record("service small photos", 8, "raw", summary, rss_mib=server.rss_mib())
        for concurrency in (1, 8):
            summary = load.wrk(server.url, INT8_FEATURES, bodies["raw"], concurrency, seconds)
            record("service int8", concurrency, "raw", summary)
        record("service int8 small photos", 8, "raw", load.wrk(server.url, INT8_FEATURES, small, 8, seconds))
        for concurrency in (1, 8):
            summary = load.wrk(server.url, FEATURES + "?levels=low", bodies["raw"], concurrency, seconds)
            record("service low levels only", concurrency, "raw", summary)
        for name, query, accept in STEM_MAP_FORMS:
            path = f"{FEATURES}?layers=stem&pooling=none{query}"
            summary = load.wrk(server.url, path, bodies["raw"], 1, seconds, accept)
            record(f"service stem maps {name}", 1, "raw", summary)
        record("service stem maps v2 binary", 1, "v2", load.wrk(server.url, V2_INFER, v2_stem, 1, seconds))
        results["service_rss_mib_after"] = server.rss_mib()
    finally:
        server.stop()

    photo_sets = {"mixed": bodies["raw"], "small": small}
    for app, label in (("ort_app", "hand-written ORT"), ("torch_app", "hand-written PyTorch")):
        # configurations are ranked on half-length runs; the fastest is then timed like the service
        rows, best = baseline_sweep.sweep(app, model_dir, work, photo_sets, seconds / 2, args.quick)
        for row in rows:
            record(f"{label} sweep", baseline_sweep.CONCURRENCY, "raw", row)
        baseline = baseline_sweep.start(app, model_dir, work / f"{app}.log", best)
        try:
            for concurrency in (1, 8):
                summary = load.wrk(baseline.url, "/features", bodies["raw"], concurrency, seconds)
                record(label, concurrency, "raw", summary, rss_mib=baseline.rss_mib(), config=best.describe())
        finally:
            baseline.stop()
    results["ratios"] = report.ratios(results)
    return results


def batch_extract(models_dir: Path, work: Path, seconds: float) -> dict:
    """python -m extract's local engine on copies of the photos, sized to run about `seconds`."""
    import shutil

    from extract import run as extract

    folder = work / "collection"
    folder.mkdir()
    sources = photos.write_photos(work / "photos")
    copies = max(2, round(seconds * 100 / len(sources)))  # ~100 images/s on 2 cores
    for copy in range(copies):
        for source in sources:
            shutil.copyfile(source, folder / f"{copy:04d}-{source.name}")
    summary = extract([folder], MODEL, work / "extracted", models_dir=models_dir, progress=False)
    if summary["failed"]:
        raise RuntimeError(f"batch extraction failed on {summary['failed']} photos")
    return {"images": summary["rows"], "seconds": summary["seconds"], "images_per_s": summary["images_per_second"]}


def machine() -> dict:
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d"),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        results = run(args)
    except (load.LoadError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "results.md").write_text(report.markdown(results))
    report.chart(results, args.out / "chart.png")
    print(report.markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
