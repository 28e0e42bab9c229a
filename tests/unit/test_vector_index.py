"""The embedded index (SQLite + USearch files) on its own: exact answers on small sets, all-or-nothing commits,
refusals, and readers that see one generation or the next, never a mix. The PostgreSQL back end answers the same
questions in tests/integration/test_vector_index_pg.py.
"""

from __future__ import annotations

import sqlite3
import threading

import numpy as np
import pytest

from engine.errors import Conflict, InvalidInput, UnknownName
from engine.features import FeatureOptions
from engine.search import collection_for, indexed_layers, parse_search_options
from engine.vector_index import CollectionSpec, embedded, open_index
from engine.vector_index.embedded import DATABASE, FILES, EmbeddedIndex

SHA = "a" * 64
LAYERS = {"low": 8, "high": 24}


def _spec(source: str = "/data/out", sha: str = SHA, layers=None) -> CollectionSpec:
    return CollectionSpec("tiny", sha, "avg", dict(layers or LAYERS), source)


def _vectors(count: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal((count, dim)).astype(np.float32) for name, dim in LAYERS.items()}


def _fill(index, count: int = 200, seed: int = 0):
    paths = [f"/photos/{i:04d}.jpg" for i in range(count)]
    vectors = _vectors(count, seed)
    with index.writer(_spec()) as writer:
        writer.add(paths, [f"{i}:1" for i in range(count)], vectors)
    return paths, vectors


def _exact(database: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    unit = database / np.linalg.norm(database, axis=1, keepdims=True)
    scores = unit @ (query / np.linalg.norm(query))
    return np.argsort(-scores)[:k].tolist()


def test_open_index_picks_the_back_end_by_target(tmp_path):
    assert isinstance(open_index(str(tmp_path / "ix")), EmbeddedIndex)
    assert not (tmp_path / "ix").exists()  # opening creates nothing: only a writer does


def test_an_index_that_does_not_exist_yet_is_empty(tmp_path):
    index = open_index(str(tmp_path / "missing"))
    assert index.collections() == [] and index.collection("tiny", "avg") is None
    assert index.fingerprints("tiny", "avg") == {} and index.count("tiny", "avg") == 0
    assert index.path_of(1) is None
    with pytest.raises(UnknownName, match="no collection tiny_avg"):
        index.search("tiny", "avg", "low", np.zeros((1, 8), np.float32), 3)


def test_each_stored_vector_finds_itself_first_and_the_neighbours_are_the_exact_ones(tmp_path):
    index = open_index(str(tmp_path / "ix"))
    paths, vectors = _fill(index)
    assert index.count("tiny", "avg") == 200 and index.collection("tiny", "avg") == _spec()
    for layer in LAYERS:
        found = index.search("tiny", "avg", layer, vectors[layer], 5)  # a small collection: scanned exactly
        for row, neighbours in enumerate(found):
            assert neighbours[0].path == paths[row] and neighbours[0].score == pytest.approx(1.0, abs=2e-3)
            exact = [paths[i] for i in _exact(vectors[layer], vectors[layer][row], 5)]
            assert len(set(exact) & {n.path for n in neighbours}) >= 4  # f16 storage may swap a near tie
            assert [n.score for n in neighbours] == sorted((n.score for n in neighbours), reverse=True)
            assert index.path_of(neighbours[0].id) == paths[row]


def test_a_collection_above_the_exact_limit_is_searched_through_its_graph(tmp_path, monkeypatch):
    """The HNSW path, on the same 200 vectors: approximate, so a few self-queries may miss (at most 7 of 200 in
    200 builds on several threads); the bound leaves room for a busier machine's thread timing."""
    monkeypatch.setattr(embedded, "EXACT_UP_TO", 0)
    index = open_index(str(tmp_path / "ix"))
    paths, vectors = _fill(index)
    for layer in LAYERS:
        found = index.search("tiny", "avg", layer, vectors[layer], 5)
        assert all(len(neighbours) == 5 for neighbours in found)
        assert all([n.score for n in ns] == sorted((n.score for n in ns), reverse=True) for ns in found)
        assert sum(neighbours[0].path == paths[row] for row, neighbours in enumerate(found)) >= 160


def test_k_larger_than_the_collection_returns_what_there_is(tmp_path):
    index = open_index(str(tmp_path / "ix"))
    _fill(index, count=3)
    (found,) = index.search("tiny", "avg", "low", _vectors(1, seed=5)["low"], 10)
    assert len(found) == 3


def test_remove_and_replace_change_only_those_entries(tmp_path):
    index = open_index(str(tmp_path / "ix"))
    paths, vectors = _fill(index)
    fresh = _vectors(1, seed=9)
    with index.writer(_spec()) as writer:
        writer.remove([*paths[:10], "/never/indexed.jpg"])
        writer.add([paths[20]], ["changed:2"], fresh)
    assert index.count("tiny", "avg") == 190
    prints = index.fingerprints("tiny", "avg")
    assert paths[0] not in prints and prints[paths[20]] == "changed:2"
    (found,) = index.search("tiny", "avg", "high", vectors["high"][:1], 200)
    assert paths[0] not in {n.path for n in found}  # removed entries never come back
    (found,) = index.search("tiny", "avg", "high", fresh["high"], 1)
    assert found[0].path == paths[20] and found[0].score == pytest.approx(1.0, abs=2e-3)


def test_an_aborted_writer_changes_nothing_and_leaves_no_files(tmp_path):
    index = open_index(str(tmp_path / "ix"))
    paths, _ = _fill(index)
    with pytest.raises(RuntimeError), index.writer(_spec()) as writer:
        writer.remove(paths)
        raise RuntimeError("killed halfway")
    assert index.count("tiny", "avg") == 200
    assert [p.name for p in (tmp_path / "ix" / FILES / "tiny_avg").iterdir()] == ["1"]


def test_a_commit_with_no_change_writes_no_new_generation(tmp_path):
    index = open_index(str(tmp_path / "ix"))
    _fill(index)
    with index.writer(_spec()):
        pass
    assert [p.name for p in (tmp_path / "ix" / FILES / "tiny_avg").iterdir()] == ["1"]


def test_a_writer_killed_before_its_commit_leaves_a_folder_the_next_writer_removes(tmp_path):
    index = open_index(str(tmp_path / "ix"))
    paths, _ = _fill(index)
    orphan = tmp_path / "ix" / FILES / "tiny_avg" / "2"
    orphan.mkdir()
    (orphan / "0.usearch").write_bytes(b"half written")
    assert index.count("tiny", "avg") == 200 and index.search("tiny", "avg", "low", _vectors(1)["low"], 1)
    with index.writer(_spec()) as writer:
        writer.remove(paths[:1])
    assert sorted(p.name for p in orphan.parent.iterdir()) == ["1", "2"]  # 2 written afresh, 1 kept for readers
    assert index.count("tiny", "avg") == 199


def test_another_model_version_layers_or_extraction_is_refused_unless_replaced(tmp_path):
    index = open_index(str(tmp_path / "ix"))
    _fill(index)
    for spec, words in [
        (_spec(sha="b" * 64), "model sha256 aaaaaaaaaaaa"),
        (_spec(layers={"low": 8}), "holds layers low, high"),
        (_spec(source="/elsewhere/out"), "mirrors the extraction /data/out"),
    ]:
        with pytest.raises(InvalidInput, match=words):
            index.writer(spec)
    assert index.count("tiny", "avg") == 200
    with index.writer(_spec(source="/elsewhere/out"), replace=True):
        pass
    assert index.count("tiny", "avg") == 0 and index.collection("tiny", "avg").source == "/elsewhere/out"


def test_writer_input_is_checked(tmp_path):
    index = open_index(str(tmp_path / "ix"))
    with index.writer(_spec()) as writer:
        with pytest.raises(InvalidInput, match="vectors for layers"):
            writer.add(["a.jpg"], ["1:1"], {"low": np.zeros((1, 8))})
        with pytest.raises(InvalidInput, match="shape"):
            writer.add(["a.jpg"], ["1:1"], {"low": np.zeros((1, 7)), "high": np.zeros((1, 24))})
        with pytest.raises(InvalidInput, match="each once"):
            writer.add(["a.jpg", "a.jpg"], ["1:1", "1:1"], _vectors(2))
        with pytest.raises(InvalidInput, match="NaN"):
            writer.add(["a.jpg"], ["1:1"], {"low": np.full((1, 8), np.nan), "high": np.zeros((1, 24))})
    assert index.count("tiny", "avg") == 0


def test_search_refusals_name_what_is_valid(tmp_path):
    index = open_index(str(tmp_path / "ix"))
    _fill(index)
    with pytest.raises(UnknownName) as unknown:
        index.search("tiny", "avg", "middle", np.zeros((1, 8), np.float32), 3)
    assert unknown.value.facts["valid"] == ["low", "high"]
    with pytest.raises(InvalidInput, match="8 values"):
        index.search("tiny", "avg", "low", np.zeros((1, 9), np.float32), 3)
    for k in (0, 1001, True, 2.5):
        with pytest.raises(InvalidInput, match="k must be"):
            index.search("tiny", "avg", "low", np.zeros((1, 8), np.float32), k)


def test_readers_during_a_commit_get_whole_answers_from_one_generation(tmp_path):
    """Readers in other threads (a worker's request threads) query while a writer replaces every entry: each answer
    comes from the old generation or the new one, with the paths of that same generation (none missing)."""
    index = open_index(str(tmp_path / "ix"))
    paths, _old = _fill(index)
    new = _vectors(len(paths), seed=1)
    answers, errors, stop = [], [], threading.Event()

    def read() -> None:
        reader = open_index(str(tmp_path / "ix"))
        while not stop.is_set():
            try:
                answers.append(reader.search("tiny", "avg", "high", new["high"][:2], 3))
            except Exception as exc:  # any failure is the finding
                errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(2)]
    for thread in threads:
        thread.start()
    with index.writer(_spec()) as writer:
        writer.add(paths, [f"{i}:2" for i in range(len(paths))], new)
    stop.set()
    for thread in threads:
        thread.join()
    assert not errors and answers
    assert all(len(neighbours) == 3 for answer in answers for neighbours in answer)
    (found,) = index.search("tiny", "avg", "high", new["high"][:1], 1)
    assert found[0].path == paths[0] and found[0].score == pytest.approx(1.0, abs=2e-3)


def test_the_database_is_sqlite_with_one_row_per_entry(tmp_path):
    index = open_index(str(tmp_path / "ix"))
    _fill(index, count=7)
    with sqlite3.connect(tmp_path / "ix" / DATABASE) as db:
        assert db.execute("SELECT count(*) FROM entries").fetchone() == (7,)


def test_a_file_where_the_folder_should_be_is_refused(tmp_path):
    (tmp_path / "ix").write_text("not a folder")
    with pytest.raises(InvalidInput, match="is a file"):
        open_index(str(tmp_path / "ix")).writer(_spec())


# ---- the core's search steps (engine/search.py) -------------------------------------------------------------


def test_search_options(tiny_manifest):
    options = parse_search_options({"k": "5", "levels": "low,high", "pooling": "max"})
    assert options.k == 5 and options.features.levels == ("low", "high") and options.features.pooling == "max"
    assert parse_search_options({}).k == 10
    for raw, words in [
        ({"k": "0"}, "k='0' must be a whole number from 1 to 1000"),
        ({"k": "²"}, "whole number"),
        ({"pooling": "none"}, "pooling must be avg or max"),
        ({"normalize": "true"}, "unknown option 'normalize'"),
        ({"levels": "top"}, "not one of low, mid, high"),
    ]:
        with pytest.raises(InvalidInput, match=words):
            parse_search_options(raw)


def test_collection_and_layers_of_a_search(tmp_path, tiny_manifest):
    layers = {layer.name: int(np.prod(layer.shape[:1])) for layer in tiny_manifest.layers[:2]}
    index = open_index(str(tmp_path / "ix"))
    with pytest.raises(UnknownName, match="holds no vectors of tiny at pooling avg"):
        collection_for(index, tiny_manifest, "avg")
    spec = CollectionSpec("tiny", tiny_manifest.onnx.sha256, "avg", layers, "/out")
    with index.writer(spec):
        pass
    assert collection_for(index, tiny_manifest, "avg") == spec
    first, second = list(layers)
    assert [lay.name for lay in indexed_layers(tiny_manifest, spec, FeatureOptions())] == [first, second]
    with pytest.raises(UnknownName, match="is not in the index"):
        names = [lay.name for lay in tiny_manifest.layers if lay.name not in layers][:1]
        indexed_layers(tiny_manifest, spec, FeatureOptions(layers=tuple(names)))
    stale = CollectionSpec("tiny", "f" * 64, "max", layers, "/out")
    with index.writer(stale):
        pass
    with pytest.raises(Conflict, match="not comparable"):
        collection_for(index, tiny_manifest, "max")


def test_a_damaged_index_is_a_clear_error_not_a_crash(tmp_path):
    from engine.errors import Misconfigured

    index = open_index(str(tmp_path / "ix"))
    _fill(index)
    index.close()  # the last connection checkpoints the WAL into the database file
    (tmp_path / "ix" / FILES / "tiny_avg" / "1" / "0.usearch").write_bytes(b"not an index" * 100)
    with pytest.raises(Misconfigured, match="is damaged"):
        open_index(str(tmp_path / "ix")).search("tiny", "avg", "low", _vectors(1)["low"], 3)
    (tmp_path / "ix" / DATABASE).write_bytes(b"not a database" * 1000)
    with pytest.raises(Misconfigured, match="is damaged"):
        open_index(str(tmp_path / "ix")).collections()


def test_many_queries_at_a_large_k_are_answered_whole(tmp_path):
    """32 images x k = 1000 neighbours: more ids than one SQLite statement binds."""
    index = open_index(str(tmp_path / "ix"))
    _fill(index, count=1200)
    found = index.search("tiny", "avg", "low", _vectors(32, seed=3)["low"], 1000)
    assert [len(neighbours) for neighbours in found] == [1000] * 32
