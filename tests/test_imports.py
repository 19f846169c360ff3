"""What an agent loads, per configuration kind: each library is imported on the path that needs
it, never by an agent that does not use it (docs/perf-notes.md "Start-up memory": each one is
MiB of RSS for the whole life of the process).

Two kinds of holds:

- importing the agent and its command line (``edge_agent.agent``, the CLI's main) loads no
  sink's, store's or calendar source's library;
- a real agent (``python -m edge_agent run -c`` through the CLI's ``main``, in a subprocess)
  against simulated devices, delivering to a real receiver (a webhook receiver, or mosquitto),
  loads only what its configuration asks for: what ``sys.modules`` holds at its exit (after
  start, delivery and the drain) is checked.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

import pytest
import trustme

from device_sim import DeviceFleet, SimConfig
from tests.e2e.harness import PASSWORD, SECRET, SIM_START
from tests.mosquitto import Mosquitto, Subscriber, free_port
from tests.ops.test_cli import cli_env
from tests.receivers import WebhookReceiver

CALENDAR_LIBRARIES = ("requests", "msal", "google.auth", "cryptography")
"""The token sources' stack (~3.4 MiB for requests alone): only with a calendar source."""
POSTGRES = ("psycopg", "psycopg_pool", "edge_agent.store.postgres", "edge_agent.store.pgwriter")
"""Fleet mode's driver and pool (~13 MiB) and store (~0.7 MiB): only with ``[store] url``."""
HTTP_CLIENT = ("httpx", "httpx_aiohttp", "edge_agent.forward.webhook", "edge_agent.httpclient")
"""The outbound HTTP stack (~3.5 MiB beside aiohttp's server): webhooks and calendars only."""
HTTPX = ("httpx", "httpx_aiohttp")
"""httpx's API (~3.5 MiB): the calendar sources only; the webhook sink is on aiohttp alone."""
MQTT = ("paho", "edge_agent.forward.mqtt")
"""paho (~4 MiB): only with ``[mqtt]``."""
CLI_ONLY = ("edge_agent.ops.cli.demo", "edge_agent.ops.demo", "edge_agent.ops.cli.report")
"""Commands other than ``run`` (and what only they use): loaded when that command runs."""
UNUSED = ("click", "pygments", "rich", "difflib")
"""Loaded before by other libraries' optional parts (httpx's command line: click, pygments'
lexer table, rich; ~3 MiB where they are installed, as here) or by an error path only."""


def loaded(modules: Iterable[str], names: Iterable[str]) -> list[str]:
    """Those of ``names`` (a module, or a package with its submodules) found in ``modules``."""
    mods = set(modules)
    return sorted(n for n in names if n in mods or any(m.startswith(n + ".") for m in mods))


def test_the_agent_and_its_cli_import_no_sink_store_or_calendar_library() -> None:
    code = (
        "import sys, edge_agent.agent, edge_agent.ops.cli.main\n"
        "print('\\n'.join(k for k, m in sys.modules.items() if m is not None))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    modules = out.stdout.split()
    assert "edge_agent.agent.core" in modules  # the listing is the one wanted
    names = (*CALENDAR_LIBRARIES, *POSTGRES, *HTTP_CLIENT, *MQTT, *CLI_ONLY, *UNUSED)
    assert loaded(modules, names) == [], out.stderr


# --- a real agent, per configuration kind -----------------------------------------------------

# Runs the CLI as `python -m edge_agent` does, and writes sys.modules when the process exits.
RUN_AND_LIST = """
import atexit, sys
out = sys.argv.pop(1)
mods = lambda: sorted(k for k, m in sys.modules.items() if m is not None)  # None: blocked
atexit.register(lambda: open(out, "w").write("\\n".join(mods()) + "\\n"))
from edge_agent.ops.cli import main
sys.argv[0] = "edge-agent"
sys.exit(main())
"""


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[tuple[DeviceFleet, Path]]:
    """Two simulated TLS devices at ``SIM_START``, and the CA file that trusts them."""
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = tmp_path / "dev-cert.pem", tmp_path / "dev-key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    sim = DeviceFleet(
        SimConfig(
            host="127.0.0.1",
            port=0,
            password=PASSWORD,
            cert_file=str(cert_file),
            key_file=str(key_file),
            devices=2,
            start=SIM_START,
        )
    )
    await sim.start()
    try:
        yield sim, ca_file
    finally:
        await sim.stop()


async def run_agent(
    tmp_path: Path,
    fleet: tuple[DeviceFleet, Path],
    sink_section: str,
    delivered: Callable[[], bool],
) -> list[str]:
    """Start the agent through its CLI with ``sink_section``, wait until ``delivered()`` (every
    device's first events at the receiver), stop it with SIGTERM: what it had loaded."""
    sim, ca_file = fleet
    config = tmp_path / "agent.toml"
    config.write_text(
        f'site = "test"\n[store]\npath = "{tmp_path / "agent.db"}"\n'
        f'[defaults]\nusername = "{sim.config.username}"\npassword_env = "SIM_PASSWORD"\n'
        f'ca_file = "{ca_file}"\n[api]\nlisten = "127.0.0.1:{free_port()}"\n'
        + "".join(f'[[devices]]\nid = "{d.device_id}"\nurl = "{d.url}"\n' for d in sim.devices)
        + sink_section
    )
    listing = tmp_path / "modules.txt"
    env = cli_env({"SIM_PASSWORD": PASSWORD, "WEBHOOK_SECRET": SECRET})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", RUN_AND_LIST, str(listing), "run", "-c", str(config),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=tmp_path,
    )  # fmt: skip
    try:
        async with asyncio.timeout(60):
            while not delivered():
                assert proc.returncode is None, "the agent exited before delivering"
                await asyncio.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()[-3000:]
    return listing.read_text().split()


async def test_a_webhook_only_agent_loads_no_mqtt_postgres_or_calendar_library(
    tmp_path: Path, fleet: tuple[DeviceFleet, Path]
) -> None:
    async with WebhookReceiver(SECRET) as rx:
        section = f'[webhook]\nurl = "{rx.url}"\nsecret_env = "WEBHOOK_SECRET"\n'
        devices = {d.device_id for d in fleet[0].devices}

        def delivered() -> bool:
            return {e["data"].get("device_id") for e in rx.events} >= devices

        modules = await run_agent(tmp_path, fleet, section, delivered)
    assert "edge_agent.forward.webhook" in modules and "edge_agent.session" in modules  # it ran
    names = (*HTTPX, *MQTT, *POSTGRES, *CALENDAR_LIBRARIES, *CLI_ONLY, *UNUSED)
    assert loaded(modules, names) == []


async def test_an_mqtt_only_agent_loads_no_http_client_postgres_or_calendar_library(
    tmp_path: Path, fleet: tuple[DeviceFleet, Path]
) -> None:
    with (
        Mosquitto(tmp_path).start() as broker,
        Subscriber(broker, "roomos-edge/test/devices/+/events").start() as sub,
    ):
        section = f'[mqtt]\nurl = "{broker.url}"\n'
        modules = await run_agent(
            tmp_path, fleet, section, lambda: len({t for t, _, _ in sub.messages}) >= 2
        )
    assert "paho" in modules and "edge_agent.session" in modules  # it ran, and delivered
    names = (*HTTP_CLIENT, *POSTGRES, *CALENDAR_LIBRARIES, *CLI_ONLY, *UNUSED)
    assert loaded(modules, names) == []
