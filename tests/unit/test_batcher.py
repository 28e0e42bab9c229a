"""The micro-batcher on the real model: joined runs return what lone runs return, in order, and failures stay local."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from engine.batcher import MicroBatcher
from engine.images import preprocess_image
from engine.runtime import OrtRuntime
from engine.subgraphs import prefix_models
from tests.conftest import photo

pytestmark = pytest.mark.integration
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


@pytest.fixture(scope="module")
def runtime(lite0_dir, lite0_manifest) -> OrtRuntime:
    path = lite0_dir / "model.onnx"
    return OrtRuntime(path, ["CPUExecutionProvider"], 2, True, prefix_models(path, lite0_manifest))


@pytest.fixture(scope="module")
def images(lite0_manifest) -> np.ndarray:
    return np.stack([preprocess_image(photo(name), lite0_manifest.preprocess) for name in PHOTOS])


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
        (["stride32__avg", "logits"], images[0:1]),
        (["logits"], images[1:3]),
        (["embedding", "head__max", "logits"], images[3:4]),
        (["logits", "stride8__avg"], images[0:4]),
    ]
    results = [future.result(timeout=60) for future in submit_while_announced(batcher, jobs)]
    assert recorder.sizes == [8], "all four requests should have run as one batch of 8 images"
    for (outputs, batch), got in zip(jobs, results, strict=True):
        alone = runtime.run(outputs, batch)
        assert len(got) == len(outputs)
        for a, b in zip(got, alone, strict=True):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_requests_for_different_subgraphs_are_not_joined(runtime, images):
    recorder = Recorder()
    batcher = MicroBatcher(runtime, max_batch=16, max_wait_ms=5000, on_batch=recorder)
    jobs = [(["stem__avg"], images[0:1]), (["logits"], images[1:2]), (["stem__max"], images[2:3])]
    results = [future.result(timeout=60) for future in submit_while_announced(batcher, jobs)]
    assert sorted(recorder.sizes) == [1, 2]  # the two stem requests share the stem sub-graph
    np.testing.assert_allclose(results[1][0], runtime.run(["logits"], images[1:2])[0], rtol=1e-4, atol=1e-4)


def test_max_batch_bounds_a_joined_run(runtime, images):
    recorder = Recorder()
    batcher = MicroBatcher(runtime, max_batch=3, max_wait_ms=5000, on_batch=recorder)
    jobs = [(["stem__avg"], images[i : i + 1]) for i in range(4)]
    for future in submit_while_announced(batcher, jobs):
        future.result(timeout=60)
    assert max(recorder.sizes) <= 3 and sum(recorder.sizes) == 4


def test_a_bad_request_fails_alone(runtime, images):
    batcher = MicroBatcher(runtime, max_batch=16, max_wait_ms=5000)
    wrong_channels = np.zeros((1, 4, 224, 224), dtype=np.float32)
    jobs = [(["logits"], images[0:1]), (["logits"], wrong_channels), (["logits"], images[1:2])]
    first, bad, last = submit_while_announced(batcher, jobs)
    with pytest.raises(Exception, match=r"(?i)invalid|dimension|channel|shape"):
        bad.result(timeout=60)
    np.testing.assert_allclose(first.result(timeout=60)[0], runtime.run(["logits"], images[0:1])[0], atol=1e-4)
    np.testing.assert_allclose(last.result(timeout=60)[0], runtime.run(["logits"], images[1:2])[0], atol=1e-4)
    assert batcher.run(["logits"], images[2:3])[0].shape == (1, 1000)  # still serving


def test_a_lone_request_does_not_wait_for_max_wait(runtime, images):
    batcher = MicroBatcher(runtime, max_batch=16, max_wait_ms=10_000)
    started = time.monotonic()
    batcher.run(["stem__avg"], images[0:1])
    assert time.monotonic() - started < 5, "nothing else was announced, so the batcher must not wait 10 s"


def test_many_threads_get_exactly_their_own_results(runtime, images):
    batcher = MicroBatcher(runtime, max_batch=8, max_wait_ms=2)
    expected = {i: runtime.run(["embedding"], images[i : i + 1])[0] for i in range(len(PHOTOS))}
    failures: list[str] = []

    def client(worker: int) -> None:
        for step in range(6):
            index = (worker + step) % len(PHOTOS)
            with batcher.expecting():
                got = batcher.run(["embedding"], images[index : index + 1])[0]
            if not np.allclose(got, expected[index], rtol=1e-4, atol=1e-4):
                failures.append(f"worker {worker} step {step} got another image's embedding")

    threads = [threading.Thread(target=client, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures
