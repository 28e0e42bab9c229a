"""Hand-written Flask + PyTorch (eager) route with forward hooks: `gunicorn bench.baselines.torch_app:app`."""

from __future__ import annotations

import json

import torch
from flask import Flask, request

from bench.baselines.common import THREADS, preprocess
from exporter.zoo import recipe

if THREADS:  # else PyTorch's default
    torch.set_num_threads(THREADS)
model = recipe("efficientnet_lite0").build()
taps, _ = recipe("efficientnet_lite0").taps(model)
captured: dict[str, torch.Tensor] = {}
modules = dict(model.named_modules())
for tap in taps:
    module = modules[tap.module]
    if tap.port == "input":
        module.register_forward_pre_hook(lambda _m, args, name=tap.name: captured.__setitem__(name, args[0]))
    else:
        module.register_forward_hook(lambda _m, _a, out, name=tap.name: captured.__setitem__(name, out))
app = Flask(__name__)


@app.post("/features")
def features():
    with torch.inference_mode():
        model(torch.from_numpy(preprocess(request.get_data())))
        pooled = {name: (t.mean(dim=(2, 3)) if t.dim() == 4 else t)[0].tolist() for name, t in captured.items()}
    return json.dumps(pooled)


@app.get("/healthz")
def healthz():
    return "ok"
