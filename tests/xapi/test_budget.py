"""The loop's feedback budget: readers stop at the bound and go on, in order, once there is room."""

from __future__ import annotations

import asyncio
import copy
import gc
import pickle
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from device_sim.server import Device
from edge_agent.xapi.budget import FeedbackBudget, loop_budget
from edge_agent.xapi.protocol import Feedback

from .test_client_sim import Harness, device, fleet, until  # noqa: F401 - fixtures

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def counted(budget: FeedbackBudget) -> Feedback:
    fb = Feedback({"Event": {}}, T0)
    budget.take()
    fb.budget = budget
    return fb


# --- the budget itself ------------------------------------------------------------------------


async def test_the_gate_closes_at_the_limit_and_opens_at_resume_at() -> None:
    budget = FeedbackBudget(limit=4, resume_at=1)
    alive = [counted(budget) for _ in range(3)]
    assert budget.room() is None and not budget.full
    alive.append(counted(budget))
    room = budget.room()
    assert room is not None and budget.full and budget.room() is room  # one shared future
    del alive[:2]  # 2 left: above resume_at
    assert budget.held == 2 and not room.done()
    del alive[0]
    assert budget.held == 1 and room.done()
    assert budget.room() is None


async def test_a_freed_feedback_gives_its_place_back_once_and_copies_are_not_counted() -> None:
    budget = FeedbackBudget(limit=2)
    fb = counted(budget)
    twins = [copy.copy(fb), copy.deepcopy(fb), pickle.loads(pickle.dumps(fb))]
    assert all(t == fb and t.arrived_at == T0 and t.budget is None for t in twins)
    del twins
    assert budget.held == 1
    fb.__del__()  # an explicit call, then the real one: released once
    del fb
    assert budget.held == 0


def test_uncounted_feedback_needs_no_budget() -> None:
    fb = Feedback({"Status": {}}, T0)
    assert fb.budget is None
    del fb  # nothing to release, nothing raised
    gc.collect()


@pytest.mark.parametrize(("limit", "resume_at"), [(0, None), (4, 4), (4, -1)])
def test_bad_bounds_are_refused(limit: int, resume_at: int | None) -> None:
    with pytest.raises(ValueError, match="limit|resume_at"):
        FeedbackBudget(limit=limit, resume_at=resume_at)


async def test_each_loop_has_its_own_shared_budget() -> None:
    assert loop_budget() is loop_budget()
    other = await asyncio.to_thread(lambda: asyncio.run(_budget_of_a_new_loop()))
    assert other is not loop_budget()


async def _budget_of_a_new_loop() -> FeedbackBudget:
    return loop_budget()


# --- a reader at the bound ---------------------------------------------------------------------


class Holding(Harness):
    """A client whose handler keeps every notification (so each holds its place) and notes
    the id of every BookingCreated (a string: it holds nothing)."""

    def __init__(self, device: Device, ca_file: str) -> None:
        super().__init__(device, ca_file, feedback_budget=FeedbackBudget(limit=3, resume_at=0))
        self.created: list[str] = []

    def handler(self, payload: dict[str, Any]) -> None:
        self.events.append(payload)
        created = payload["Event"]["Bookings"].get("BookingCreated")
        if created is not None:
            self.created.append(created["Id"])


@pytest.fixture
async def holding(device: Device, ca_file: str) -> AsyncIterator[Holding]:
    h = Holding(device, ca_file)
    await h.start()
    yield h
    await h.stop()


def add_bookings(device: Device, n: int) -> list[str]:
    start = device.clock.now() + timedelta(hours=1)
    return [device.calendar.add(start + timedelta(hours=i), 30).id for i in range(n)]


async def test_the_reader_waits_at_the_bound_and_loses_nothing(holding: Holding) -> None:
    made = add_bookings(holding.device, 6)
    counters = holding.client.counters
    waits = 0
    while len(holding.created) < len(made):
        await until(lambda: counters.budget_waits > waits or len(holding.created) == len(made))
        if counters.budget_waits > waits:
            # Full: the reader waits, having delivered exactly the limit since the last room.
            assert len(holding.events) == 3
            waits = counters.budget_waits
        holding.events.clear()  # freed: their places are given back and the reader goes on
    assert holding.created == made  # in order, none lost
    assert waits >= 2


async def test_a_waiting_reader_still_closes_promptly(holding: Holding) -> None:
    add_bookings(holding.device, 5)
    await until(lambda: holding.client.counters.budget_waits >= 1)
    await holding.client.close()
    assert holding.task is not None
    await asyncio.wait_for(holding.task, 2)  # not stuck at the gate


# --- fair shares -------------------------------------------------------------------------------


class Keeping(Harness):
    """A client on a shared budget whose handler keeps every notification (a stuck session) or
    lets each go (one that keeps up); both note the ids of the BookingCreated."""

    def __init__(self, device: Device, ca_file: str, budget: FeedbackBudget, keep: bool) -> None:
        super().__init__(device, ca_file, feedback_budget=budget)
        self.keep = keep
        self.created: list[str] = []

    def handler(self, payload: dict[str, Any]) -> None:
        if self.keep:
            self.events.append(payload)
        created = payload["Event"]["Bookings"].get("BookingCreated")
        if created is not None:
            self.created.append(created["Id"])


def test_a_share_is_a_part_of_the_budget() -> None:
    assert FeedbackBudget().share_max == 256  # 1/8 of 2,048
    assert FeedbackBudget(limit=3).share_max == 3  # small budgets are not cut up
    with pytest.raises(ValueError, match="share_max"):
        FeedbackBudget(limit=4, share_max=5)


async def test_a_stuck_link_waits_at_its_share_and_the_others_read_on(
    device: Device, ca_file: str
) -> None:
    """Before shares, the stuck link read until it held the whole budget (8 here) and the
    other reader waited with it, up to 30 s; now it stops at its share (3) and waits alone."""
    budget = FeedbackBudget(limit=8, resume_at=2, share_max=3)
    stuck = Keeping(device, ca_file, budget, keep=True)
    keeping_up = Keeping(device, ca_file, budget, keep=False)
    await stuck.start()
    await keeping_up.start()
    try:
        made = add_bookings(device, 10)
        await until(lambda: keeping_up.created == made)  # all of them, in order, meanwhile
        await until(lambda: stuck.client.counters.budget_waits >= 1)
        assert len(stuck.events) == 3  # its share, not the budget's 8
        assert stuck.created == made[: len(stuck.created)] != made
        assert keeping_up.client.counters.budget_waits == 0
        stuck.events.clear()  # it gets going again: the rest arrives, in order, none lost
        while stuck.created != made:
            await until(lambda: stuck.created == made or len(stuck.events) == 3)
            stuck.events.clear()
        assert stuck.created == made
    finally:
        await stuck.stop()
        await keeping_up.stop()
