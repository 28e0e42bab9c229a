"""INPUT arguments -> the sorted, de-duplicated list of files to extract, fixed before any work starts.

The order is the row order of every output, so it must not depend on the file system's listing order
or on which files turn out to be unreadable: absolute paths, sorted as strings.
"""

from __future__ import annotations

import csv
import glob
import os
from pathlib import Path

from service.extract.errors import UsageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
LIST_SUFFIXES = frozenset({".txt", ".csv", ".tsv", ".lst", ".list"})
_GLOB_CHARS = frozenset("*?[")


def list_sources(arguments: list[str | os.PathLike]) -> list[str]:
    """Every image named by the arguments: folders (recursive, image suffixes), glob patterns, list files.

    Paths named in a list file are kept even when they do not exist or are not images: the run records
    them as failures instead of dropping them silently.
    """
    if not arguments:
        raise UsageError("no INPUT given; name image folders, glob patterns or list files")
    found: set[str] = set()
    for argument in map(str, arguments):
        found.update(_expand(argument))
    if not found:
        raise UsageError(f"no images found in {', '.join(map(str, arguments))}")
    return sorted(found)


def _expand(argument: str) -> list[str]:
    path = Path(argument)
    if path.is_dir():
        return _folder(path)
    if path.is_file():
        return _list_file(path) if path.suffix.lower() in LIST_SUFFIXES else [_absolute(path)]
    if _GLOB_CHARS & set(argument):
        matches = glob.glob(argument, recursive=True)
        files = [_absolute(Path(m)) for m in matches if Path(m).is_file()]
        for folder in (Path(m) for m in matches if Path(m).is_dir()):
            files += _folder(folder)
        return files
    raise UsageError(f"INPUT {argument!r} is not a file, a folder or a glob pattern that matches anything")


def _folder(folder: Path) -> list[str]:
    return [
        _absolute(Path(root) / name)
        for root, _dirs, names in os.walk(folder, followlinks=True)
        for name in names
        if Path(name).suffix.lower() in IMAGE_SUFFIXES
    ]


def _list_file(path: Path) -> list[str]:
    """One path per line (blank lines and # comments skipped), or a CSV/TSV with a `path` column.

    Relative paths are relative to the list file's folder, so a list travels with its images.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the list file {path}: {exc}") from None
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if lines and path.suffix.lower() in {".csv", ".tsv"}:
        lines = _path_column(path, text)
    return [_absolute(path.parent / Path(line).expanduser()) for line in lines]


def _path_column(path: Path, text: str) -> list[str]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    columns = {name.strip().lower(): name for name in reader.fieldnames or []}
    if "path" not in columns:
        raise UsageError(f"the list file {path} has no 'path' column (columns: {', '.join(columns) or 'none'})")
    return [row[columns["path"]].strip() for row in reader if (row[columns["path"]] or "").strip()]


def _absolute(path: Path) -> str:
    """Absolute and normalised, without resolving symlinks (the name the user knows)."""
    return os.path.normpath(os.path.abspath(path))
