"""The `extract` extra (tqdm, pyarrow, ray[data], requests): each optional import goes through `require`, which
names the extra to install when a package is missing, and `check` asks for all a run needs before it starts."""

from __future__ import annotations

import importlib
from types import ModuleType

from extract.errors import MissingExtra

INSTALL = "pip install 'cnn-features[extract]'"


def require(module: str, feature: str) -> ModuleType:
    """`module`, imported; MissingExtra ("<feature> needs <package>: pip install ...") when it cannot be."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = (exc.name or module).split(".")[0]  # the package to install, or the one it needs
        raise MissingExtra(f"{feature} needs {package}: {INSTALL}") from None


def check(*, progress: bool, format: str, server: str | None, engine: str) -> None:
    """Every optional package these options use, before any work (so a missing one leaves no out dir behind)."""
    if progress:
        require("tqdm", "the progress bar (turn it off with --no-progress)")
    if format == "parquet":
        require("pyarrow.parquet", "--format parquet")
    if server:
        require("requests", "--server")
    if engine == "ray":
        require("ray.data", "--engine ray")
