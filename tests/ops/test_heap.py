"""edge_agent.ops.heap: give freed memory back to the OS where the C library can."""

from __future__ import annotations

import platform

import pytest

from edge_agent.ops import heap


def test_release_free_memory_is_safe_to_call_and_says_whether_it_did() -> None:
    done = heap.release_free_memory()
    libc, _ = platform.libc_ver()
    assert done is (libc == "glibc")
    assert heap.release_free_memory() is done  # and again: no state to trip on


class FakeHeap:
    """An RSS we set, and a trim that brings it down to what is really in use."""

    def __init__(self, rss: int, in_use: int) -> None:
        self.rss = rss
        self.in_use = in_use
        self.trims = 0

    def read(self) -> int | None:
        return self.rss

    def trim(self) -> bool:
        self.trims += 1
        self.rss = self.in_use
        return True


MIB = 2**20


def trimmer_for(fake: FakeHeap, threshold: int = 8 * MIB) -> heap.HeapTrimmer:
    # The RSS signal alone (no free bytes read): see the tests of freed bursts below.
    return heap.HeapTrimmer(threshold, read_rss=fake.read, trim=fake.trim, read_free=lambda: None)


def test_a_freed_burst_is_trimmed_once() -> None:
    fake = FakeHeap(rss=40 * MIB, in_use=40 * MIB)
    trimmer = trimmer_for(fake)
    assert not trimmer.check()  # the first look only sets the low
    fake.rss = 70 * MIB  # a burst came and went: malloc keeps the pages
    assert trimmer.check()
    assert fake.rss == 40 * MIB and fake.trims == 1
    for _ in range(100):  # and then it is quiet: no trim every interval
        assert not trimmer.check()
    assert fake.trims == 1 and trimmer.trims == 1


def test_memory_really_in_use_is_not_trimmed_again_and_again() -> None:
    fake = FakeHeap(rss=40 * MIB, in_use=40 * MIB)
    trimmer = trimmer_for(fake)
    trimmer.check()
    fake.rss = fake.in_use = 80 * MIB  # the fleet connected: all of it in use
    assert trimmer.check()  # one trim finds nothing to return...
    assert fake.rss == 80 * MIB
    for _ in range(100):
        assert not trimmer.check()  # ...and its result is the new low
    assert fake.trims == 1


def test_growth_under_the_threshold_is_left_to_malloc() -> None:
    fake = FakeHeap(rss=40 * MIB, in_use=40 * MIB)
    trimmer = trimmer_for(fake)
    trimmer.check()
    fake.rss = 48 * MIB  # exactly the threshold: not more than it
    assert not trimmer.check()
    fake.rss += 1
    assert trimmer.check()


def test_the_low_follows_the_rss_down() -> None:
    fake = FakeHeap(rss=60 * MIB, in_use=30 * MIB)
    trimmer = trimmer_for(fake)
    trimmer.check()
    fake.rss = 30 * MIB  # freed by itself (e.g. mmapped blocks)
    assert not trimmer.check()
    fake.rss = 39 * MIB  # 9 MiB above the new low
    assert trimmer.check()


def test_without_a_trim_or_an_rss_nothing_happens() -> None:
    fake = FakeHeap(rss=40 * MIB, in_use=40 * MIB)
    no_trim = heap.HeapTrimmer(MIB, read_rss=fake.read, trim=lambda: False)
    no_trim.check()
    fake.rss = 100 * MIB
    assert not no_trim.check() and no_trim.trims == 0
    no_rss = heap.HeapTrimmer(MIB, read_rss=lambda: None, trim=fake.trim)
    assert not no_rss.check() and fake.trims == 0


def test_a_threshold_must_be_positive() -> None:
    with pytest.raises(ValueError, match="threshold must be > 0"):
        heap.HeapTrimmer(0)


def test_the_real_rss_is_read_on_linux() -> None:
    rss = heap.resident_bytes()
    if platform.system() == "Linux":
        assert rss is not None and rss > 1 * MIB
        assert heap.HeapTrimmer().supported is (platform.libc_ver()[0] == "glibc")
    else:
        assert rss is None


_MAPPED_AFTER_A_LARGE_FREE = """
import ctypes, sys
from edge_agent.ops import heap
if sys.argv[1] == "tuned":
    assert heap.tune_malloc() is True
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.free(libc.malloc(4 * 2**20))  # what raises a moving threshold to 4 MiB
block = libc.malloc(heap.MMAP_THRESHOLD * 4)
size_word = ctypes.c_size_t.from_address(block - ctypes.sizeof(ctypes.c_size_t)).value
print("mapped" if size_word & 2 else "heap")  # glibc's IS_MMAPPED bit
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc-only")
def test_tune_malloc_keeps_large_blocks_in_their_own_mappings() -> None:
    """Left alone, glibc raises its mmap threshold to the size of a mapped block once it is
    freed, and the next blocks of that size come from the heap; fixed, they still get their own
    mapping. In a fresh process: in a busy one a large free chunk in the heap serves either."""
    import subprocess
    import sys

    def where(mode: str) -> str:
        run = subprocess.run(
            [sys.executable, "-c", _MAPPED_AFTER_A_LARGE_FREE, mode],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return run.stdout.strip()

    assert where("untuned") == "heap"
    assert where("tuned") == "mapped"


def test_tune_malloc_says_when_the_c_library_has_no_such_parameters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(heap, "_mallopt", None)
    assert heap.tune_malloc() is False


def test_the_default_threshold_is_eight_mib() -> None:
    """Once shadowed by glibc's trim threshold (128 KiB): a trim nearly every check."""
    assert heap.HeapTrimmer().threshold == heap.TRIM_THRESHOLD == 8 * MIB
    assert heap.MALLOC_TRIM_THRESHOLD == 128 * 2**10


class FreeingHeap(FakeHeap):
    """A heap whose RSS stays at its peak once a burst is freed (malloc keeps the pages), and
    whose free bytes say how much was freed."""

    def __init__(self, rss: int, in_use: int, free: int) -> None:
        super().__init__(rss, in_use)
        self.free = free

    def read_free(self) -> int | None:
        return self.free

    def trim(self) -> bool:
        self.trims += 1
        self.rss = self.in_use  # the pages go back; malloc still counts the bytes free
        return True


def test_a_burst_freed_after_the_trims_of_its_rise_is_trimmed_once() -> None:
    fake = FreeingHeap(rss=40 * MIB, in_use=40 * MIB, free=2 * MIB)
    trimmer = heap.HeapTrimmer(
        8 * MIB, read_rss=fake.read, trim=fake.trim, read_free=fake.read_free
    )
    assert not trimmer.check()
    fake.rss = fake.in_use = 70 * MIB  # the burst rises: in use, the trim returns nothing
    assert trimmer.check() and fake.rss == 70 * MIB
    fake.in_use, fake.free = 40 * MIB, 32 * MIB  # freed: the RSS stays at 70, flat
    assert trimmer.check()  # the free bytes rose 30 MiB: trimmed
    assert fake.rss == 40 * MIB and fake.trims == 2
    for _ in range(100):  # still 32 MiB free, but their pages are back: no trim again
        assert not trimmer.check()
    assert fake.trims == 2


def test_free_bytes_that_rise_less_than_the_threshold_are_left_to_malloc() -> None:
    fake = FreeingHeap(rss=40 * MIB, in_use=40 * MIB, free=2 * MIB)
    trimmer = heap.HeapTrimmer(
        8 * MIB, read_rss=fake.read, trim=fake.trim, read_free=fake.read_free
    )
    trimmer.check()
    fake.free = 10 * MIB  # exactly the threshold above the low
    assert not trimmer.check()
    fake.free = 1 * MIB  # reused: a new low
    assert not trimmer.check()
    fake.free = 9 * MIB + 1
    assert trimmer.check() and fake.trims == 1


def test_malloc_free_bytes_reads_glibc_or_says_it_cannot() -> None:
    free = heap.malloc_free_bytes()
    libc, version = platform.libc_ver()
    if libc == "glibc" and tuple(int(p) for p in version.split(".")[:2]) >= (2, 33):
        assert isinstance(free, int) and free >= 0
    else:
        assert free is None
