"""The drainer reading ahead during a backlog: order, restarts, dead letters, its memory bound.

The backlog is committed and the store reopened before the drainer starts, so nothing is in
the store's memory of recent commits: every batch is read from the database, ahead or not.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_agent.forward.base import OutboxEvent, Outcome
from edge_agent.forward.drainer import Drainer
from edge_agent.forward.webhook import WebhookSink
from edge_agent.store import Change, Store
from tests.forward.test_drainer import SECRET, assert_in_order, env, running, wait_delivered
from tests.receivers import Delivery, Reply, WebhookReceiver

DEVICES = 12
PER_DEVICE = 25


async def backlog(path: Path, devices: int = DEVICES, per_device: int = PER_DEVICE) -> None:
    """Commit ``per_device`` events for each device, interleaved, and close the store."""
    store = await Store.open(path)
    try:
        for n in range(per_device):
            await asyncio.gather(
                *(
                    store.commit(Change(f"room-{d}", events=[env(f"room-{d}", n)]))
                    for d in range(devices)
                )
            )
    finally:
        await store.close()


async def test_order_per_device_across_the_read_ahead(tmp_path: Path) -> None:
    await backlog(tmp_path / "a.db")
    rng = random.Random(7)
    async with WebhookReceiver(SECRET) as rx:
        rx.responder = lambda d: Reply(200, delay_s=rng.choice([0, 0, 0.001, 0.004]))
        store = await Store.open(tmp_path / "a.db")
        sink = WebhookSink(rx.url, [SECRET], batch_max=4)
        try:
            async with running(store, sink, max_in_flight=3, read_ahead=5) as drainer:
                await wait_delivered(drainer, DEVICES * PER_DEVICE, timeout=20)
            assert_in_order(rx, DEVICES, PER_DEVICE)
            assert rx.duplicates == 0  # nothing read ahead was sent twice
            await store.flush()  # the last deletes are written behind (group commit)
            assert (await store.stats())["sinks"]["webhook"]["depth"] == 0
        finally:
            await sink.close()
            await store.close()


async def test_a_restart_mid_backlog_resends_exactly_what_was_not_acknowledged(
    tmp_path: Path,
) -> None:
    await backlog(tmp_path / "a.db")
    async with WebhookReceiver(SECRET) as rx:
        acked: set[str] = set()

        def first_ten_then_down(d: Delivery) -> Reply:
            return Reply(204) if rx.requests <= 10 else Reply(503)

        rx.responder = first_ten_then_down
        store = await Store.open(tmp_path / "a.db")
        sink = WebhookSink(rx.url, [SECRET], batch_max=4)
        try:
            async with running(store, sink, max_in_flight=3, read_ahead=6) as drainer:
                await rx.wait_requests(14, timeout=10)  # past the ten, the rest answered 503
                async with asyncio.timeout(10):
                    while drainer.stats().retried == 0 or drainer.stats().in_flight:
                        await asyncio.sleep(0.005)
            acked = set(rx.accepted_ids)
            assert len(acked) == drainer.stats().delivered == 10 * 4
        finally:
            await sink.close()
            await store.close()  # the progress of what was acknowledged is written first

        rx.responder = None
        second: list[str] = []
        rx_record = rx._record

        def record(d: Delivery, envs: list[dict[str, Any]]) -> None:
            second.extend(e["data"]["event_id"] for e in envs)
            rx_record(d, envs)

        rx._record = record  # type: ignore[method-assign]
        store = await Store.open(tmp_path / "a.db")
        sink = WebhookSink(rx.url, [SECRET], batch_max=4)
        try:
            async with running(store, sink, max_in_flight=3, read_ahead=6) as drainer:
                await wait_delivered(drainer, DEVICES * PER_DEVICE - len(acked), timeout=20)
            everything = {f"room-{d}-{n}" for d in range(DEVICES) for n in range(PER_DEVICE)}
            assert sorted(second) == sorted(everything - acked)  # each once, none acked again
            assert_in_order(rx, DEVICES, PER_DEVICE)
        finally:
            await sink.close()
            await store.close()


async def test_a_poison_event_in_the_backlog_is_dead_lettered_alone(tmp_path: Path) -> None:
    await backlog(tmp_path / "a.db")
    poison = b'"event_id":"room-3-7"'
    async with WebhookReceiver(SECRET) as rx:
        rx.responder = lambda d: Reply(400) if poison in d.body else None
        store = await Store.open(tmp_path / "a.db")
        sink = WebhookSink(rx.url, [SECRET], batch_max=4)
        try:
            async with running(store, sink, max_in_flight=3, read_ahead=6) as drainer:
                await wait_delivered(drainer, DEVICES * PER_DEVICE - 1, timeout=20)
                assert drainer.stats().dead_lettered == 1
            await store.flush()
            (dead,) = await store.dead_letters()
            assert dead["event_id"] == "room-3-7"
            got = rx.by_device()
            assert [e["data"]["n"] for e in got["room-3"]] == [
                n for n in range(PER_DEVICE) if n != 7
            ]
            assert (await store.stats())["sinks"]["webhook"]["depth"] == 0
        finally:
            await sink.close()
            await store.close()


class CountingSink:
    """A sink that answers at once and checks, at every send, what the drainer holds ahead."""

    name = "webhook"
    max_batch = 3

    def __init__(self) -> None:
        self.drainer: Drainer | None = None
        self.most_ahead = 0  # events held ahead, the most seen
        self.sent: list[OutboxEvent] = []

    async def run(self) -> None:
        return None

    def ready(self) -> bool:
        return True

    async def send(self, events: Sequence[OutboxEvent]) -> Outcome:
        from edge_agent.forward.base import Delivered

        assert self.drainer is not None
        held = self.drainer._ahead.values()
        assert len(held) <= 4  # read_ahead below
        self.most_ahead = max(self.most_ahead, sum(len(evs) for _, evs in held))
        self.sent += events
        await asyncio.sleep(0)
        return Delivered()

    async def close(self) -> None:
        return None


async def test_what_is_read_ahead_stays_within_its_bound(tmp_path: Path) -> None:
    await backlog(tmp_path / "a.db", devices=30, per_device=10)
    store = await Store.open(tmp_path / "a.db")
    sink = CountingSink()
    try:
        drainer = Drainer(store, sink, max_in_flight=2, read_ahead=4)
        sink.drainer = drainer
        task = asyncio.create_task(drainer.run())
        try:
            await wait_delivered(drainer, 300, timeout=20)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert 0 < sink.most_ahead <= 4 * sink.max_batch  # read ahead was used, and bounded
        assert sorted(e.seq for e in sink.sent) == sorted({e.seq for e in sink.sent})
        assert len(sink.sent) == 300
    finally:
        await store.close()


class GatedSink(CountingSink):
    """Holds each send until the test lets it go; records every batch sent."""

    max_batch = 5

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.batches: list[list[str]] = []

    async def send(self, events: Sequence[OutboxEvent]) -> Outcome:
        from edge_agent.forward.base import Delivered

        self.batches.append([e.device_id for e in events])
        self.entered.set()
        await self.gate.wait()
        return Delivered()


async def test_a_short_batch_read_ahead_is_read_again_not_sent_short(tmp_path: Path) -> None:
    """room-b's one event is read ahead while room-a's full batch is in flight; four more of
    room-b's come before its turn: its batch then carries all five (sent short, each batch
    read ahead would cost a request per event or two while the drainer keeps up)."""
    store = await Store.open(tmp_path / "a.db")
    sink = GatedSink()
    try:
        await store.commit(Change("room-a", events=[env("room-a", n) for n in range(10)]))
        await store.commit(Change("room-b", events=[env("room-b", 0)]))
        async with running(store, sink, max_in_flight=1, read_ahead=2) as drainer:
            await asyncio.wait_for(sink.entered.wait(), 5)
            assert sink.batches == [["room-a"] * 5]  # full: a backlog, so room-b is read ahead
            async with asyncio.timeout(5):
                while "room-b" not in drainer._ahead:
                    await asyncio.sleep(0.001)
            await store.commit(Change("room-b", events=[env("room-b", n) for n in range(1, 5)]))
            sink.gate.set()
            await wait_delivered(drainer, 15, timeout=10)
        assert ["room-b"] * 5 in sink.batches, sink.batches
        assert ["room-b"] not in sink.batches
    finally:
        await store.close()
