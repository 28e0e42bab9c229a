"""The invariance study: its views are the service's own input (exactly), and the CLI on a small configuration
writes a figure for every layer and transform plus two readable PNGs."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from engine.errors import Misconfigured
from engine.images import preprocess_image
from engine.registry import Registry
from engine.settings import Settings
from insight.photos import PHOTOS, load_photo
from insight.views import KINDS, MARGIN, PLAIN, VIEWS, context_image, select_views, view_tensor
from tests.helpers import REPO
from tests.integration.extract_helpers import cli, photo_folder


def _study(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "insight", *map(str, args)], cwd=REPO, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def test_plain_view_is_exactly_the_service_input_and_shifts_move_it(lite0_manifest):
    preprocess = lite0_manifest.preprocess
    photo = load_photo(PHOTOS[0])
    context = context_image(photo, preprocess)
    assert context.size == (224 + 2 * MARGIN, 224 + 2 * MARGIN)
    plain = view_tensor(context, PLAIN, preprocess)
    np.testing.assert_array_equal(plain, preprocess_image(photo, preprocess))  # same scale, same pixels
    shifted = view_tensor(context, VIEWS[0], preprocess)
    assert VIEWS[0].label == "shift (+8, +0) px"
    np.testing.assert_array_equal(shifted[:, :, :-8], plain[:, :, 8:])  # content moved 8 input pixels left
    for view in VIEWS:
        assert view_tensor(context, view, preprocess).shape == (3, 224, 224), view.label
    assert [view.kind for view in select_views(quick=True)] == list(KINDS)


@pytest.mark.integration
def test_quick_study_has_a_figure_for_every_layer_and_transform(models_dir, lite0_manifest, tmp_path):
    out = tmp_path / "insight"
    result = _study("--model", "efficientnet_lite0", "--models-dir", models_dir, "--out", out, "--photos", 2, "--quick")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("wrote ") == 3
    body = json.loads((out / "insight.json").read_text())
    assert body["model"] == "efficientnet_lite0" and body["sha256"] == lite0_manifest.onnx.sha256
    assert [photo["name"] for photo in body["photos"]] == ["chelsea", "coffee"]
    assert all(photo["licence"] for photo in body["photos"])
    assert list(body["transforms"]) == list(KINDS) and all(len(v) == 1 for v in body["transforms"].values())
    assert [layer["name"] for layer in body["layers"]] == [layer.name for layer in lite0_manifest.layers]
    for layer, declared in zip(body["layers"], lite0_manifest.layers, strict=True):
        assert (layer["stride"], layer["receptive_field"]) == (declared.stride, declared.receptive_field)
        assert -1 <= layer["different_images"] <= 1
        assert set(layer["transforms"]) == set(KINDS)
        for kind, figure in layer["transforms"].items():
            assert math.isfinite(figure["score"]) and -1 <= figure["similarity"] <= 1, (layer["name"], kind)
            assert figure["gap"] == pytest.approx(figure["similarity"] - layer["different_images"], abs=2e-6)
            assert (figure["map"] is not None) == declared.spatial
    stem = body["layers"][0]["transforms"]
    assert stem["flip"]["score"] > stem["flip"]["map"]["score"]  # pooling absorbs the flip the stem map shows
    for name, size in (("invariance.png", (1900, 560)), ("receptive_field.png", (880, 506))):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.size == size


@pytest.mark.integration
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--model", "no_such_model"], "no model 'no_such_model' in "),
        (["--model", "efficientnet_lite0", "--photos", "1"], "--photos must be from 2 to"),
    ],
)
def test_bad_arguments_exit_2_with_one_error_line(models_dir, tmp_path, args, words):
    result = _study(*args, "--models-dir", models_dir, "--out", tmp_path)
    assert result.returncode == 2
    assert words in result.stderr and "Traceback" not in result.stderr


def _models_folder(case: str, models_dir, root) -> tuple[object, str]:
    """(models folder, the error line both CLIs must print) for one way a models folder cannot serve a model."""
    if case == "unknown model":
        return models_dir, f"no model 'nope' in {models_dir}; models are efficientnet_lite0"
    folder = root / "models"
    if case == "no folder":
        return folder, f"models directory {folder} does not exist; export a model first (python -m exporter)"
    (folder / "nope").mkdir(parents=True)
    if case == "no export":
        return folder, f"no exported models in {folder} (expected {folder}/<name>/model.json)"
    manifest = json.loads((models_dir / "efficientnet_lite0" / "model.json").read_text())
    manifest["onnx"]["sha256"] = "0" * 64  # an ONNX file that is not the one the manifest was written for
    (folder / "nope" / "model.json").write_text(json.dumps(manifest))
    (folder / "nope" / "model.onnx").symlink_to(models_dir / "efficientnet_lite0" / "model.onnx")
    return folder, f"{folder}/nope/model.onnx sha256 "


@pytest.mark.integration
@pytest.mark.parametrize("case", ["unknown model", "no folder", "no export", "broken export"])
def test_both_clis_and_the_service_say_the_same_line_for_a_model_they_cannot_use(case, models_dir, tmp_path):
    """One lookup of exports in the core (engine/exports.py): the same words from python -m extract, python -m
    insight and the service's start-up check; exit status 2 and nothing written."""
    folder, words = _models_folder(case, models_dir, tmp_path)
    images = photo_folder(tmp_path, ("chelsea",))
    extracted = cli("extract", images, "--model", "nope", "--models-dir", folder, "--out", tmp_path / "out")
    studied = _study("--model", "nope", "--models-dir", folder, "--out", tmp_path / "insight")
    assert extracted.returncode == studied.returncode == 2
    assert extracted.stderr == studied.stderr and len(extracted.stderr.splitlines()) == 1, extracted.stderr
    assert extracted.stderr.startswith(f"error: {words}"), extracted.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "insight").exists()
    if case != "unknown model":  # the service has no model name to look up, but reads the folder the same way
        with pytest.raises(Misconfigured) as raised:
            Registry(Settings(models_dir=folder)).check()
        assert extracted.stderr == f"error: {raised.value.detail}\n"
