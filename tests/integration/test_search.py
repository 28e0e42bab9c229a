"""Search by level end to end on real photos and the real Lite0: batch extraction with --index (embedded back end),
reruns that add, change and remove files, the index agreeing with the .npy/Parquet outputs, the search CLI, and a
real gunicorn answering /search, /v1/index and entry pictures, with every refusal a clear problem.
The same path over PostgreSQL + pgvector is in test_search_pgvector.py.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from engine.vector_index import open_index
from extract.parquet import read_features
from tests.helpers import photo_jpeg
from tests.integration.conftest import Server
from tests.integration.extract_helpers import cli, make_collection
from tests.openapi_check import conforms

MODEL = "efficientnet_lite0"
API_KEY = "search-test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def _rows(out: Path) -> list[dict]:
    with open(out / "index.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _extract(models_dir: Path, inputs, out: Path, index, *extra: str):
    result = cli("extract", *inputs, "--model", MODEL, "--models-dir", models_dir, "--out", out,
                 "--index", index, "--no-progress", *extra)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result


def assert_index_agrees(index_target: str, out: Path, layers: dict[str, np.ndarray] | None = None) -> None:
    """Every output row is one entry with its fingerprint, and its vector finds that row's file first."""
    rows = _rows(out)
    index = open_index(index_target)
    try:
        assert index.fingerprints(MODEL, "avg") == {row["path"]: row["fingerprint"] for row in rows}
        if layers is None:
            layers = {name: np.load(out / f"{name}.npy") for name in ("stem", "stride16", "head")}
        for name, matrix in layers.items():
            found = index.search(MODEL, "avg", name, matrix.reshape(len(matrix), -1).astype(np.float32), 1)
            hits = [neighbours[0].path for neighbours in found]
            scores = [neighbours[0].score for neighbours in found]
            # a duplicate image may tie with itself; the file's own entry is then at the same score
            assert sum(h == row["path"] for h, row in zip(hits, rows, strict=True)) >= len(rows) - 2, name
            assert min(scores) > 0.999, name
    finally:
        index.close()


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("search")
    files = make_collection(root, 16)
    return {"root": root, "photos": root / "photos", **files}


@pytest.fixture(scope="module")
def indexed(models_dir, collection) -> dict:
    """The collection extracted with --index into an embedded index (the first run)."""
    out, index = collection["root"] / "out", collection["root"] / "index"
    result = _extract(models_dir, [collection["photos"]], out, index)
    return {"out": out, "index": index, "stdout": result.stdout}


def test_extraction_writes_an_index_that_agrees_with_its_outputs(indexed, collection):
    assert "16 added, 0 removed, 16 entries" in indexed["stdout"]
    assert len(_rows(indexed["out"])) == 16  # the three broken files are failed.csv rows, not entries
    assert_index_agrees(str(indexed["index"]), indexed["out"])


def test_a_rerun_computes_only_new_and_changed_files_and_removes_deleted_ones(models_dir, collection, tmp_path):
    photos = tmp_path / "photos"
    shutil.copytree(collection["photos"], photos)
    out, index = tmp_path / "out", tmp_path / "index"
    _extract(models_dir, [photos], out, index)
    same = _extract(models_dir, [photos], out, index)
    assert "nothing to do" in same.stdout and "0 added, 0 removed, 16 entries" in same.stdout

    good = sorted(p for p in photos.rglob("*") if p.is_file() and "broken" not in p.parts)
    good[0].unlink()  # deleted
    good[1].write_bytes(photo_jpeg("camera"))  # changed in place
    (photos / "new").mkdir()
    (photos / "new" / "coins.jpg").write_bytes(photo_jpeg("coins"))  # added
    updated = _extract(models_dir, [photos], out, index)
    assert "14 unchanged files carried over" in updated.stdout, updated.stdout
    assert "processed 5 images" in updated.stdout  # the new file, the changed one and the 3 broken ones again
    assert "2 added, 1 removed, 16 entries" in updated.stdout, updated.stdout
    assert_index_agrees(str(index), out)

    fresh = tmp_path / "fresh"  # the carried rows equal a run from scratch over the same files
    result = cli("extract", photos, "--model", MODEL, "--models-dir", models_dir, "--out", fresh, "--no-progress")
    assert result.returncode == 0, result.stderr
    assert [r["path"] for r in _rows(fresh)] == [r["path"] for r in _rows(out)]
    for layer in ("stem", "head", "logits"):
        assert np.array_equal(np.load(fresh / f"{layer}.npy"), np.load(out / f"{layer}.npy")), layer


def test_update_without_index_follows_the_inputs_too(models_dir, collection, tmp_path):
    photos = tmp_path / "photos"
    shutil.copytree(collection["photos"] / "chelsea", photos)
    out = tmp_path / "out"
    args = ("extract", photos, "--model", MODEL, "--models-dir", models_dir, "--out", out, "--no-progress",
            "--layers", "head")  # fmt: skip
    assert cli(*args).returncode == 0
    (photos / "extra.jpg").write_bytes(photo_jpeg("rocket"))
    refused = cli(*args)
    assert refused.returncode == 2 and "--overwrite" in refused.stderr  # without --update: unchanged contract
    updated = cli(*args, "--update")
    assert updated.returncode == 0 and "unchanged files carried over" in updated.stdout, updated.stdout
    assert "processed 1 images" in updated.stdout


def test_parquet_outputs_are_indexed_alike(models_dir, collection, tmp_path):
    out, index = tmp_path / "out", tmp_path / "index"
    _extract(models_dir, [collection["photos"] / "coffee"], out, index, "--format", "parquet")
    _paths, arrays = read_features(out / "features.parquet")
    assert_index_agrees(str(index), out, {name: arrays[name] for name in ("stem", "head")})


def test_index_refusals(models_dir, collection, indexed, tmp_path):
    photos = collection["photos"] / "rocket"
    none = cli("extract", photos, "--model", MODEL, "--models-dir", models_dir, "--out", tmp_path / "a",
               "--index", tmp_path / "ix", "--pooling", "none", "--no-progress")  # fmt: skip
    assert none.returncode == 2 and "--index holds vectors" in none.stderr and not (tmp_path / "a").exists()
    other = cli("extract", photos, "--model", MODEL, "--models-dir", models_dir, "--out", tmp_path / "b",
                "--index", indexed["index"], "--no-progress")  # fmt: skip
    assert other.returncode == 2 and f"mirrors the extraction {indexed['out']}" in other.stderr, other.stderr
    assert open_index(str(indexed["index"])).count(MODEL, "avg") == 16  # the refused run changed nothing
    bare = cli("extract", photos, "--model", MODEL, "--models-dir", models_dir, "--out", tmp_path / "c",
               "--index", "--no-progress", env={"FEATURES_INDEX": ""})  # fmt: skip
    assert bare.returncode == 2 and "--index needs a TARGET" in bare.stderr


def test_search_cli_finds_the_same_photo_first_and_refuses_clearly(models_dir, collection, indexed, tmp_path):
    query = next((collection["photos"] / "chelsea").rglob("*.jpg"))
    args = (query, "--model", MODEL, "--models-dir", models_dir, "--index", indexed["index"], "-k", "3")
    result = cli("extract.search", *args, "--levels", "low,high", "--json")
    assert result.returncode == 0, result.stderr
    (answer,) = json.loads(result.stdout)["results"]
    assert set(answer["neighbours"]) == {"low", "high"}
    for layers in answer["neighbours"].values():
        for neighbours in layers.values():
            assert neighbours[0]["path"] == str(query) and neighbours[0]["score"] > 0.999 and len(neighbours) == 3
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)
    index_args = ("--model", MODEL, "--models-dir", models_dir, "--index", indexed["index"])
    for arguments, words in [
        ((fifo, *index_args), "not a regular file"),
        ((query, *index_args, "-k", "0"), "whole number from 1 to 1000"),
        ((query, *index_args, "--pooling", "max"), "holds no vectors of efficientnet_lite0 at pooling max"),
        ((query, "--model", MODEL, "--models-dir", models_dir), "give --index TARGET"),
    ]:
        refused = cli("extract.search", *arguments, env={"FEATURES_INDEX": ""})
        assert refused.returncode == 2 and words in refused.stderr, refused.stderr


# ---- the service -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def search_server(models_dir, indexed):
    server = Server(models_dir, FEATURES_INDEX=str(indexed["index"]), FEATURES_API_KEY=API_KEY).wait_ready()
    yield server
    server.stop()


def _search(server, files=None, **kwargs) -> requests.Response:
    return requests.post(f"{server.url}/v1/models/{MODEL}/search", headers=AUTH, files=files, timeout=60, **kwargs)


def test_each_input_form_finds_the_indexed_photo_at_every_level(search_server, indexed):
    row = _rows(indexed["out"])[0]
    data = Path(row["path"]).read_bytes()
    answers = [
        _search(search_server, files={"image": ("q.jpg", data)}, params={"k": 4}),
        _search(search_server, json={"inputs": [{"image": base64.b64encode(data).decode()}], "k": 4}),
    ]
    for response in answers:
        assert response.status_code == 200, response.text
        conforms(response, "/v1/models/{model_name}/search", "post")
        body = response.json()
        assert body["index"]["entries"] == 16 and body["options"]["k"] == 4
        (result,) = body["results"]
        assert set(result["neighbours"]) == {"low", "mid", "high"}
        for layers in result["neighbours"].values():
            for neighbours in layers.values():
                assert len(neighbours) == 4 and neighbours[0]["path"] == row["path"]
                assert neighbours[0]["score"] > 0.999


def test_the_catalogue_and_entry_pictures(search_server, indexed):
    catalogue = requests.get(f"{search_server.url}/v1/index", headers=AUTH, timeout=30)
    conforms(catalogue, "/v1/index")
    (collection,) = catalogue.json()["collections"]
    assert collection["model"] == MODEL and collection["entries"] == 16 and collection["searchable"]
    found = _search(search_server, files={"image": ("cat.jpg", photo_jpeg("chelsea"))}, params={"k": 1})
    entry = found.json()["results"][0]["neighbours"]["high"]["head"][0]["id"]
    picture = requests.get(f"{search_server.url}/v1/index/entries/{entry}/image?size=64", headers=AUTH, timeout=30)
    assert picture.status_code == 200 and picture.headers["Content-Type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(picture.content)).size) == 64


def test_refusals_are_problems_and_the_service_keeps_serving(search_server, models_dir, tmp_path):
    cat = {"image": ("cat.jpg", photo_jpeg("chelsea"))}
    cases = [
        (dict(files=cat, params={"k": "0"}), 400, "whole number from 1 to 1000"),
        (dict(files=cat, params={"pooling": "none"}), 400, "pooling must be avg or max"),
        (dict(files=cat, params={"pooling": "max"}), 404, "holds no vectors of efficientnet_lite0 at pooling max"),
        (dict(files=cat, params={"layers": "nope"}), 404, "has no layer 'nope'"),
        (dict(files=cat, params={"normalize": "true"}), 400, "unknown option 'normalize'"),
        (dict(files={"image": ("x.jpg", b"not an image")}), 422, "image 0"),
    ]
    for kwargs, status, words in cases:
        response = _search(search_server, **kwargs)
        assert response.status_code == status and words in response.json()["detail"], response.text
        assert response.headers["Content-Type"] == "application/problem+json"
        conforms(response, "/v1/models/{model_name}/search", "post")
    anonymous = requests.post(f"{search_server.url}/v1/models/{MODEL}/search", files=cat, timeout=30)
    assert anonymous.status_code == 401
    for path, status in [("/v1/index/entries/999999/image", 404), ("/v1/index/entries/1/image?size=5000", 400)]:
        response = requests.get(search_server.url + path, headers=AUTH, timeout=30)
        assert response.status_code == status, response.text
    assert _search(search_server, files=cat).status_code == 200


def test_an_entry_whose_file_is_gone_or_a_fifo_is_a_404(models_dir, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("chelsea", "coffee"):
        (photos / f"{name}.jpg").write_bytes(photo_jpeg(name))
    out, index = tmp_path / "out", tmp_path / "index"
    _extract(models_dir, [photos], out, index, "--layers", "head")
    server = Server(models_dir, FEATURES_INDEX=str(index)).wait_ready()
    try:
        ids = {path: entry for entry, path in _entries(index)}
        (photos / "chelsea.jpg").unlink()
        os.mkfifo(photos / "chelsea.jpg")
        (photos / "coffee.jpg").unlink()
        for path, entry in ids.items():  # a FIFO is opened without blocking, then refused as not a regular file
            response = requests.get(f"{server.url}/v1/index/entries/{entry}/image", timeout=60)
            assert response.status_code == 404 and "is gone or unreadable" in response.json()["detail"], path
    finally:
        server.stop()


def _entries(index: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(index / "index.sqlite") as db:
        return db.execute("SELECT id, path FROM entries").fetchall()


def test_a_service_without_an_index_says_how_to_configure_one(server):
    response = requests.get(f"{server.url}/v1/index", timeout=30)
    assert response.status_code == 404 and "FEATURES_INDEX" in response.json()["detail"]
    conforms(response, "/v1/index")
