"""The exports in a models folder: which names there are, and one named export checked against its sha256.

The one way the service's start-up, batch extraction and the study find a model, so an unknown name or a broken
folder reads the same from each of them. Folder names are the model names (`<models_dir>/<name>/model.json`).
"""

from __future__ import annotations

from pathlib import Path

from engine.errors import Misconfigured, UnknownName
from engine.manifest import Manifest, load_verified

MANIFEST = "model.json"


def export_names(models_dir: Path) -> list[str]:
    """Sorted names of the exports in `models_dir`; Misconfigured when the folder is missing or holds none."""
    root = Path(models_dir)
    if not root.is_dir():
        raise Misconfigured(f"models directory {root} does not exist; export a model first (python -m exporter)")
    names = sorted(path.parent.name for path in root.glob(f"*/{MANIFEST}"))
    if not names:
        raise Misconfigured(f"no exported models in {root} (expected {root}/<name>/{MANIFEST})")
    return names


def open_export(models_dir: Path, name: str) -> tuple[Manifest, Path]:
    """(manifest, ONNX path) of the export `name`, verified; UnknownName lists the valid names, ManifestError
    (Misconfigured) says what is wrong with a broken export."""
    names = export_names(models_dir)
    if name not in names:
        raise UnknownName(f"no model {name!r} in {models_dir}; models are {', '.join(names)}", valid=names)
    return load_verified(Path(models_dir) / name / MANIFEST)


def open_exports(models_dir: Path) -> list[tuple[Manifest, Path]]:
    """Every export in `models_dir`, each verified (the service's start-up check); stops at the first problem."""
    return [load_verified(Path(models_dir) / name / MANIFEST) for name in export_names(models_dir)]
