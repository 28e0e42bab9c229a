"""The embedded back end: a folder holding SQLite (collections, entries) and one USearch HNSW file per layer.

No server: batch extraction writes the folder, each service worker memory-maps the files it searches. USearch
was chosen by measurement (bench/index_choice.py, docs/search.md#choice). A commit writes every layer's file
into a new generation folder and then, in one SQLite transaction, moves the collection to that generation: a
reader sees the old files or the new ones, never a mix, and a writer killed halfway leaves the old generation
in place (its unfinished folder is removed by the next writer). Readers notice a new generation on their next
query and map it. A search reads the generation and its entries' paths in one SQLite snapshot, so they agree;
the generation before the current one is kept for readers still opening it, older ones are unlinked, and a
reader still mapping unlinked files keeps reading them safely until it moves on.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
from pathlib import Path

import numpy as np

from engine.errors import InvalidInput, Misconfigured, Unavailable, UnknownName
from engine.vector_index.base import (
    CollectionSpec,
    Neighbour,
    VectorIndex,
    Writer,
    check_k,
    check_queries,
    check_vectors,
    collection_name,
    describe_difference,
)

DATABASE = "index.sqlite"
FILES = "collections"  # FILES/<collection>/<generation>/<layer position>.usearch
STORED_DTYPE = "f16"  # half the size of f32 at the same recall (bench/results/index_choice.json)
CONNECTIVITY = 16
EXPANSION_ADD = 128
EXPANSION_SEARCH = 128  # twice the least that reached recall@10 0.95 at 100,000 vectors: room as collections grow
# Up to this many entries a search scans every vector (1.4 ms at 1,280 values on 2 cores; HNSW 0.6 ms): exact
# answers where a scan is cheap. An HNSW graph built on several threads can miss a vector's own entry when it is
# small: 0.7 % of self-queries at 200 vectors, against none built on one thread.
EXACT_UP_TO = 10_000
BUSY_TIMEOUT_S = 60  # a second writer waits this long for the first one's commit
SQL_VARIABLES = 900  # ids per statement: under SQLite's oldest limit of 999 bound variables

SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (
    name TEXT PRIMARY KEY, model TEXT NOT NULL, model_sha256 TEXT NOT NULL, pooling TEXT NOT NULL,
    layers TEXT NOT NULL, source TEXT NOT NULL, generation INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT, collection TEXT NOT NULL, path TEXT NOT NULL,
    fingerprint TEXT NOT NULL, UNIQUE (collection, path));
"""


def _usearch():
    try:
        from usearch.index import Index
    except ImportError:
        raise Misconfigured("an index folder needs usearch: pip install -e .") from None
    return Index


class EmbeddedIndex(VectorIndex):
    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.target = str(folder)
        self._local = threading.local()  # one SQLite connection per thread (sqlite3's rule)
        self._views: dict[tuple[str, int], tuple[int, object]] = {}  # (collection, layer) -> (generation, index)
        self._views_lock = threading.Lock()

    # ---- reading ----------------------------------------------------------------------------------------

    def _db(self, create: bool = False) -> sqlite3.Connection | None:
        """This thread's connection; None when the index does not exist yet and `create` is false."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            return connection
        if not (self.folder / DATABASE).is_file():
            if not create:
                return None
            if self.folder.exists() and not self.folder.is_dir():
                raise InvalidInput(f"the index {self.target} is a file, not a folder")
            self.folder.mkdir(parents=True, exist_ok=True)
        try:
            connection = sqlite3.connect(self.folder / DATABASE, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(SCHEMA)
        except sqlite3.OperationalError as exc:
            raise Unavailable(f"cannot open the index {self.target}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            raise Misconfigured(f"the index {self.target} is damaged ({exc}); rebuild it with --index") from None
        self._local.connection = connection
        return connection

    def _query(self, sql: str, parameters=()) -> list[tuple]:
        """Rows of a read; none while the index does not exist yet (no extraction has written it)."""
        db = self._db()
        if db is None:
            return []
        try:
            return db.execute(sql, parameters).fetchall()
        except sqlite3.OperationalError as exc:  # locked past the timeout, out of file handles, ...: not now
            raise Unavailable(f"cannot read the index {self.target}: {exc}") from None
        except sqlite3.DatabaseError as exc:  # a damaged file: the operator must rebuild it
            raise Misconfigured(f"the index {self.target} is damaged ({exc}); rebuild it with --index") from None

    def _row(self, name: str) -> tuple | None:
        sql = "SELECT model, model_sha256, pooling, layers, source, generation FROM collections WHERE name = ?"
        return next(iter(self._query(sql, (name,))), None)

    def collections(self) -> list[CollectionSpec]:
        rows = self._query("SELECT model, model_sha256, pooling, layers, source FROM collections ORDER BY name")
        return [_spec(*row) for row in rows]

    def collection(self, model: str, pooling: str) -> CollectionSpec | None:
        row = self._row(collection_name(model, pooling))
        return _spec(*row[:5]) if row else None

    def fingerprints(self, model: str, pooling: str) -> dict[str, str]:
        sql = "SELECT path, fingerprint FROM entries WHERE collection = ?"
        return dict(self._query(sql, (collection_name(model, pooling),)))

    def count(self, model: str, pooling: str) -> int:
        sql = "SELECT count(*) FROM entries WHERE collection = ?"
        return next(iter(self._query(sql, (collection_name(model, pooling),))), (0,))[0]

    def path_of(self, entry_id: int) -> str | None:
        row = next(iter(self._query("SELECT path FROM entries WHERE id = ?", (entry_id,))), None)
        return row[0] if row else None

    def search(self, model: str, pooling: str, layer: str, queries: np.ndarray, k: int) -> list[list[Neighbour]]:
        check_k(k)
        name = collection_name(model, pooling)
        db = self._db()
        if db is None:
            raise UnknownName(f"the index {self.target} has no collection {name} (it holds none yet)", valid=[])
        for attempt in range(2):
            db.execute("BEGIN")  # one snapshot: the generation read and its entries' paths agree
            try:
                return self._search_snapshot(name, layer, queries, k)
            except FileNotFoundError:  # that generation's files were removed meanwhile: read the newer one
                if attempt:
                    raise Unavailable(f"the index {self.target} is being rewritten too fast to read") from None
            finally:
                db.execute("COMMIT")
        raise AssertionError("unreachable")

    def _search_snapshot(self, name: str, layer: str, queries: np.ndarray, k: int) -> list[list[Neighbour]]:
        row = self._row(name)
        if row is None:
            valid = [spec.name for spec in self.collections()]
            raise UnknownName(f"the index {self.target} has no collection {name}", valid=valid)
        spec, generation = _spec(*row[:5]), row[5]
        if layer not in spec.layers:
            raise UnknownName(f"layer {layer!r} is not in the index collection {name}", valid=list(spec.layers))
        queries = check_queries(queries, spec.layers[layer])
        view = self._view(name, list(spec.layers).index(layer), generation)
        if view is None:  # an empty collection
            return [[] for _ in queries]
        view.expansion_search = max(EXPANSION_SEARCH, 2 * k)
        matches = view.search(queries, k, threads=1, exact=len(view) <= EXACT_UP_TO)
        if len(queries) == 1:  # usearch answers one query with a Matches of valid hits only
            found = [(matches.keys.tolist(), matches.distances.tolist())]
        else:
            found = [
                (matches.keys[i][:count].tolist(), matches.distances[i][:count].tolist())
                for i, count in enumerate(matches.counts)
            ]
        paths = self._paths([key for keys, _ in found for key in keys])
        return [
            [Neighbour(key, paths[key], 1.0 - dist) for key, dist in zip(keys, dists, strict=True) if key in paths]
            for keys, dists in found
        ]

    def _paths(self, ids: list[int]) -> dict[int, str]:
        paths = {}
        for start in range(0, len(ids), SQL_VARIABLES):  # 32 images x k = 1000 is more than one statement takes
            chunk = ids[start : start + SQL_VARIABLES]
            marks = ",".join("?" * len(chunk))
            paths.update(self._query(f"SELECT id, path FROM entries WHERE id IN ({marks})", chunk))
        return paths

    def _view(self, name: str, position: int, generation: int):
        """The layer's index of this generation, memory-mapped once per worker and generation."""
        with self._views_lock:
            cached = self._views.get((name, position))
            if cached and cached[0] == generation:
                return cached[1]
            path = _layer_file(self.folder, name, generation, position)
            if generation and not path.is_file():
                raise FileNotFoundError(path)
            try:
                view = _usearch().restore(path, view=True) if generation else None  # generation 0: never written
            except (RuntimeError, ValueError) as exc:
                raise Misconfigured(f"the index file {path} is damaged ({exc}); rebuild it with --index") from None
            self._views[(name, position)] = (generation, view)
            return view

    # ---- writing ----------------------------------------------------------------------------------------

    def writer(self, spec: CollectionSpec, replace: bool = False) -> Writer:
        return _EmbeddedWriter(self, spec, replace)

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None
        with self._views_lock:
            self._views.clear()


class _EmbeddedWriter(Writer):
    """Holds SQLite's write lock from the start (BEGIN IMMEDIATE): one writer per index folder at a time."""

    def __init__(self, index: EmbeddedIndex, spec: CollectionSpec, replace: bool):
        self.index = index
        self.spec = spec
        self.db = index._db(create=True)
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.generation, empty = self._prepare(replace)
            self.layers = self._load_layers(empty)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.done = False
        self.changed = empty  # a new or emptied collection is written even with no entries

    def _prepare(self, replace: bool) -> tuple[int, bool]:
        """(the collection's current generation, whether to start empty); refuses a different collection."""
        name = self.spec.name
        row = self.index._row(name)
        generation = row[5] if row is not None else 0
        difference = describe_difference(_spec(*row[:5]), self.spec) if row is not None else ""
        if difference and not replace:
            raise InvalidInput(
                f"the index collection {name} in {self.index.target} {difference}; use --overwrite to rebuild it, "
                "or another --index"
            )
        if difference:
            self.db.execute("DELETE FROM entries WHERE collection = ?", (name,))
        folder = self.index.folder / FILES / name
        for old in folder.glob("*") if folder.is_dir() else []:
            if old.name not in (str(generation), str(generation - 1)):  # a killed writer's, or long replaced
                shutil.rmtree(old, ignore_errors=True)
        self.db.execute(
            "INSERT INTO collections (name, model, model_sha256, pooling, layers, source, generation) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET model = excluded.model, "
            "model_sha256 = excluded.model_sha256, pooling = excluded.pooling, layers = excluded.layers, "
            "source = excluded.source",
            (name, self.spec.model, self.spec.model_sha256, self.spec.pooling,
             json.dumps(list(self.spec.layers.items())), self.spec.source, generation),
        )  # fmt: skip
        return generation, row is None or bool(difference)

    def _load_layers(self, empty: bool) -> list:
        """Each layer's index in memory, from the current generation (or empty), to be changed and saved anew."""
        index_class = _usearch()
        layers = []
        for position, dim in enumerate(self.spec.layers.values()):
            path = _layer_file(self.index.folder, self.spec.name, self.generation, position)
            if not empty and path.is_file():
                layers.append(index_class.restore(path))
            else:
                layers.append(
                    index_class(ndim=dim, metric="cos", dtype=STORED_DTYPE, connectivity=CONNECTIVITY,
                                expansion_add=EXPANSION_ADD, expansion_search=EXPANSION_SEARCH)
                )  # fmt: skip
        return layers

    def _ids(self, paths: list[str]) -> list[int]:
        found = []
        for start in range(0, len(paths), SQL_VARIABLES):
            chunk = paths[start : start + SQL_VARIABLES]
            marks = ",".join("?" * len(chunk))
            found += [
                row[0]
                for row in self.db.execute(
                    f"SELECT id FROM entries WHERE collection = ? AND path IN ({marks})", [self.spec.name, *chunk]
                )
            ]
        return found

    def remove(self, paths: list[str]) -> None:
        ids = self._ids(paths)
        if not ids:
            return
        self.changed = True
        for layer in self.layers:
            layer.remove(np.asarray(ids, dtype=np.uint64))
        self.db.executemany("DELETE FROM entries WHERE id = ?", [(i,) for i in ids])

    def add(self, paths: list[str], fingerprints: list[str], vectors: dict[str, np.ndarray]) -> None:
        arrays = check_vectors(self.spec, paths, fingerprints, vectors)
        if not paths:
            return
        self.remove(paths)
        self.changed = True
        ids = []
        for path, fingerprint in zip(paths, fingerprints, strict=True):
            cursor = self.db.execute(
                "INSERT INTO entries (collection, path, fingerprint) VALUES (?, ?, ?)",
                (self.spec.name, path, fingerprint),
            )
            ids.append(cursor.lastrowid)
        keys = np.asarray(ids, dtype=np.uint64)
        for layer, array in zip(self.layers, arrays, strict=True):
            layer.add(keys, np.asarray(array, dtype=np.float32))

    def commit(self) -> None:
        if self.done:
            return
        if not self.changed:  # nothing to write: no new generation for readers to map
            self.abort()
            return
        self.done = True
        name = self.spec.name
        generation = self.generation + 1
        folder = self.index.folder / FILES / name / str(generation)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for position, layer in enumerate(self.layers):
                path = _layer_file(self.index.folder, name, generation, position)
                layer.save(str(path))
                _fsync(path)
            self.db.execute("UPDATE collections SET generation = ? WHERE name = ?", (generation, name))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            shutil.rmtree(folder, ignore_errors=True)
            raise
        # The generation before last goes: a reader whose snapshot is the last one may still be opening its files.
        shutil.rmtree(self.index.folder / FILES / name / str(self.generation - 1), ignore_errors=True)

    def abort(self) -> None:
        if not self.done:
            self.done = True
            self.db.execute("ROLLBACK")


def _spec(model: str, model_sha256: str, pooling: str, layers: str, source: str) -> CollectionSpec:
    return CollectionSpec(model, model_sha256, pooling, {name: int(dim) for name, dim in json.loads(layers)}, source)


def _layer_file(folder: Path, name: str, generation: int, position: int) -> Path:
    return folder / FILES / name / str(generation) / f"{position}.usearch"


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
