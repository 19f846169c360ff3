"""The JSON codec's bytes are the size of what they hold (orjson's are not)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable

import orjson

from edge_agent import jsoncodec

ENVELOPE = {
    "type": "booking.started",
    "data": {"event_id": "0" * 36, "device_id": "room-1", "observed_at": "2026-12-02T18:00:00Z"},
}


def _allocated(make: Callable[[], bytes]) -> int:
    """Bytes still allocated after ``make()``, its result kept."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = make()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert kept
    return after - before


def test_dumpb_keeps_no_more_than_its_bytes() -> None:
    body = jsoncodec.dumpb(ENVELOPE)
    assert body == orjson.dumps(ENVELOPE)
    assert orjson.loads(body) == ENVELOPE
    # ~150 bytes of JSON: a few dozen bytes of object header on top, not orjson's 4 KiB buffer.
    assert _allocated(lambda: jsoncodec.dumpb(ENVELOPE)) < len(body) + 128


def test_dumpb_of_a_large_document_is_exact_too() -> None:
    doc = {"window": [dict(ENVELOPE, n=i) for i in range(40)]}
    body = jsoncodec.dumpb(doc)
    assert len(body) > 4096
    assert _allocated(lambda: jsoncodec.dumpb(doc)) < len(body) + 128
