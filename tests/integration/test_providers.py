"""Execution providers: CUDA when asked and present (GPU tests skip cleanly elsewhere), CPU fallback with a warning;
for the service (FEATURES_PROVIDERS) and for batch extraction and the study (FEATURES_PROVIDERS or --providers)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import requests

from tests.helpers import photo_jpeg
from tests.integration.conftest import Server
from tests.integration.extract_helpers import cli, photo_folder

pytestmark = pytest.mark.integration
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
URL = "/v1/models/efficientnet_lite0/features"
MODEL = "efficientnet_lite0"
NOT_BUILT = "CUDAExecutionProvider not available in this onnxruntime build; using CPUExecutionProvider"
FALLBACK = f"warning: {MODEL}: {NOT_BUILT}"  # the runtime's warning, as the batch CLIs print it


def assert_close_to_cpu(on_gpu: np.ndarray, on_cpu: np.ndarray, name: str) -> None:
    """GPU numbers agree with the CPU's to what TF32 convolutions allow (ONNX Runtime's CUDA default). Measured on
    an H200 (onnxruntime-gpu 1.31.1): over EfficientNet-Lite0's layers at most 1.7e-3 of the layer's largest value
    per element and 1.6e-3 relative over a layer; 1e-3 per element failed. Bounds: 1e-2 for each."""
    scale = max(1.0, float(np.abs(on_cpu).max()))
    worst = float(np.abs(on_gpu - on_cpu).max()) / scale
    relative = float(np.linalg.norm(on_gpu - on_cpu) / max(np.linalg.norm(on_cpu), 1e-12))
    assert on_gpu.shape == on_cpu.shape and worst <= 1e-2 and relative <= 1e-2, (name, worst, relative)


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA: the fallback cannot be observed")
def test_cuda_requested_without_gpu_falls_back_to_cpu_with_warning(models_dir):
    server = Server(models_dir, FEATURES_PROVIDERS="cuda").wait_ready()
    try:
        detail = requests.get(f"{server.url}/v1/models/efficientnet_lite0", timeout=10).json()
        assert detail["provider"] == "CPUExecutionProvider"
        assert any("CUDAExecutionProvider" in warning for warning in detail["warnings"])
        response = requests.post(
            server.url + URL, data=photo_jpeg("chelsea"), headers={"Content-Type": "image/jpeg"}, timeout=60
        )
        assert response.status_code == 200 and response.json()["provider"] == "CPUExecutionProvider"
        assert "CUDAExecutionProvider" in server.output()  # the warning is in the log too
    finally:
        server.stop()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and onnxruntime-gpu")
def test_cuda_results_match_cpu(models_dir, server):
    gpu = Server(models_dir, FEATURES_PROVIDERS="cuda").wait_ready()
    try:
        detail = requests.get(f"{gpu.url}/v1/models/efficientnet_lite0", timeout=10).json()
        assert detail["provider"] == "CUDAExecutionProvider", detail["warnings"]
        image = {"image": photo_jpeg("chelsea")}
        on_gpu = requests.post(gpu.url + URL, files=image, timeout=60).json()["results"][0]["features"]
        on_cpu = requests.post(server.url + URL, files=image, timeout=60).json()["results"][0]["features"]
        for level, layers in on_cpu.items():
            for name, encoded in layers.items():
                assert_close_to_cpu(np.asarray(on_gpu[level][name]["values"]), np.asarray(encoded["values"]), name)
    finally:
        gpu.stop()


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA: the fallback cannot be observed")
def test_batch_extraction_and_the_study_asked_for_cuda_without_gpu_run_on_cpu_with_warning(models_dir, tmp_path):
    """--providers and FEATURES_PROVIDERS reach the local engine, the Ray actors and the study; the output says
    which provider ran, and the flag wins over the variable."""
    folder = photo_folder(tmp_path)
    common = [folder, "--model", MODEL, "--layers", "stem,embedding", "--no-progress"]
    here = {"FEATURES_MODELS_DIR": str(models_dir)}
    by_flag = cli("extract", *common, "--out", tmp_path / "flag", "--providers", "cuda", env=here)
    by_variable = cli("extract", *common, "--out", tmp_path / "ray", "--engine", "ray", "--workers", "1",
                      env={**here, "FEATURES_PROVIDERS": "cuda"}, timeout=600)  # fmt: skip
    flag_wins = cli("extract", *common, "--out", tmp_path / "cpu", "--providers", "cpu",
                    env={**here, "FEATURES_PROVIDERS": "cuda"})  # fmt: skip
    study = cli("insight", "--model", MODEL, "--out", tmp_path / "insight", "--photos", 2, "--quick",
                env={**here, "FEATURES_PROVIDERS": "cuda"})  # fmt: skip
    for result, engine in ((by_flag, "local"), (by_variable, "ray"), (flag_wins, "local")):
        assert result.returncode == 0, result.stderr
        assert "3 inputs: 3 rows, 0 failed" in result.stdout
        assert f"{engine} engine on CPUExecutionProvider)" in result.stdout.splitlines()[1], result.stdout
    assert FALLBACK in by_flag.stderr.splitlines()
    assert f"warning: Ray actor: {NOT_BUILT}" in by_variable.stderr.splitlines()  # said by the driver
    assert "warning" not in flag_wins.stderr
    assert study.returncode == 0, study.stderr
    assert "ran efficientnet_lite0 on CPUExecutionProvider" in study.stdout and FALLBACK in study.stderr.splitlines()
    assert json.loads((tmp_path / "insight" / "insight.json").read_text())["provider"] == "CPUExecutionProvider"
    for layer in ("stem", "embedding"):  # the fallback is the CPU provider itself: the same numbers
        expected = np.load(tmp_path / "cpu" / f"{layer}.npy")
        assert np.array_equal(np.load(tmp_path / "flag" / f"{layer}.npy"), expected), layer
        np.testing.assert_allclose(np.load(tmp_path / "ray" / f"{layer}.npy"), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and onnxruntime-gpu")
def test_batch_extraction_runs_on_cuda_and_matches_cpu(models_dir, tmp_path):
    folder = photo_folder(tmp_path, ("chelsea", "coffee", "astronaut", "rocket"))
    common = [folder, "--model", MODEL, "--models-dir", models_dir, "--no-progress", "--batch-size", 3]
    on_gpu = cli("extract", *common, "--out", tmp_path / "gpu", "--providers", "cuda")
    on_cpu = cli("extract", *common, "--out", tmp_path / "cpu", "--providers", "cpu")
    for result, provider in ((on_gpu, "CUDAExecutionProvider"), (on_cpu, "CPUExecutionProvider")):
        assert result.returncode == 0, result.stderr
        assert f"local engine on {provider})" in result.stdout, result.stdout
        assert "warning" not in result.stderr, result.stderr
    layers = sorted((tmp_path / "cpu").glob("*.npy"))
    assert len(layers) == 8
    for path in layers:
        assert_close_to_cpu(np.load(tmp_path / "gpu" / path.name), np.load(path), path.stem)
