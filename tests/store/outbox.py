"""Helpers for the store tests: envelopes, and reading the outbox as a starting drainer would."""

from __future__ import annotations

import uuid
from typing import Any

from edge_agent.forward.schedule import DeliverySchedule, OutboxEvent
from edge_agent.store import Store


def env(device: str, n: int | None = None, type_: str = "booking.created") -> dict[str, Any]:
    eid = f"{device}-{n}" if n is not None else str(uuid.uuid4())
    return {
        "type": type_,
        "timestamp": "2026-11-23T09:00:00.000Z",
        "data": {"event_id": eid, "device_id": device, "n": n},
    }


async def next_batches(
    store: Store,
    sink: str,
    *,
    now: float,
    max_devices: int,
    max_batch: int,
    exclude: set[str] | None = None,
) -> list[list[OutboxEvent]]:
    """What a drainer starting now would send first: the stored progress, through the schedule."""
    schedule = DeliverySchedule(await store.load_progress(sink))
    skip = set(exclude or ())
    out: list[list[OutboxEvent]] = []
    while len(out) < max_devices:
        reads = schedule.choose(
            now, max_streams=max_devices - len(out), max_batch=max_batch, exclude=skip
        )
        if not reads:
            return out
        out += schedule.batches(reads, await store.read_outbox(sink, reads))
        skip.update(r.stream for r in reads)
    return out


async def drain_all(store: Store, sink: str = "webhook") -> list[Any]:
    """Deliver everything for ``sink`` through the drainer API; returns the events in order."""
    out: list[Any] = []
    while True:
        batches = await next_batches(store, sink, now=1e12, max_devices=100, max_batch=1000)
        if not batches:
            return out
        for b in batches:
            out += b
            await store.mark_delivered(sink, b)
