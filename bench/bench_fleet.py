"""Benchmark: a fleet of `edge-agent run` processes on one PostgreSQL, N TLS devices.

    .venv/bin/python bench/bench_fleet.py [--devices 5000] [--agents 3] [--lease-s 5]
        [--bursts 2] [--rooms 0]

Starts, all on 127.0.0.1: a throwaway PostgreSQL cluster (tests/pg.py), a webhook receiver
(tests/receivers.py), the device simulator with N TLS devices (certificate pinned by
fingerprint), and the agents. Prints: the time until every device is leased and connected,
RSS per member, the time to move a kill -9'd member's devices to the others, and the events/s
through the shared outbox while every device announces bookings. With ``--rooms N`` the Graph
simulator (``calendar_sim.graph``, HTTPS) holds N calendar-only rooms that the members split by
lease (``room:<id>``): also the time until every room is leased and synced, and until a killed
member's rooms are leased by the others. Every wait has a timeout; everything it started is
stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import pg

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
GRAPH_SECRET = "bench-graph-sim-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_range(n: int) -> int:
    for base in range(20000, 60000 - n, 997):
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise SystemExit("no free port range")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def http_json(url: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read() or b"null")


def wait(what: str, cond: Any, timeout: float, every: float = 0.5) -> float:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)
    return time.monotonic() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, default=5000)
    p.add_argument("--agents", type=int, default=3)
    p.add_argument("--lease-s", type=float, default=15.0)
    p.add_argument("--bursts", type=int, default=2, help="bookings announced per device")
    p.add_argument("--rooms", type=int, default=0, help="calendar-only rooms (Graph simulator)")
    p.add_argument("--timeout", type=float, default=600.0)
    args = p.parse_args()
    # SIGTERM (timeout, a CI's stop) must still run the cleanup below, as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    n = args.devices
    tmp = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    procs: list[subprocess.Popen[bytes]] = []
    bin_dir = pg.pg_bin_dir()
    if bin_dir is None:
        raise SystemExit("no PostgreSQL server binaries: run scripts/install-system-deps.sh")
    cluster = pg.PgCluster(bin_dir)
    try:
        cluster.start()
        url = cluster.new_database()
        rx = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "tests" / "receivers.py"),
                "--port",
                "0",
                "--secret",
                SECRET,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        procs.append(rx)
        assert rx.stdout is not None
        rx_port = int(rx.stdout.readline().split()[1])
        base, control = free_port_range(n), free_port()
        ready = tmp / "ready.json"
        sim = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "device_sim",
                "--devices",
                str(n),
                "--port",
                str(base),
                "--control-port",
                str(control),
                "--ready-file",
                str(ready),
                "--mode",
                "hybrid",
                "--log-level",
                "WARNING",
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(sim)
        wait("the simulator", ready.exists, 300)
        info = json.loads(ready.read_text())
        fp = info["cert_sha256"]
        devices = "\n".join(
            f'[[devices]]\nid = "{d["id"]}"\nurl = "{d["url"]}"\nfingerprint = "{fp}"\n'
            for d in info["devices"]
        )
        microsoft = ""
        if args.rooms:
            graph = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "calendar_sim.graph",
                    "--port",
                    "0",
                    "--rooms",
                    str(args.rooms),
                    "--time-zone",
                    "UTC",
                    "--generate-days",
                    "1",
                    "--client-secret",
                    GRAPH_SECRET,
                    "--write-ca",
                    str(tmp / "graph-ca.pem"),
                ],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            procs.append(graph)
            assert graph.stdout is not None
            g = json.loads(graph.stdout.readline())
            microsoft = (
                f'[microsoft]\ntenant_id = "{g["tenant_id"]}"\nclient_id = "{g["client_id"]}"\n'
                f'client_secret_env = "GRAPH_SECRET"\nauthority_url = "{g["authority_url"]}"\n'
                f'graph_url = "{g["graph_url"]}"\nca_file = "{tmp / "graph-ca.pem"}"\n'
                "poll_interval_s = 60\n"
            )
        env = {
            **os.environ,
            "GRAPH_SECRET": GRAPH_SECRET,
            "SIM_PASSWORD": "secret",
            "WEBHOOK_SECRET": SECRET,
            "PG_PASSWORD": pg.PASSWORD,
            "EDGE_AGENT_LOG_LEVEL": "warning",
        }
        agents: dict[str, subprocess.Popen[bytes]] = {}
        for k in range(args.agents):
            name = f"m{k}"
            cfg = tmp / f"{name}.toml"
            cfg.write_text(
                f'site = "bench"\n[store]\nurl = "{url}"\npassword_env = "PG_PASSWORD"\n'
                f'[fleet]\nmember_id = "{name}"\nlease_s = {args.lease_s}\n'
                f'[defaults]\nusername = "edge-agent"\npassword_env = "SIM_PASSWORD"\n'
                f'[webhook]\nurl = "http://127.0.0.1:{rx_port}/hook"\n'
                f'secret_env = "WEBHOOK_SECRET"\n[api]\nlisten = "127.0.0.1:0"\n{microsoft}'
                f"{devices}"
            )
            log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 - the child writes it
            agents[name] = subprocess.Popen(
                [sys.executable, "-m", "edge_agent", "run", "-c", str(cfg)],
                env=env,
                stdout=log,
                stderr=log,
            )
            procs.append(agents[name])
        db = psycopg.connect(url, password=pg.PASSWORD, autocommit=True)

        def held(members: list[str], rooms: bool = False) -> int:
            """Devices (or, ``rooms``, calendar-only rooms) leased by ``members``."""
            if db.execute("SELECT to_regclass('edge_lease')").fetchone() == (None,):
                return 0  # not migrated yet
            row = db.execute(
                "SELECT count(*) FROM edge_lease WHERE member_id = ANY(%s) "
                "AND expires_at > clock_timestamp() AND (device_id LIKE 'room:%%') = %s",
                (members, rooms),
            ).fetchone()
            return int(row[0]) if row else 0

        def synced() -> int:
            if db.execute("SELECT to_regclass('edge_calendar_sync')").fetchone() == (None,):
                return 0
            row = db.execute("SELECT count(*) FROM edge_calendar_sync").fetchone()
            return int(row[0]) if row else 0

        def connected() -> int:
            return sum(
                1 for d in http_json(f"http://127.0.0.1:{control}/devices") if d["connections"] >= 1
            )

        names = list(agents)
        own_s = wait("every device leased", lambda: held(names) == n, args.timeout)
        conn_s = wait("every device connected", lambda: connected() == n, args.timeout)
        print(f"fleet: {args.agents} agents, {n} TLS devices, lease {args.lease_s:g} s")
        print(
            f"own all: every device leased {own_s:.1f} s after the agents were started, "
            f"every device connected {own_s + conn_s:.1f} s after"
        )
        if args.rooms:
            rooms_s = wait("every room leased", lambda: held(names, True) == args.rooms, 300)
            sync_s = wait("every room synced", lambda: synced() == args.rooms, args.timeout)
            print(
                f"rooms: {args.rooms} calendar-only rooms leased {own_s + conn_s + rooms_s:.1f} s "
                f"after the start, every room synced (delta link stored) "
                f"{own_s + conn_s + rooms_s + sync_s:.1f} s after (first rounds are spread "
                "over poll_interval_s = 60 s)"
            )
        time.sleep(2)
        for name, proc in agents.items():
            share = held([name])
            rooms = f", {held([name], True)} rooms" if args.rooms else ""
            print(f"member {name}: {share} devices{rooms}, RSS {rss_mib(proc.pid):.0f} MiB")

        victim = names[0]
        agents[victim].send_signal(signal.SIGKILL)
        agents[victim].wait()
        t_kill = time.monotonic()
        rest = names[1:]
        wait("the victim's devices moved", lambda: held(rest) == n, args.timeout, every=0.2)
        moved_s = time.monotonic() - t_kill
        if args.rooms:
            wait(
                "the victim's rooms moved",
                lambda: held(rest, True) == args.rooms,
                args.timeout,
                every=0.2,
            )
            print(
                f"kill -9 {victim}: its rooms leased by the others in "
                f"{time.monotonic() - t_kill:.1f} s (they resume from the stored delta links)"
            )
        wait("every device connected again", lambda: connected() == n, args.timeout)
        print(
            f"kill -9 {victim}: its devices leased by the others in {moved_s:.1f} s, "
            f"connected in {time.monotonic() - t_kill:.1f} s (lease {args.lease_s:g} s)"
        )

        stats = f"http://127.0.0.1:{rx_port}/stats"
        accepted0 = http_json(stats)["accepted"]
        start = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
        t0 = time.monotonic()
        for k in range(args.bursts):
            at = (start + timedelta(minutes=5 * k)).strftime("%Y-%m-%dT%H:%M:%SZ")
            http_json(
                f"http://127.0.0.1:{control}/devices/all/calendar/add",
                {"start": at, "duration_min": 5, "title": f"bench {k}"},
            )
        # each announcement is at least one booking.created; snapshots and updates come too
        want = accepted0 + n * args.bursts
        wait(
            "the bookings delivered",
            lambda: http_json(stats)["accepted"] >= want,
            args.timeout,
            every=0.2,
        )
        dt = time.monotonic() - t0
        got = http_json(stats)["accepted"] - accepted0
        print(
            f"shared outbox: {got} events delivered by {len(rest)} members in {dt:.1f} s "
            f"= {got / dt:,.0f} events/s (p99 {http_json(stats)['p99']})"
        )
        db.close()
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        cluster.destroy()


if __name__ == "__main__":
    main()
