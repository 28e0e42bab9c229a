"""The out dir of one job: staging matrices + journal while running, the final files at the end.

Rows are fixed up front by the sorted input list. Each finished batch is written into full-size staging
matrices (`.partial/<layer>.npy`, memory-mapped, rows by position), flushed, and only then recorded in the
journal, which is fsync'ed. A run killed at any point therefore leaves a journal that never claims rows
the matrices do not hold; a rerun with the same job signature skips the journaled rows. At the end the
rows that succeeded are copied, block by block, into the final files; `extract.json` is written last and
marks the job complete.

`index.csv` records each file's fingerprint (size and modification time) as the run saw it. An update
(`--update`, implied by `--index`) may follow a changed input list or changed files: rows of files whose
fingerprint is unchanged are carried over from the finished files already in the folder, journaled as done
at once, and only new and changed files are computed; files no longer listed are dropped.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from extract.errors import UsageError
from extract.plan import Plan, file_names, signature_difference

log = logging.getLogger("extract")

PARTIAL = ".partial"
JOURNAL = "journal.jsonl"
SUMMARY = "extract.json"
INDEX = "index.csv"
FAILED = "failed.csv"
MODEL = "model.json"
PARQUET = "features.parquet"
BLOCK_BYTES = 64 << 20  # rows copied per step at assembly: bounded memory whatever the matrix size


@dataclass
class BatchResult:
    """What an engine hands back for some rows: features of those that worked, a reason for each that did not."""

    rows: np.ndarray  # int64 rows with features, any order
    arrays: list[np.ndarray]  # one per plan layer, [len(rows), *shape]
    failed: list[tuple[int, str]]

    @property
    def count(self) -> int:
        return len(self.rows) + len(self.failed)


class JobOutput:
    def __init__(self, out: Path, plan: Plan, fingerprints: list[str], update: bool = False):
        self.out = Path(out)
        self.plan = plan
        self.fingerprints = fingerprints  # one per source, as fingerprint() read it when the run was planned
        self.update = update
        self.partial = self.out / PARTIAL
        self.signature = plan.signature()
        self.sources_digest = hashlib.sha256("\n".join(fingerprints).encode()).hexdigest()
        self.carried = 0
        self.done = np.zeros(len(plan.sources), dtype=bool)
        self.failures: dict[int, str] = {}
        self.matrices: list[np.memmap] = []
        self._journal = None

    # ---- opening: new, resumed, or already complete -------------------------------------------------

    def open(self, overwrite: bool = False) -> str:
        """'complete' (nothing left to do), 'resumed', 'updated' or 'new'; refuses an out dir holding another job.

        Without `update`, a finished job with the same signature is complete whatever its files became since;
        with it, the files' fingerprints must be unchanged too, and a finished job that differs only in its
        input list is carried over row by row instead of refused.
        """
        summary = _read_json(self.out / SUMMARY)
        previous = None
        if summary is not None:
            if summary.get("job") == self.signature and self._same_sources(summary):
                shutil.rmtree(self.partial, ignore_errors=True)  # left if killed between summary and cleanup
                return "complete"
            if self.update and not overwrite and _only_inputs_differ(summary.get("job") or {}, self.signature):
                previous = summary
            else:
                self._replace(summary.get("job") or {}, overwrite)
        header = self._journal_header()
        if header is not None:
            if header.get("job") == self.signature and self._same_sources(header):
                self._resume()
                return "resumed"
            if previous is None:
                self._replace(header.get("job") or {}, overwrite)
        if self.out.exists() and not self.out.is_dir():
            raise UsageError(f"--out {self.out} is a file, not a folder")
        if previous is None and self.out.is_dir() and any(path.name != PARTIAL for path in self.out.iterdir()):
            raise UsageError(f"{self.out} is not empty and holds no extraction; choose a new or empty folder for --out")
        self._create()
        if previous is not None:
            self._carry_over(previous)
            return "updated"
        return "new"

    def _same_sources(self, record: dict) -> bool:
        """Whether the files are as a finished job (or journal) saw them: only asked in an update."""
        return not self.update or record.get("sources") == self.sources_digest

    def summary(self) -> dict:
        return _read_json(self.out / SUMMARY) or {}

    def pending_rows(self) -> list[int]:
        return np.flatnonzero(~self.done).tolist()

    def _replace(self, found: dict, overwrite: bool) -> None:
        if not overwrite:
            raise UsageError(
                f"{self.out} holds a different extraction (it differs in "
                f"{signature_difference(self.signature, found)}); use --overwrite to replace it, or another --out"
            )
        shutil.rmtree(self.partial, ignore_errors=True)
        ours = [SUMMARY, INDEX, FAILED, MODEL, PARQUET] + [f"{f}.npy" for f in file_names(found.get("layers", []))]
        for name in ours:
            for path in (self.out / name, self.out / f"{name}.tmp"):
                path.unlink(missing_ok=True)

    def _journal_header(self) -> dict | None:
        try:
            with open(self.partial / JOURNAL, encoding="utf-8") as handle:
                header = json.loads(handle.readline())
        except (OSError, ValueError):
            return None  # no journal, or killed before its header was complete: start afresh
        return header if isinstance(header, dict) else None

    def _create(self) -> None:
        shutil.rmtree(self.partial, ignore_errors=True)
        self.partial.mkdir(parents=True)
        rows = len(self.plan.sources)
        for layer in self.plan.layers:
            path = self.partial / f"{layer.file}.npy"
            matrix = np.lib.format.open_memmap(path, mode="w+", dtype=self.plan.dtype, shape=(rows, *layer.shape))
            matrix.flush()
            self.matrices.append(matrix)
        journal = self.partial / JOURNAL
        _write_atomic(journal, json.dumps({"job": self.signature, "sources": self.sources_digest}) + "\n")
        self._journal = open(journal, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def _resume(self) -> None:
        journal = self.partial / JOURNAL
        lines = journal.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = lines[:1]
        for line in lines[1:]:
            try:
                entry = json.loads(line)
                rows = [(int(start), int(end)) for start, end in entry["rows"]]
                failed = [(int(row), str(reason)) for row, reason in entry["failed"]]
            except (ValueError, KeyError, TypeError):
                break  # a line torn by a kill: everything after it is unconfirmed
            if not line.endswith("\n"):
                break
            for start, end in rows:
                self.done[start:end] = True
            self.failures.update(failed)
            kept.append(line)
        if len(kept) != len(lines):
            _write_atomic(journal, "".join(kept))
        rows = len(self.plan.sources)
        for layer in self.plan.layers:
            path = self.partial / f"{layer.file}.npy"
            try:
                matrix = np.lib.format.open_memmap(path, mode="r+")
            except (OSError, ValueError) as exc:
                raise UsageError(f"cannot resume: {path} is damaged ({exc}); use --overwrite to start again") from None
            if matrix.shape != (rows, *layer.shape) or matrix.dtype != np.dtype(self.plan.dtype):
                raise UsageError(f"cannot resume: {path} has the wrong shape; use --overwrite to start again")
            self.matrices.append(matrix)
        self._journal = open(journal, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def _carry_over(self, previous: dict) -> None:
        """Copy the rows of unchanged files from the finished job in the folder into staging, journaled as done."""
        try:
            old = finished_index(self.out)
            finished = finished_matrices(self.out, self.plan)
        except (OSError, ValueError, KeyError):
            old, finished = {}, []
        if {len(old), *(len(matrix) for matrix in finished)} != {previous.get("rows")}:
            log.warning("%s: the finished files disagree with extract.json; computing every file again", self.out)
            return
        pairs = [
            (row, old[path][0])
            for row, (path, fingerprint) in enumerate(zip(self.plan.sources, self.fingerprints, strict=True))
            if fingerprint and old.get(path, (None, None))[1] == fingerprint
        ]
        if not pairs:
            return
        rows, old_rows = (np.asarray(column, dtype=np.int64) for column in zip(*pairs, strict=True))
        for matrix, source in zip(self.matrices, finished, strict=True):
            step = max(1, BLOCK_BYTES // max(1, matrix[0].nbytes))
            for start in range(0, len(rows), step):
                matrix[rows[start : start + step]] = source[old_rows[start : start + step]]
        self.write(BatchResult(rows, [], []), copied=True)
        self.carried = len(rows)

    # ---- running --------------------------------------------------------------------------------------

    def write(self, result: BatchResult, copied: bool = False) -> None:
        """Rows into the matrices by position (unless `copied` there already), flushed to disk; then the journal
        line, fsync'ed."""
        if len(result.rows):
            if not copied:
                for matrix, array in zip(self.matrices, result.arrays, strict=True):
                    matrix[result.rows] = array
            for matrix in self.matrices:
                matrix.flush()
        rows = np.concatenate([np.asarray(result.rows, dtype=np.int64), [row for row, _ in result.failed]])
        entry = {"rows": _ranges(rows), "failed": [[int(row), reason] for row, reason in result.failed]}
        self._journal.write(json.dumps(entry) + "\n")
        self._journal.flush()
        os.fsync(self._journal.fileno())
        self.done[rows.astype(np.int64)] = True
        self.failures.update(result.failed)

    def close(self) -> None:
        """Close the journal (the matrices stay mapped for finish())."""
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    # ---- assembling the final files ---------------------------------------------------------------------

    def finish(self) -> dict:
        """Copy the rows that worked into the final files, write index/failures/model/summary, drop staging."""
        if not self.done.all():
            raise RuntimeError(f"{int((~self.done).sum())} rows are not done")
        failed = np.zeros(len(self.done), dtype=bool)
        failed[list(self.failures)] = True
        good = np.flatnonzero(~failed)
        if self.plan.format == "parquet":
            from extract.parquet import write_parquet

            write_parquet(self.out / PARQUET, self.plan, self.matrices, good, BLOCK_BYTES)
        else:
            for layer, matrix in zip(self.plan.layers, self.matrices, strict=True):
                _copy_rows(matrix, good, self.out / f"{layer.file}.npy")
        sources, prints = self.plan.sources, self.fingerprints
        listed = ((i, sources[r], prints[r]) for i, r in enumerate(good))
        _write_atomic(self.out / INDEX, _csv(["row", "path", "fingerprint"], listed))
        failures = ((sources[r], self.failures[r]) for r in sorted(self.failures))
        _write_atomic(self.out / FAILED, _csv(["path", "reason"], failures))
        _write_atomic(self.out / MODEL, self.plan.model.manifest_text)
        summary = {
            "job": self.signature,
            "sources": self.sources_digest,
            "rows": len(good),
            "failed": len(self.failures),
            "files": [INDEX, FAILED, MODEL] + ([PARQUET] if self.plan.format == "parquet" else []),
            "layers": [
                {
                    "name": layer.name,
                    "level": layer.level,
                    "shape": list(layer.shape),
                    "dtype": self.plan.dtype,
                    "file": f"{layer.file}.npy" if self.plan.format == "npy" else PARQUET,
                    "column": layer.file if self.plan.format == "parquet" else None,
                }
                for layer in self.plan.layers
            ],
        }
        _write_atomic(self.out / SUMMARY, json.dumps(summary, indent=2) + "\n")
        self.close()
        self.matrices = []
        shutil.rmtree(self.partial)
        return summary


def fingerprint(path: str) -> str:
    """Size and modification time of a file as one string ('' when it cannot be read): a changed file differs."""
    try:
        status = os.stat(path)
    except OSError:
        return ""
    return f"{status.st_size}:{status.st_mtime_ns}"


def _only_inputs_differ(found: dict, expected: dict) -> bool:
    inputs = {"inputs", "inputs_sha256"}
    return {k: v for k, v in found.items() if k not in inputs} == {k: v for k, v in expected.items() if k not in inputs}


def finished_index(out: Path) -> dict[str, tuple[int, str]]:
    """path -> (row, fingerprint) from a finished job's index.csv (no fingerprint: written before they were)."""
    with open(out / INDEX, encoding="utf-8", newline="") as handle:
        return {line["path"]: (int(line["row"]), line.get("fingerprint") or "") for line in csv.DictReader(handle)}


def finished_matrices(out: Path, plan: Plan) -> list[np.ndarray]:
    """Each layer's finished rows: the .npy files memory-mapped (read as used), or the Parquet columns read whole."""
    if plan.format == "parquet":
        from extract.parquet import read_features

        arrays = read_features(out / PARQUET)[1]
        return [arrays[layer.name] for layer in plan.layers]
    return [np.load(out / f"{layer.file}.npy", mmap_mode="r") for layer in plan.layers]


def _ranges(rows: np.ndarray) -> list[list[int]]:
    """Sorted rows as [start, end) runs: a batch of consecutive rows is one short journal entry."""
    rows = np.unique(rows)
    if not len(rows):
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    return [[int(run[0]), int(run[-1]) + 1] for run in np.split(rows, breaks)]


def _copy_rows(source: np.ndarray, rows: np.ndarray, destination: Path) -> None:
    temporary = destination.with_name(destination.name + ".tmp")
    shape = (len(rows), *source.shape[1:])
    if not len(rows):  # a zero-length file cannot be memory-mapped
        with open(temporary, "wb") as handle:
            np.save(handle, np.zeros(shape, dtype=source.dtype))
    else:
        target = np.lib.format.open_memmap(temporary, mode="w+", dtype=source.dtype, shape=shape)
        step = max(1, BLOCK_BYTES // max(1, source[0].nbytes))
        for start in range(0, len(rows), step):
            target[start : start + step] = source[rows[start : start + step]]
        target.flush()
        del target
    _fsync(temporary)
    os.replace(temporary, destination)


def _csv(header: list[str], rows) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
