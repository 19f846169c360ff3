"""The group-commit writer's caps: the dead letter is bounded (oldest dropped, counted, logged)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from edge_agent.metrics import DEAD_LETTER_DROPPED
from edge_agent.store import Change, Store


def env(device: str, n: int) -> dict[str, Any]:
    return {"type": "booking.created", "data": {"event_id": f"{device}-{n}", "device_id": device}}


async def dead_letter_all(s: Store, device: str, n: int) -> None:
    for i in range(n):
        await s.commit(Change(device, events=[env(device, i)]))
    batch = await s.read_outbox("webhook", [(device, 0, n)])
    for e in batch:  # one progress mark each: several groups, the cap holds after each
        await s.dead_letter("webhook", [e], reason="rejected: HTTP 400", attempts=3)


async def test_dead_letter_cap_drops_the_oldest_counts_and_warns(tmp_path: Path) -> None:
    s = await Store.open(tmp_path / "a.db", dead_letter_max=3)
    try:
        before = DEAD_LETTER_DROPPED._value.get()
        with capture_logs() as logs:
            await dead_letter_all(s, "d", 5)
        dead = await s.dead_letters()
        assert [d["event_id"] for d in dead] == ["d-2", "d-3", "d-4"]  # the newest are kept
        assert (await s.stats())["dead_letters"] == 3
        assert DEAD_LETTER_DROPPED._value.get() - before == 2
        warnings = [e for e in logs if e["log_level"] == "warning"]
        assert sum(e["dropped"] for e in warnings) == 2
        assert all("dead letter full" in e["event"] and e["cap"] == 3 for e in warnings)
    finally:
        await s.close()


async def test_dead_letter_cap_holds_for_the_outbox_overflow_and_after_a_restart(
    tmp_path: Path,
) -> None:
    path = tmp_path / "a.db"
    s = await Store.open(path, outbox_max_events=2, dead_letter_max=4)
    try:
        for i in range(10):  # 8 move to the dead letter as "outbox full"; 4 of them stay
            await s.commit(Change("d", events=[env("d", i)]))
        assert [d["event_id"] for d in await s.dead_letters()] == [f"d-{i}" for i in range(4, 8)]
    finally:
        await s.close()
    s = await Store.open(path, outbox_max_events=2, dead_letter_max=2)  # the count was reloaded
    try:
        await s.commit(Change("d", events=[env("d", 10)]))
        assert [d["event_id"] for d in await s.dead_letters()] == ["d-7", "d-8"]
        assert await s.purge_dead_letters() == 2
        await dead_letter_all(s, "e", 2)  # the purge was counted: nothing dropped
        assert len(await s.dead_letters()) == 2
    finally:
        await s.close()


async def test_a_cap_below_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dead_letter_max"):
        await Store.open(tmp_path / "a.db", dead_letter_max=0)
