"""Unit tests of the manifest schema and the one integrity check of an export (engine.manifest), on hand-made
manifests and the tiny model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from engine.errors import Misconfigured
from engine.manifest import (
    Layer,
    Manifest,
    ManifestError,
    OnnxInfo,
    Preprocess,
    Quality,
    Source,
    Verification,
    load_manifest,
    load_verified,
)
from engine.settings import Settings
from exporter.receptive_field import analyse
from service.app import create_app
from tests.unit.tiny_model import NAME


def make_manifest(**changes) -> Manifest:
    fields = dict(
        name="m",
        onnx=OnnxInfo(file="model.onnx", sha256="0" * 64, opset=21, input="input", input_shape=[3, 224, 224]),
        source=Source(kind="module", origin="x:y"),
        preprocess=Preprocess(size=[224, 224], resize=256),
        layers=[
            Layer("a", "low", [8, 112, 112], 2, 3, {"none": "a", "avg": "a__avg", "max": "a__max"}),
            Layer("b", "high", [10], None, None, {"none": "b"}),
        ],
        verification=Verification(True, "torch", ["img"], "tol", 1e-5, {"a": 1e-5}),
    )
    return Manifest(**{**fields, **changes})


def test_round_trip(tmp_path):
    manifest = make_manifest(labels=[str(i) for i in range(10)], logits_layer="b")
    path = tmp_path / "model.json"
    path.write_text(manifest.to_json())
    assert load_manifest(path) == manifest
    assert manifest.layer("a").spatial and not manifest.layer("b").spatial


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"schema_version": 99}, "schema_version"),
        ({"layers": []}, "no layers"),
        ({"logits_layer": "zzz"}, "logits_layer"),
        ({"precision": "int4"}, "precision 'int4'"),
        ({"quality": {"reference": "m"}}, "schema"),
    ],
)
def test_invalid_manifests_are_rejected(tmp_path, change, message):
    data = make_manifest().to_dict()
    data.update(change)
    path = tmp_path / "model.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=message):
        load_manifest(path)


def test_a_derived_export_round_trips_with_its_quality(tmp_path):
    quality = Quality(reference="m", reference_sha256="1" * 64, method="static QDQ", kept_float=["conv0"],
                      calibration="8 images", held_out=["skimage.data.chelsea"], images=17,
                      measured_with="CPUExecutionProvider", thresholds={"cosine": 0.99, "top1_agreement": 0.95},
                      cosine={"a": {"none": {"mean": 0.995, "min": 0.99}}}, top1_agreement=1.0, top1_flip_margin=None,
                      passed=True, search=[{"float_convs": 1, "worst_pooled_cosine": 0.99}], float_convs=1)  # fmt: skip
    manifest = make_manifest(name="m-int8", precision="int8", quality=quality)
    path = tmp_path / "model.json"
    path.write_text(manifest.to_json())
    assert load_manifest(path) == manifest
    older = make_manifest().to_dict()  # written before precisions existed: fp32, no quality
    del older["precision"], older["quality"]
    path.write_text(json.dumps(older))
    assert load_manifest(path).precision == "fp32" and load_manifest(path).quality is None


def test_bad_level_and_missing_field(tmp_path):
    data = make_manifest().to_dict()
    data["layers"][0]["level"] = "deep"
    (tmp_path / "a.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="level"):
        load_manifest(tmp_path / "a.json")
    del data["onnx"]
    (tmp_path / "b.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="schema"):
        load_manifest(tmp_path / "b.json")
    with pytest.raises(ManifestError, match="cannot read"):
        load_manifest(tmp_path / "missing.json")


def test_load_verified_checks_the_onnx_file_against_its_sha256(tiny_dir, tmp_path):
    manifest, onnx_path = load_verified(tiny_dir / "model.json")
    assert onnx_path == tiny_dir / "model.onnx" and manifest.name == NAME
    copy = tmp_path / NAME
    shutil.copytree(tiny_dir, copy)
    (copy / "model.onnx").write_bytes((copy / "model.onnx").read_bytes() + b"\0")
    with pytest.raises(ManifestError, match="does not match its manifest"):
        load_verified(copy / "model.json")
    (copy / "model.onnx").unlink()
    with pytest.raises(ManifestError, match=r"model\.onnx is missing"):
        load_verified(copy / "model.json")


def test_a_bad_models_folder_stops_the_app_with_one_line(tiny_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken / NAME)
    data = json.loads((broken / NAME / "model.json").read_text())
    data["onnx"]["sha256"] = "0" * 64
    (broken / NAME / "model.json").write_text(json.dumps(data))
    (tmp_path / "empty").mkdir()
    for folder, message in ((broken, "does not match its manifest"), (tmp_path / "empty", "no exported models"),
                            (tmp_path / "none", "does not exist")):  # fmt: skip
        with pytest.raises(Misconfigured, match=message) as stopped:
            create_app(Settings(models_dir=folder))
        assert "\n" not in str(stopped.value)


def test_the_tiny_model_is_described_as_an_export_describes_it(tiny_dir, tiny_manifest):
    """The unit tier's model: every output its manifest names is in the graph, with the geometry the exporter
    would derive (exporter.receptive_field), and the pooled outputs are the maps' means and maxima."""
    graph = onnx.load(str(tiny_dir / "model.onnx"))
    names = {output.name for output in graph.graph.output}
    assert {name for layer in tiny_manifest.layers for name in layer.outputs.values()} == names
    geometry = analyse(graph, tiny_manifest.onnx.input)
    for layer in tiny_manifest.layers:
        found = geometry[layer.outputs["none"]]
        assert (layer.stride, layer.receptive_field) == ((found.stride, found.receptive_field) if layer.spatial
                                                         else (None, None)), layer.name  # fmt: skip
    session = ort.InferenceSession(str(tiny_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    batch = np.random.default_rng(0).standard_normal((2, *tiny_manifest.onnx.input_shape)).astype(np.float32)
    outputs = dict(zip(sorted(names), session.run(sorted(names), {"input": batch}), strict=True))
    for layer in tiny_manifest.layers:
        assert list(outputs[layer.outputs["none"]].shape) == [2, *layer.shape]
        if layer.spatial:
            maps = outputs[layer.name]
            np.testing.assert_allclose(outputs[layer.outputs["avg"]], maps.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(outputs[layer.outputs["max"]], maps.max(axis=(2, 3)))
    assert tiny_manifest.layer(tiny_manifest.logits_layer).shape == [len(tiny_manifest.labels)]
