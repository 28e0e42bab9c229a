"""The unit tier: no export, no gunicorn. The tiny ONNX model (tests/unit/tiny_model.py) in a temporary models
folder, the app made from it by create_app, and Flask's test client.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest
from flask import Flask
from flask.testing import FlaskClient

from engine.manifest import Manifest, load_manifest
from engine.settings import Settings
from service.app import create_app
from tests.unit import tiny_model

MAX_BODY_BYTES, MAX_IMAGES = 3_000_000, 8  # the limits of the integration tier's shared server


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """A models folder holding one export: tiny/{model.onnx, model.json}."""
    models = tmp_path_factory.mktemp("tiny_models")
    tiny_model.write(models)
    return models


@pytest.fixture(scope="session")
def tiny_dir(tiny_models) -> Path:
    return tiny_models / tiny_model.NAME


@pytest.fixture(scope="session")
def tiny_manifest(tiny_dir) -> Manifest:
    return load_manifest(tiny_dir / "model.json")


@pytest.fixture(scope="session")
def tiny_session(tiny_dir) -> ort.InferenceSession:
    """The model run directly, without the service: the reference for what the app answers."""
    return ort.InferenceSession(str(tiny_dir / "model.onnx"), providers=["CPUExecutionProvider"])


def make_app(models_dir: Path, **settings) -> Flask:
    """create_app on these models, loaded before it returns (as in a gunicorn worker), one ORT thread."""
    limits = {"max_body_bytes": MAX_BODY_BYTES, "max_images": MAX_IMAGES, "ort_threads": 1, **settings}
    return create_app(Settings(models_dir=models_dir, **limits))


@pytest.fixture(scope="session")
def app(tiny_models) -> Flask:
    """The app shared by every test that does not change it (a test that does makes its own)."""
    return make_app(tiny_models)


@pytest.fixture
def client(app) -> FlaskClient:
    return app.test_client()
