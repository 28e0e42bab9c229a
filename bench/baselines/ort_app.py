"""Hand-written Flask + ONNX Runtime route: `gunicorn bench.baselines.ort_app:app`."""

from __future__ import annotations

import json

import onnxruntime as ort
from flask import Flask, request

from bench.baselines.common import MANIFEST, MODEL_DIR, THREADS, preprocess

options = ort.SessionOptions()
if THREADS:  # else ONNX Runtime's default
    options.intra_op_num_threads = THREADS
session = ort.InferenceSession(str(MODEL_DIR / "model.onnx"), options, providers=["CPUExecutionProvider"])
layers = [(layer["name"], layer["outputs"].get("avg", layer["outputs"]["none"])) for layer in MANIFEST["layers"]]
app = Flask(__name__)


@app.post("/features")
def features():
    outputs = session.run([name for _, name in layers], {"input": preprocess(request.get_data())})
    return json.dumps({layer: out[0].tolist() for (layer, _), out in zip(layers, outputs, strict=True)})


@app.get("/healthz")
def healthz():
    return "ok"
