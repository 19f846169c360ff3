"""End-to-end harness: simulated devices -> the agent -> a real, signature-checking receiver.

The agent runs in the test's event loop with the simulator's clock, so a test can jump time
(midnight, request deadlines) for devices and agent at once. Everything is on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device_sim import DeviceFleet
from edge_agent.agent import Agent
from edge_agent.config import AgentConfig, config_from_dict, resolve_secrets
from edge_agent.ops.demo import SimulatorClock

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


@dataclass
class RunningAgent:
    agent: Agent
    task: asyncio.Task[int]
    extra: dict[str, Any] = field(default_factory=dict)

    async def stop(self) -> int:
        self.agent.request_stop()
        return await asyncio.wait_for(self.task, 30)

    async def kill(self) -> None:
        """Cancel without the drain (what a crash leaves, minus the OS-level part)."""
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
    async with asyncio.timeout(20):
        await agent.ready.wait()
    return RunningAgent(agent, task)


async def eventually(pred: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.02)


def of_type(events: list[dict[str, Any]], *types: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] in types]
