"""The PostgreSQL back end of the vector index against a real server (tests/integration/postgres.py), started once.

Each test works in collections of its own (a model name per test), so they share the server but not their data.
Vectors are low-rank (16 underlying factors) like CNN features, whose neighbours an HNSW graph finds reliably.
"""

from __future__ import annotations

import threading

import numpy as np
import psycopg
import pytest

from engine.errors import InvalidInput, Misconfigured, Unavailable, UnknownName
from engine.vector_index import open_index
from engine.vector_index import pgvector as pg
from engine.vector_index.base import MAX_K, CollectionSpec
from tests.helpers import free_port
from tests.integration.postgres import PASSWORD, running_postgres

LAYERS = {"stride8": 40, "stride16": 112, "head": 1280}
COUNT = 500


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory):
    with running_postgres(tmp_path_factory.mktemp("postgres")) as started:
        yield started


@pytest.fixture
def index(url: str):
    opened = open_index(url)
    yield opened
    opened.close()


def make_spec(
    model: str, layers: dict[str, int] = LAYERS, sha: str = "a" * 64, source: str = "/out/run"
) -> CollectionSpec:
    return CollectionSpec(model, sha, "avg", dict(layers), source)


def features(count: int, layers: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """Rows of `seed`'s 16 factors, projected into each layer the same way whatever the seed."""
    factors = np.random.default_rng(seed).standard_normal((count, 16))
    return {
        name: (factors @ np.random.default_rng(dim).standard_normal((16, dim))).astype(np.float32)
        for name, dim in layers.items()
    }


def fill(index, spec: CollectionSpec, count: int = COUNT, seed: int = 0) -> tuple[list[str], dict[str, np.ndarray]]:
    paths = [f"/photos/{spec.model}/{i:04d}.jpg" for i in range(count)]
    vectors = features(count, spec.layers, seed)
    with index.writer(spec) as writer:
        writer.add(paths, [f"{i}:1700000000" for i in range(count)], vectors)
    return paths, vectors


def cosine_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.argsort(-(queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ unit.T, axis=1)[:, :k]


def pgvector_version(url: str) -> tuple[int, ...]:
    with psycopg.connect(url) as connection:
        (version,) = connection.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    return tuple(int(part) for part in version.split("."))


def test_a_collection_of_three_layers_finds_each_stored_vector_first(index) -> None:
    spec = make_spec("three")
    paths, vectors = fill(index, spec)
    assert index.collection("three", "avg") == spec and spec in index.collections()
    assert index.count("three", "avg") == COUNT
    assert index.fingerprints("three", "avg") == {path: f"{i}:1700000000" for i, path in enumerate(paths)}
    for layer in LAYERS:
        picked = np.arange(0, COUNT, 25)
        for row, found in zip(picked, index.search("three", "avg", layer, vectors[layer][picked], 10), strict=True):
            assert found[0].path == paths[row] and found[0].score == pytest.approx(1.0, abs=1e-5)
            assert [n.score for n in found] == sorted((n.score for n in found), reverse=True)
            assert index.path_of(found[0].id) == paths[row]


def test_search_agrees_with_exact_cosine(index) -> None:
    spec = make_spec("exact")
    paths, vectors = fill(index, spec, seed=1)
    queries = features(20, LAYERS, seed=2)["head"].astype(np.float16)  # half precision is taken as well
    truth = cosine_top(vectors["head"], queries.astype(np.float32), 10)
    results = index.search("exact", "avg", "head", queries, 10)
    found = [
        {n.path for n in hits} & {paths[i] for i in expected} for hits, expected in zip(results, truth, strict=True)
    ]
    assert sum(map(len, found)) / truth.size >= 0.95
    best, query = vectors["head"][truth[0, 0]], queries[0].astype(np.float32)
    assert results[0][0].score == pytest.approx(
        float(best @ query / np.linalg.norm(best) / np.linalg.norm(query)), abs=1e-5
    )


def test_the_search_statement_can_use_the_hnsw_index(index, url: str) -> None:
    """The planner scans 100 rows rather than use the index; without that choice, the statement's shape must let it."""
    fill(index, make_spec("planned"), count=100)
    statement = pg.nearest_statement(pg._layer_table("planned_avg", 2), 1280)
    with psycopg.connect(url) as connection:
        connection.execute("SET enable_seqscan = off")
        plan = connection.execute(b"EXPLAIN " + statement.as_bytes(connection), {"q": [1.0] * 1280, "k": 10}).fetchall()
    assert "Index Scan using cnn_features_h_planned_avg_2" in "\n".join(line for (line,) in plan)


def test_entry_ids_are_unique_across_collections(index) -> None:
    fill(index, make_spec("ids_a"), count=50)
    fill(index, make_spec("ids_b"), count=50, seed=3)
    query = features(1, LAYERS, seed=4)["stride8"]
    a, b = (index.search(model, "avg", "stride8", query, 50)[0] for model in ("ids_a", "ids_b"))
    assert len(a) == len(b) == 50 and not {n.id for n in a} & {n.id for n in b}
    assert index.path_of(max(n.id for n in a + b) + 1000) is None


def test_remove_drops_entries_and_add_replaces_a_present_path(index) -> None:
    spec = make_spec("changes")
    paths, vectors = fill(index, spec)
    (old_hit,) = index.search("changes", "avg", "head", vectors["head"][:1], 1)[0]
    replacement = {name: array.astype(np.float16) for name, array in features(1, LAYERS, seed=5).items()}
    with index.writer(spec) as writer:
        writer.remove([paths[1], paths[2], "/not/in/the/collection.jpg"])
        writer.add([paths[0]], ["new"], replacement)
    assert index.count("changes", "avg") == COUNT - 2
    fingerprints = index.fingerprints("changes", "avg")
    assert fingerprints[paths[0]] == "new" and paths[1] not in fingerprints
    (hit,) = index.search("changes", "avg", "head", replacement["head"], 1)[0]
    assert hit.path == paths[0] and hit.score == pytest.approx(1.0, abs=1e-5)
    assert index.path_of(old_hit.id) is None and index.path_of(hit.id) == paths[0]
    gone = index.search("changes", "avg", "stride16", vectors["stride16"][1:3], 5)
    assert all(n.path not in (paths[1], paths[2]) for hits in gone for n in hits)


def test_changes_are_visible_at_commit_and_an_abort_leaves_nothing(index) -> None:
    spec = make_spec("abort")
    vectors = features(10, LAYERS, seed=6)
    with pytest.raises(RuntimeError), index.writer(spec) as writer:
        writer.add([f"p{i}" for i in range(10)], ["f"] * 10, vectors)
        assert index.collection("abort", "avg") is None  # not before the commit
        raise RuntimeError("the run failed")
    assert index.collection("abort", "avg") is None and index.count("abort", "avg") == 0
    paths, _ = fill(index, spec, count=10)
    writer = index.writer(spec)
    writer.remove(paths[:5])
    writer.add(["extra"], ["f"], features(1, LAYERS, seed=7))
    assert index.count("abort", "avg") == 10
    writer.abort()
    assert index.fingerprints("abort", "avg").keys() == set(paths)


def test_another_model_layers_or_source_is_refused_and_replace_rebuilds(index) -> None:
    spec = make_spec("rebuilt")
    fill(index, spec, count=20)
    changed = {
        "model sha256": make_spec("rebuilt", sha="b" * 64),
        "layers": make_spec("rebuilt", layers={"head": 1280, "stride16": 112}),
        "extraction": make_spec("rebuilt", source="/out/other"),
    }
    for difference, other in changed.items():
        with pytest.raises(InvalidInput, match=f"{difference}.*--overwrite"):
            index.writer(other)
    assert index.collection("rebuilt", "avg") == spec and index.count("rebuilt", "avg") == 20
    other = changed["layers"]
    with index.writer(other, replace=True) as writer:
        writer.add(["only"], ["f"], features(1, other.layers, seed=8))
    assert index.collection("rebuilt", "avg") == other and index.fingerprints("rebuilt", "avg") == {"only": "f"}
    assert index.search("rebuilt", "avg", "head", features(1, other.layers, seed=8)["head"], 5)[0][0].path == "only"
    with index.writer(other, replace=True):  # the same collection: nothing to rebuild, entries stay
        pass
    assert index.count("rebuilt", "avg") == 1


def test_unknown_collections_and_layers_list_what_there_is(index) -> None:
    fill(index, make_spec("named"), count=5)
    with pytest.raises(UnknownName) as error:
        index.search("nothing", "avg", "head", np.ones((1, 1280), np.float32), 1)
    assert "named_avg" in error.value.facts["valid"] and "nothing_avg" in error.value.detail
    assert error.value.facts["valid"] == sorted(error.value.facts["valid"])
    with pytest.raises(UnknownName) as error:
        index.search("named", "avg", "logits", np.ones((1, 1280), np.float32), 1)
    assert error.value.facts["valid"] == list(LAYERS)


def test_k_and_query_shapes_are_checked(index) -> None:
    fill(index, make_spec("bounds"), count=30)
    query = np.ones((1, 40), np.float32)
    for k in (0, MAX_K + 1, True, 2.0):
        with pytest.raises(InvalidInput, match="k must be"):
            index.search("bounds", "avg", "stride8", query, k)
    for shape in ((1, 41), (40,), (1, 1, 40)):
        with pytest.raises(InvalidInput, match="shape"):
            index.search("bounds", "avg", "stride8", np.ones(shape, np.float32), 1)
    assert len(index.search("bounds", "avg", "stride8", query, MAX_K)[0]) == 30
    assert index.search("bounds", "avg", "stride8", np.ones((0, 40), np.float32), 5) == []


def test_added_vectors_are_checked(index) -> None:
    writer = index.writer(make_spec("checked"))
    good = features(2, LAYERS, seed=9)
    for vectors in (
        {**good, "head": good["head"][:1]},
        {"head": good["head"]},
        {**good, "head": good["head"] * np.nan},
    ):
        with pytest.raises(InvalidInput):
            writer.add(["a", "b"], ["f", "f"], vectors)
    with pytest.raises(InvalidInput, match="each once"):
        writer.add(["a", "a"], ["f", "f"], good)
    writer.abort()


def test_layers_longer_than_2000_values(index, url: str) -> None:
    """halfvec from pgvector 0.7 (HNSW's `vector` limit is 2000 values); older versions refuse, naming the limit."""
    spec = make_spec("wide", layers={"wide": 2048})
    if pgvector_version(url) < (0, 7, 0):
        with pytest.raises(InvalidInput, match="at most 2000") as error:
            index.writer(spec)
        assert error.value.facts["limit"] == 2000
        return
    paths, vectors = fill(index, spec, count=100)
    (hit,) = index.search("wide", "avg", "wide", vectors["wide"][7:8], 1)[0]
    assert hit.path == paths[7] and hit.score == pytest.approx(1.0, abs=1e-3)  # 16-bit floats


def test_searches_from_many_threads(index) -> None:
    paths, vectors = fill(index, make_spec("threads"), count=100)
    wrong: list[int] = []

    def search(row: int) -> None:
        if index.search("threads", "avg", "stride16", vectors["stride16"][row : row + 1], 3)[0][0].path != paths[row]:
            wrong.append(row)

    threads = [threading.Thread(target=search, args=(row,)) for row in range(0, 100, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not wrong


def test_a_user_who_may_not_create_the_extension_is_told(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("CREATE ROLE plain LOGIN PASSWORD 'plain-pw'")
        admin.execute("CREATE DATABASE plain OWNER plain")
    index = open_index(url.replace(f"features:{PASSWORD}@", "plain:plain-pw@").rsplit("/", 1)[0] + "/plain")
    with pytest.raises(Misconfigured, match=r"cannot be set up by its user.*permission denied"):
        index.writer(make_spec("plain"))
    assert index.collections() == []
    index.close()


def test_a_dropped_connection_is_reopened(index, url: str) -> None:
    fill(index, make_spec("dropped"), count=5)
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
    assert index.count("dropped", "avg") == 5


def test_an_empty_database_reads_as_an_empty_index(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("CREATE DATABASE untouched")
    index = open_index(url.rsplit("/", 1)[0] + "/untouched")
    try:
        assert index.collections() == [] and index.collection("m", "avg") is None
        assert index.count("m", "avg") == 0 and index.fingerprints("m", "avg") == {} and index.path_of(1) is None
        with pytest.raises(UnknownName) as error:
            index.search("m", "avg", "head", np.ones((1, 4), np.float32), 1)
        assert error.value.facts["valid"] == []
    finally:
        index.close()


def test_the_password_is_never_shown(url: str) -> None:
    index = open_index(url)
    assert PASSWORD not in index.target and ":***@" in index.target
    wrong = url.replace(PASSWORD, "wrong-Secret-9")
    for target in (wrong, url.rsplit("/", 1)[0] + "/missing"):
        with pytest.raises(Unavailable) as error:
            open_index(target).count("m", "avg")
        assert "cannot reach the index at" in error.value.detail
        assert PASSWORD not in error.value.detail and "wrong-Secret-9" not in error.value.detail
    assert pg.redact("postgresql://u@h/db?password=p1&sslmode=require") == (
        "postgresql://u@h/db?password=***&sslmode=require"
    )
    assert pg.redact("postgres://h:5432/db") == "postgres://h:5432/db"


def test_a_stopped_server_is_unavailable(tmp_path) -> None:
    with running_postgres(tmp_path) as own:
        index = open_index(own)
        fill(index, make_spec("stopped"), count=5)
    with pytest.raises(Unavailable, match="cannot reach the index at postgresql://features:\\*\\*\\*@"):
        index.count("stopped", "avg")
    with pytest.raises(Unavailable):
        index.writer(make_spec("stopped"))
    index.close()
    with pytest.raises(Unavailable):
        open_index(f"postgresql://nobody@127.0.0.1:{free_port()}/none").collections()


def test_without_psycopg_the_index_is_misconfigured(monkeypatch) -> None:
    monkeypatch.setattr(pg, "psycopg", None)
    with pytest.raises(Misconfigured, match=r"needs psycopg and pgvector: pip install"):
        pg.PgVectorIndex("postgresql://u@127.0.0.1/db")
