"""Reading a file named by a path the caller does not control (an index entry, a command-line argument): bounded
like an upload, and never blocking on a FIFO or a device."""

from __future__ import annotations

import os
import stat

from engine.errors import InvalidInput, TooLarge


class UnreadableFile(InvalidInput):
    """A path that cannot be opened, or that is not a regular file."""


def read_bounded(path: str | os.PathLike, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; TooLarge (detail "over the limit of N bytes") beyond,
    also for a file that grew past it while being read."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # opening a FIFO must not wait for a writer
    except OSError as exc:
        raise UnreadableFile(f"cannot read it ({exc.strerror})") from None
    with os.fdopen(descriptor, "rb") as handle:
        status = os.fstat(handle.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise UnreadableFile("not a regular file")
        data = handle.read(limit + 1) if status.st_size <= limit else b""
    if status.st_size > limit or len(data) > limit:
        raise TooLarge(f"over the limit of {limit} bytes", limit=limit)
    return data
