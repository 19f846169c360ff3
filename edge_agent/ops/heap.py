"""Give the memory freed after a burst back to the operating system.

glibc's malloc keeps what Python frees in its heap for reuse and returns only the top of the
heap by itself, so a burst (1,000 devices re-listing after a network blip, a top-of-hour wave of
events) leaves the agent's RSS at its high-water mark for good: +15 MiB after the benchmark's
flood. ``malloc_trim(0)`` also returns the free pages inside the heap; with 1,000 devices it
takes about half a millisecond, so the agent calls it every second (``Agent._trim_loop``).

Only glibc has it: elsewhere (musl, macOS) :func:`release_free_memory` does nothing.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None)  # the symbols the process already has, the C library's included
    except OSError:
        return None
    fn = getattr(libc, "malloc_trim", None)
    if fn is None:
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_malloc_trim = _load_malloc_trim()


def release_free_memory() -> bool:
    """Return the heap's free pages to the OS; False where the C library cannot (not glibc)."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True
