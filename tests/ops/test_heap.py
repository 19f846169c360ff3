"""edge_agent.ops.heap: give freed memory back to the OS where the C library can."""

from __future__ import annotations

import platform

from edge_agent.ops import heap


def test_release_free_memory_is_safe_to_call_and_says_whether_it_did() -> None:
    done = heap.release_free_memory()
    libc, _ = platform.libc_ver()
    assert done is (libc == "glibc")
    assert heap.release_free_memory() is done  # and again: no state to trip on
