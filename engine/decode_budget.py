"""A worker's decode budget: how many bytes of image decoding may run at once, shared by its request threads.

Eight request threads each decoding a large image that is small on the wire (a 16-bit PNG, say) once took a
worker from 0.5 to 6 GB. Each decode reserves its estimated cost (engine/images.py: decode_cost) here first;
one that could never fit is refused at once (413), one that does not fit yet waits its turn, and after a bounded
wait the client is told to retry (503), so the worker's memory stays within its budget whatever arrives.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from engine.errors import TooLarge, Unavailable


class ImageTooCostly(TooLarge):
    """An image whose decoding alone needs more memory than the whole decode budget."""

    def __init__(self, needed: int, limit: int):
        super().__init__(
            f"image needs {_mb(needed)} MB to decode; this server decodes at most {_mb(limit)} MB at once "
            "(send it with fewer pixels, 8-bit channels or without alpha)",
            limit=limit,
        )


class DecodeBusy(Unavailable):
    """The decode budget stayed too full for the wait allowed: the server is busy, not the image bad."""

    def __init__(self, needed: int, waited_s: float, retry_after_s: int):
        super().__init__(
            f"the server is decoding other images and could not set {_mb(needed)} MB aside within "
            f"{waited_s:.1f} s; retry in {retry_after_s} s",
            retry_after=retry_after_s,
        )


def _mb(nbytes: int) -> int:
    return math.ceil(nbytes / 1_000_000)


class _Waiter:
    __slots__ = ("event", "granted", "nbytes")

    def __init__(self, nbytes: int):
        self.nbytes, self.granted, self.event = nbytes, False, threading.Event()


class DecodeBudget:
    """Bytes of decoding that may run at once in this process, handed out first come, first served.

    FIFO: a large reservation waiting at the head is not overtaken by small ones (no starvation), at the price
    of small ones waiting behind it. Thread-safe; share one instance between all request threads of a worker.
    """

    def __init__(self, total_bytes: int, timeout: float = 10.0):
        if total_bytes <= 0:
            raise ValueError(f"a decode budget needs a positive size, not {total_bytes}")
        self.total_bytes, self.timeout = int(total_bytes), timeout
        self._free = self.total_bytes
        self._lock = threading.Lock()
        self._queue: deque[_Waiter] = deque()

    @property
    def free_bytes(self) -> int:
        return self._free

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @contextmanager
    def reserve(self, nbytes: int, timeout: float | None = None) -> Iterator[None]:
        """Hold `nbytes` of the budget for the block: ImageTooCostly at once if they exceed the whole budget,
        DecodeBusy if they are not free within `timeout` seconds (default: the budget's)."""
        nbytes = max(0, int(nbytes))
        if nbytes > self.total_bytes:
            raise ImageTooCostly(nbytes, self.total_bytes)
        self._acquire(nbytes, self.timeout if timeout is None else timeout)
        try:
            yield
        finally:
            with self._lock:
                self._free += nbytes
                self._grant()

    def _acquire(self, nbytes: int, timeout: float) -> None:
        with self._lock:
            if not self._queue and nbytes <= self._free:
                self._free -= nbytes
                return
            waiter = _Waiter(nbytes)
            self._queue.append(waiter)
        started = time.monotonic()
        if waiter.event.wait(timeout):
            return
        with self._lock:
            if waiter.granted:  # granted between the timeout and taking the lock
                return
            self._queue.remove(waiter)
            self._grant()  # the head may have left: those behind it may fit now
        waited = time.monotonic() - started
        raise DecodeBusy(nbytes, waited, max(1, math.ceil(timeout)))

    def _grant(self) -> None:
        """Wake waiters from the head of the queue while they fit (called with the lock held)."""
        while self._queue and self._queue[0].nbytes <= self._free:
            waiter = self._queue.popleft()
            self._free -= waiter.nbytes
            waiter.granted = True
            waiter.event.set()
