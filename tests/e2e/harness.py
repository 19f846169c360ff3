"""End-to-end harness: simulated devices -> the agent -> a real, signature-checking receiver.

The agent runs in the test's event loop with the simulator's clock, so a test can jump time
(midnight, request deadlines) for devices and agent at once. Everything is on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from device_sim import DeviceFleet
from edge_agent.agent import Agent
from edge_agent.config import AgentConfig, config_from_dict, resolve_secrets
from edge_agent.ops.demo import SimulatorClock

# Every fleet starts at this simulated instant, never at the wall clock: a Monday, 07:00 in Oslo,
# 01:00 in New York, before the generated office day (08:00-18:00 local) fills a room, so a
# booking "now" finds the room free and no verdict depends on when the suite runs.
SIM_START = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
PASSWORD = "sim-password"

# Millisecond-scale timing so faults and retries resolve quickly on a slow machine.
FAST_CLIENT = {
    "open_timeout": 3.0,
    "probe_interval": 1.0,
    "probe_timeout": 1.0,
    "ping_interval": None,
    "stable_after": 1.0,
    "not_ready_delay": 0.1,
    "close_timeout": 0.5,
}
FAST_SESSION = {"relist_debounce_s": 0.05, "tick_max_s": 0.05, "client_options": FAST_CLIENT}


def agent_config(
    fleet: DeviceFleet,
    tmp_path: Path,
    *,
    webhook_url: str | None,
    ca_file: Path,
    extra: dict[str, Any] | None = None,
    devices: Iterable[int] | None = None,
) -> AgentConfig:
    idx = range(len(fleet.devices)) if devices is None else devices
    raw: dict[str, Any] = {
        "site": "test",
        "store": {"path": str(tmp_path / "agent.db")},
        "defaults": {
            "username": fleet.config.username,
            "password_env": "SIM_PASSWORD",
            "ca_file": str(ca_file),
            "booking_timeout_s": 60,
            "request_grace_s": 5,
            "relist_interval_s": 300,
            "request_timeout_s": 5,
        },
        "devices": [{"id": fleet.devices[k].device_id, "url": fleet.devices[k].url} for k in idx],
        "api": {"listen": "127.0.0.1:0"},
    }
    if webhook_url is not None:
        raw["webhook"] = {"url": webhook_url, "secret_env": "WEBHOOK_SECRET", "timeout_s": 5}
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return config_from_dict(raw, env=ENV)


ENV = {"SIM_PASSWORD": "", "WEBHOOK_SECRET": SECRET}


# Agents started by start_agent and not stopped yet: eventually() reports their crash at once.
_RUNNING: set[asyncio.Task[int]] = set()


@dataclass
class RunningAgent:
    agent: Agent
    task: asyncio.Task[int]
    extra: dict[str, Any] = field(default_factory=dict)

    async def stop(self) -> int:
        _RUNNING.discard(self.task)
        self.agent.request_stop()
        return await asyncio.wait_for(self.task, 30)

    async def kill(self) -> None:
        """Cancel without the drain (what a crash leaves, minus the OS-level part)."""
        _RUNNING.discard(self.task)
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def start_agent(
    cfg: AgentConfig,
    fleet: DeviceFleet,
    *,
    env: dict[str, str],
    drainer: dict[str, Any] | None = None,
    session: dict[str, Any] | None = None,
) -> RunningAgent:
    agent = Agent(
        cfg,
        resolve_secrets(cfg, env=env),
        clock=SimulatorClock(fleet),
        session_overrides={**FAST_SESSION, **(session or {})},
        drainer_overrides=drainer or {},
        drain_timeout_s=2.0,
    )
    task = asyncio.create_task(agent.run(), name="test-agent")
    ready = asyncio.create_task(agent.ready.wait(), name="test-agent.ready")
    try:
        # the agent may end before it is ready (bad config, a crash): say so at once, with why
        await asyncio.wait({task, ready}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
    finally:
        ready.cancel()
    if task.done():
        code = task.result()  # raises the agent's exception, if it crashed
        raise AssertionError(f"the agent exited with status {code} before it was ready")
    if not agent.ready.is_set():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise AssertionError("the agent was not ready within 20 s")
    _RUNNING.add(task)
    return RunningAgent(agent, task)


async def eventually(pred: Callable[[], object], what: str = "", timeout: float = 15.0) -> None:
    """Wait until ``pred()`` is truthy; on timeout say what was awaited and what was last seen.

    An agent from ``start_agent`` that crashes meanwhile fails the wait at once, with its error.
    """
    last: object = None
    try:
        async with asyncio.timeout(timeout):
            while not (last := pred()):
                _raise_if_an_agent_crashed(what or _source(pred))
                await asyncio.sleep(0.02)
    except TimeoutError:
        name = what or _source(pred)
        raise AssertionError(f"waited {timeout:g} s for {name}; last value {last!r:.300}") from None


def _raise_if_an_agent_crashed(waiting_for: str) -> None:
    loop = asyncio.get_running_loop()
    for task in list(_RUNNING):
        if task.get_loop() is not loop:  # an earlier test's agent, left behind by its failure
            _RUNNING.discard(task)
        elif task.done():
            _RUNNING.discard(task)
            if task.cancelled():
                continue
            error = task.exception()
            if error is not None:
                crashed = f"the agent crashed while waiting for {waiting_for}"
                raise AssertionError(crashed) from error
            raise AssertionError(
                f"the agent exited (status {task.result()}) while waiting for {waiting_for}"
            )


def _source(pred: Callable[[], object]) -> str:
    """The source line of a predicate (a lambda says best what it waits for)."""
    try:
        text = " ".join(inspect.getsource(pred).split())
    except (OSError, TypeError):
        return repr(pred)
    return text[:200]


async def booking_created(
    events: list[dict[str, Any]], request_uuid: str, timeout: float = 15.0
) -> dict[str, Any]:
    """The ``booking.created`` data for a touch-panel request; fails AT ONCE on ``booking.failed``
    for it (with the device's cause), rather than timing out later without one."""

    def outcome() -> dict[str, Any] | None:
        for e in events:
            data = e["data"]
            booking = data.get("booking") or {}
            if request_uuid not in (
                data.get("booking_request_uuid"),
                booking.get("booking_request_uuid"),
            ):
                continue
            if e["type"] == "booking.failed":
                raise AssertionError(
                    f"booking request {request_uuid} failed: cause {data.get('cause')!r}"
                )
            if e["type"] == "booking.created":
                return dict(data)
        return None

    found: dict[str, Any] | None = None

    def seen() -> bool:
        nonlocal found
        found = outcome()
        return found is not None

    await eventually(seen, f"booking.created for request {request_uuid}", timeout)
    assert found is not None
    return found


def of_type(events: list[dict[str, Any]], *types: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] in types]
