"""The layers of the code, read from the code: which package may import which (ast, lazy imports included).

engine/ is the core and imports no edge and no web or torch stack; service/ is the HTTP edge; extract/ and insight/
are the batch and study edges on the core; the exporter uses only the core's manifest, preprocessing, errors and
image decoding (int8 calibration photos are decoded exactly as the service will decode what it serves).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EDGES = {"service", "extract", "insight", "exporter", "bench", "tests"}
TORCH_STACK = {"torch", "torchvision", "timm", "onnxscript"}
# What each package must never import (top-level module names).
FORBIDDEN = {
    "engine": EDGES | TORCH_STACK | {"flask", "werkzeug", "gunicorn", "prometheus_client", "matplotlib", "ray",
                                     "pyarrow", "requests", "tqdm"},
    "service": EDGES - {"service"} | TORCH_STACK | {"matplotlib", "ray", "pyarrow", "tqdm"},
    "extract": EDGES - {"extract"} | TORCH_STACK | {"flask", "werkzeug", "gunicorn", "matplotlib"},
    "insight": EDGES - {"insight"} | TORCH_STACK | {"flask", "werkzeug", "gunicorn", "ray", "pyarrow"},
    "exporter": EDGES - {"exporter"} | {"flask", "werkzeug", "gunicorn"},
}  # fmt: skip
EXPORTER_MAY_USE = {"engine.manifest", "engine.preprocess", "engine.errors", "engine.images"}


def imported_modules(source: str) -> set[str]:
    """Every absolute module a file imports, wherever the import statement stands (functions included)."""
    modules = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names if node.module == "engine")
    return modules


def violations(package: str, source: str) -> list[str]:
    modules = imported_modules(source)
    broken = sorted(m for m in modules if m.split(".")[0] in FORBIDDEN[package])
    if package == "exporter":
        broken += sorted(m for m in modules if m.startswith("engine.") and m not in EXPORTER_MAY_USE)
    return broken


def python_files(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_each_package_imports_only_what_its_layer_allows(package: str) -> None:
    files = python_files(package)
    assert files, f"{package}/ holds no Python files"
    found = {path.relative_to(REPO).as_posix(): violations(package, path.read_text()) for path in files}
    assert not {path: bad for path, bad in found.items() if bad}


def test_the_rules_catch_a_lazy_import_and_a_private_engine_module() -> None:
    """The checker itself: an import inside a function counts, and the exporter may not reach past its three."""
    assert violations("engine", "def f():\n    from service.app import create_app\n") == ["service.app"]
    assert violations("engine", "import flask.json\n") == ["flask.json"]
    assert violations("exporter", "from engine import runtime\n") == ["engine.runtime"]
    assert violations("exporter", "from engine.manifest import Preprocess\n") == []
    assert violations("service", "from engine.features import extract\n") == []
