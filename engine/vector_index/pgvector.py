"""The PostgreSQL back end: pgvector tables searched through HNSW indexes, for a fleet sharing one index server.

A catalogue row per collection, one entries table for the whole index (so ids are unique across collections), and
per collection and layer a table of vectors with an HNSW index on cosine distance. Layers of up to 2000 values are
stored as `vector`, longer ones as `halfvec` (16-bit floats; pgvector 0.7 and later index up to 4000 of them).
A writer works in one transaction on a connection of its own, so searches go on and see its changes at commit.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

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

try:
    import psycopg
    from pgvector import HalfVector, Vector
    from pgvector.psycopg import register_vector
    from psycopg import sql
    from psycopg.types.json import Jsonb
except ImportError:  # dependencies of the package, but only a postgresql:// index needs them: said when it does
    psycopg = None

T = TypeVar("T")

CATALOGUE = "cnn_features_collections"
ENTRIES = "cnn_features_entries"
VECTOR_MAX_DIM = 2000  # pgvector's HNSW limit for `vector`
HALFVEC_MAX_DIM = 4000  # ... and for `halfvec`, which pgvector has from 0.7.0
HALFVEC_SINCE = (0, 7, 0)
EF_SEARCH = 64  # recall@10 0.99 on 20k x 1280 real-spectrum vectors (0.963 at pgvector's default 40)
EF_SEARCH_MAX = 1000  # the most pgvector accepts
CONNECT_TIMEOUT_S = 10
LOCK_TIMEOUT = "60s"  # a second writer of one collection waits this long for the first one's commit
LOCK_SPACE = 0x636E6E  # advisory lock keys (LOCK_SPACE, 0): the shared schema, (LOCK_SPACE + 1, hash): a collection
BUILD_MEMORY_CAP = 1 << 30  # bytes of maintenance_work_mem an HNSW build may take; beyond, it builds on disk
HNSW_ROW_OVERHEAD = 1024  # bytes of graph per vector besides its values (m = 16: 32 neighbours on layer 0)
MAX_IDENTIFIER = 63  # PostgreSQL cuts longer names, which could make two collections share a table

SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {CATALOGUE} (name text PRIMARY KEY, model text NOT NULL, model_sha256 text NOT NULL,"
    " pooling text NOT NULL, layers jsonb NOT NULL, source text NOT NULL, updated timestamptz NOT NULL DEFAULT now())",
    f"CREATE TABLE IF NOT EXISTS {ENTRIES} (id bigserial PRIMARY KEY,"
    f" collection text NOT NULL REFERENCES {CATALOGUE} (name) ON DELETE CASCADE,"
    " path text NOT NULL, fingerprint text NOT NULL, UNIQUE (collection, path))",
)
SPEC_COLUMNS = "model, model_sha256, pooling, layers, source"
NEW_IDS = "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)"  # ids before the COPY


class PgVectorIndex(VectorIndex):
    """One shared reading connection behind a lock (psycopg_pool is not a dependency, and a search is one short
    round trip per query, so workers' threads queue briefly); it is reopened once when the server dropped it."""

    def __init__(self, url: str):
        if psycopg is None:
            raise Misconfigured(
                "a postgresql:// index needs psycopg and pgvector: pip install 'psycopg[binary]' pgvector"
            )
        self._url = url
        self._password = _password(url)
        self.target = redact(url)
        self._lock = threading.Lock()
        self._reader: psycopg.Connection | None = None
        self._has_schema = False

    # ---- connections ------------------------------------------------------------------------------------

    def _connect(self, autocommit: bool) -> psycopg.Connection:
        try:
            return psycopg.connect(self._url, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT_S)
        except psycopg.OperationalError as error:
            raise self._unavailable(error) from None
        except psycopg.Error as error:  # a URL psycopg cannot parse
            raise Misconfigured(f"the index URL {self.target} is not usable: {self._reason(error)}") from None

    def _reason(self, error: Exception) -> str:
        """The server's words on one line, without the password should they ever quote the URL."""
        reason = " ".join(str(error).split())
        return reason.replace(self._password, "***") if self._password else reason

    def _unavailable(self, error: Exception) -> Unavailable:
        return Unavailable(f"cannot reach the index at {self.target}: {self._reason(error)}")

    def _read(self, work: Callable[[psycopg.Cursor], T]) -> T:
        """`work` on the shared connection; when the server had dropped it (a restart, an idle timeout), `work`
        runs once more on a new one, since reads are safe to repeat."""
        with self._lock:
            try:
                return self._attempt(work)
            except psycopg.OperationalError as error:
                if self._reader is not None:  # still open: the server refused the work, the connection is fine
                    raise self._unavailable(error) from None
            try:
                return self._attempt(work)
            except psycopg.OperationalError as error:
                raise self._unavailable(error) from None

    def _attempt(self, work: Callable[[psycopg.Cursor], T]) -> T:
        if self._reader is None:
            self._reader = self._connect(autocommit=True)
        try:
            with self._reader.cursor() as cursor:
                return work(cursor)
        except psycopg.OperationalError:
            if self._reader.broken:
                self._reader.close()
                self._reader = None
            raise

    def _schema_exists(self, cursor: psycopg.Cursor) -> bool:
        """Whether a writer has created the tables yet (an index no extraction wrote to reads as empty)."""
        if not self._has_schema:
            self._has_schema = cursor.execute("SELECT to_regclass(%s) IS NOT NULL", (ENTRIES,)).fetchone()[0]
        return self._has_schema

    # ---- reading ----------------------------------------------------------------------------------------

    def _rows(self, query: str, parameters: tuple = ()) -> list[tuple]:
        def work(cursor: psycopg.Cursor) -> list[tuple]:
            return cursor.execute(query, parameters).fetchall() if self._schema_exists(cursor) else []

        return self._read(work)

    def collections(self) -> list[CollectionSpec]:
        return [_spec(*row) for row in self._rows(f"SELECT {SPEC_COLUMNS} FROM {CATALOGUE} ORDER BY name")]

    def collection(self, model: str, pooling: str) -> CollectionSpec | None:
        rows = self._rows(f"SELECT {SPEC_COLUMNS} FROM {CATALOGUE} WHERE name = %s", (collection_name(model, pooling),))
        return _spec(*rows[0]) if rows else None

    def fingerprints(self, model: str, pooling: str) -> dict[str, str]:
        query = f"SELECT path, fingerprint FROM {ENTRIES} WHERE collection = %s"
        return dict(self._rows(query, (collection_name(model, pooling),)))

    def count(self, model: str, pooling: str) -> int:
        rows = self._rows(f"SELECT count(*) FROM {ENTRIES} WHERE collection = %s", (collection_name(model, pooling),))
        return rows[0][0] if rows else 0

    def path_of(self, entry_id: int) -> str | None:
        rows = self._rows(f"SELECT path FROM {ENTRIES} WHERE id = %s", (int(entry_id),))
        return rows[0][0] if rows else None

    def search(self, model: str, pooling: str, layer: str, queries: np.ndarray, k: int) -> list[list[Neighbour]]:
        check_k(k)
        name = collection_name(model, pooling)

        def work(cursor: psycopg.Cursor) -> list[list[Neighbour]]:
            with cursor.connection.transaction():  # the catalogue and the vectors of one moment; SET LOCAL
                spec = self._searched(cursor, name, layer)
                dim = spec.layers[layer]
                rows = check_queries(queries, dim)
                table = _layer_table(name, list(spec.layers).index(layer))
                cursor.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(_ef_search(k)),))
                return [_nearest(cursor, table, dim, row, k) for row in rows]

        return self._read(work)

    def _searched(self, cursor: psycopg.Cursor, name: str, layer: str) -> CollectionSpec:
        """The collection a search names, or UnknownName listing what there is."""
        query = f"SELECT {SPEC_COLUMNS} FROM {CATALOGUE} WHERE name = %s"
        row = cursor.execute(query, (name,)).fetchone() if self._schema_exists(cursor) else None
        if row is None:
            names = cursor.execute(f"SELECT name FROM {CATALOGUE} ORDER BY name") if self._has_schema else []
            raise UnknownName(f"the index {self.target} has no collection {name}", valid=[n for (n,) in names])
        spec = _spec(*row)
        if layer not in spec.layers:
            raise UnknownName(f"layer {layer!r} is not in the index collection {name}", valid=list(spec.layers))
        return spec

    # ---- writing ----------------------------------------------------------------------------------------

    def writer(self, spec: CollectionSpec, replace: bool = False) -> Writer:
        return _PgWriter(self, spec, replace)

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        """A lost connection, or a lock wait past LOCK_TIMEOUT, as Unavailable whatever the statement."""
        try:
            yield
        except psycopg.OperationalError as error:
            raise self._unavailable(error) from None

    def _prepare(self, connection: psycopg.Connection) -> tuple[int, ...]:
        """The extension and the shared tables, committed on their own (they hold no collection's data) under a
        lock, since concurrent CREATE ... IF NOT EXISTS can collide; returns pgvector's version."""
        with self._translated(), connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, 0)", (LOCK_SPACE,))
            try:
                cursor.execute("CREATE EXTENSION IF NOT EXISTS vector")
                for statement in SCHEMA:
                    cursor.execute(statement)
            except (psycopg.errors.FeatureNotSupported, psycopg.errors.UndefinedFile) as error:
                raise Misconfigured(
                    f"the PostgreSQL server of the index {self.target} needs the pgvector extension "
                    f"(https://github.com/pgvector/pgvector): {self._reason(error)}"
                ) from None
            except psycopg.errors.InsufficientPrivilege as error:
                raise Misconfigured(
                    f"the index {self.target} cannot be set up by its user (the first writer creates the extension "
                    f"`vector` and the index's tables): {self._reason(error)}"
                ) from None
            (version,) = cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
            connection.commit()
        register_vector(connection)
        return tuple(int(part) for part in re.findall(r"\d+", version)[:3])

    def close(self) -> None:
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None


class _PgWriter(Writer):
    """One transaction on a connection of its own, holding its collection's advisory lock (one writer at a time
    per collection). Tables new in this transaction get their HNSW index at commit, after the bulk load: for 20k x
    1280 that took 20-34 s, against 184 s for COPY into a table indexed from the start (2 busy cores)."""

    def __init__(self, index: PgVectorIndex, spec: CollectionSpec, replace: bool):
        self.index = index
        self.spec = spec
        self.name = spec.name
        self.tables = [_layer_table(self.name, position) for position in range(len(spec.layers))]
        self.connection = index._connect(autocommit=False)
        self.done = False
        try:
            version = index._prepare(self.connection)
            self.kinds = [_column_type(layer, dim, version) for layer, dim in spec.layers.items()]
            with index._translated():
                self.fresh = self._open(replace)
        except BaseException:
            self.abort()
            raise

    def _open(self, replace: bool) -> bool:
        """Makes the collection match the spec; whether its vector tables are new (their HNSW index comes later)."""
        with self.connection.cursor() as cursor:
            found = self._claim(cursor)
            difference = describe_difference(found, self.spec) if found else ""
            if difference and not replace:
                raise InvalidInput(
                    f"the index collection {self.name} in {self.index.target} {difference}; use --overwrite to "
                    "rebuild it, or another --index"
                )
            if found is not None and not difference:
                return False
            if found is not None:
                self._empty(cursor, found)
            self._create(cursor)
            return True

    def _claim(self, cursor: psycopg.Cursor) -> CollectionSpec | None:
        """The collection's advisory lock (another writer of it waits up to LOCK_TIMEOUT), then what it holds."""
        cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        try:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_SPACE + 1, self.name))
        except psycopg.errors.LockNotAvailable:
            raise Unavailable(
                f"another writer is changing the index collection {self.name} in {self.index.target}; try again "
                "once it has finished"
            ) from None
        row = cursor.execute(f"SELECT {SPEC_COLUMNS} FROM {CATALOGUE} WHERE name = %s", (self.name,)).fetchone()
        return _spec(*row) if row else None

    def _empty(self, cursor: psycopg.Cursor, found: CollectionSpec) -> None:
        for position in range(len(found.layers)):
            cursor.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(_layer_table(self.name, position))))
        cursor.execute(f"DELETE FROM {ENTRIES} WHERE collection = %s", (self.name,))

    def _create(self, cursor: psycopg.Cursor) -> None:
        """The catalogue row as the spec says, and a table per layer (indexed at commit, after the bulk load)."""
        cursor.execute(
            f"INSERT INTO {CATALOGUE} (name, {SPEC_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (name) DO "
            "UPDATE SET model = excluded.model, model_sha256 = excluded.model_sha256, pooling = excluded.pooling, "
            "layers = excluded.layers, source = excluded.source",
            (self.name, self.spec.model, self.spec.model_sha256, self.spec.pooling,
             Jsonb(list(self.spec.layers.items())), self.spec.source),
        )  # fmt: skip
        for table, kind, dim in zip(self.tables, self.kinds, self.spec.layers.values(), strict=True):
            cursor.execute(
                sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY REFERENCES {} (id) ON DELETE CASCADE, "
                        "embedding {} NOT NULL)").format(
                    sql.Identifier(table), sql.Identifier(ENTRIES), sql.SQL(f"{kind}({dim})"))
            )  # fmt: skip

    def remove(self, paths: list[str]) -> None:
        with self.index._translated():
            self.connection.execute(
                f"DELETE FROM {ENTRIES} WHERE collection = %s AND path = ANY(%s)", (self.name, list(paths))
            )

    def add(self, paths: list[str], fingerprints: list[str], vectors: dict[str, np.ndarray]) -> None:
        arrays = check_vectors(self.spec, paths, fingerprints, vectors)
        if not paths:
            return
        self.remove(paths)
        with self.index._translated(), self.connection.cursor() as cursor:
            ids = [entry_id for (entry_id,) in cursor.execute(NEW_IDS, (ENTRIES, len(paths)))]
            with cursor.copy(f"COPY {ENTRIES} (id, collection, path, fingerprint) FROM STDIN") as copy:
                for row in zip(ids, [self.name] * len(ids), paths, fingerprints, strict=True):
                    copy.write_row(row)
            for table, kind, array in zip(self.tables, self.kinds, arrays, strict=True):
                _copy_vectors(cursor, table, kind, ids, array)

    def commit(self) -> None:
        if self.done:
            return
        try:
            with self.index._translated(), self.connection.cursor() as cursor:
                if self.fresh:
                    for table, kind, dim in zip(self.tables, self.kinds, self.spec.layers.values(), strict=True):
                        _create_hnsw(cursor, table, kind, dim)
                cursor.execute(f"UPDATE {CATALOGUE} SET updated = clock_timestamp() WHERE name = %s", (self.name,))
                self.connection.commit()
        finally:
            self.abort()  # now a no-op on the server: the connection just closes

    def abort(self) -> None:
        """Closing the connection mid-transaction rolls it back, even where the server is gone."""
        self.done = True
        self.connection.close()


def redact(url: str) -> str:
    """The URL with its password, in the authority or a `password=` parameter, shown as ***."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}:***@{host}"
    query = re.sub(r"(^|&)(password=)[^&]*", r"\1\2***", parts.query)
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _password(url: str) -> str:
    """The URL's password as the server would get it (to blank out of messages), '' when it has none."""
    parts = urlsplit(url)
    return unquote(parts.password or "") or parse_qs(parts.query).get("password", [""])[0]


def _spec(model: str, model_sha256: str, pooling: str, layers: list, source: str) -> CollectionSpec:
    return CollectionSpec(model, model_sha256, pooling, {name: int(dim) for name, dim in layers}, source)


def _layer_table(collection: str, position: int) -> str:
    """The table of one layer; a name PostgreSQL would cut keeps a digest of the whole so that none collide."""
    table = f"cnn_features_v_{collection}_{position}"
    if len(table) > MAX_IDENTIFIER:
        digest = hashlib.sha256(collection.encode()).hexdigest()[:12]
        table = f"cnn_features_v_{collection[:30]}_{digest}_{position}"
    return table


def _column_type(layer: str, dim: int, version: tuple[int, ...]) -> str:
    """`vector` up to HNSW's 2000 values, `halfvec` beyond where pgvector has it; else refused."""
    if dim <= VECTOR_MAX_DIM:
        return "vector"
    if version < HALFVEC_SINCE:
        raise InvalidInput(
            f"layer {layer} has {dim} values; pgvector {'.'.join(map(str, version))} on the index's server indexes "
            f"at most {VECTOR_MAX_DIM} (pgvector 0.7 and later: {HALFVEC_MAX_DIM}, as halfvec)", limit=VECTOR_MAX_DIM
        )  # fmt: skip
    if dim > HALFVEC_MAX_DIM:
        raise InvalidInput(
            f"layer {layer} has {dim} values; pgvector indexes at most {HALFVEC_MAX_DIM}", limit=HALFVEC_MAX_DIM
        )
    return "halfvec"


def _kind(dim: int) -> str:
    """The column type a layer of `dim` values was stored as (the writer refused any other)."""
    return "vector" if dim <= VECTOR_MAX_DIM else "halfvec"


def _create_hnsw(cursor: psycopg.Cursor, table: str, kind: str, dim: int) -> None:
    """The index, built in memory where the graph fits BUILD_MEMORY_CAP: for 20k x 1280, 20-34 s against 132-164 s
    for the 64 MB default's build, which spills to disk. The server's own larger setting is kept."""
    cursor.execute(
        sql.SQL(
            "SELECT set_config('maintenance_work_mem', greatest(pg_size_bytes(current_setting('maintenance_work_mem')),"
            " least(%s, count(*) * %s)) / 1024 || 'kB', true) FROM {}"
        ).format(sql.Identifier(table)),
        (BUILD_MEMORY_CAP, dim * (2 if kind == "halfvec" else 4) + HNSW_ROW_OVERHEAD),
    )
    index = "cnn_features_h_" + table.removeprefix("cnn_features_v_")
    cursor.execute(
        sql.SQL("CREATE INDEX {} ON {} USING hnsw (embedding {})").format(
            sql.Identifier(index), sql.Identifier(table), sql.SQL(f"{kind}_cosine_ops"))
    )  # fmt: skip


def _copy_vectors(cursor: psycopg.Cursor, table: str, kind: str, ids: list[int], array: np.ndarray) -> None:
    """Binary COPY through pgvector's adapters: no text formatting of floats."""
    wrap = HalfVector if kind == "halfvec" else Vector
    with cursor.copy(
        sql.SQL("COPY {} (id, embedding) FROM STDIN (FORMAT BINARY)").format(sql.Identifier(table))
    ) as copy:
        copy.set_types(["int8", kind])
        for entry_id, vector in zip(ids, array, strict=True):
            copy.write_row((entry_id, wrap(vector)))


def _nearest(cursor: psycopg.Cursor, table: str, dim: int, query: np.ndarray, k: int) -> list[Neighbour]:
    rows = cursor.execute(nearest_statement(table, dim), {"q": query.tolist(), "k": k}).fetchall()
    return [Neighbour(entry_id, path, 1.0 - distance) for entry_id, path, distance in rows]


def nearest_statement(table: str, dim: int) -> sql.Composed:
    """The HNSW scan in a subquery (ORDER BY the distance operator and LIMIT, as the index needs), then paths."""
    vector = sql.SQL("CAST(%(q)s AS {})").format(sql.SQL(f"{_kind(dim)}({dim})"))
    return sql.SQL(
        "SELECT n.id, e.path, n.distance FROM (SELECT id, embedding <=> {vector} AS distance FROM {table} "
        "ORDER BY embedding <=> {vector} LIMIT %(k)s) AS n JOIN {entries} AS e ON e.id = n.id ORDER BY n.distance"
    ).format(vector=vector, table=sql.Identifier(table), entries=sql.Identifier(ENTRIES))


def _ef_search(k: int) -> int:
    return min(EF_SEARCH_MAX, max(EF_SEARCH, 2 * k))
