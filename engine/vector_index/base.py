"""What every vector index back end offers: collections of per-layer vectors of one extraction, searched by cosine.

A *collection* holds the vectors of one model (name and sha256) at one pooling, for the layers of one
extraction, and mirrors that extraction's output folder (`source`): an entry per image path that worked, with
the file's fingerprint (size and modification time), so a rerun adds new and changed files and removes deleted
ones. Entry ids are unique in the whole index (the page fetches a neighbour's picture by id alone).
Writes go through one `Writer` and become visible together when it commits, or not at all.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from engine.errors import InvalidInput

MAX_K = 1000  # neighbours one query may ask for, per layer


@dataclass(frozen=True)
class CollectionSpec:
    """What one collection holds; `layers` maps each layer name to its vector length, in extraction order."""

    model: str
    model_sha256: str
    pooling: str  # avg | max: how maps became vectors (vector layers are the same under either)
    layers: dict[str, int]
    source: str  # the extraction output folder (absolute) that this collection mirrors

    @property
    def name(self) -> str:
        return collection_name(self.model, self.pooling)


@dataclass(frozen=True)
class Neighbour:
    id: int
    path: str
    score: float  # cosine similarity, 1 for the same direction


def collection_name(model: str, pooling: str) -> str:
    """One collection per model and pooling; the name is tame for file systems and SQL identifiers alike."""
    tame = re.sub(r"[^A-Za-z0-9]+", "_", f"{model}__{pooling}").strip("_").lower()
    return tame or "collection"


def describe_difference(found: CollectionSpec, wanted: CollectionSpec) -> str:
    """Why a collection on disk is not the one a writer asks for ('' when it is), in words."""
    if found.model_sha256 != wanted.model_sha256:
        return f"holds model sha256 {found.model_sha256[:12]}…, this model is {wanted.model_sha256[:12]}…"
    if found.layers != wanted.layers:
        return f"holds layers {', '.join(found.layers)}, this run has {', '.join(wanted.layers)}"
    if found.source != wanted.source:
        return f"mirrors the extraction {found.source}, this run writes {wanted.source}"
    return ""


def check_vectors(spec: CollectionSpec, paths: list[str], fingerprints: list[str], vectors: dict) -> list[np.ndarray]:
    """The layers' arrays in the spec's order; refuses what no back end can store (wrong shapes, NaN, a path twice)."""
    if set(vectors) != set(spec.layers):
        raise InvalidInput(f"vectors for layers {sorted(vectors)}, the collection has {list(spec.layers)}")
    if len(fingerprints) != len(paths) or len(set(paths)) != len(paths):
        raise InvalidInput(f"{len(paths)} paths (each once) need as many fingerprints, not {len(fingerprints)}")
    arrays = []
    for name, dim in spec.layers.items():
        array = np.asarray(vectors[name])
        if array.shape != (len(paths), dim):
            raise InvalidInput(f"layer {name}: vectors of shape {array.shape}, expected {(len(paths), dim)}")
        if not np.isfinite(array).all():
            raise InvalidInput(f"layer {name}: vectors hold NaN or infinite values")
        arrays.append(array)
    return arrays


def check_queries(queries: np.ndarray, dim: int) -> np.ndarray:
    queries = np.asarray(queries, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise InvalidInput(f"query vectors of shape {queries.shape}, the layer's vectors have {dim} values")
    return queries


def check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise InvalidInput(f"k must be a whole number from 1 to {MAX_K}, not {k!r}", limit=MAX_K)
    return k


class Writer(ABC):
    """Changes to one collection, applied together on commit() (the context manager commits on success)."""

    @abstractmethod
    def remove(self, paths: list[str]) -> None:
        """Drop these paths' entries (paths not in the collection are ignored)."""

    @abstractmethod
    def add(self, paths: list[str], fingerprints: list[str], vectors: dict[str, np.ndarray]) -> None:
        """New entries (a path already present is replaced); `vectors` has one [len(paths), dim] array per layer."""

    @abstractmethod
    def commit(self) -> None: ...

    @abstractmethod
    def abort(self) -> None: ...

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


class VectorIndex(ABC):
    """One index TARGET: a folder (embedded back end) or a PostgreSQL database with pgvector."""

    target: str  # as given, for messages (a URL's password is never shown)

    @abstractmethod
    def collections(self) -> list[CollectionSpec]:
        """Every collection, in name order."""

    @abstractmethod
    def collection(self, model: str, pooling: str) -> CollectionSpec | None: ...

    @abstractmethod
    def fingerprints(self, model: str, pooling: str) -> dict[str, str]:
        """Path -> fingerprint of every entry of the collection (empty when there is none)."""

    @abstractmethod
    def writer(self, spec: CollectionSpec, replace: bool = False) -> Writer:
        """A writer of the collection `spec` names, created if missing. A collection of that name with another
        model sha256, layers or source is refused (InvalidInput naming the difference) unless `replace`, which
        empties it first."""

    @abstractmethod
    def search(self, model: str, pooling: str, layer: str, queries: np.ndarray, k: int) -> list[list[Neighbour]]:
        """The k nearest entries by cosine similarity for each row of `queries` [Q, dim], best first."""

    @abstractmethod
    def count(self, model: str, pooling: str) -> int:
        """Entries in the collection (0 when there is none)."""

    @abstractmethod
    def path_of(self, entry_id: int) -> str | None:
        """The image path of an entry id of any collection, None when no entry has it."""

    @abstractmethod
    def close(self) -> None:
        """Release connections and files (the index is unusable afterwards)."""
