"""Giving decoded images' memory back to the operating system (glibc malloc settings).

glibc serves a request of at least M_MMAP_THRESHOLD bytes with its own mmap, unmapped again on free(). By default
that threshold is dynamic: each time a mmapped block is freed it rises to that block's size (up to 32 MiB), so
after one large image every later buffer below 32 MiB (Pillow allocates images in blocks of up to 16 MiB) comes
from the heap arenas instead, and a heap only shrinks from its top: a worker that decoded eight big images at once
kept 1.8 GB resident afterwards (issue 12). Pinning the threshold turns the dynamic adjustment off, so big buffers
are always mmapped and returned on free; `trim` hands back what the arenas still hold. Measured: 2 x 8 threads
decoding a 40 MP 16-bit PNG left 260-500 MB resident by default, 4 MB with the threshold pinned at 1 MiB (at
16 MiB, 850 MB: Pillow's 16 MiB blocks fell under it), for no measurable cost on 0.3-12 MP photos.

Everything here is a no-op off glibc (musl, macOS) and never raises: memory tuning must not stop a worker.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_MMAP_THRESHOLD = -3  # glibc <malloc.h>
M_ARENA_MAX = -8
DEFAULT_MMAP_THRESHOLD = 1 << 20  # 1 MiB: decoded images and big numpy arrays are mmapped, small objects are not


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it alone has gnu_get_libc_version, mallopt and malloc_trim)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def glibc_version() -> str | None:
    """The glibc version ("2.36"), or None elsewhere (where these settings are no-ops)."""
    libc = _glibc()
    return None if libc is None else libc.gnu_get_libc_version().decode()


def tune_malloc(mmap_threshold: int = DEFAULT_MMAP_THRESHOLD, arena_max: int | None = None) -> bool:
    """Pin glibc's mmap threshold (and optionally cap its arenas); call once per process, early (gunicorn post_fork).

    `arena_max` limits the per-thread heaps glibc creates (8 x cores by default); fewer arenas fragment less but
    contend more; None leaves glibc's default. Returns False where this is not glibc or a setting was refused.
    """
    libc = _glibc()
    if libc is None:
        return False
    ok = libc.mallopt(M_MMAP_THRESHOLD, int(mmap_threshold)) == 1
    if arena_max is not None:
        ok = libc.mallopt(M_ARENA_MAX, int(arena_max)) == 1 and ok
    return ok


def trim() -> bool:
    """Return the free memory of every malloc arena to the OS (malloc_trim(0)); True when some was released."""
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0))
