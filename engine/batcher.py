"""Micro-batching: concurrent requests of one worker share one `session.run`.

Request threads decode their images and `submit` a ready batch; one batcher thread per model joins what is
queued for the same sub-graph (up to `max_batch` images) and runs it, while the request threads go on decoding
the next inputs. So decoding overlaps with inference and the model sees larger batches under load.

A lone request is never held back: the batcher waits (at most `max_wait_ms`) only while other requests of this
worker are known to be on their way, i.e. inside `expecting()` and still decoding. If a joined run fails, each
request is rerun alone, so one bad input fails only its own request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from engine.errors import Unavailable

log = logging.getLogger(__name__)


class BatcherClosed(Unavailable):
    """The worker is stopping and its micro-batcher takes no more jobs (503: the client retries elsewhere)."""

    def __init__(self) -> None:
        super().__init__("this worker is stopping; retry the request", retry_after=2)


@dataclass
class _Job:
    outputs: list[str]
    batch: np.ndarray
    session: object
    future: Future = field(default_factory=Future)


class MicroBatcher:
    """`run(outputs, batch)` with the signature of OrtRuntime.run, batched across threads."""

    def __init__(
        self, runtime, max_batch: int, max_wait_ms: float, on_batch: Callable[[int, float], None] | None = None
    ):
        self.runtime = runtime
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1e3
        self.on_batch = on_batch  # (images, seconds) per session.run, e.g. for metrics
        self._queue: deque[_Job] = deque()
        self._expected = 0  # announced requests still decoding
        self._announced = threading.local()
        self._lock = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="micro-batcher", daemon=True)
        self._thread.start()

    @contextmanager
    def expecting(self) -> Iterator[None]:
        """Announce a request that will submit soon (wrap its decoding), so the batcher may wait for it.

        Its `submit` (from the same thread) ends the announcement in the same step as queueing the job.
        """
        with self._lock:
            self._expected += 1
            self._announced.active = True
        try:
            yield
        finally:
            self._end_announcement()

    def _end_announcement(self) -> None:
        """Idempotent per thread: submit and the context exit both call it (the condition's lock is reentrant)."""
        with self._lock:
            if getattr(self._announced, "active", False):
                self._announced.active = False
                self._expected -= 1
                self._lock.notify()

    def run(self, outputs: list[str], batch: np.ndarray) -> list[np.ndarray]:
        return self.submit(outputs, batch).result()

    def submit(self, outputs: list[str], batch: np.ndarray) -> Future:
        """Queue a batch for the batcher thread; BatcherClosed once `close` has begun."""
        job = _Job(list(outputs), batch, self.runtime.session_for(outputs))
        with self._lock:
            if self._closed:
                self._end_announcement()
                raise BatcherClosed()
            self._queue.append(job)
            self._end_announcement()
            self._lock.notify()
        return job.future

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, timeout: float = 30.0) -> None:
        """Take no more jobs, run those already queued, then end the batcher thread and join it.

        Idempotent. If the thread is still busy after `timeout` seconds (a run that does not return), the jobs
        still queued fail with BatcherClosed instead of leaving their callers blocked.
        """
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("micro-batcher still busy after %.0fs; failing the jobs still queued", timeout)
        self._fail_queued()

    def _fail_queued(self) -> None:
        with self._lock:
            jobs, self._queue = list(self._queue), deque()
        for job in jobs:
            job.future.set_exception(BatcherClosed())

    def _serve(self) -> None:
        while jobs := self._next_jobs():
            try:
                self._run_joined(jobs)
            except Exception:  # never let the batcher thread die; each job already holds its outcome
                log.exception("micro-batcher failed")

    def _next_jobs(self) -> list[_Job]:
        """The oldest job plus queued jobs for the same sub-graph, waiting briefly for announced arrivals.

        Empty once the batcher is closed and its queue drained: the thread then ends.
        """
        with self._lock:
            while not self._queue:
                if self._closed:
                    return []
                self._lock.wait()
            first = self._queue.popleft()
            jobs, size = [first], len(first.batch)
            deadline = time.monotonic() + self.max_wait
            while True:
                for job in list(self._queue):
                    if job.session is first.session and size + len(job.batch) <= self.max_batch:
                        self._queue.remove(job)
                        jobs.append(job)
                        size += len(job.batch)
                remaining = deadline - time.monotonic()
                if size >= self.max_batch or self._expected == 0 or remaining <= 0 or self._closed:
                    return jobs
                self._lock.wait(remaining)

    def _run_joined(self, jobs: list[_Job]) -> None:
        if len(jobs) == 1:
            self._run_alone(jobs[0])
            return
        outputs = list(dict.fromkeys(name for job in jobs for name in job.outputs))
        started = time.perf_counter()
        try:
            results = self.runtime.run_session(jobs[0].session, outputs, np.concatenate([job.batch for job in jobs]))
        except Exception:
            log.warning("a joined batch of %d requests failed; running them one by one", len(jobs))
            for job in jobs:
                self._run_alone(job)
            return
        self._report(sum(len(job.batch) for job in jobs), time.perf_counter() - started)
        by_name = dict(zip(outputs, results, strict=True))
        start = 0
        for job in jobs:
            stop = start + len(job.batch)
            job.future.set_result([by_name[name][start:stop] for name in job.outputs])
            start = stop

    def _run_alone(self, job: _Job) -> None:
        started = time.perf_counter()
        try:
            result = self.runtime.run_session(job.session, job.outputs, job.batch)
        except Exception as exc:
            job.future.set_exception(exc)
            return
        self._report(len(job.batch), time.perf_counter() - started)
        job.future.set_result(result)

    def _report(self, images: int, seconds: float) -> None:
        if self.on_batch is not None:
            self.on_batch(images, seconds)
