"""INPUT arguments -> the sorted, de-duplicated list of files to extract, fixed before any work starts.

The order is the row order of every output, so it must not depend on the file system's listing order
or on which files turn out to be unreadable: absolute paths, sorted as strings.

Folders are walked following symlinks (a collection is often assembled from links), but each folder is
entered once, known by its (st_dev, st_ino): `os.walk(followlinks=True)` listed every file 41 times through
`sub/loop -> ..` (until the kernel's ELOOP) and never finished with two links to `.`. A file that two folder
names reach (a link to a sibling folder) is therefore one row, under the name that sorts first. Recursive
globs (`**`) go through the same walk, because glob's own recursion follows the same loops.
Files named explicitly (arguments, list files) are kept as written: the user chose those names.
"""

from __future__ import annotations

import csv
import glob
import heapq
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

from extract.errors import UsageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
LIST_SUFFIXES = frozenset({".txt", ".csv", ".tsv", ".lst", ".list"})
_GLOB_CHARS = frozenset("*?[")

Identity = tuple[int, int]  # (st_dev, st_ino) of a folder, whatever the name that reaches it


@dataclass
class _Inputs:
    """What the arguments name, gathered before one walk of all the folders."""

    named: set[str] = field(default_factory=set)  # files named explicitly: kept as written
    folders: list[str] = field(default_factory=list)  # walked together at the end
    found: dict[tuple, str] = field(default_factory=dict)  # (folder identity, name) -> the first path that reaches it

    def add_found(self, key: tuple, path: str) -> None:
        if key not in self.found or path < self.found[key]:
            self.found[key] = path


def list_sources(arguments: list[str | os.PathLike]) -> list[str]:
    """Every image named by the arguments: folders (recursive, image suffixes), glob patterns, list files.

    Paths named in a list file are kept even when they do not exist or are not images: the run records
    them as failures instead of dropping them silently.
    """
    if not arguments:
        raise UsageError("no INPUT given; name image folders, glob patterns or list files")
    inputs = _Inputs()
    for argument in map(str, arguments):
        _expand(argument, inputs)
    for identity, folder, _folders, others in _walk(inputs.folders):
        for name in others:
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                inputs.add_found((identity, name), os.path.join(folder, name))
    found = inputs.named | set(inputs.found.values())
    if not found:
        raise UsageError(f"no images found in {', '.join(map(str, arguments))}")
    return sorted(found)


def _expand(argument: str, inputs: _Inputs) -> None:
    path = Path(argument)
    if path.is_dir():
        inputs.folders.append(argument)
    elif path.is_file():
        inputs.named.update(_list_file(path) if path.suffix.lower() in LIST_SUFFIXES else [_absolute(path)])
    elif _GLOB_CHARS & set(argument):
        _glob(argument, inputs)
    else:
        raise UsageError(f"INPUT {argument!r} is not a file, a folder or a glob pattern that matches anything")


def _walk(roots: Iterable[str]) -> Iterator[tuple[Identity, str, list[str], list[str]]]:
    """(identity, absolute path, sub-folder names, other names) of each folder under the roots, each folder once.

    Symlinks are followed, and folders are taken in the sorted order of their paths (a heap): a folder whose
    identity was seen before, on the current path (a loop) or elsewhere (a second link to it), is skipped, so
    of several names for one folder the first in that order is kept. Folders that cannot be listed
    (permission denied, a link that dangles or points to itself) are skipped, as os.walk skips them.
    """
    heap = sorted({_absolute(Path(root)) for root in roots})  # a sorted list is a heap
    seen: set[Identity] = set()
    while heap:
        folder = heapq.heappop(heap)
        identity = _identity(folder)
        if identity is None or identity in seen:
            continue
        seen.add(identity)
        try:
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError:
            continue
        is_folder = {entry.name: _is_folder(entry) for entry in entries}
        folders = [name for name, yes in is_folder.items() if yes]
        for name in folders:
            heapq.heappush(heap, os.path.join(folder, name))
        yield identity, folder, folders, [name for name, yes in is_folder.items() if not yes]


def _identity(path: str) -> Identity | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a link to itself (ELOOP), or a target that cannot be looked at
        return False


def _glob(pattern: str, inputs: _Inputs) -> None:
    """Matching folders are walked; matching files (any suffix: the pattern chose them) are found under the
    folder that holds them, so two folder names for one file give one row."""
    if "**" in Path(pattern).parts:
        _recursive_glob(pattern, inputs)
        return
    parents: dict[str, Identity | None] = {}
    for match in glob.glob(pattern):
        if os.path.isdir(match):
            inputs.folders.append(match)
        elif os.path.isfile(match):
            path = _absolute(Path(match))
            parent, name = os.path.split(path)
            if parent not in parents:
                parents[parent] = _identity(parent)
            inputs.add_found((parents[parent], name) if parents[parent] else (path,), path)


def _recursive_glob(pattern: str, inputs: _Inputs) -> None:
    """A pattern with `**`, matched against what _walk finds below its literal head (not glob's recursion,
    which follows loops): a folder that _walk skips as a second name for one already seen matches under its
    first name only."""
    parts = Path(pattern).parts
    head = next(i for i, part in enumerate(parts) if _GLOB_CHARS & set(part))
    base = _absolute(Path(*parts[:head]) if head else Path("."))
    rest = list(parts[head:])
    folders_only = pattern.endswith(("/", os.sep))
    if _matches([], rest):
        inputs.folders.append(base)
    for identity, folder, folders, others in _walk([base]):
        relative = [] if folder == base else os.path.relpath(folder, base).split(os.sep)
        for name in folders:
            if _matches([*relative, name], rest):
                inputs.folders.append(os.path.join(folder, name))
        for name in [] if folders_only else others:
            path = os.path.join(folder, name)
            if _matches([*relative, name], rest) and os.path.isfile(path):
                inputs.add_found((identity, name), path)


def _matches(names: list[str], pattern: list[str]) -> bool:
    """glob's rules for a relative path, name by name: `**` is any number of folders; `*`, `?` and `[...]`
    stay within a name; a name starting with '.' is matched only by a pattern starting with '.'."""
    if not pattern:
        return not names
    if pattern[0] == "**":
        visible = next((i for i, name in enumerate(names) if name.startswith(".")), len(names))
        return any(_matches(names[i:], pattern[1:]) for i in range(visible + 1))
    if not names or (names[0].startswith(".") and not pattern[0].startswith(".")):
        return False
    return fnmatch(names[0], pattern[0]) and _matches(names[1:], pattern[1:])


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
