"""int8 and fp16 exports of the real EfficientNet-Lite0 (exporter/precision.py), judged against fp32 and served.

The quality a manifest claims is recomputed here with ONNX Runtime on the held-out photos; refusals write nothing;
the service and batch extraction serve the derived exports and say their precision.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.utils
import onnxruntime as ort
import pytest
import requests
from onnx import TensorProto
from PIL import Image

from engine.manifest import load_manifest, load_verified
from exporter.calibration import CALIBRATION_PHOTOS, HELD_OUT_PHOTOS, VALIDATION_PHOTOS, held_out
from exporter.precision import MIN_COSINE, MIN_TOP1_AGREEMENT, cosines
from extract.parquet import read_features
from tests.helpers import REPO, assert_pooled_layers_equal, direct_run, encode, photo, photo_jpeg
from tests.integration.conftest import Server, expect_refusal, run_cli


@pytest.fixture(scope="module")
def derived(lite0_dir, lite0_int8_dir, tmp_path_factory):
    """A models folder holding the session's fp32 export and its int8 and fp16 exports, made with the CLI."""
    folder = tmp_path_factory.mktemp("precision") / "models"
    folder.mkdir()
    shutil.copytree(lite0_dir, folder / lite0_dir.name)
    shutil.copytree(lite0_int8_dir, folder / lite0_int8_dir.name)  # made once per session (conftest.py)
    result = run_cli("quantize", folder / lite0_dir.name, "--precision", "fp16")
    assert result.returncode == 0, result.stderr
    assert "fp16 of efficientnet_lite0" in result.stdout and "passed the thresholds" in result.stdout
    return folder


def _graph(path) -> onnx.ModelProto:
    return onnx.load(str(path))


def test_photo_sets_do_not_overlap():
    assert not set(HELD_OUT_PHOTOS) & set(CALIBRATION_PHOTOS)
    assert set(VALIDATION_PHOTOS) <= set(CALIBRATION_PHOTOS)


def test_int8_manifest_states_quality_that_recomputes(derived, lite0_dir):
    manifest, path = load_verified(derived / "efficientnet_lite0-int8" / "model.json")
    fp32, fp32_path = load_verified(lite0_dir / "model.json")
    quality = manifest.quality
    assert manifest.precision == "int8" and quality.passed and not quality.forced
    assert quality.reference == "efficientnet_lite0" and quality.reference_sha256 == fp32.onnx.sha256
    assert quality.thresholds == {"cosine": MIN_COSINE, "top1_agreement": MIN_TOP1_AGREEMENT}
    assert quality.held_out == [f"skimage.data.{name}" for name in HELD_OUT_PHOTOS]
    assert quality.top1_agreement >= MIN_TOP1_AGREEMENT
    assert [layer.name for layer in manifest.layers] == [layer.name for layer in fp32.layers]
    # the search is recorded: the chosen trial is the first whose cosine met the threshold on the validation photos
    assert quality.search[-1]["float_convs"] == quality.float_convs
    assert quality.search[-1]["worst_pooled_cosine"] >= MIN_COSINE
    assert all(trial["worst_pooled_cosine"] < MIN_COSINE for trial in quality.search[:-1])

    # recompute every recorded cosine with ONNX Runtime on the held-out views
    batch = held_out(fp32.preprocess)
    assert len(batch) == quality.images
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp32_path, path)]
    names = [o.name for o in sessions[0].get_outputs()]
    reference, candidate = (
        {n: v for n, v in zip(names, s.run(names, {"input": batch}), strict=True)} for s in sessions
    )
    for layer in manifest.layers:
        for pooling, output in layer.outputs.items():
            values = cosines(reference[output], candidate[output])
            recorded = quality.cosine[layer.name][pooling]
            assert recorded["mean"] == pytest.approx(values.mean(), abs=2e-4), (layer.name, pooling)
            assert recorded["min"] == pytest.approx(values.min(), abs=2e-4), (layer.name, pooling)
            if pooling != "none" or not layer.spatial:
                assert recorded["mean"] >= MIN_COSINE, (layer.name, pooling)
    agreement = np.mean(reference["logits"].argmax(1) == candidate["logits"].argmax(1))
    assert quality.top1_agreement == pytest.approx(agreement, abs=1e-4)


def test_int8_graph_is_quantized_with_the_recorded_convs_in_float(derived, lite0_dir):
    graph = _graph(derived / "efficientnet_lite0-int8" / "model.onnx").graph
    kept = set(load_manifest(derived / "efficientnet_lite0-int8" / "model.json").quality.kept_float)
    int8_weights = [i for i in graph.initializer if i.data_type == TensorProto.INT8 and len(i.dims) == 4]
    assert len(int8_weights) > 40  # the convolution weights, per channel
    quality = load_manifest(derived / "efficientnet_lite0-int8" / "model.json").quality
    convs = {node.name: node for node in graph.node if node.op_type == "Conv"}
    assert len(kept & set(convs)) == quality.float_convs > 0
    producers = {out: node for node in graph.node for out in node.output}
    for name in kept & set(convs):  # a float convolution: its weight is a float initializer, not a DequantizeLinear
        assert convs[name].input[1] not in producers
    for name in set(convs) - kept:
        assert producers[convs[name].input[1]].op_type == "DequantizeLinear"
    # the head stays float: the logits come straight from a float Gemm, not through a DequantizeLinear
    logits = producers["logits"]
    assert logits.op_type == "Gemm" and logits.name in kept
    assert {i.type.tensor_type.elem_type for i in [*graph.input, *graph.output]} == {TensorProto.FLOAT}
    size = os.path.getsize
    # a quarter of the convolutions' bytes, plus the float classifier (1280 x 1000 weights: 5 MB)
    assert size(derived / "efficientnet_lite0-int8" / "model.onnx") < 0.5 * size(lite0_dir / "model.onnx")


def test_fp16_has_half_weights_float_edges_and_matches(derived):
    manifest = load_manifest(derived / "efficientnet_lite0-fp16" / "model.json")
    graph = _graph(derived / "efficientnet_lite0-fp16" / "model.onnx").graph
    weights = [i for i in graph.initializer if len(i.dims) == 4]
    assert weights and all(i.data_type == TensorProto.FLOAT16 for i in weights)
    assert {i.type.tensor_type.elem_type for i in [*graph.input, *graph.output]} == {TensorProto.FLOAT}
    assert manifest.precision == "fp16" and manifest.quality.kept_float == []
    assert manifest.quality.measured_with in ("CPUExecutionProvider", "CUDAExecutionProvider")
    worst = min(c["mean"] for pools in manifest.quality.cosine.values() for c in pools.values())
    assert worst >= 0.999


@pytest.fixture(scope="module")
def blank_photos(tmp_path_factory):
    """Calibration on blank images: activation ranges far too narrow for photos, so the export misses."""
    folder = tmp_path_factory.mktemp("blank")
    for index in range(8):
        Image.new("RGB", (64, 64), (index * 30,) * 3).save(folder / f"{index}.png")
    return folder


def test_below_the_thresholds_is_refused_unless_forced(lite0_dir, blank_photos, tmp_path):
    out = tmp_path / "out"
    args = ("quantize", lite0_dir, "--precision", "int8", "--calibration", blank_photos, "--float-convs", "3",
            "--out", out)  # fmt: skip
    line = expect_refusal(run_cli(*args), out, "below the thresholds")
    assert "cosine" in line and "--force" in line
    forced = run_cli(*args, "--force")
    assert forced.returncode == 0, forced.stderr
    assert "FORCED" in forced.stdout
    quality = load_manifest(out / "efficientnet_lite0-int8" / "model.json").quality
    assert quality.forced and not quality.passed
    assert sorted(p.name for p in out.iterdir()) == ["efficientnet_lite0-int8"]


def test_a_route_with_precision_writes_both_or_nothing(lite0_dir, blank_photos, tmp_path):
    """`onnx --precision int8`: the fp32 export and NAME-int8 appear together; a refusal leaves neither."""
    out = tmp_path / "models"
    foreign = tmp_path / "classifier.onnx"  # the plain classifier, as a model from elsewhere would come
    onnx.utils.extract_model(str(lite0_dir / "model.onnx"), str(foreign), ["input"], ["logits"])
    layers = "stem,stride8,stride32,logits"
    base = ("onnx", foreign, "--name", "lite0", "--layers", layers, "--out", out, "--precision", "int8",
            "--float-convs", "3")  # fmt: skip
    expect_refusal(run_cli(*base, "--calibration", blank_photos), out, "below the thresholds")
    result = run_cli(*base, "--force")  # written however it measures: both appear
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["lite0", "lite0-int8"]
    assert load_manifest(out / "lite0-int8" / "model.json").quality.reference == "lite0"


def test_zoo_skip_existing_derives_only_what_is_missing(lite0_dir, tmp_path):
    out = tmp_path / "models"
    out.mkdir()
    shutil.copytree(lite0_dir, out / "efficientnet_lite0")
    command = ("zoo", "efficientnet_lite0", "--out", out, "--skip-existing", "--precision", "fp16")
    first = run_cli(*command)
    assert first.returncode == 0 and "fp16 of efficientnet_lite0" in first.stdout, first.stderr
    again = run_cli(*command)
    assert again.returncode == 0 and "up to date" in again.stdout, again.stderr


@pytest.mark.parametrize(
    "setup, message",
    [
        ("few", "give at least 8"),
        ("corrupt", "calibration image"),
        ("fifo", "not a regular file"),
        ("file", "is not a folder"),
    ],
)
def test_bad_calibration_folders_are_refused(lite0_dir, tmp_path, setup, message):
    folder = tmp_path / "calibration"
    folder.mkdir()
    count = 3 if setup == "few" else 8
    for index in range(count):
        (folder / f"{index}.jpg").write_bytes(photo_jpeg("chelsea", size=(64 + index, 48)))
    (folder / "loop").symlink_to(folder)  # a symbolic link loop is never followed
    if setup == "corrupt":
        (folder / "9-broken.jpg").write_bytes(photo_jpeg("chelsea")[:300])
    if setup == "fifo":
        os.mkfifo(folder / "9-pipe.jpg")
    target = folder / "0.jpg" if setup == "file" else folder
    out = tmp_path / "out"
    args = ("quantize", lite0_dir, "--precision", "int8", "--calibration", target, "--out", out)
    expect_refusal(run_cli(*args), out, message)


def test_calibration_folder_is_used_and_recorded(lite0_dir, tmp_path):
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    names = ("astronaut", "coffee", "camera", "clock", "coins", "brick", "grass", "moon", "page")
    for index, name in enumerate(names):
        where = folder / "nested" if index % 2 else folder
        (where / f"{name}.png").write_bytes(encode(photo(name), "PNG"))
    out = tmp_path / "out"
    result = run_cli("quantize", lite0_dir, "--precision", "int8", "--calibration", folder, "--out", out,
                     "--float-convs", "3", "--force")  # fmt: skip
    assert result.returncode == 0, result.stderr
    quality = load_manifest(out / "efficientnet_lite0-int8" / "model.json").quality
    assert quality.calibration.startswith(f"{len(names)} images in {folder}")


def test_options_that_do_not_apply_are_refused(lite0_dir, tmp_path):
    out = tmp_path / "out"
    result = run_cli("quantize", lite0_dir, "--precision", "fp16", "--float-convs", "3", "--out", out)
    expect_refusal(result, out, "--precision int8 only")
    int8_dir = tmp_path / "int8"
    shutil.copytree(lite0_dir, int8_dir)
    manifest = json.loads((int8_dir / "model.json").read_text())
    (int8_dir / "model.json").write_text(json.dumps({**manifest, "precision": "int8"}))
    expect_refusal(run_cli("quantize", int8_dir, "--precision", "fp16", "--out", out), out, "already int8")
    missing = tmp_path / "no-such-export"
    expect_refusal(run_cli("quantize", missing, "--precision", "int8", "--out", out), out, "not an intact export")


def test_service_serves_each_precision_and_says_which(derived):
    server = Server(derived).wait_ready()
    try:
        images = [photo_jpeg("chelsea"), photo_jpeg("rocket")]
        files = [("image", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)]
        pooled = {}
        # the service's sub-graphs against a direct run of the whole graph: equal up to the precision's rounding
        for name, precision in (("efficientnet_lite0", "fp32"), ("efficientnet_lite0-int8", "int8"),
                                ("efficientnet_lite0-fp16", "fp16")):  # fmt: skip
            catalogue = requests.get(f"{server.url}/v1/models/{name}", timeout=30).json()
            assert catalogue["precision"] == precision
            assert (catalogue["quality"] is None) == (precision == "fp32")
            response = requests.post(f"{server.url}/v1/models/{name}/features", files=files, timeout=60)
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["precision"] == precision
            manifest, path = load_verified(derived / name / "model.json")
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            if precision == "fp16":  # CPU float16 kernels round differently in a pooled sub-graph: compare directions
                assert_same_directions(body["results"], session, manifest, images)
            else:
                assert_pooled_layers_equal(
                    body["results"], session, manifest, images, 1e-6 if precision == "fp32" else 1e-4
                )
            pooled[precision] = np.array(body["results"][0]["features"]["high"]["embedding"]["values"])
        for precision in ("int8", "fp16"):
            assert cosines(pooled["fp32"][None], pooled[precision][None])[0] >= MIN_COSINE
        summary = requests.get(f"{server.url}/v1/models", timeout=30).json()
        precisions = {
            "efficientnet_lite0": "fp32",
            "efficientnet_lite0-int8": "int8",
            "efficientnet_lite0-fp16": "fp16",
        }
        assert {m["name"]: m["precision"] for m in summary["models"]} == precisions
    finally:
        server.stop()


def assert_same_directions(results, session, manifest, images):
    outputs = [layer.outputs.get("avg", layer.outputs["none"]) for layer in manifest.layers]
    for layer, expected in zip(manifest.layers, direct_run(session, manifest, images, outputs), strict=True):
        got = np.array([result["features"][layer.level][layer.name]["values"] for result in results])
        assert cosines(expected, got).min() >= 0.9999, layer.name


def test_batch_extraction_runs_int8_and_records_it(derived, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    images = {name: photo_jpeg(name) for name in ("chelsea", "rocket", "coffee")}
    for name, data in images.items():
        (folder / f"{name}.jpg").write_bytes(data)
    out = tmp_path / "features"
    command = [sys.executable, "-m", "extract", str(folder), "--model", "efficientnet_lite0-int8", "--out", str(out),
               "--models-dir", str(derived), "--layers", "embedding", "--format", "parquet",
               "--no-progress"]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "int8" in result.stdout
    import pyarrow.parquet as pq

    metadata = json.loads(pq.read_schema(out / "features.parquet").metadata[b"cnn_features"])
    assert metadata["model_precision"] == "int8"
    paths, arrays = read_features(out / "features.parquet")
    manifest, path = load_verified(derived / "efficientnet_lite0-int8" / "model.json")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for row, file in enumerate(paths):
        (expected,) = direct_run(session, manifest, [images[Path(file).stem]], ["embedding"])
        np.testing.assert_allclose(arrays["embedding"][row], expected[0], rtol=1e-4, atol=1e-4)
