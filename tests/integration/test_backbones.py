"""torchvision and timm models by name (`python -m exporter torchvision|timm`), run as a user would in the hub
environment (.venv-hub: torchvision and timm are too heavy for the main venv, so everything that imports them runs
there as a subprocess, tests/integration/hub_helpers.py included). The `hub_python` fixture (conftest.py) skips
without that environment, and fails in CI.

Six architectures, each with a weights file of random weights seeded apart from the exporter's own random
initialisation: the automatic layer tables (receptive fields worked out by hand from the architectures), every
layer recomputed by the libraries' own feature APIs, the exports served by one gunicorn, the refusals, and the
pretrained-weights path from a filled cache with the network unreachable.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import requests

from engine.manifest import load_manifest
from engine.pictures import maps_grid_size
from tests.helpers import REPO, assert_pooled_layers_equal, direct_run, photo_jpeg
from tests.integration.conftest import Server, expect_refusal
from tests.openapi_check import conforming_png, conforms

EXPORT_TIMEOUT = 600  # seconds for one export (about 20 s on 2 busy cores)
PARALLEL_EXPORTS = 2  # exports run side by side (2 cores)
REFUSAL_TIMEOUT = 120  # a refusal comes after the imports, in seconds
DEAD_PROXY = "http://127.0.0.1:9"  # discard port: nothing listens, every connection is refused at once
NO_NETWORK = {
    **{variable: DEAD_PROXY for variable in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")},
    **{variable: "" for variable in ("NO_PROXY", "no_proxy")},  # no host may bypass the dead proxy
}


@dataclass(frozen=True)
class Case:
    """One export of the module: the library's architecture name, its weights file and input size."""

    library: str
    model: str
    weights: str  # file name: .safetensors, or a torch.save'd state dict
    input_size: int | None = None

    @property
    def size_args(self) -> list[str]:
        return ["--input-size", str(self.input_size)] if self.input_size else []


CASES = {
    case.model: case
    for case in (
        Case("torchvision", "resnet50", "resnet50.safetensors"),
        Case("torchvision", "mobilenet_v3_small", "mobilenet_v3_small.pth"),
        Case("torchvision", "regnet_y_400mf", "regnet_y_400mf.pth"),
        Case("torchvision", "convnext_tiny", "convnext_tiny.safetensors"),
        Case("timm", "vit_tiny_patch16_224", "vit_tiny_patch16_224.safetensors"),
        Case("timm", "vit_small_patch14_reg4_dinov2", "vit_small_patch14_reg4_dinov2.pth", 224),  # 4 registers
    )
}
CNN, VIT, DINO = "resnet50", "vit_tiny_patch16_224", "vit_small_patch14_reg4_dinov2"
MISFIT = Case("torchvision", "resnet18", "resnet18.pth")  # weights that do not fit resnet50

# (layer, level, shape, stride, receptive field, source, global context) of each CNN. A k x k window at stride s
# widens the field by (k - 1) * s: resnet50's 7x7/2 stem gives 7, its 3x3/2 max pool and layer1's three 3x3 at
# stride 4 give 35, then 91, 267, 427. Squeeze-and-excitation (MobileNetV3, RegNetY) scales a map by its global
# average: global context from the first stage that has it. ConvNeXt's 4x4 stem makes no stride-2 map, and its
# 7x7 depthwise convolutions widen the field by 6 strides a block (3, 3, 9, 3 blocks; 2x2 downsampling between).
NO_MAP = (None, None)
CNN_LAYERS = {
    "resnet50": [
        ("stride2", "low", [64, 112, 112], 2, 7, "relu", False),
        ("stride4", "low", [256, 56, 56], 4, 35, "layer1", False),
        ("stride8", "mid", [512, 28, 28], 8, 91, "layer2", False),
        ("stride16", "mid", [1024, 14, 14], 16, 267, "layer3", False),
        ("stride32", "high", [2048, 7, 7], 32, 427, "layer4", False),
        ("embedding", "high", [2048], *NO_MAP, "fc:input", True),
        ("logits", "high", [1000], *NO_MAP, "fc", True),
    ],
    "mobilenet_v3_small": [
        ("stride2", "low", [16, 112, 112], 2, 3, "features.0", False),
        ("stride4", "low", [16, 56, 56], 4, 7, "features.1", True),
        ("stride8", "mid", [24, 28, 28], 8, 31, "features.3", True),
        ("stride16", "mid", [48, 14, 14], 16, 319, "features.8", True),
        ("stride32", "high", [576, 7, 7], 32, 639, "features", True),
        ("embedding", "high", [1024], *NO_MAP, "classifier.3:input", True),  # after the hidden Linear + Hardswish
        ("logits", "high", [1000], *NO_MAP, "classifier.3", True),
    ],
    "regnet_y_400mf": [
        ("stride2", "low", [32, 112, 112], 2, 3, "stem", False),
        ("stride4", "low", [48, 56, 56], 4, 7, "trunk_output.block1", True),
        ("stride8", "mid", [104, 28, 28], 8, 47, "trunk_output.block2", True),
        ("stride16", "mid", [208, 14, 14], 16, 223, "trunk_output.block3", True),
        ("stride32", "high", [440, 7, 7], 32, 575, "trunk_output", True),
        ("embedding", "high", [440], *NO_MAP, "fc:input", True),
        ("logits", "high", [1000], *NO_MAP, "fc", True),
    ],
    "convnext_tiny": [
        ("stride4", "low", [96, 56, 56], 4, 76, "features.1", False),
        ("stride8", "mid", [192, 28, 28], 8, 224, "features.3", False),
        ("stride16", "mid", [384, 14, 14], 16, 1096, "features.5", False),
        ("stride32", "high", [768, 7, 7], 32, 1688, "features", False),
        ("embedding", "high", [768], *NO_MAP, "classifier.2:input", True),
        ("logits", "high", [1000], *NO_MAP, "classifier.2", True),
    ],
}


def vit_layers(channels: int, patch: int, size: int, head: bool) -> list[tuple]:
    """A 12-block ViT's table: the patch embedding (a map that has seen one patch), blocks 3, 6, 9 and 12 as
    patch-token maps (one patch apart, but each cell has attended to the whole input) and class tokens, then the
    embedding and, with a classifier, the logits."""
    grid = size // patch
    table = [("patch_embed", "low", [channels, grid, grid], patch, patch, "patch_embed.proj", False)]
    for number, level in ((3, "low"), (6, "mid"), (9, "high"), (12, "high")):
        table.append((f"block{number}", level, [channels, grid, grid], patch, size,
                      f"blocks.{number - 1}[patch tokens]", True))  # fmt: skip
        table.append((f"block{number}_cls", level, [channels], *NO_MAP, f"blocks.{number - 1}[class token]", True))
    if head:
        return [*table, ("embedding", "high", [channels], *NO_MAP, "head:input", True),
                ("logits", "high", [1000], *NO_MAP, "head", True)]  # fmt: skip
    return [*table, ("embedding", "high", [channels], *NO_MAP, "head", True)]  # num_classes=0: head is Identity


VIT_LAYERS = {VIT: vit_layers(192, 16, 224, head=True), DINO: vit_layers(384, 14, 224, head=False)}


def hub(python: Path, *args, env: dict[str, str] | None = None, timeout: float = EXPORT_TIMEOUT):
    """`python ARGS…` in the repo with the hub python, the test's environment plus `env`, output captured."""
    return subprocess.run([str(python), *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})  # fmt: skip


def export_args(case: Case, weights_dir: Path, out: Path) -> list[str]:
    return ["-m", "exporter", case.library, case.model, "--weights", weights_dir / case.weights, *case.size_args,
            "--out", out]  # fmt: skip


def run_side_by_side(python: Path, jobs: dict[str, list], parallel: int) -> dict[str, subprocess.CompletedProcess]:
    """Each job's `python ARGS…`, at most `parallel` at a time; every process is ended before this returns."""
    pending, running, done = list(jobs.items()), [], {}
    try:
        while pending or running:
            while pending and len(running) < parallel:
                name, args = pending.pop(0)
                command = [str(python), *map(str, args)]
                process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                running.append((name, command, process))
            name, command, process = running[0]
            stdout, stderr = process.communicate(timeout=EXPORT_TIMEOUT)
            done[name] = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
            running.pop(0)
    finally:
        for _, _, process in running:
            process.kill()
            process.wait()
    return done


@dataclass(frozen=True)
class HubExports:
    weights: Path  # the weights files, named as CASES says (and MISFIT's)
    models: Path  # one export per case, named after the model


@pytest.fixture(scope="module")
def exports(hub_python, tmp_path_factory) -> HubExports:
    """Random weights files for every case (one python start), then the six exports through the real CLI."""
    root = tmp_path_factory.mktemp("hub")
    weights, models = root / "weights", root / "models"
    triples = []
    for case in [*CASES.values(), MISFIT]:
        triples += [case.library, case.model, weights / case.weights, *case.size_args]
    saved = hub(hub_python, "-m", "tests.integration.hub_helpers", "save-weights", *triples)
    assert saved.returncode == 0, saved.stderr
    jobs = {name: export_args(case, weights, models) for name, case in CASES.items()}
    for name, result in run_side_by_side(hub_python, jobs, PARALLEL_EXPORTS).items():
        assert result.returncode == 0, f"{name}: {result.stderr}"
        assert result.stderr == "", f"{name}: {result.stderr}"  # a successful export is silent on stderr
    return HubExports(weights, models)


def manifest_of(exports: HubExports, name: str):
    return load_manifest(exports.models / name / "model.json")


def table(manifest) -> list[tuple]:
    return [(layer.name, layer.level, layer.shape, layer.stride, layer.receptive_field, layer.source,
             layer.global_context) for layer in manifest.layers]  # fmt: skip


# (a) the manifests


@pytest.mark.parametrize("name", list(CNN_LAYERS))
def test_cnn_stage_ends_embedding_and_logits(exports, name):
    manifest = manifest_of(exports, name)
    assert table(manifest) == CNN_LAYERS[name]
    assert not any(layer.token_grid for layer in manifest.layers)
    for layer in manifest.layers:
        assert list(layer.outputs) == (["none", "avg", "max"] if layer.spatial else ["none"]), layer.name


@pytest.mark.parametrize("name", list(VIT_LAYERS))
def test_vit_patch_embedding_blocks_and_class_tokens(exports, name):
    """Blocks are numbered from 1; their patch tokens are token grids, their class tokens plain vectors."""
    manifest = manifest_of(exports, name)
    assert table(manifest) == VIT_LAYERS[name]
    grids = [layer.name for layer in manifest.layers if layer.token_grid]
    assert grids == ["block3", "block6", "block9", "block12"]
    assert manifest.onnx.input_shape == [3, 224, 224] and manifest.preprocess.size == [224, 224]


@pytest.mark.parametrize("name", list(CASES))
def test_source_weights_labels_and_verification(exports, name):
    case = CASES[name]
    manifest = manifest_of(exports, name)
    assert manifest.name == name and manifest.onnx.dynamic_batch
    assert manifest.source.kind == case.library and manifest.source.weights == case.weights
    assert manifest.source.origin.startswith(f"{case.library} ") and manifest.source.origin.endswith(f" {name}")
    assert manifest.source.license is None  # a weights file: its terms are unknown
    assert manifest.verification.passed and manifest.verification.max_abs_error is not None
    if name == DINO:  # num_classes=0: an embedding, no classifier, no labels
        assert manifest.logits_layer is None and manifest.labels is None
        assert "logits" not in [layer.name for layer in manifest.layers]
    else:  # a 1000-class head loaded from a file gets ImageNet's class names
        assert manifest.logits_layer == "logits" and len(manifest.labels) == 1000
        assert manifest.labels[281] == "tabby"


# (b) an independent recomputation, and the library's own preprocessing


@pytest.fixture(scope="module")
def references(hub_python, exports) -> dict[str, dict]:
    """hub_helpers' reference for every export (one python start): torchvision's create_feature_extractor, timm's
    forward_intermediates and forward_head, on the weights file loaded without the exporter."""
    groups = []
    for name, case in CASES.items():
        groups += [case.library, case.model, exports.weights / case.weights, exports.models / name, *case.size_args]
    result = hub(hub_python, "-m", "tests.integration.hub_helpers", "reference", *groups)
    assert result.returncode == 0, result.stderr
    reports = [json.loads(line) for line in result.stdout.splitlines()]
    return {report["name"]: report for report in reports}


@pytest.mark.parametrize("name", list(CASES))
def test_every_layer_matches_the_library_s_own_feature_api(exports, references, name):
    """The exporter's tolerance (exporter/verify.py), per layer and per pooled output; a weights file the exporter
    had not loaded (its own random model uses another seed) would miss it by far."""
    report = references[name]
    manifest = manifest_of(exports, name)
    assert list(report["layers"]) == [layer.name for layer in manifest.layers]
    for layer in manifest.layers:
        poolings = report["layers"][layer.name]
        assert list(poolings) == list(layer.outputs), layer.name
        for pooling, error in poolings.items():
            expected_shape = [3, *layer.shape] if pooling == "none" else [3, layer.shape[0]]
            assert error["shape"] == expected_shape, (layer.name, pooling, error)
            tolerance = 1e-4 * max(1.0, error["max_abs_reference"])
            assert error["max_abs_error"] <= tolerance, (layer.name, pooling, error)
            assert error["max_abs_reference"] > 0, (layer.name, pooling)  # not a dead, all-zero layer
    for check, error in report["checks"].items():  # the node taken as the embedding is what feeds the classifier
        assert error["max_abs_error"] <= 1e-4 * max(1.0, error["max_abs_reference"]), (check, error)
    assert set(report["checks"]) == (set() if CASES[name].library == "timm" else
                                     {"embedding_feeds_logits", "logits_are_model_output"})  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_preprocessing_is_the_library_s_own(references, name):
    """torchvision: the DEFAULT weights' transforms(); timm: resolve_data_config and create_transform. Mean and std
    are in 0-255 units in the manifest. The library's transform of the photos (resize, then crop) and the engine's
    (one resampling of the crop box) differ by a fraction of a grey level."""
    preprocess = references[name]["preprocess"]
    manifest, said = preprocess["manifest"], preprocess["said"]
    assert manifest["size"] == said["size"] and manifest["resize"] == said["resize"]
    assert manifest["crop"] == said["crop"] == "center"  # timm's "squash" would be another transform
    assert manifest["interpolation"] == said["interpolation"]
    assert manifest["mean"] == pytest.approx([255 * m for m in said["mean"]], abs=1e-3)
    assert manifest["std"] == pytest.approx([255 * s for s in said["std"]], abs=1e-3)
    assert preprocess["pixels_mean_abs_diff"] < 0.02  # in std units: about a grey level


# (c) one gunicorn serving them all


@pytest.fixture(scope="module")
def hub_server(exports):
    instance = Server(exports.models).wait_ready(timeout=300)
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def cat() -> bytes:
    return photo_jpeg("chelsea")


def features(server, model: str, image: bytes, **options) -> dict:
    response = requests.post(f"{server.url}/v1/models/{model}/features", data=image, params=options,
                             headers={"Content-Type": "image/jpeg"}, timeout=120)  # fmt: skip
    conforms(response, "/v1/models/{model_name}/features", "post")
    assert response.status_code == 200, response.text
    return response.json()


def decoded(encoded: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(encoded["data"]), dtype="<f4").reshape(encoded["shape"])


def test_catalogue_lists_every_export_and_shows_token_grids(hub_server, exports):
    response = requests.get(f"{hub_server.url}/v1/models", timeout=30)
    conforms(response, "/v1/models")
    assert sorted(model["name"] for model in response.json()["models"]) == sorted(CASES)
    for name in (VIT, DINO):
        response = requests.get(f"{hub_server.url}/v1/models/{name}", timeout=30)
        conforms(response, "/v1/models/{model_name}")
        detail = response.json()
        grids = {layer["name"]: layer["token_grid"] for layer in detail["layers"]}
        assert grids == {layer.name: layer.token_grid for layer in manifest_of(exports, name).layers}
        assert [layer for layer, grid in grids.items() if grid] == ["block3", "block6", "block9", "block12"]
        block = next(layer for layer in detail["layers"] if layer["name"] == "block12")
        assert block["global_context"] and block["receptive_field"] == 224
        assert detail["source"]["weights"] == CASES[name].weights and detail["verification"]["passed"]


@pytest.mark.parametrize("name", list(CASES))
def test_features_of_every_layer_have_the_manifest_s_shapes(hub_server, exports, cat, name):
    manifest = manifest_of(exports, name)
    pooled = features(hub_server, name, cat, pooling="avg")["results"][0]["features"]
    full = features(hub_server, name, cat, pooling="none", encoding="base64")["results"][0]["features"]
    for layer in manifest.layers:
        assert pooled[layer.level][layer.name]["shape"] == [layer.shape[0]], layer.name
        assert full[layer.level][layer.name]["shape"] == layer.shape, layer.name
    assert sum(len(layers) for layers in full.values()) == len(manifest.layers)
    if name not in (CNN, VIT):
        return
    session = ort.InferenceSession(str(exports.models / name / "model.onnx"), providers=["CPUExecutionProvider"])
    assert_pooled_layers_equal([{"features": pooled}], session, manifest, [cat])
    expected = direct_run(session, manifest, [cat], [layer.outputs["none"] for layer in manifest.layers])
    for layer, reference in zip(manifest.layers, expected, strict=True):
        np.testing.assert_allclose(decoded(full[layer.level][layer.name]), reference[0], rtol=1e-5, atol=1e-5)


def test_maps_png_of_a_transformer_block(hub_server, cat):
    response = requests.post(f"{hub_server.url}/v1/models/{VIT}/layers/block12/maps.png", params={"k": 3},
                             data=cat, headers={"Content-Type": "image/jpeg"}, timeout=60)  # fmt: skip
    image = conforming_png(response, "/v1/models/{model_name}/layers/{layer_name}/maps.png", "post")
    assert image.size == maps_grid_size(3, 224, 224)


# (d) refusals: one line on stderr, exit status 2, nothing written


def test_unknown_names_suggest_the_nearest(hub_python, tmp_path):
    out = tmp_path / "out"
    result = hub(hub_python, "-m", "exporter", "torchvision", "resnet5O", "--weights", "none", "--out", out,
                 timeout=REFUSAL_TIMEOUT)  # fmt: skip
    line = expect_refusal(result, out, "unknown torchvision model 'resnet5O'")
    assert "did you mean resnet50" in line
    result = hub(hub_python, "-m", "exporter", "timm", "vit_tiny_patch16_22", "--weights", "none", "--out", out,
                 timeout=REFUSAL_TIMEOUT)  # fmt: skip
    line = expect_refusal(result, out, "unknown timm model 'vit_tiny_patch16_22'")
    assert "vit_tiny_patch16_224" in line


def test_weights_of_another_architecture_do_not_fit(hub_python, exports, tmp_path):
    out = tmp_path / "out"
    result = hub(hub_python, *export_args(Case("torchvision", "resnet50", MISFIT.weights), exports.weights, out),
                 timeout=REFUSAL_TIMEOUT)  # fmt: skip
    line = expect_refusal(result, out, "do not fit the model")
    assert "layer1.0.conv3.weight" in line  # resnet18's basic blocks have no third convolution


class _Exploit:
    """Pickles to a call of os.system: what a malicious "weights" file looks like."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused_unrun(hub_python, tmp_path):
    import pickle

    marker = tmp_path / "pwned"
    weights = tmp_path / "evil.pth"
    weights.write_bytes(pickle.dumps({"state_dict": _Exploit(marker)}))
    out = tmp_path / "out"
    result = hub(hub_python, "-m", "exporter", "torchvision", "resnet50", "--weights", weights, "--out", out,
                 timeout=REFUSAL_TIMEOUT)  # fmt: skip
    expect_refusal(result, out, "weights_only=True")
    assert not marker.exists()


def test_pretrained_torchvision_weights_without_network(hub_python, tmp_path):
    """An empty torch cache and no way out: the error says what to do (torch hub's own notice goes to stdout)."""
    cache, out = tmp_path / "torch", tmp_path / "out"
    cache.mkdir()
    result = hub(hub_python, "-m", "exporter", "torchvision", "mobilenet_v3_small", "--weights", "DEFAULT",
                 "--out", out, env={**NO_NETWORK, "TORCH_HOME": str(cache)}, timeout=REFUSAL_TIMEOUT)  # fmt: skip
    line = expect_refusal(result, out, "could not get the pretrained weights")
    assert "--weights FILE" in line
    assert [path for path in cache.rglob("*") if path.is_file()] == []  # no partial download left in the cache


def test_pretrained_timm_weights_offline(hub_python, tmp_path):
    """HF_HUB_OFFLINE with an empty cache: a clear error as soon as the hub is asked (well within the timeout)."""
    out = tmp_path / "out"
    (tmp_path / "hf").mkdir()
    result = hub(hub_python, "-m", "exporter", "timm", VIT, "--weights", "pretrained", "--out", out,
                 env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), **NO_NETWORK},
                 timeout=REFUSAL_TIMEOUT)  # fmt: skip
    line = expect_refusal(result, out, "could not get the pretrained weights")
    assert "Hugging Face hub" in line and "--weights FILE" in line


# (e) the pretrained path itself, from a filled cache


def test_default_weights_from_a_filled_torch_cache_offline(hub_python, exports, tmp_path, cat):
    """torch hub's own loading code, with the cache file in place of a download: the export names the weights enum
    and attaches the labels, and computes what the same state dict loaded from a file computes."""
    answer = hub(hub_python, "-m", "tests.integration.hub_helpers", "weights-url", "mobilenet_v3_small",
                 timeout=REFUSAL_TIMEOUT)  # fmt: skip
    assert answer.returncode == 0, answer.stderr
    default = json.loads(answer.stdout)
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    cached = checkpoints / default["url"].rsplit("/", 1)[1]
    shutil.copyfile(exports.weights / CASES["mobilenet_v3_small"].weights, cached)
    out = tmp_path / "out"
    result = hub(hub_python, "-m", "exporter", "torchvision", "mobilenet_v3_small", "--weights", "DEFAULT",
                 "--out", out, env={**NO_NETWORK, "TORCH_HOME": str(tmp_path / "torch")})  # fmt: skip
    assert result.returncode == 0, result.stderr
    manifest = load_manifest(out / "mobilenet_v3_small" / "model.json")
    assert manifest.source.weights == default["weights"] == "MobileNet_V3_Small_Weights.IMAGENET1K_V1"
    assert manifest.labels is not None and len(manifest.labels) == 1000 and manifest.logits_layer == "logits"
    assert manifest.verification.passed
    assert sorted(path.name for path in checkpoints.iterdir()) == [cached.name]  # nothing was downloaded

    from_file = manifest_of(exports, "mobilenet_v3_small")
    names = [layer.outputs["none"] for layer in manifest.layers]
    ours = direct_run(ort.InferenceSession(str(out / "mobilenet_v3_small" / "model.onnx")), manifest, [cat], names)
    theirs = direct_run(ort.InferenceSession(str(exports.models / "mobilenet_v3_small" / "model.onnx")), from_file,
                        [cat], names)  # fmt: skip
    for name, got, expected in zip(names, ours, theirs, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6, err_msg=name)


def test_a_typo_in_the_weights_argument_is_refused_not_downloaded(hub_python, tmp_path):
    """Only `pretrained`, `none` or a file: another word must not quietly mean the default pretrained tag."""
    out = tmp_path / "out"
    result = hub(hub_python, "-m", "exporter", "timm", VIT, "--weights", "pretraind", "--out", out,
                 env={"HF_HUB_OFFLINE": "1", **NO_NETWORK}, timeout=REFUSAL_TIMEOUT)  # fmt: skip
    expect_refusal(result, out, "--weights 'pretraind'")


# (f) the study reads a transformer's token grids like any map


def test_the_invariance_study_runs_on_a_vision_transformer(exports, tmp_path):
    command = [sys.executable, "-m", "insight", "--model", VIT, "--models-dir", str(exports.models), "--out",
               str(tmp_path), "--quick", "--photos", "2"]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "insight.json").read_text())
    studied = {layer["name"]: layer for layer in report["layers"]}
    assert {"patch_embed", "block3", "block12"} <= set(studied)
    assert (studied["block12"]["stride"], studied["block12"]["receptive_field"]) == (16, 224)
    assert all("map" in measured for measured in studied["block12"]["transforms"].values())
    assert (tmp_path / "invariance.png").stat().st_size > 0 and (tmp_path / "receptive_field.png").is_file()


def test_a_vision_transformer_gets_an_int8_export_through_its_route(hub_python, tmp_path):
    """--precision on the timm route: the fp32 export and NAME-int8 side by side, the transformer's MatMuls in int8.

    Random weights have no labels, so only the cosine rule applies; --force writes it whatever it measures.
    """
    out = tmp_path / "out"
    result = hub(hub_python, "-m", "exporter", "timm", "vit_tiny_patch16_224", "--weights", "none", "--input-size",
                 "96", "--precision", "int8", "--force", "--out", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["vit_tiny_patch16_224", "vit_tiny_patch16_224-int8"]
    manifest = load_manifest(out / "vit_tiny_patch16_224-int8" / "model.json")
    assert manifest.precision == "int8" and manifest.quality.top1_agreement is None
    assert set(manifest.quality.cosine) == {layer.name for layer in manifest.layers}
    graph = onnx.load(str(out / "vit_tiny_patch16_224-int8" / "model.onnx")).graph
    assert sum(node.op_type == "DequantizeLinear" for node in graph.node) > 50
