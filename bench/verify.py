"""Before timing anything: the service returns the in-process numbers, batched or not, on the sub-graph or not."""

from __future__ import annotations

import base64
import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from bench.ceiling import session_and_outputs
from engine.images import load_tensor
from engine.manifest import Manifest


def _features(url: str, image: bytes, query: str) -> dict[str, np.ndarray]:
    request = urllib.request.Request(
        f"{url}?encoding=base64&{query}", data=image, headers={"Content-Type": "image/jpeg"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        body = json.loads(response.read())
    layers = {}
    for by_layer in body["results"][0]["features"].values():
        for name, encoded in by_layer.items():
            layers[name] = np.frombuffer(base64.b64decode(encoded["data"]), "<f4").reshape(encoded["shape"])
    return layers


def check_service(url: str, manifest: Manifest, model_path: str, images: list[bytes]) -> dict:
    """Largest |service - in-process| per way of asking: alone (unbatched), 8 at once (batched), low levels only."""
    session, outputs = session_and_outputs(manifest, model_path, 2)
    names = [layer.name for layer in manifest.layers]
    reference = []
    for image in images:
        values = session.run(outputs, {"input": load_tensor(image, manifest.preprocess)[None]})
        reference.append({name: value[0] for name, value in zip(names, values, strict=True)})

    def largest_error(results: list[dict[str, np.ndarray]]) -> float:
        return max(
            float(np.abs(got[name] - ref[name]).max())
            for got, ref in zip(results, reference, strict=True)
            for name in got
        )

    alone = [_features(url, image, "") for image in images]
    with ThreadPoolExecutor(max_workers=8) as pool:
        batched = list(pool.map(lambda image: _features(url, image, ""), images))
    low_only = [_features(url, image, "levels=low") for image in images]
    complete = all(set(result) == set(names) for result in alone + batched)
    low_layers = {layer.name for layer in manifest.layers if layer.level == "low"}
    return {
        "unbatched_max_abs_error": largest_error(alone),
        "batched_max_abs_error": largest_error(batched),
        "subgraph_max_abs_error": largest_error(low_only),
        "all_layers_returned": complete and all(set(result) == low_layers for result in low_only),
    }


def server_timings(url: str, images: list[bytes], query: str, repeats: int) -> dict:
    """Median of the service's own timings_ms for one request holding every image (no HTTP or client cost)."""
    body = json.dumps({"inputs": [{"image": base64.b64encode(image).decode()} for image in images]}).encode()
    samples = []
    for _ in range(repeats + 1):  # the first one warms up
        request = urllib.request.Request(f"{url}?{query}", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            samples.append(json.loads(response.read())["timings_ms"])
    return {key: float(np.median([sample[key] for sample in samples[1:]])) for key in samples[0]}
