"""Run with the hub environment's python (torchvision + timm), never imported by the main test venv:

    .venv-hub/bin/python -m tests.integration.hub_helpers save-weights LIBRARY NAME FILE [--input-size S] [LIBRARY …]
    .venv-hub/bin/python -m tests.integration.hub_helpers reference LIBRARY NAME WEIGHTS EXPORT_DIR [--input-size S] […]
    .venv-hub/bin/python -m tests.integration.hub_helpers weights-url NAME

save-weights writes a weights file the exporter must really load: the architecture seeded with 1 (the exporter's
random initialisation uses 0, so a file that was silently ignored shows as a mismatch), with what training would
have changed from the initial values: batch-norm statistics drawn at random, and layer scales (ConvNeXt, DINOv2:
initialised to 1e-6 or 1e-5, which makes every block nearly the identity) drawn between 0.1 and 0.5, so the
blocks' outputs depend on their weights. Several triples in one call pay torch's import once.

reference recomputes every layer of an export by a route that shares nothing with the exporter's hooks —
torchvision's create_feature_extractor (FX graph nodes) for torchvision models, timm's own forward_intermediates
and forward_head for vision transformers — and runs the exported model.onnx with ONNX Runtime on the same
preprocessed photos. It prints one JSON line per export: per layer (and pooled output) the max abs error and
max |reference|, the manifest's preprocessing next to what the library's own metadata says (its mean and std in
the library's 0-1 units; timm's crop_mode as the crop), and how far the library's own transform of the photos is
from engine.preprocess's, in std units.

weights-url prints the URL of a torchvision model's DEFAULT weights and the weights' name, as JSON.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

PHOTOS = ("chelsea", "coffee", "astronaut")
SEED = 1  # not the exporter's 0


def build(library: str, name: str, input_size: int | None):
    """The architecture with random weights (seed 1), built the way the exporter builds it."""
    torch.manual_seed(SEED)
    if library == "torchvision":
        from torchvision import models

        return models.get_model(name, weights=None).eval()
    import timm

    extra = {"img_size": input_size} if input_size else {}
    return timm.create_model(name, pretrained=False, **extra).eval()


def as_if_trained(model) -> None:
    """Batch-norm statistics and layer scales away from their initial values (see the module docstring)."""
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_(torch.rand(module.running_mean.shape, generator=generator) - 0.5)
                module.running_var.copy_(0.5 + 1.5 * torch.rand(module.running_var.shape, generator=generator))
        for name, parameter in model.named_parameters():
            if name.endswith("layer_scale") or (name.endswith(".gamma") and name.split(".")[-2].startswith("ls")):
                parameter.copy_(0.1 + 0.4 * torch.rand(parameter.shape, generator=generator))


def save_weights(library: str, name: str, path: Path, input_size: int | None) -> None:
    model = build(library, name, input_size)
    as_if_trained(model)
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)


def load(library: str, name: str, weights: Path, input_size: int | None):
    """The architecture with the weights file loaded strictly, by plain torch/safetensors calls."""
    model = build(library, name, input_size)
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(weights))
    else:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _torchvision_layers(model, manifest, batch: torch.Tensor) -> dict[str, np.ndarray]:
    """Each layer from the FX graph: the node of its module path; the embedding is the node feeding the last Linear
    (for these models the node just before it: flatten, the classifier's Flatten or its last Dropout), checked
    below by recomputing the logits from it."""
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    _, eval_nodes = get_graph_node_names(model)
    wanted: dict[str, str] = {}
    linear = None
    for layer in manifest.layers:
        if layer.source.endswith(":input"):
            linear = layer.source.removesuffix(":input")
            wanted[eval_nodes[eval_nodes.index(linear) - 1]] = layer.name
        else:
            wanted[layer.source] = layer.name
    extractor = create_feature_extractor(model, return_nodes=wanted).eval()
    with torch.no_grad():
        out = extractor(batch)
        if linear is not None:
            embedding = next(layer.name for layer in manifest.layers if layer.source == f"{linear}:input")
            out[embedding] = out[embedding].flatten(1)
            out["embedding logits (check)"] = model.get_submodule(linear)(out[embedding])
            out["logits (model output)"] = model(batch)
    return {name: value.numpy() for name, value in out.items()}


def _timm_layers(model, manifest, batch: torch.Tensor) -> dict[str, np.ndarray]:
    """Blocks from timm's forward_intermediates (names are 1-based), the patch embedding as the convolution of its
    weights, the embedding from forward_head(pre_logits=True) and the logits from the model."""
    blocks = {layer.name: int(layer.name.removeprefix("block")) - 1 for layer in manifest.layers
              if layer.name.startswith("block") and not layer.name.endswith("_cls")}  # fmt: skip
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        pairs = model.forward_intermediates(batch, indices=list(blocks.values()), return_prefix_tokens=True,
                                            output_fmt="NCHW", intermediates_only=True)  # fmt: skip
        for (name, _), (grid, prefix) in zip(blocks.items(), pairs, strict=True):
            out[name], out[f"{name}_cls"] = grid, prefix[:, 0]
        conv = model.patch_embed.proj
        out["patch_embed"] = torch.nn.functional.conv2d(batch, conv.weight, conv.bias, stride=conv.stride)
        out["embedding"] = model.forward_head(model.forward_features(batch), pre_logits=True)
        if getattr(model, "num_classes", 0):
            out["logits"] = model(batch)
    return {name: value.numpy() for name, value in out.items()}


def _library_preprocess(library: str, name: str, model, input_size: int | None) -> dict:
    """What the library itself says about feeding this architecture, and its own transform (for the photos)."""
    if library == "torchvision":
        from torchvision import models

        transform = models.get_model_weights(name).DEFAULT.transforms()
        crop, resize = transform.crop_size[0], transform.resize_size[0]
        size = input_size or crop
        said = {"size": [size, size], "resize": round(resize * size / crop), "crop": "center", "interpolation":
                transform.interpolation.value, "mean": list(transform.mean), "std": list(transform.std)}  # fmt: skip
        return {"said": said, "transform": transform if not input_size else None}
    import timm.data

    config = timm.data.resolve_data_config({"input_size": (3, input_size, input_size)} if input_size else {},
                                           model=model)  # fmt: skip
    transform = timm.data.create_transform(**config)
    resize, crop = transform.transforms[0], transform.transforms[1]  # Resize(shorter side), CenterCrop, ToTensor, …
    shorter = resize.size if isinstance(resize.size, int) else resize.size[0]  # a pair when it squashes
    said = {"size": list(config["input_size"][1:]), "resize": int(shorter), "crop": config.get("crop_mode", "center"),
            "interpolation": config["interpolation"], "mean": list(config["mean"]),
            "std": list(config["std"])}  # fmt: skip
    assert list(crop.size) == said["size"], (crop, said)
    return {"said": said, "transform": transform}


def reference(library: str, name: str, weights: Path, export_dir: Path, input_size: int | None) -> dict:
    import onnxruntime as ort

    from engine.manifest import load_manifest
    from engine.preprocess import preprocess_image
    from exporter.verify import photo

    manifest = load_manifest(export_dir / "model.json")
    model = load(library, name, weights, input_size)
    images = [photo(p) for p in PHOTOS]
    batch = np.stack([preprocess_image(image, manifest.preprocess) for image in images])
    route = _torchvision_layers if library == "torchvision" else _timm_layers
    expected = route(model, manifest, torch.from_numpy(batch))

    session = ort.InferenceSession(str(export_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(names, {manifest.onnx.input: batch}), strict=True))
    layers = {}
    for layer in manifest.layers:
        reference_value = expected[layer.name].astype(np.float64)
        checks = {"none": reference_value}
        if reference_value.ndim == 4:
            checks |= {"avg": reference_value.mean(axis=(2, 3)), "max": reference_value.max(axis=(2, 3))}
        layers[layer.name] = {pooling: _error(got[layer.outputs[pooling]], value) for pooling, value in checks.items()}
    checks = {}
    if "embedding logits (check)" in expected:  # the node chosen as the embedding really feeds the classifier
        checks["embedding_feeds_logits"] = _error(expected["embedding logits (check)"],
                                                  expected["logits (model output)"].astype(np.float64))  # fmt: skip
        checks["logits_are_model_output"] = _error(expected["logits"], expected["logits (model output)"])

    library_said = _library_preprocess(library, name, model, input_size)
    theirs = library_said.pop("transform")
    if theirs is not None:
        own = np.stack([theirs(image).numpy() for image in images])
        library_said["pixels_mean_abs_diff"] = float(np.abs(own - batch).mean())
    ours = {key: value for key, value in asdict(manifest.preprocess).items() if key in library_said["said"]}
    return {"name": manifest.name, "layers": layers, "checks": checks,
            "preprocess": {"manifest": ours, **library_said}}  # fmt: skip


def _error(got: np.ndarray, expected: np.ndarray) -> dict:
    if got.shape != expected.shape:
        return {"shape": list(got.shape), "reference_shape": list(expected.shape), "max_abs_error": None,
                "max_abs_reference": None}  # fmt: skip
    return {
        "shape": list(got.shape),
        "max_abs_error": float(np.max(np.abs(got.astype(np.float64) - expected))),
        "max_abs_reference": float(np.max(np.abs(expected))),
    }


def _groups(args: list[str], count: int) -> list[tuple[list[str], int | None]]:
    """Positional groups of `count` arguments, each optionally followed by --input-size S."""
    groups: list[tuple[list[str], int | None]] = []
    index = 0
    while index < len(args):
        values = args[index : index + count]
        if len(values) != count or any(v.startswith("--") for v in values):
            raise SystemExit(f"expected {count} arguments at {args[index:]}")
        index += count
        size = None
        if index < len(args) and args[index] == "--input-size":
            size, index = int(args[index + 1]), index + 2
        groups.append((values, size))
    if not groups:
        raise SystemExit("nothing to do")
    return groups


def main(argv: list[str]) -> int:
    command, args = argv[0], argv[1:]
    if command == "save-weights":
        for (library, name, file), size in _groups(args, 3):
            save_weights(library, name, Path(file), size)
    elif command == "reference":
        for (library, name, weights, export_dir), size in _groups(args, 4):
            print(json.dumps(reference(library, name, Path(weights), Path(export_dir), size)), flush=True)
    elif command == "weights-url":
        from torchvision import models

        weights = models.get_model_weights(args[0]).DEFAULT
        print(json.dumps({"url": weights.url, "weights": str(weights)}))
    else:
        raise SystemExit(f"unknown command {command!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
