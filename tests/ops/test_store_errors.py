"""The store's troubles reach the operator: ``run`` exits 78 on a damaged or too-new database,
failing writes make ``/readyz`` 503 (naming the store, the error, what to do) and show in
systemd's ``STATUS=``, and the watchdog is withheld only when a restart can help."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from edge_agent.agent import Agent
from edge_agent.config import EX_CONFIG, config_from_dict, resolve_secrets
from edge_agent.ops.api import LocalApi, readiness
from edge_agent.store import SCHEMA_VERSION, Change, Store, StoreError
from edge_agent.store.base import UNREADY_AFTER_FAILURES, WATCHDOG_AFTER_S
from tests.ops.test_api import FakeAgent
from tests.ops.test_cli import ENV, WEBHOOK_ONLY, cli_env, write_config
from tests.store.outbox import env
from tests.store.test_health import BIG, NO_LIMIT, FakeClock, damaged_database, fill_disk

# A receiver nobody listens on (loopback, discard port): these runs must never get that far.
NOWHERE = "http://127.0.0.1:9/hook"


async def run_briefly(cfg: Path) -> tuple[int, str]:
    """``edge-agent run -c cfg``; an agent that starts at all is killed after 30 s."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge_agent", "run", "-c", str(cfg),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(ENV), cwd=cfg.parent,
    )  # fmt: skip
    try:
        async with asyncio.timeout(30):
            _, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


def run_config(tmp_path: Path) -> Path:
    return write_config(
        tmp_path, WEBHOOK_ONLY.format(url=NOWHERE) + '[api]\nlisten = "127.0.0.1:0"\n'
    )


# -- exit 78: the unit does not restart on it ----------------------------------------------------


async def test_run_exits_78_on_a_damaged_database(tmp_path: Path) -> None:
    """Before: the agent started, reported ready, and its sessions crash-looped on "database
    disk image is malformed" (here: ran until the test's timeout)."""
    cfg = run_config(tmp_path)
    db = tmp_path / "agent.db"
    await damaged_database(db)
    code, err = await run_briefly(cfg)
    assert code == EX_CONFIG == 78, err
    [line] = [x for x in err.splitlines() if x.startswith("edge-agent: ")]
    assert line.startswith(f"edge-agent: the database at {db} is damaged (")
    assert "move agent.db and its -wal/-shm files aside" in line and "backup" in line
    assert "Traceback" not in err


async def test_run_exits_78_on_a_newer_schema(tmp_path: Path) -> None:
    """Before: exit 1, which ``Restart=on-failure`` restarts every 5 s for nothing."""
    cfg = run_config(tmp_path)
    with sqlite3.connect(tmp_path / "agent.db") as c:
        c.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    code, err = await run_briefly(cfg)
    assert code == 78, err
    assert f"schema version {SCHEMA_VERSION + 1}, newer than this agent" in err
    assert "Traceback" not in err


def test_the_unit_does_not_restart_on_78() -> None:
    unit = (Path(__file__).resolve().parents[2] / "systemd" / "edge-agent.service").read_text()
    assert "RestartPreventExitStatus=78" in unit.splitlines()


# -- failing writes: not ready ------------------------------------------------------------------


@pytest.fixture
async def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "agent.db", clock=clock)
    await s.commit(Change("room-1", events=[env("room-1", 0)]))
    yield s
    await s.close()


async def fail_commits(store: Store, n: int = UNREADY_AFTER_FAILURES) -> None:
    for _ in range(n):
        with pytest.raises(StoreError):
            await store.commit(Change("room-1", events=[BIG]))


async def test_readyz_is_503_while_commits_fail_on_a_full_disk(store: Store) -> None:
    """Before: every commit failed for 135 s while /readyz said ready."""
    agent = FakeAgent(store=store)
    api = LocalApi(agent, "127.0.0.1:0")
    await api.start()
    try:
        async with httpx.AsyncClient(base_url=api.url) as http:
            assert (await http.get("/readyz")).status_code == 200
            await fill_disk(store)
            await fail_commits(store)
            r = await http.get("/readyz")
            assert r.status_code == 503, r.text
            [reason] = r.json()["reasons"]
            assert reason.startswith("store writes failing for ")
            assert f"database or disk is full at {store.path}: free space" in reason
            assert (await http.get("/healthz")).status_code == 200  # alive, only not ready
            await store._writer.execute(f"PRAGMA max_page_count={NO_LIMIT}")
            await store.commit(Change("room-1", events=[BIG]))
            assert (await http.get("/readyz")).status_code == 200
    finally:
        await api.stop()


async def test_one_failed_commit_does_not_make_it_unready(store: Store) -> None:
    await fill_disk(store)
    await fail_commits(store, 1)
    assert readiness(FakeAgent(store=store)) == (True, [])


# -- failing writes: systemd's STATUS= and the watchdog ------------------------------------------


@pytest.fixture
def notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    yield sock
    sock.close()


def statuses(sock: socket.socket) -> list[str]:
    out: list[str] = []
    while True:
        try:
            msg = sock.recv(4096).decode()
        except BlockingIOError:
            return out
        out += [line for line in msg.splitlines() if line.startswith("STATUS=")]


def agent_on(store: Store, tmp_path: Path) -> Agent:
    raw = {
        "site": "hq",
        "store": {"path": str(tmp_path / "agent.db")},
        "webhook": {"url": NOWHERE, "secret_env": "EDGE_AGENT_WEBHOOK_SECRET"},
    }
    cfg = config_from_dict(raw, require_sink=True, env=ENV)
    agent = Agent(cfg, resolve_secrets(cfg, ENV), api=False)
    agent._store = store
    return agent


async def test_a_full_disk_shows_in_status_and_keeps_the_watchdog(
    store: Store, clock: FakeClock, tmp_path: Path, notify: socket.socket
) -> None:
    """Before: STATUS= said "0/0 devices connected; outbox 1" and the watchdog kept pinging,
    as if nothing was wrong. A restart frees no space, so the pings go on; STATUS says why."""
    agent = agent_on(store, tmp_path)
    await fill_disk(store)
    await fail_commits(store)
    clock.now += 10 * WATCHDOG_AFTER_S
    await agent.sample()
    [status] = statuses(notify)
    assert status.startswith("STATUS=NOT READY: store writes failing for 600 s (3 in a row): ")
    assert "database or disk is full" in status and "; retrying; " in status
    assert agent._healthy()  # pinging on: a restart would not free the disk
    await store._writer.execute(f"PRAGMA max_page_count={NO_LIMIT}")
    await store.commit(Change("room-1", events=[BIG]))
    await agent.sample()
    [status] = statuses(notify)
    assert status.startswith("STATUS=0/0 devices connected; outbox ")


async def test_another_lasting_write_error_withholds_the_watchdog(
    store: Store, clock: FakeClock, tmp_path: Path, notify: socket.socket
) -> None:
    agent = agent_on(store, tmp_path)
    await store._writer.execute("PRAGMA query_only=1")  # the file turned read-only under us
    await fail_commits(store)
    assert agent._healthy()  # not yet past the bound
    clock.now += WATCHDOG_AFTER_S
    assert not agent._healthy()  # systemd restarts the unit; the next start checks the file
    await agent.sample()
    [status] = statuses(notify)
    assert "cannot be written" in status and "withholding the watchdog" in status
    await store._writer.execute("PRAGMA query_only=0")
    await store.commit(Change("room-1", events=[env("room-1", 1)]))
    assert agent._healthy()
