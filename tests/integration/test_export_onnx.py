"""`exporter onnx`: a model exported elsewhere without intermediate outputs gets them, equal to torch hooks."""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch

from engine.images import preprocess_image
from engine.manifest import load_manifest
from tests.helpers import photo
from tests.integration.conftest import run_cli


@pytest.fixture(scope="module")
def plain_onnx(tmp_path_factory, lite0_torch):
    """EfficientNet-Lite0 exported the way anyone would: logits only, fixed batch of 1, legacy exporter."""
    path = tmp_path_factory.mktemp("foreign") / "lite0_plain.onnx"
    with warnings.catch_warnings():  # the legacy exporter on purpose: a graph unlike our exporter's
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
        lite0_torch, (torch.zeros(1, 3, 224, 224),), str(path), input_names=["image"], output_names=["scores"],
        dynamo=False, opset_version=17,
    )  # fmt: skip
    return path


def test_auto_layers_equal_torch_hooks(plain_onnx, tmp_path, lite0_torch, lite0_manifest):
    result = run_cli("onnx", plain_onnx, "--name", "lite0-foreign", "--auto", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    manifest = load_manifest(tmp_path / "lite0-foreign" / "model.json")
    names = [layer.name for layer in manifest.layers]
    assert names == ["stride2", "stride4", "stride8", "stride16", "stride32", "scores"]
    assert not manifest.onnx.dynamic_batch and manifest.source.kind == "onnx"
    assert [layer.level for layer in manifest.layers] == ["low", "low", "mid", "mid", "high", "high"]

    # The last tensor at each stride is the activated expansion of the next stage's first (strided) block,
    # read here as relu6 of that block's expansion batch-norm; at stride 32 it is the head.
    taps = {"stride2": "_blocks.1._bn0", "stride4": "_blocks.3._bn0", "stride8": "_blocks.5._bn0",
            "stride16": "_blocks.11._bn0", "stride32": "_avg_pooling"}  # fmt: skip
    captured = {}
    modules = dict(lite0_torch.named_modules())
    for name, path in taps.items():
        if path == "_avg_pooling":
            modules[path].register_forward_pre_hook(lambda _m, a, n=name: captured.__setitem__(n, a[0]))
        else:
            modules[path].register_forward_hook(lambda _m, _a, o, n=name: captured.__setitem__(n, o.clamp(0, 6)))
    image = preprocess_image(photo("chelsea"), manifest.preprocess)[None]
    with torch.no_grad():
        captured["scores"] = lite0_torch(torch.from_numpy(image))
    for module in modules.values():
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()

    session = ort.InferenceSession(str(tmp_path / "lite0-foreign" / "model.onnx"))
    outputs = dict(zip(names, session.run(names, {"image": image}), strict=True))
    for name, value in captured.items():
        reference = value.numpy()
        np.testing.assert_allclose(outputs[name], reference, rtol=0, atol=1e-4 * max(1, np.abs(reference).max()))
    stem = manifest.layer("stride2")
    assert stem.receptive_field == 7 and manifest.layer("stride32").receptive_field == 851
    # same geometry as the torch-exported model at the same places
    assert manifest.layer("stride8").receptive_field == lite0_manifest.layer("stride8").receptive_field


def test_explicit_tensors_and_listing(plain_onnx, tmp_path):
    listing = run_cli("onnx", plain_onnx, "--list-tensors")
    assert listing.returncode == 0, listing.stderr
    rows = [line.split("\t") for line in listing.stdout.splitlines()]
    spatial = [row[0] for row in rows if row[1:3] == ["op=Clip", "stride=8"]]
    assert spatial
    result = run_cli("onnx", plain_onnx, "--name", "picked", "--layers", f"{spatial[-1]},scores", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    manifest = load_manifest(tmp_path / "picked" / "model.json")
    assert [layer.name for layer in manifest.layers] == [spatial[-1], "scores"]
    assert manifest.layers[0].outputs == {
        "none": spatial[-1],
        "avg": f"{spatial[-1]}__avg",
        "max": f"{spatial[-1]}__max",
    }
    assert manifest.layers[0].shape == [240, 28, 28] and manifest.layers[0].stride == 8
