"""`exporter module`: any importable nn.Module factory, layers by module path, weights loaded safely."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from engine.images import preprocess_image
from engine.manifest import load_manifest
from tests.helpers import photo
from tests.integration.conftest import run_cli
from tests.models.tiny_cnn import build


@pytest.fixture(scope="module")
def trained_weights(tmp_path_factory):
    torch.manual_seed(0)
    model = build()
    for module in model.modules():  # non-trivial batch-norm statistics, as after training
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    torch.save(model.state_dict(), path)
    return path, model.eval()


def test_module_export_matches_torch(tmp_path, trained_weights):
    path, model = trained_weights
    layers = "3,0,1,6"  # given out of order on purpose: the manifest sorts by depth
    result = run_cli("module", "tests.models.tiny_cnn:build", "--name", "tiny", "--layers", layers,
                     "--weights", path, "--input-size", "64", "--out", tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    manifest = load_manifest(tmp_path / "tiny" / "model.json")
    assert [layer.name for layer in manifest.layers] == ["0", "1", "3", "6"]
    assert [layer.level for layer in manifest.layers] == ["low", "low", "mid", "high"]  # thirds by depth
    assert [layer.stride for layer in manifest.layers] == [2, 4, 8, None]
    assert [layer.receptive_field for layer in manifest.layers] == [3, 7, 27, None]
    assert manifest.preprocess.size == [64, 64] and manifest.source.weights == "tiny.pt"
    assert manifest.labels is None  # 10 classes, not ImageNet

    image = preprocess_image(photo("coffee"), manifest.preprocess)[None]
    captured = {}
    for name in ("0", "1", "3"):
        model[int(name)].register_forward_hook(lambda _m, _a, o, n=name: captured.__setitem__(n, o.numpy()))
    with torch.no_grad():
        captured["6"] = model(torch.from_numpy(image)).numpy()
    session = ort.InferenceSession(str(tmp_path / "tiny" / "model.onnx"))
    names = [layer.name for layer in manifest.layers]
    for name, value in zip(names, session.run(names, {"input": image}), strict=True):
        np.testing.assert_allclose(value, captured[name], rtol=0, atol=1e-4 * max(1, np.abs(captured[name]).max()))


def test_module_without_layers_exposes_the_stage_ends(tmp_path):
    """No --layers: the same automatic choice as for torchvision models (exporter/auto_taps.py)."""
    result = run_cli("module", "tests.models.tiny_cnn:build", "--name", "auto", "--input-size", "64",
                     "--out", tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    manifest = load_manifest(tmp_path / "auto" / "model.json")
    table = [(layer.name, layer.level, layer.stride, layer.source) for layer in manifest.layers]
    assert table == [("stride2", "low", 2, "0"), ("stride4", "low", 4, "1"), ("stride8", "mid", 8, "3"),
                     ("embedding", "high", None, "6:input"), ("logits", "high", None, "6")]  # fmt: skip


def test_module_levels_override(tmp_path):
    result = run_cli("module", "tests.models.tiny_cnn:build", "--name", "tiny2", "--layers", "0,3",
                     "--levels", "low,high", "--input-size", "64", "--out", tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    manifest = load_manifest(tmp_path / "tiny2" / "model.json")
    assert [(layer.name, layer.level) for layer in manifest.layers] == [("0", "low"), ("3", "high")]
