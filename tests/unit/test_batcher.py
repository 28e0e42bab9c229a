"""The micro-batcher (engine/batcher.py) on the tiny model's runtime: joined runs return what lone runs return,
each request its own rows in order; failures stay local; close runs what is queued and refuses the rest.

The close tests drive a gated stand-in for the runtime, so each step waits on a condition, never a fixed time.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import numpy as np
import pytest

from engine.batcher import BatcherClosed, MicroBatcher
from engine.images import preprocess_image
from engine.runtime import OrtRuntime
from engine.subgraphs import prefix_models
from service.problems import status_of
from tests.helpers import photo, wait_until

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
DEADLINE_S = 60  # only a hung batcher reaches it


@pytest.fixture(scope="module")
def runtime(tiny_dir, tiny_manifest) -> OrtRuntime:
    path = tiny_dir / "model.onnx"
    return OrtRuntime(path, ["CPUExecutionProvider"], 1, True, prefix_models(path, tiny_manifest, pooled=False))


@pytest.fixture(scope="module")
def images(tiny_manifest) -> np.ndarray:
    return np.stack([preprocess_image(photo(name), tiny_manifest.preprocess) for name in PHOTOS])


class Recorder:
    def __init__(self):
        self.sizes: list[int] = []

    def __call__(self, images: int, seconds: float) -> None:
        self.sizes.append(images)


def submit_while_announced(batcher: MicroBatcher, jobs: list[tuple[list[str], np.ndarray]]):
    """Queue every job while one more request is announced, then submit that one: all are queued together."""
    with batcher.expecting():
        futures = [batcher.submit(outputs, batch) for outputs, batch in jobs[:-1]]
        futures.append(batcher.submit(*jobs[-1]))
    return futures


def test_joined_requests_get_their_own_rows_in_order(runtime, images):
    recorder = Recorder()
    batcher = MicroBatcher(runtime, max_batch=16, max_wait_ms=5000, on_batch=recorder)
    # different layers, all needing the full graph (logits is the deepest layer), one to four images each
    jobs = [
        (["stride16__avg", "logits"], images[0:1]),
        (["logits"], images[1:3]),
        (["embedding", "stride16__max", "logits"], images[3:4]),
        (["logits", "stride8__avg"], images[0:4]),
    ]
    results = [future.result(timeout=DEADLINE_S) for future in submit_while_announced(batcher, jobs)]
    assert recorder.sizes == [8], "all four requests should have run as one batch of 8 images"
    for (outputs, batch), got in zip(jobs, results, strict=True):
        alone = runtime.run(outputs, batch)
        assert len(got) == len(outputs)
        for a, b in zip(got, alone, strict=True):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    batcher.close()


def test_requests_for_different_subgraphs_are_not_joined(runtime, images):
    recorder = Recorder()
    batcher = MicroBatcher(runtime, max_batch=16, max_wait_ms=5000, on_batch=recorder)
    jobs = [(["stem__avg"], images[0:1]), (["logits"], images[1:2]), (["stem__max"], images[2:3])]
    results = [future.result(timeout=DEADLINE_S) for future in submit_while_announced(batcher, jobs)]
    assert sorted(recorder.sizes) == [1, 2]  # the two stem requests share the stem sub-graph
    assert runtime.session_for(["stem__avg"]) is runtime.graphs[0][1] is not runtime.session_for(["logits"])
    np.testing.assert_allclose(results[1][0], runtime.run(["logits"], images[1:2])[0], rtol=1e-5, atol=1e-5)
    batcher.close()


def test_max_batch_bounds_a_joined_run(runtime, images):
    recorder = Recorder()
    batcher = MicroBatcher(runtime, max_batch=3, max_wait_ms=5000, on_batch=recorder)
    jobs = [(["stem__avg"], images[i : i + 1]) for i in range(4)]
    for future in submit_while_announced(batcher, jobs):
        future.result(timeout=DEADLINE_S)
    assert max(recorder.sizes) <= 3 and sum(recorder.sizes) == 4
    batcher.close()


def test_a_bad_request_fails_alone(runtime, images):
    batcher = MicroBatcher(runtime, max_batch=16, max_wait_ms=5000)
    wrong_channels = np.zeros((1, 4, *images.shape[2:]), dtype=np.float32)
    jobs = [(["logits"], images[0:1]), (["logits"], wrong_channels), (["logits"], images[1:2])]
    first, bad, last = submit_while_announced(batcher, jobs)
    with pytest.raises(Exception, match=r"(?i)invalid|dimension|channel|shape"):
        bad.result(timeout=DEADLINE_S)
    np.testing.assert_allclose(first.result(timeout=DEADLINE_S)[0], runtime.run(["logits"], images[0:1])[0], atol=1e-5)
    np.testing.assert_allclose(last.result(timeout=DEADLINE_S)[0], runtime.run(["logits"], images[1:2])[0], atol=1e-5)
    assert batcher.run(["logits"], images[2:3])[0].shape == (1, 10)  # still serving
    batcher.close()


def test_a_lone_request_does_not_wait_for_max_wait(runtime, images):
    batcher = MicroBatcher(runtime, max_batch=16, max_wait_ms=10_000)
    started = time.monotonic()
    batcher.run(["stem__avg"], images[0:1])
    assert time.monotonic() - started < 5, "nothing else was announced, so the batcher must not wait 10 s"
    batcher.close()


def test_many_threads_get_exactly_their_own_results(runtime, images):
    batcher = MicroBatcher(runtime, max_batch=8, max_wait_ms=2)
    expected = {i: runtime.run(["embedding"], images[i : i + 1])[0] for i in range(len(PHOTOS))}
    failures: list[str] = []

    def client(worker: int) -> None:
        for step in range(6):
            index = (worker + step) % len(PHOTOS)
            with batcher.expecting():
                got = batcher.run(["embedding"], images[index : index + 1])[0]
            if not np.allclose(got, expected[index], rtol=1e-5, atol=1e-5):
                failures.append(f"worker {worker} step {step} got another image's embedding")

    threads = [threading.Thread(target=client, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=DEADLINE_S)
    assert not failures
    batcher.close()


# ----------------------------------------------------------------------------------------------------- close


class GatedRuntime:
    """OrtRuntime's batcher-facing half: each run waits for `release`; `entered` is set once a run began."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.runs: list[int] = []

    def session_for(self, outputs: list[str]) -> object:
        return self

    def run_session(self, session: object, outputs: list[str], batch: np.ndarray) -> list[np.ndarray]:
        self.entered.set()
        assert self.release.wait(DEADLINE_S)
        self.runs.append(len(batch))
        return [batch.sum(axis=1, keepdims=True) for _ in outputs]


def ones(images: int) -> np.ndarray:
    return np.ones((images, 3), dtype=np.float32)


def start_close(batcher: MicroBatcher, timeout: float) -> threading.Thread:
    closer = threading.Thread(target=batcher.close, args=(timeout,), name="closer")
    closer.start()
    wait_until(lambda: batcher.closed, DEADLINE_S, "close to begin")
    return closer


def test_close_runs_queued_jobs_then_refuses_new_ones() -> None:
    runtime = GatedRuntime()
    batcher = MicroBatcher(runtime, max_batch=16, max_wait_ms=0)
    first = batcher.submit(["y"], ones(1))
    wait_until(runtime.entered.is_set, DEADLINE_S, "the first run to start")
    queued = [batcher.submit(["y"], ones(2)), batcher.submit(["y"], ones(3))]
    closer = start_close(batcher, DEADLINE_S)
    with pytest.raises(BatcherClosed) as refused:
        batcher.submit(["y"], ones(1))
    assert status_of(refused.value) == 503  # the HTTP edge answers 503 + Retry-After
    runtime.release.set()
    closer.join(DEADLINE_S)
    assert not closer.is_alive() and not batcher._thread.is_alive()
    assert [job.result(timeout=0)[0].shape[0] for job in (first, *queued)] == [1, 2, 3]
    assert sum(runtime.runs) == 6


def test_close_fails_jobs_queued_behind_a_run_that_does_not_return() -> None:
    runtime = GatedRuntime()
    batcher = MicroBatcher(runtime, max_batch=16, max_wait_ms=0)
    stuck = batcher.submit(["y"], ones(1))
    wait_until(runtime.entered.is_set, DEADLINE_S, "the first run to start")
    queued: Future = batcher.submit(["y"], ones(1))
    try:
        batcher.close(timeout=0.2)  # the run is gated until after close returns, whatever this timeout
        with pytest.raises(BatcherClosed):
            queued.result(timeout=0)
    finally:
        runtime.release.set()
    assert stuck.result(timeout=DEADLINE_S)[0].shape == (1, 1)
    wait_until(lambda: not batcher._thread.is_alive(), DEADLINE_S, "the batcher thread to end")
