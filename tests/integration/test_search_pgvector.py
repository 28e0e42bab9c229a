"""The same search path as test_search.py over PostgreSQL with pgvector: a real server on 127.0.0.1 (pgserver's
binaries), batch extraction with --index postgresql://…, a rerun that changes files, and a real gunicorn that
answers /search from it without ever showing the URL's password.
"""

from __future__ import annotations

import shutil

import pytest
import requests

from tests.helpers import photo_jpeg
from tests.integration.conftest import Server
from tests.integration.extract_helpers import cli
from tests.integration.postgres import PASSWORD, running_postgres
from tests.integration.test_search import MODEL, _extract, assert_index_agrees
from tests.openapi_check import conforms


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    with running_postgres(tmp_path_factory.mktemp("postgres")) as address:
        yield address


def test_extraction_indexes_into_postgres_and_search_answers_from_it(models_dir, url, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("chelsea", "coffee", "astronaut", "rocket", "camera"):
        (photos / f"{name}.jpg").write_bytes(photo_jpeg(name))
    out = tmp_path / "out"
    first = _extract(models_dir, [photos], out, url)
    assert "5 added, 0 removed, 5 entries" in first.stdout and PASSWORD not in first.stdout + first.stderr
    assert_index_agrees(url, out)

    (photos / "camera.jpg").unlink()
    (photos / "coins.jpg").write_bytes(photo_jpeg("coins"))
    (photos / "rocket.jpg").write_bytes(photo_jpeg("rocket", quality=70))  # changed in place
    updated = _extract(models_dir, [photos], out, url)
    assert "3 unchanged files carried over" in updated.stdout and "2 added, 1 removed, 5 entries" in updated.stdout
    assert_index_agrees(url, out)

    server = Server(models_dir, FEATURES_INDEX=url).wait_ready()
    try:
        cat = {"image": ("cat.jpg", (photos / "chelsea.jpg").read_bytes())}
        options = {"levels": "low,high", "k": 3}
        response = requests.post(f"{server.url}/v1/models/{MODEL}/search", params=options, files=cat, timeout=60)
        assert response.status_code == 200, response.text
        conforms(response, "/v1/models/{model_name}/search", "post")
        for layers in response.json()["results"][0]["neighbours"].values():
            for neighbours in layers.values():
                assert neighbours[0]["path"] == str(photos / "chelsea.jpg") and neighbours[0]["score"] > 0.999
        catalogue = requests.get(f"{server.url}/v1/index", timeout=30)
        assert catalogue.json()["collections"][0]["entries"] == 5
        assert PASSWORD not in catalogue.text and "***" in catalogue.json()["target"]
        entry = response.json()["results"][0]["neighbours"]["high"]["head"][0]["id"]
        picture = requests.get(f"{server.url}/v1/index/entries/{entry}/image", timeout=30)
        assert picture.status_code == 200 and picture.headers["Content-Type"] == "image/jpeg"
    finally:
        server.stop()
    assert PASSWORD not in server.output()


def test_an_unreachable_database_is_a_503_and_the_service_keeps_serving(models_dir, url, tmp_path):
    closed = url.rsplit(":", 1)[0] + ":1/features"  # nothing listens on port 1
    server = Server(models_dir, FEATURES_INDEX=closed).wait_ready()
    try:
        cat = {"image": ("cat.jpg", photo_jpeg("chelsea"))}
        response = requests.post(f"{server.url}/v1/models/{MODEL}/search", files=cat, timeout=60)
        assert response.status_code == 503 and "cannot reach the index" in response.json()["detail"]
        assert PASSWORD not in response.text
        assert requests.post(f"{server.url}/v1/models/{MODEL}/features", files=cat, timeout=60).status_code == 200
    finally:
        server.stop()


def test_a_postgres_index_refuses_what_the_folder_refuses(models_dir, url, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "coffee.jpg").write_bytes(photo_jpeg("coffee"))
    other = tmp_path / "elsewhere"
    shutil.copytree(photos, other)
    _extract(models_dir, [photos], tmp_path / "a", url, "--pooling", "max")
    refused = cli("extract", other, "--model", MODEL, "--models-dir", models_dir, "--out", tmp_path / "b",
                  "--index", url, "--pooling", "max", "--no-progress")  # fmt: skip
    assert refused.returncode == 2 and "mirrors the extraction" in refused.stderr and PASSWORD not in refused.stderr
