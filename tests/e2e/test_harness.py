"""The harness itself: it never hides a crash, and a timeout says what it waited for."""

from __future__ import annotations

import asyncio

import pytest

from tests.e2e.harness import _RUNNING, agent_config, booking_created, eventually, start_agent


async def test_start_agent_raises_when_the_agent_ends_before_it_is_ready(
    make_fleet, tmp_path, ca_file, env
):
    fleet = await make_fleet()
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    cfg = agent_config(
        fleet,
        tmp_path,
        webhook_url=None,
        ca_file=ca_file,
        extra={"store": {"path": str(not_a_dir / "agent.db")}},  # cannot be created
    )
    # the agent's own exception (the store's StoreError), at once: not "not ready within 20 s"
    with pytest.raises(Exception, match="cannot create the lock file"):
        await start_agent(cfg, fleet, env=env)


async def test_eventually_names_what_it_waited_for_and_the_last_value() -> None:
    seen = [1, 2, 3]
    with pytest.raises(AssertionError) as info:
        await eventually(lambda: len(seen) > 5 and seen, "five things seen", timeout=0.1)
    assert str(info.value) == "waited 0.1 s for five things seen; last value False"
    with pytest.raises(AssertionError) as info:
        await eventually(lambda: [] if seen else None, timeout=0.05)
    # no description: the predicate's source says what it waited for
    assert "await eventually(lambda: [] if seen else None" in str(info.value)
    assert str(info.value).endswith("; last value []")


async def test_booking_created_fails_at_once_on_booking_failed() -> None:
    events = [
        {"type": "booking.requested", "data": {"booking": {"booking_request_uuid": "u-1"}}},
        {"type": "booking.failed", "data": {"booking_request_uuid": "u-1", "cause": "Decline"}},
    ]
    with pytest.raises(AssertionError, match="u-1 failed: cause 'Decline'"):
        # a long timeout: only failing at once makes this test end
        await booking_created(events, "u-1", timeout=3600)


async def test_booking_created_returns_the_created_data() -> None:
    created = {"booking": {"booking_request_uuid": "u-2", "meeting_id": "m"}, "pending_ms": 5}
    events = [
        {"type": "booking.failed", "data": {"booking_request_uuid": "other", "cause": "Decline"}},
        {"type": "booking.created", "data": created},
    ]
    assert await booking_created(events, "u-2") == created


async def test_eventually_fails_at_once_when_an_agent_crashes() -> None:
    async def agent_run() -> int:
        raise RuntimeError("boom in the agent")

    task = asyncio.create_task(agent_run())
    _RUNNING.add(task)  # what start_agent does with the agent's task
    with pytest.raises(AssertionError, match="the agent crashed while waiting for x") as info:
        await eventually(lambda: False, "x", timeout=3600)  # only failing at once ends this
    assert isinstance(info.value.__cause__, RuntimeError)
    assert task not in _RUNNING
