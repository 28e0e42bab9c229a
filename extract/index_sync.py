"""--index: make a vector index collection mirror a finished extraction, adding and removing only what changed.

The vectors come from the finished output files themselves (the .npy matrices or features.parquet), so the index
always agrees with them: an entry per row of index.csv, with that row's vectors and file fingerprint. Entries of
files no longer in the output are removed, rows whose fingerprint the index does not hold yet are added (a changed
file replaces its old entry), and everything lands in one commit or not at all: rerunning the same command after a
failure finishes the job.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.vector_index import CollectionSpec, open_index
from engine.vector_index.base import describe_difference
from extract.errors import UsageError
from extract.plan import Plan
from extract.writers import finished_index, finished_matrices

ADD_BLOCK = 4096  # rows read from the .npy files (memory-mapped) and added per step


def check_indexable(plan: Plan) -> None:
    """Before any work: an index holds vectors, so full maps (pooling none) cannot go into one."""
    if plan.pooling == "none":
        raise UsageError("--index holds vectors: use --pooling avg or max (pooling none keeps full maps)")


def collection_spec(plan: Plan, out: Path) -> CollectionSpec:
    layers = {layer.name: int(np.prod(layer.shape)) for layer in plan.layers}
    return CollectionSpec(plan.model.name, plan.model.sha256, plan.pooling, layers, str(Path(out).resolve()))


def sync_index(target: str, out: Path, plan: Plan, replace: bool = False) -> dict:
    """Bring the collection for this extraction up to date with the files in `out`; returns what changed."""
    spec = collection_spec(plan, out)
    index = open_index(target)
    try:
        existing = index.collection(spec.model, spec.pooling)
        rebuilt = existing is not None and bool(describe_difference(existing, spec))
        present = {} if rebuilt else index.fingerprints(spec.model, spec.pooling)
        rows = finished_index(Path(out))
        stale = [path for path in present if path not in rows]
        todo = sorted((row, path, fingerprint) for path, (row, fingerprint) in rows.items()
                      if present.get(path) != fingerprint)  # fmt: skip
        matrices = finished_matrices(Path(out), plan)
        with index.writer(spec, replace) as writer:
            writer.remove(stale)
            for start in range(0, len(todo), ADD_BLOCK):
                block = todo[start : start + ADD_BLOCK]
                picked = np.asarray([row for row, _, _ in block], dtype=np.int64)
                vectors = {layer.name: np.asarray(matrix[picked]).reshape(len(block), -1)
                           for layer, matrix in zip(plan.layers, matrices, strict=True)}  # fmt: skip
                writer.add([path for _, path, _ in block], [fp for _, _, fp in block], vectors)
        entries = index.count(spec.model, spec.pooling)
    finally:
        index.close()
    return {"target": index.target, "collection": spec.name, "added": len(todo), "removed": len(stale),
            "entries": entries}  # fmt: skip
