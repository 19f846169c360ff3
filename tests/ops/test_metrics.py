"""Per-room metrics, build info and process metrics, scraped from ``/metrics``: from the
export's bookkeeping alone, and from a running agent with simulated devices (a device removed
by a reload takes its series with it)."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import httpx
import pytest

from edge_agent import __version__, metrics
from edge_agent.ops.api import LocalApi
from edge_agent.xapi import LinkCounters
from tests.e2e.conftest import ca, ca_file, env, make_fleet, receiver  # noqa: F401
from tests.e2e.harness import agent_config, eventually, of_type, start_agent

NOW = 1_795_000_000.0  # 2026-11-18; the export takes time as an argument


class NoAgent:
    store = None

    def devices(self) -> list[object]:
        return []

    def sinks(self) -> list[object]:
        return []


async def scrape(url: str) -> str:
    async with httpx.AsyncClient(timeout=5) as http:
        r = await http.get(url + "/metrics")
    assert r.status_code == 200
    return r.text


def value(text: str, name: str, **labels: str) -> float | None:
    """The sample ``name{labels}`` in an exposition (labels exactly, in any order)."""
    for line in text.splitlines():
        m = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if got == labels:
            return float(m.group(3))
    return None


async def test_export_sets_up_last_seen_and_errors_by_device_and_kind() -> None:
    export = metrics.LinkCountersExport()
    c = LinkCounters(connects=1, frames=10)
    export.export("room-m1", c, connected=True, last_error=None, now=NOW)
    c.error("lost")
    export.export("room-m1", c, connected=False, last_error="room-m1: link lost", now=NOW + 5)
    export.export("room-m1", c, connected=False, last_error="room-m1: link lost", now=NOW + 10)
    t = export.times("room-m1")
    assert t is not None
    assert (t.connected, t.since, t.last_seen, t.last_error_at) == (False, NOW + 5, NOW, NOW + 5)
    async with LocalApi(NoAgent(), "127.0.0.1:0") as api:  # type: ignore[arg-type]
        text = await scrape(api.url)
        assert value(text, "edge_agent_device_up", device="room-m1") == 0
        assert value(text, "edge_agent_device_last_seen_seconds", device="room-m1") == NOW
        assert value(text, "edge_agent_device_errors_total", device="room-m1", kind="lost") == 1
        # Frames arrive on a new link: seen again, up again.
        c.frames, c.connects = 12, 2
        export.export("room-m1", c, connected=True, last_error="room-m1: link lost", now=NOW + 15)
        text = await scrape(api.url)
        assert value(text, "edge_agent_device_up", device="room-m1") == 1
        assert value(text, "edge_agent_device_last_seen_seconds", device="room-m1") == NOW + 15
        export.forget("room-m1")
        text = await scrape(api.url)
    assert 'device="room-m1"' not in text
    assert export.times("room-m1") is None


async def test_build_info_process_metrics_and_no_created_series() -> None:
    async with LocalApi(NoAgent(), "127.0.0.1:0") as api:  # type: ignore[arg-type]
        text = await scrape(api.url)
    assert (
        value(text, "edge_agent_build_info", version=__version__, python=platform.python_version())
        == 1
    )
    assert (value(text, "process_resident_memory_bytes") or 0) > 0
    assert value(text, "process_open_fds") is not None
    assert "python_info{" in text
    assert "edge_agent_deliveries_total" in text or "# TYPE edge_agent_deliveries" in text
    assert not [line for line in text.splitlines() if "_created" in line]


@pytest.mark.timeout(120)
async def test_a_running_agent_exports_rooms_and_forgets_a_removed_one(
    make_fleet,  # noqa: F811
    receiver,  # noqa: F811
    tmp_path: Path,
    ca_file,  # noqa: F811
    env,  # noqa: F811
) -> None:
    fleet = await make_fleet(mode="hybrid", devices=2)
    cfg = agent_config(fleet, tmp_path, webhook_url=receiver.url, ca_file=ca_file)
    running = await start_agent(cfg, fleet, env=env)
    agent = running.agent
    keep, drop = (d.device_id for d in fleet.devices)
    try:
        await eventually(lambda: len(of_type(receiver.events, "bookings.snapshot")) >= 2)
        await agent.sample()
        assert agent.api is not None
        text = await scrape(agent.api.url)
        now = fleet.clock.now().timestamp()
        for device in (keep, drop):
            assert value(text, "edge_agent_device_up", device=device) == 1
            seen = value(text, "edge_agent_device_last_seen_seconds", device=device)
            assert seen is not None and abs(seen - now) < 60
        listed = {d["id"]: d for d in agent.devices()}
        assert listed[keep]["connected_since"] and listed[keep]["last_seen"]  # type: ignore[typeddict-item]
        # A reload that leaves `drop` out of the configuration.
        toml = tmp_path / "agent.toml"
        d0 = fleet.devices[0]
        toml.write_text(
            f'site = "test"\n[store]\npath = "{tmp_path / "agent.db"}"\n'
            f'[defaults]\nusername = "{fleet.config.username}"\npassword_env = "SIM_PASSWORD"\n'
            f'ca_file = "{ca_file}"\nbooking_timeout_s = 60\nrequest_grace_s = 5\n'
            "relist_interval_s = 300\nrequest_timeout_s = 5\n"
            f'[[devices]]\nid = "{d0.device_id}"\nurl = "{d0.url}"\n'
            f'[webhook]\nurl = "{receiver.url}"\nsecret_env = "WEBHOOK_SECRET"\ntimeout_s = 5\n'
            f'[api]\nlisten = "127.0.0.1:0"\n'
        )
        agent._config_path = toml
        os.environ.update(env)
        agent.request_reload()
        await eventually(lambda: sorted(agent._device_tasks) == [keep])
        await eventually(lambda: agent._sessions[keep].client.connected)
        await agent.sample()
        text = await scrape(agent.api.url)
        assert value(text, "edge_agent_device_up", device=keep) == 1
        assert f'device="{drop}"' not in text
    finally:
        await running.stop()


def test_the_link_gauges_keep_their_exposition_without_a_child_per_device() -> None:
    """Served by a collector that reads the samples at scrape time (no labelled child, value
    and lock per device), with the families' names, help, type and labels as before."""
    from prometheus_client import generate_latest

    export = metrics.LinkCountersExport()
    export.export("room-g1", LinkCounters(connects=1), connected=True, last_error=None, now=NOW)
    export.export("room-g2", LinkCounters(), connected=False, last_error="down", now=NOW)
    text = generate_latest(metrics.REGISTRY).decode()
    assert "# TYPE edge_agent_device_up gauge" in text
    assert "# TYPE edge_agent_device_last_seen_seconds gauge" in text
    assert 'edge_agent_device_up{device="room-g1"} 1.0' in text.splitlines()
    assert 'edge_agent_device_up{device="room-g2"} 0.0' in text.splitlines()
    assert value(text, "edge_agent_device_last_seen_seconds", device="room-g1") == NOW
    # Never seen (no frame, no connect): no last-seen series.
    assert value(text, "edge_agent_device_last_seen_seconds", device="room-g2") is None
    assert metrics.REGISTRY.get_sample_value("edge_agent_device_up", {"device": "room-g1"}) == 1
    export.forget("room-g1")
    export.forget("room-g2")
    assert 'device="room-g1"' not in generate_latest(metrics.REGISTRY).decode()
