"""Give the memory freed after a burst back to the operating system, once, after the burst.

glibc's malloc keeps what Python frees in its heap for reuse and returns only the top of the
heap by itself, so a burst (1,000 devices re-listing after a network blip, a top-of-hour wave of
events) leaves the agent's RSS at its high-water mark for good: +15 MiB after the benchmark's
flood. ``malloc_trim(0)`` also returns the free pages inside the heap; with 1,000 devices it
takes about half a millisecond.

When: :class:`HeapTrimmer` trims when the resident size rose more than
:data:`TRIM_THRESHOLD` above the lowest it was since the last trim, checked every few seconds
by the agent (``Agent._trim_loop``). A check is one read of ``/proc/self/statm`` (a few
microseconds, measured below); the agent used to call ``malloc_trim`` every second forever.
Why that signal: after a burst is freed, malloc's in-use bytes are back down but the RSS is
not, and the RSS is the number that matters. Memory that is really in use (the fleet
connecting) also raises the RSS: that costs one trim per :data:`TRIM_THRESHOLD` of growth, and
the trim's result becomes the new low, so a steady large agent is not trimmed again and again.
A burst smaller than the threshold is left to malloc's reuse.

The RSS alone misses the usual case, though: while a burst rises, the RSS-rise trims find
little to return and take the peak as their low; once the burst is freed the RSS stays flat at
that peak, never "above the low". So the trimmer also reads malloc's free bytes
(``mallinfo2().fordblks``, glibc 2.33+) and trims when they rose more than the threshold above
their lowest since the last trim: that much was in use since, and is free now. Measured
(``bench/bench_pipeline.py --devices 1000``, after the flood and the burst): 30 MiB free in
malloc's arenas, 20 MiB of it SQLite's (its high-water during the flood), all resident; one
``malloc_trim(0)`` took the RSS from 185.4 to 160.8 MiB. Python's own small-object arenas
(pymalloc) are not malloc's: what fragments there no trim returns.

Measured (``python -m edge_agent.ops.heap``, 2 shared cores, glibc 2.36): 64 MiB of 1 KB
objects, one in 64 kept, leave the RSS at 77 MiB once freed (11 MiB before); the check that
sees it trims in ~9 ms, down to 16 MiB; a check that does not trim costs ~11 us.

Once, at start: :func:`tune_malloc` fixes glibc's two thresholds at their initial values
(:data:`MMAP_THRESHOLD`, :data:`MALLOC_TRIM_THRESHOLD`). Left alone they move: every mmapped block
freed raises the mmap threshold to its size (up to 32 MiB) and the trim threshold to twice
that, so after one large transient buffer the next ones come from the heap, which then keeps
them. Measured (a driver over ``bench/bench_pipeline.py``'s phases, 1,000 devices, 15 s flood
at 3,000 events/s; run to run +-3 MiB): RSS after the burst 176.9 MiB with neither,
173.3 / 174.0 MiB with the trimmer alone, 171.0 / 172.2 MiB with the fixed thresholds and no
trimmer at all.

Only glibc has ``malloc_trim`` and ``mallopt``, and only Linux has ``/proc``: elsewhere (musl,
macOS) :func:`release_free_memory` and :func:`tune_malloc` do nothing and
:class:`HeapTrimmer` never trims.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable

TRIM_THRESHOLD = 8 * 2**20
"""Bytes of RSS growth (above the low since the last trim) that make a trim worth it."""


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

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 2**10
"""Bytes: a block this large gets a mapping of its own, unmapped when freed (glibc's initial
value, fixed: see the module docstring)."""
MALLOC_TRIM_THRESHOLD = 128 * 2**10
"""Bytes free at the top of the heap that ``free()`` gives back by itself (glibc's initial
value, fixed). Not :data:`TRIM_THRESHOLD`: this name once shadowed it, and the trimmer's
8 MiB became 128 KiB (a trim nearly every check)."""


def _load_mallopt() -> Callable[[int, int], int] | None:
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    fn = getattr(libc, "mallopt", None)
    if fn is None or _malloc_trim is None:  # mallopt alone is no sign of glibc's parameters
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_mallopt = _load_mallopt()


def tune_malloc() -> bool:
    """Fix glibc's mmap and trim thresholds (once, at start); False where it cannot."""
    if _mallopt is None:
        return False
    ok = _mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    return _mallopt(M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD) == 1 and ok


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def _load_mallinfo2() -> Callable[[], _MallInfo2] | None:
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    fn = getattr(libc, "mallinfo2", None)  # glibc 2.33+
    if fn is None:
        return None
    fn.argtypes = []
    fn.restype = _MallInfo2
    return fn  # type: ignore[no-any-return]


_mallinfo2 = _load_mallinfo2()


def malloc_free_bytes() -> int | None:
    """Bytes malloc holds free in all its arenas (``mallinfo2().fordblks``); ``None`` where the
    C library cannot say. A walk of the free lists: tens of microseconds."""
    if _mallinfo2 is None:
        return None
    return int(_mallinfo2().fordblks)


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def release_free_memory() -> bool:
    """Return the heap's free pages to the OS; False where the C library cannot (not glibc)."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True


def resident_bytes() -> int | None:
    """This process's resident set size (``None`` without ``/proc``)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


class HeapTrimmer:
    """Decides when a trim is worth it (:meth:`should_trim`, pure) and does it (:meth:`check`).

    Args:
        threshold: bytes of RSS above the low since the last trim that trigger a trim.
        read_rss / trim: the I/O, replaceable in tests.
    """

    __slots__ = ("_free_low", "_low", "_read_free", "_read_rss", "_trim", "threshold", "trims")

    def __init__(
        self,
        threshold: int = TRIM_THRESHOLD,
        *,
        read_rss: Callable[[], int | None] = resident_bytes,
        trim: Callable[[], bool] = release_free_memory,
        read_free: Callable[[], int | None] = malloc_free_bytes,
    ) -> None:
        if threshold <= 0:
            raise ValueError(f"threshold must be > 0 bytes, not {threshold!r}")
        self.threshold = threshold
        self.trims = 0
        self._low: int | None = None
        self._free_low: int | None = None
        self._read_rss = read_rss
        self._trim = trim
        self._read_free = read_free

    @property
    def supported(self) -> bool:
        """Whether trimming can do anything here (glibc and ``/proc``)."""
        return _malloc_trim is not None and resident_bytes() is not None

    def should_trim(self, rss: int) -> bool:
        """Note ``rss``; whether it is more than ``threshold`` above the low since the last trim."""
        low = rss if self._low is None or rss < self._low else self._low
        self._low = low
        return rss - low > self.threshold

    def freed_burst(self, free: int) -> bool:
        """Note malloc's free bytes; whether they are more than ``threshold`` above the lowest
        since the last trim: that much was in use since, and has been freed (so its pages are
        resident). The RSS does not say so: a burst freed leaves it flat, at the level the
        trims during the burst's rise took as their low."""
        low = free if self._free_low is None or free < self._free_low else self._free_low
        self._free_low = low
        return free - low > self.threshold

    def trimmed(self, rss_after: int, free_after: int | None = None) -> None:
        """A trim was done: what it left is the new low (of the RSS, and of the free bytes:
        a trim returns their pages but malloc still counts them free)."""
        self._low = rss_after
        if free_after is not None:
            self._free_low = free_after
        self.trims += 1

    def check(self) -> bool:
        """Read the RSS (and malloc's free bytes) and trim if it is worth it; whether it
        trimmed."""
        rss = self._read_rss()
        if rss is None:
            return False
        free = self._read_free()
        grew = self.should_trim(rss)
        freed = free is not None and self.freed_burst(free)
        if not (grew or freed):
            return False
        if not self._trim():
            return False
        after = self._read_rss()
        self.trimmed(rss if after is None else after, self._read_free())
        return True


def _measure() -> None:  # pragma: no cover - the figures in the module docstring
    import time

    trimmer = HeapTrimmer()
    start = resident_bytes() or 0
    trimmer.check()
    t0 = time.perf_counter()
    for _ in range(10_000):
        trimmer.check()
    check_us = (time.perf_counter() - t0) / 10_000 * 1e6
    keep: list[bytes] = []
    burst: list[bytes] = []
    for i in range(64 * 2**20 // 1024):
        (keep if i % 64 == 0 else burst).append(bytes(1000))  # survivors pin the heap
    peak = resident_bytes() or 0
    del burst
    freed = resident_bytes() or 0
    t0 = time.perf_counter()
    trimmed = trimmer.check()
    trim_ms = (time.perf_counter() - t0) * 1e3
    after = resident_bytes() or 0
    mib = 2**20
    print(
        f"check: {check_us:.1f} us; burst: RSS {start / mib:.0f} -> {peak / mib:.0f} MiB, "
        f"{freed / mib:.0f} MiB once freed; check trimmed={trimmed} in {trim_ms:.2f} ms -> "
        f"{after / mib:.0f} MiB (kept {len(keep)} objects)"
    )


if __name__ == "__main__":  # pragma: no cover
    _measure()
