"""What each level retrieves (python -m insight retrieval): the study's views in the real EmbeddedIndex, searched
with their transformed views, on the real exported Lite0; the JSON, the plot's numbers and the comparison with
the invariance study must all say the same thing."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from engine.settings import Settings
from insight.photos import PHOTOS
from insight.retrieval import DESIGNS, database_rows, embed_views, grid, photo_of, search_design
from insight.study import open_model
from insight.views import KINDS, VIEWS, select_views
from tests.helpers import REPO

pytestmark = pytest.mark.integration


def _insight(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "insight", *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def study_and_retrieval(models_dir, tmp_path_factory):
    """The full study and the full retrieval (7 photos, every view) into one folder: (folder, insight, retrieval)."""
    out = tmp_path_factory.mktemp("retrieval")
    common = ("--model", "efficientnet_lite0", "--models-dir", models_dir, "--out", out)
    study = _insight(*common)
    assert study.returncode == 0, study.stderr
    result = _insight("retrieval", *common, "--invariance", out / "insight.json")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("wrote ") == 2 and "ran efficientnet_lite0 on " in result.stdout
    return out, json.loads((out / "insight.json").read_text()), json.loads((out / "retrieval.json").read_text())


def test_every_rate_is_a_share_of_its_queries_and_misses_are_listed(study_and_retrieval, lite0_manifest):
    _, _, body = study_and_retrieval
    assert body["sha256"] == lite0_manifest.onnx.sha256 and body["chosen"] == "plain"
    assert list(body["transforms"]) == list(KINDS)
    per_kind = {kind: len(PHOTOS) * len(labels) for kind, labels in body["transforms"].items()}
    for design in DESIGNS:
        figures = body["designs"][design]
        assert figures["queries"] == len(PHOTOS) * len(VIEWS)
        assert figures["database"] == len(PHOTOS) * (1 if design == "plain" else len(VIEWS) + 1)
        assert [layer["name"] for layer in figures["layers"]] == [layer.name for layer in lite0_manifest.layers]
        for layer in figures["layers"]:
            hits = 0
            for kind, figure in layer["transforms"].items():
                assert figure["queries"] == per_kind[kind] and 0 <= figure["hit_rate"] <= 1
                assert figure["hit_rate"] == pytest.approx(figure["hits"] / figure["queries"], abs=1e-6)
                hits += figure["hits"]
            assert 0 <= layer["overall"] <= 1
            assert layer["overall"] == pytest.approx(hits / figures["queries"], abs=1e-6)
            assert len(layer["misses"]) == figures["queries"] - hits
            for miss in layer["misses"]:  # a miss is another photo's entry, never the query itself
                assert photo_of(miss["neighbour"]) != photo_of(miss["query"]), miss
            if design == "all_views":  # shares of queries: the index's own entry first, a plain-view neighbour
                assert 0 <= layer["neighbour_plain"] <= 1 and 0.9 <= layer["own_entry_first"] <= 1


def test_a_plain_query_hits_exactly_when_its_margin_is_positive(study_and_retrieval):
    _, _, body = study_and_retrieval
    for layer in body["designs"]["plain"]["layers"]:
        for kind, figure in layer["transforms"].items():
            assert figure["margin_min"] <= figure["margin"] <= 1
            assert (figure["margin_min"] > 0) == (figure["hits"] == figure["queries"]), (layer["name"], kind)


def test_high_layers_recognise_a_flipped_photo_at_least_as_often_as_the_stem(study_and_retrieval):
    _, _, body = study_and_retrieval
    for design in DESIGNS:
        layers = body["designs"][design]["layers"]
        stem = layers[0]["transforms"]["flip"]["hit_rate"]
        assert all(layer["transforms"]["flip"]["hit_rate"] >= stem for layer in layers if layer["level"] == "high")
        assert min(layer["overall"] for layer in layers) > body["designs"][design]["chance"]


def test_the_plot_draws_the_json_numbers(study_and_retrieval):
    out, _, body = study_and_retrieval
    with Image.open(out / "retrieval.png") as image:
        assert image.format == "PNG" and image.size == (1700, 540)
        drawn = json.loads(image.text["retrieval"])
    assert drawn == {design: grid(body, design) for design in DESIGNS}
    plain = drawn["plain"]
    assert plain["rows"] == [*KINDS, "overall"] and plain["levels"][0] == "low" and plain["levels"][-1] == "high"
    for row, kind in enumerate(KINDS):
        for column, layer in enumerate(body["designs"]["plain"]["layers"]):
            assert plain["hit_rate"][row][column] == layer["transforms"][kind]["hit_rate"]
    assert plain["hit_rate"][-1] == [layer["overall"] for layer in body["designs"]["plain"]["layers"]]


def test_the_comparison_holds_the_study_scores_and_margin_tracks_invariance(study_and_retrieval):
    _, study, body = study_and_retrieval
    comparison = body["versus_invariance"]
    assert comparison["same_export"] is True
    scores = {(layer["name"], kind): figure["score"] for layer in study["layers"]
              for kind, figure in layer["transforms"].items()}  # fmt: skip
    assert {(cell["layer"], cell["kind"]): cell["invariance"] for cell in comparison["cells"]} == scores
    assert comparison["correlation"]["margin"] > 0.5  # both measure "as far as another photo", mean vs nearest


def test_a_query_never_finds_itself_and_the_index_finds_the_exact_nearest(models_dir, tmp_path):
    """In-process, on the real index: the neighbour is never the query, and its cosine is the exact best one."""
    model = open_model(Settings(models_dir=models_dir), "efficientnet_lite0")
    entries, vectors = embed_views(model, list(PHOTOS[:3]), select_views(quick=True))
    rows = database_rows("all_views", entries)
    for layer, (queries, nearest, answers) in search_design("all_views", tmp_path, model, entries, vectors).items():
        unit = vectors[layer] / np.linalg.norm(vectors[layer], axis=1, keepdims=True)
        for query, neighbour, answer in zip(queries, nearest, answers, strict=True):
            assert neighbour.path != query.path and len(answer) == 2
            row = next(i for i, entry in enumerate(entries) if entry.path == query.path)
            cosines = {entries[other].path: float(unit[other] @ unit[row]) for other in rows if other != row}
            assert neighbour.score == pytest.approx(cosines[neighbour.path], abs=2e-3)  # f16 storage
            assert cosines[neighbour.path] >= max(cosines.values()) - 2e-3, (layer, query.path)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--model", "no_such_model"], "error: no model 'no_such_model' in "),
        (["--model", "efficientnet_lite0", "--photos", "1"], "--photos must be from 2 to"),
        (["--model", "efficientnet_lite0", "--invariance", "nope.json"], "error: --invariance nope.json: not a"),
    ],
)
def test_bad_arguments_exit_2_with_one_error_line(models_dir, tmp_path, args, words):
    out = tmp_path / "out"
    result = _insight("retrieval", *args, "--models-dir", models_dir, "--out", out)
    assert result.returncode == 2 and words in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not out.exists()


def test_a_study_of_other_photos_is_refused(study_and_retrieval, models_dir, tmp_path):
    folder, _, _ = study_and_retrieval
    out = tmp_path / "out"
    args = ("--model", "efficientnet_lite0", "--models-dir", models_dir, "--photos", 2, "--quick", "--out", out)
    result = _insight("retrieval", *args, "--invariance", folder / "insight.json")
    assert result.returncode == 2 and not out.exists()
    assert result.stderr.startswith("error: --invariance ") and len(result.stderr.splitlines()) == 1, result.stderr
