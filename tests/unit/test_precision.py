"""exporter/precision.py on the tiny model: what a derived export holds, the refusals, and the measures."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from engine.manifest import load_manifest
from exporter.errors import ExportError
from exporter.precision import cosines, derive, flip_margin, top1_agreement


def test_cosines_handle_zero_outputs():
    a = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    b = np.array([[2.0, 0.0], [0.0, 0.0], [1.0, 0.0], [-1.0, -1.0]])
    np.testing.assert_allclose(cosines(a, b), [1.0, 1.0, 0.0, -1.0])


def test_top1_measures_need_labels_and_flips(tiny_manifest):
    logits = tiny_manifest.layer(tiny_manifest.logits_layer).outputs["none"]
    reference = {logits: np.array([[3.0, 1.0, 0.0], [1.0, 1.1, 0.0]])}
    assert top1_agreement(tiny_manifest, reference, reference) == 1.0
    assert flip_margin(tiny_manifest, reference, reference) is None
    flipped = {logits: np.array([[3.0, 1.0, 0.0], [1.2, 1.1, 0.0]])}  # the near-tie flips
    assert top1_agreement(tiny_manifest, reference, flipped) == 0.5
    gap = np.exp(1.1) / np.exp([1.0, 1.1, 0.0]).sum() - np.exp(1.0) / np.exp([1.0, 1.1, 0.0]).sum()
    assert flip_margin(tiny_manifest, reference, flipped) == pytest.approx(gap, abs=1e-4)


def test_fp16_of_the_tiny_model_keeps_float32_edges_and_records_quality(tiny_dir, tmp_path):
    out = derive(tiny_dir, "fp16", tmp_path)
    manifest = load_manifest(out / "model.json")
    assert out.name == f"{tiny_dir.name}-fp16" and manifest.precision == "fp16"
    assert manifest.quality.passed and manifest.quality.reference == tiny_dir.name
    assert set(manifest.quality.cosine) == {layer.name for layer in manifest.layers}
    graph = onnx.load(str(out / "model.onnx")).graph
    assert {i.type.tensor_type.elem_type for i in [*graph.input, *graph.output]} == {onnx.TensorProto.FLOAT}
    with pytest.raises(ExportError, match="already fp16"):
        derive(out, "int8", tmp_path / "again")


def test_int8_needs_a_feature_map(tiny_dir, tmp_path):
    vectors_only = tmp_path / "vectors"
    shutil.copytree(tiny_dir, vectors_only)
    data = json.loads((vectors_only / "model.json").read_text())
    data["layers"] = [layer for layer in data["layers"] if len(layer["shape"]) == 1]
    (vectors_only / "model.json").write_text(json.dumps(data))
    with pytest.raises(ExportError, match="has none"):
        derive(vectors_only, "int8", tmp_path / "out")
    assert not (tmp_path / "out").exists()
