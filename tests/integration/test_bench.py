"""The benchmark harness runs end to end in its --quick configuration (1 s per run); it checks code, not speed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from engine.manifest import load_manifest
from engine.vector_index.embedded import EXACT_UP_TO
from tests.helpers import REPO


def test_quick_benchmark_runs_every_scenario(lite0_dir, lite0_int8_dir, tmp_path):
    if shutil.which("wrk") is None and os.environ.get("CI") != "true":
        pytest.skip("wrk is not installed (apt-get install wrk); CI installs it")
    out = tmp_path / "results"
    models = tmp_path / "models"  # a copy: the bench writes any export it finds missing into this folder
    shutil.copytree(lite0_dir, models / lite0_dir.name)
    shutil.copytree(lite0_int8_dir, models / lite0_int8_dir.name)  # `zoo --skip-existing` then derives nothing
    command = [sys.executable, "-m", "bench", "--quick", "--out", str(out), "--models-dir", str(models)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    # batched, sub-graph and unbatched requests return the in-process numbers
    checks = results["checks"]
    assert checks["all_layers_returned"]
    for key in ("unbatched_max_abs_error", "batched_max_abs_error", "subgraph_max_abs_error"):
        assert checks[key] <= 1e-4, (key, checks[key])
    # the V2 route's binary answers hold /v1's numbers: the stem map (safetensors) and the default pooled vectors
    assert checks["v2_stem_equals_v1"] and checks["v2_stem_vs_v1_safetensors_max_abs_error"] <= 1e-5, checks
    assert checks["v2_default_equals_v1"] and checks["v2_default_vs_v1_max_abs_error"] <= 1e-5, checks
    scenarios = {(run["scenario"], run["concurrency"], run["body"]) for run in results["runs"]}
    for concurrency in (1, 8, 32):
        for body in ("raw", "multipart", "json"):
            assert ("service", concurrency, body) in scenarios
    assert {("service v2 binary", 1, "v2"), ("service v2 binary", 8, "v2")} <= scenarios
    for name in ("hand-written ORT", "hand-written PyTorch", "service low levels only", "service int8",
                 "service small photos", "service int8 small photos"):  # fmt: skip
        assert (name, 8, "raw") in scenarios
    stem_maps = {run["scenario"].removeprefix("service stem maps "): run for run in results["runs"]
                 if run["scenario"].startswith("service stem maps ")}  # fmt: skip
    assert set(stem_maps) == {"json", "base64", "safetensors", "safetensors fp16", "v2 binary"}
    assert stem_maps["v2 binary"]["body"] == "v2"
    sizes = {name: run["response_bytes"] for name, run in stem_maps.items() if run["requests"]}
    if {"json", "safetensors"} <= set(sizes):  # one stem map is 32x112x112 floats: 1.6 MB raw, 3+ MB as JSON
        assert 32 * 112 * 112 * 4 < sizes["safetensors"] < 32 * 112 * 112 * 4 + 4000 < sizes["json"]
    if "v2 binary" in sizes:  # the raw floats after a JSON header, like safetensors
        assert 32 * 112 * 112 * 4 < sizes["v2 binary"] < 32 * 112 * 112 * 4 + 4096
    sweep = [run for run in results["runs"] if run["scenario"] == "hand-written ORT sweep"]
    assert {run["photos"] for run in sweep} == {"mixed", "small"} and len({run["config"] for run in sweep}) >= 4
    assert load_manifest(models / "efficientnet_lite0-int8" / "model.json").precision == "int8"
    for run in results["runs"]:
        assert run.get("failed", 0) == 0, run
        if run["scenario"].startswith(("service", "ceiling")) and run["concurrency"] in (0, 1, 8):
            assert run["images_per_s"] > 0, run  # slower runs may finish no request in 1 s on a busy machine
    assert set(results["ratios"]) >= {"service_c8_over_ceiling", "low_only_over_all_levels_compute",
                                      "int8_over_fp32_compute_batch8", "service_int8_c8_over_fp32_c8",
                                      "stem_maps_v2_binary_over_json_p50", "stem_maps_v2_binary_over_safetensors_p50",
                                      "stem_maps_v2_binary_over_json_bytes",
                                      "service_v2_binary_c8_over_raw_c8"}  # fmt: skip
    markdown = (out / "results.md").read_text()
    assert "| service | 8 | raw |" in markdown and "| service v2 binary | 8 | v2 |" in markdown
    assert "| service stem maps v2 binary | 1 | v2 |" in markdown
    assert "| service_v2_binary_c8_over_raw_c8 |" in markdown
    with Image.open(out / "chart.png") as chart:
        assert chart.format == "PNG" and chart.width > 600


def test_v2_bodies_are_framed_as_tritonclient_frames_them(tmp_path):
    """bench/load.py builds V2 infer bodies by hand (the bench extra has no tritonclient): the same bytes as
    tritonclient.http's generate_request_body, and each body's Inference-Header-Content-Length beside it."""
    import numpy as np
    import tritonclient.http as triton

    from bench import load, verify

    images = [b"\xff\xd8 a photo \x00\x00", b"\xff\xd8" + bytes(range(256)) * 3]
    image_input = triton.InferInput("image", [1], "BYTES")
    cases = ((verify.V2_DEFAULT, None), (verify.V2_STEM, [triton.InferRequestedOutput("stem", binary_data=True)]))
    for case, (fields, outputs) in enumerate(cases):
        bodies = load.prepare_bodies(images, "v2", tmp_path / f"v2-{case}", fields)
        assert bodies.count == 2 and bodies.content_type == "application/octet-stream"
        for index, image in enumerate(images):
            image_input.set_data_from_numpy(np.array([image], dtype=object), binary_data=True)
            body, json_length = triton.InferenceServerClient.generate_request_body([image_input], outputs=outputs)
            assert (bodies.folder / f"{index}.body").read_bytes() == body
            headers = (bodies.folder / f"{index}.headers").read_text()
            assert headers == f"Inference-Header-Content-Length: {json_length}\n"
    raw = load.prepare_bodies(images, "raw", tmp_path / "raw")  # other kinds: no per-body headers
    assert not list(raw.folder.glob("*.headers"))


def test_memory_benchmark_measures_each_model_and_cut(models_dir, tmp_path):
    """python -m bench.memory starts the real service per model and cut; more sub-graphs never hold less."""
    out = tmp_path / "memory"
    command = [sys.executable, "-m", "bench.memory", "--models-dir", str(models_dir), "--models",
               "efficientnet_lite0", "--cuts", "none,layers", "--out", str(out)]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = json.loads((out / "memory.json").read_text())["models"]
    assert row["model"] == "efficientnet_lite0" and row["layers"] == 8 and row["onnx_mib"] > 10
    assert 50 < row["worker_mib_none"] <= row["worker_mib_layers"] < 4096
    assert "| efficientnet_lite0 |" in (out / "memory.md").read_text()
    refused = subprocess.run([*command[:3], "--models-dir", str(models_dir), "--models", "nope"], cwd=REPO,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert refused.returncode == 2 and refused.stderr.startswith("error: no model 'nope'")


def test_search_benchmark_measures_recall_and_latency_through_the_index(models_dir, tmp_path):
    """python -m bench.search --quick: 12,000 vectors through the real EmbeddedIndex (past its exact-scan limit, so
    through the HNSW graph), recall against exact search."""
    out = tmp_path / "search"
    command = [sys.executable, "-m", "bench.search", "--quick", "--models-dir", str(models_dir), "--out", str(out)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((out / "search.json").read_text())["layers"]
    assert [row["layer"] for row in rows] == ["stride16", "head"] and [row["dim"] for row in rows] == [112, 1280]
    for row in rows:
        assert row["vectors"] == 12_000 > EXACT_UP_TO and row["queries"] == 100
        assert row["recall_at_10"] >= 0.9 and row["recall_at_10_real_queries"] >= 0.9, row  # HNSW, not a timing
        assert row["query_ms_p50"] > 0 and row["build_vectors_per_s"] > 0
    assert "| head | 1280 | 12,000 |" in (out / "search.md").read_text()
