"""Unit tests of the manifest schema (engine.manifest)."""

from __future__ import annotations

import json

import pytest

from engine.manifest import Layer, Manifest, ManifestError, OnnxInfo, Preprocess, Source, Verification, load_manifest


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
    ],
)
def test_invalid_manifests_are_rejected(tmp_path, change, message):
    data = make_manifest().to_dict()
    data.update(change)
    path = tmp_path / "model.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=message):
        load_manifest(path)


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
