"""Before timing anything: the service returns the in-process numbers, batched or not, on the sub-graph or not,
and its V2 infer route (binary outputs) the same numbers as /v1."""

from __future__ import annotations

import base64
import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from safetensors.numpy import load as load_safetensors

from bench.ceiling import session_and_outputs
from bench.load import V2_HEADER_LENGTH, v2_infer_body
from engine.features import output_name
from engine.images import load_tensor
from engine.manifest import Manifest

V2_STEM = {"outputs": [{"name": "stem", "parameters": {"binary_data": True}}]}  # the stem map, as binary
V2_DEFAULT = {"parameters": {"binary_data_output": True}}  # no outputs named: every layer's avg vector, as binary
V2_TOLERANCE = 1e-5


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


def _v2_outputs(url: str, image: bytes, fields: dict) -> dict[str, tuple[np.ndarray, bool]]:
    """A V2 infer answer's outputs by name: (array, came as binary). Binary ones follow the JSON header in order."""
    body, json_length = v2_infer_body(image, fields)
    headers = {"Content-Type": "application/octet-stream", V2_HEADER_LENGTH: str(json_length)}
    with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=120) as response:
        answer, length = response.read(), response.headers.get(V2_HEADER_LENGTH)
    end = len(answer) if length is None else int(length)
    offset, outputs = end, {}
    for output in json.loads(answer[:end])["outputs"]:
        if output["datatype"] != "FP32":
            raise RuntimeError(f"V2 output {output['name']} is {output['datatype']}, not FP32")
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is None:
            outputs[output["name"]] = (np.asarray(output["data"], "<f4").reshape(output["shape"]), False)
            continue
        array = np.frombuffer(answer, "<f4", count=size // 4, offset=offset).reshape(output["shape"])
        outputs[output["name"]], offset = (array, True), offset + size
    if offset != len(answer):
        raise RuntimeError(f"V2 answer: {len(answer) - offset} bytes left after its binary outputs")
    return outputs


def _v1_safetensors(url: str, image: bytes, query: str) -> dict[str, np.ndarray]:
    headers = {"Content-Type": "image/jpeg", "Accept": "application/x-safetensors"}
    request = urllib.request.Request(f"{url}?{query}", data=image, headers=headers)
    with urllib.request.urlopen(request, timeout=120) as response:
        return load_safetensors(response.read())


def check_v2(v1_url: str, v2_url: str, manifest: Manifest, images: list[bytes]) -> dict:
    """The V2 answers timed later equal /v1's for every photo: the binary stem map against /v1's safetensors
    `stem/none`, and the default request (every layer's avg vector, binary) against /v1's default pooled vectors."""
    stem_error, default_error, stem_ok, default_ok = 0.0, 0.0, True, True
    names = {layer.name: output_name(layer, "avg") for layer in manifest.layers}
    for image in images:
        v2_stem = _v2_outputs(v2_url, image, V2_STEM)
        v1_stem = _v1_safetensors(v1_url, image, "layers=stem&pooling=none")["stem/none"]
        got, binary = v2_stem["stem"]
        stem_ok &= set(v2_stem) == {"stem"} and binary and got.shape == v1_stem.shape
        stem_error = max(stem_error, float(np.abs(got - v1_stem).max()))
        v2_default = _v2_outputs(v2_url, image, V2_DEFAULT)
        v1_default = _features(v1_url, image, "")
        default_ok &= set(v2_default) == set(names.values()) and set(v1_default) == set(names)
        default_ok &= all(binary for _, binary in v2_default.values())
        for layer, name in names.items():
            if name in v2_default and layer in v1_default:
                got = v2_default[name][0]
                default_ok &= got.shape == (1, *v1_default[layer].shape)
                default_error = max(default_error, float(np.abs(got[0] - v1_default[layer]).max()))
    return {
        "v2_stem_vs_v1_safetensors_max_abs_error": stem_error,
        "v2_stem_equals_v1": bool(stem_ok and stem_error <= V2_TOLERANCE),
        "v2_default_vs_v1_max_abs_error": default_error,
        "v2_default_equals_v1": bool(default_ok and default_error <= V2_TOLERANCE),
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
