"""Execution providers: CUDA when asked and present (GPU test skips cleanly elsewhere), CPU fallback with a warning."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import requests

from tests.conftest import Server
from tests.test_service_http import jpeg

pytestmark = pytest.mark.integration
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
URL = "/v1/models/efficientnet_lite0/features"


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA: the fallback cannot be observed")
def test_cuda_requested_without_gpu_falls_back_to_cpu_with_warning(models_dir):
    server = Server(models_dir, FEATURES_PROVIDERS="cuda").wait_ready()
    try:
        detail = requests.get(f"{server.url}/v1/models/efficientnet_lite0", timeout=10).json()
        assert detail["provider"] == "CPUExecutionProvider"
        assert any("CUDAExecutionProvider" in warning for warning in detail["warnings"])
        response = requests.post(
            server.url + URL, data=jpeg("chelsea"), headers={"Content-Type": "image/jpeg"}, timeout=60
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
        image = {"image": jpeg("chelsea")}
        on_gpu = requests.post(gpu.url + URL, files=image, timeout=60).json()["results"][0]["features"]
        on_cpu = requests.post(server.url + URL, files=image, timeout=60).json()["results"][0]["features"]
        for level, layers in on_cpu.items():
            for name, encoded in layers.items():
                reference = np.asarray(encoded["values"])
                tolerance = 1e-3 * max(1.0, float(np.abs(reference).max()))
                np.testing.assert_allclose(on_gpu[level][name]["values"], reference, atol=tolerance, err_msg=name)
    finally:
        gpu.stop()
