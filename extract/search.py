"""CLI: `python -m extract.search IMAGE… --model NAME [--index TARGET | --server URL] [options]` (see --help).

The command-line twin of POST /v1/models/{model}/search: the nearest indexed images of each IMAGE, per layer.
Here, the query vectors come from the local export through the same graph outputs batch extraction used, and
the index is read directly (a folder or a postgresql:// URL, default $FEATURES_INDEX); with --server, the images
go to a running service instead. Exit status 0, 2 with one `error:` line for what cannot work as given (an
unknown layer, an undecodable image), 1 when the index or the server cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from engine.errors import FeaturesError, InvalidInput, TooLarge, Unavailable
from engine.exports import open_export
from engine.features import output_name
from engine.files import UnreadableFile, read_bounded
from engine.images import load_tensor
from engine.search import DEFAULT_K, collection_for, indexed_layers, parse_search_options, search
from engine.settings import PROVIDERS, Settings, read_api_key_file
from engine.vector_index import open_index
from extract.errors import UsageError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m extract.search", description="Nearest indexed images of each IMAGE, layer by layer."
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", type=Path, help="image files to look up")
    parser.add_argument("--model", required=True, help="exported model name, e.g. efficientnet_lite0")
    parser.add_argument("--index", help="a folder or a postgresql:// URL (default $FEATURES_INDEX)")
    parser.add_argument("--server", help="URL of a running service to ask instead (it reads its own index)")
    parser.add_argument("--api-key-file", type=Path, help="the service's API key (default $FEATURES_API_KEY[_FILE])")
    parser.add_argument("--models-dir", type=Path, help="exported models (default $FEATURES_MODELS_DIR)")
    parser.add_argument("--providers", choices=tuple(PROVIDERS), help="ONNX Runtime providers (default cpu)")
    parser.add_argument("--levels", help="low,mid,high (default: every indexed layer)")
    parser.add_argument("--layers", help="indexed layer names; overrides --levels")
    parser.add_argument("--pooling", default="avg", choices=("avg", "max"), help="which collection")
    parser.add_argument("-k", type=int, default=DEFAULT_K, help=f"neighbours per layer (default {DEFAULT_K})")
    parser.add_argument("--json", action="store_true", help="print the answer as JSON (the service's form)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        raw = {"levels": args.levels, "layers": args.layers, "pooling": args.pooling, "k": args.k}
        options = {name: value for name, value in raw.items() if value is not None}
        ask = _ask_server if args.server else _search_here
        results = ask(args, settings, options)
    except FeaturesError as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return 1 if isinstance(exc, Unavailable) else 2
    print(json.dumps({"results": results}, indent=2) if args.json else _table(results))
    return 0


def _search_here(args: argparse.Namespace, settings: Settings, raw: dict) -> list[dict]:
    target = args.index or settings.index
    if not target:
        raise UsageError("give --index TARGET (a folder or a postgresql:// URL), set $FEATURES_INDEX, or use --server")
    settings = settings.overridden(models_dir=args.models_dir, providers=args.providers)
    options = parse_search_options(raw)
    manifest, onnx_path = open_export(settings.models_dir, args.model)
    index = open_index(target)
    try:
        spec = collection_for(index, manifest, options.features.pooling)
        layers = indexed_layers(manifest, spec, options.features)
        from extract.local import LocalModel

        outputs = [output_name(layer, options.features.pooling) for layer in layers]
        model = LocalModel(onnx_path, manifest, outputs, settings.provider_list, settings.intra_op_threads)
        try:
            results = []
            for path in args.images:
                tensor = _load(path, manifest.preprocess, settings)
                (found,) = search(model.runtime, manifest, tensor[None], index, options).results
                results.append({"name": str(path), "neighbours": _plain(found)})
        finally:
            model.runtime.close()
    finally:
        index.close()
    return results


def _load(path: Path, preprocess, settings: Settings) -> np.ndarray:
    """One query image, bounded like an upload: a regular file within the body limit, decodable, within pixels."""
    try:
        data = read_bounded(path, settings.max_body_bytes)
    except TooLarge as exc:
        raise TooLarge(f"{path}: {exc.detail} (FEATURES_MAX_BODY_BYTES)", **exc.facts) from None
    except UnreadableFile as exc:
        raise exc.about(str(path)) from None
    try:
        return load_tensor(data, preprocess, settings.max_pixels)
    except FeaturesError as exc:
        raise exc.about(str(path)) from None


def _plain(found: dict) -> dict:
    return {
        level: {layer: [vars(n) for n in items] for layer, items in layers.items()} for level, layers in found.items()
    }


def _ask_server(args: argparse.Namespace, settings: Settings, options: dict) -> list[dict]:
    from extract.server import ServerClient, detail_of

    key = read_api_key_file(args.api_key_file, "--api-key-file") if args.api_key_file else settings.api_key
    client = ServerClient(args.server, key)
    files = []
    for path in args.images:
        try:
            files.append(("image", (path.name, path.read_bytes())))
        except OSError as exc:
            raise InvalidInput(f"{path}: cannot read it ({exc.strerror})") from None
    response = client.request("POST", f"/v1/models/{args.model}/search", files=files, data=options)
    if response.status_code != 200:
        raise InvalidInput(f"the server answered {response.status_code}: {detail_of(response)}")
    answer = response.json()["results"]
    return [
        {"name": str(path), "neighbours": item["neighbours"]} for path, item in zip(args.images, answer, strict=True)
    ]


def _table(results: list[dict]) -> str:
    lines = []
    for result in results:
        lines.append(result["name"])
        for level, layers in result["neighbours"].items():
            for layer, neighbours in layers.items():
                lines.append(f"  {level} {layer}")
                lines += [f"    {n['score']:.4f}  {n['path']}" for n in neighbours]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
