"""Benchmark: the agent end to end, every part in its own process, on 127.0.0.1.

    .venv/bin/python bench/bench_pipeline.py [--sink webhook|mqtt] [--devices 1000]
        [--duration 25] [--rate 3000] [--latency-rate 200] [--latency-s 10] [--batch-max 20]
        [--max-in-flight 8] [--mqtt-protocol 5] [--broker-inflight 52]
        [--skip-burst] [--skip-latency]

Processes: the simulator (``python -m device_sim``, N devices over TLS, control API), the agent
started through its real CLI (``python -m edge_agent run -c CONFIG``: each device pinned by the
SHA-256 fingerprint the simulator writes to its ``--ready-file``, store ``synchronous =
"normal"``, webhook with a ``whsec_`` secret) and a webhook receiver (tests/receivers.py's
``WebhookReceiver``: every Standard Webhooks signature verified, batches expanded, duplicates
dropped by ``data.event_id``) that also records, per accepted event, its arrival time
(``time.time()``), type, device, booking and ``data.observed_at``.

``--sink mqtt``: the agent gets an ``[mqtt]`` section instead of ``[webhook]`` (``url =
"mqtt://127.0.0.1:PORT"``, QoS 1 as always, base topic left at its default
``roomos-edge/bench``) and two more processes run: mosquitto (``/usr/sbin/mosquitto``, a free
127.0.0.1 port, persistence off, config from tests/mosquitto.py plus ``max_inflight_messages
--broker-inflight``, which is also the Receive Maximum it grants an MQTT 5 client) and, in
place of the webhook receiver, a paho subscriber (bench/_mqtt_subscriber.py:
``roomos-edge/bench/devices/+/events`` at QoS 1, arrival time per envelope, duplicates dropped
by ``data.event_id`` and counted) that answers the same ``/stats`` route, so every phase below
is the same for both sinks; "receiver" then means the subscriber. The CPU line adds mosquitto.

Load: the simulator's ``POST /devices/all/flood`` route: each device alternates ``Start`` and
``End`` notifications of 40 bookings it holds in its calendar window (listed by the agent at
connect, so it forwards them as ``booking.started`` / ``booking.ended`` without re-listing;
40 bookings = 80 distinct notifications, more than the agent's 64-entry duplicate filter).

Phases and what they print:

1. connect: all N devices connected (agent ``/v1/devices``) and the connect events delivered;
   agent RSS (``/proc/<pid>/status`` VmRSS).
2. latency at ``--latency-rate`` events/s (fleet-wide, evenly spread): p50/p99 of
   (a) device -> receiver: the simulator's emission time (``time.time()`` when the frame is
   queued on the device's socket, from the flood trace) to the receiver's arrival time, and
   (b) agent -> receiver: ``data.observed_at`` (the agent's wall clock when it read the frame)
   to arrival. All clocks are this machine's wall clock.
3. sustained: ``--rate`` events/s offered for ``--duration`` s; distinct event_ids accepted by
   the receiver per second (median and minimum over the steady seconds), the backlog at the end
   of the flood, agent / simulator / receiver CPU %.
4. top-of-hour burst: one booking per device starting at the same minute H (added before the
   agent starts); the simulator clock is moved to H - 8 s (``POST /clock``) and runs into H;
   the time from the moment the simulator clock reads H to the last ``booking.started`` of
   those bookings accepted by the receiver; agent RSS after it.

Bounded: every wait has a timeout; children are terminated on exit, on Ctrl-C and on error
(and get SIGKILL from the kernel if this process dies: PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ctypes
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict, deque
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SECRET = "whsec_" + base64.b64encode(b"bench-pipeline-secret-0123456789").decode()
PASSWORD = "bench-device-password"
FLOOD_BOOKINGS = 40
BURST_LEAD_S = 8.0
MQTT_BASE = "roomos-edge/bench"  # the agent's default base_topic for site = "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------------------------
# The receiver process (``--receiver-ready FILE``)
# --------------------------------------------------------------------------------------------


def receiver_main(ready_file: str) -> None:
    import orjson
    from aiohttp import web

    from tests.receivers import Delivery, WebhookReceiver

    class TracingReceiver(WebhookReceiver):
        """Records (arrival, type, device, booking id, meeting id, observed_at) per accepted
        event; ``GET /stats?trace=1&clear=1`` returns and empties the trace."""

        def __init__(self, secret: str) -> None:
            super().__init__(secret, record_bodies=False)
            self.trace: list[tuple[Any, ...]] = []

        def _record(self, d: Delivery, envs: list[dict[str, Any]]) -> None:
            now = time.time()
            for env in envs:
                data = env["data"]
                eid = data["event_id"]
                if eid in self.accepted_ids:
                    self.duplicates += 1
                    continue
                self.accepted_ids.add(eid)
                obs = data.get("observed_at")
                booking = data.get("booking") or {}
                self.trace.append(
                    (
                        now,
                        env["type"],
                        data.get("device_id"),
                        booking.get("id"),
                        booking.get("meeting_id"),
                        datetime.fromisoformat(obs).timestamp() if obs else None,
                    )
                )
            self._changed.set()

        async def _stats(self, request: web.Request) -> web.Response:
            q = request.query
            out: dict[str, Any] = {
                "requests": self.requests,
                "accepted": len(self.accepted_ids),
                "duplicates": self.duplicates,
                "bad_signatures": self.bad_signatures,
            }
            if q.get("trace"):
                out["trace"] = self.trace
            if q.get("clear"):
                self.trace = []
            return web.Response(body=orjson.dumps(out), content_type="application/json")

    async def serve() -> None:
        rx = TracingReceiver(SECRET)
        await rx.start()
        tmp = ready_file + ".tmp"
        Path(tmp).write_text(json.dumps({"port": rx.port, "pid": os.getpid()}))
        os.replace(tmp, ready_file)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await rx.stop()

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve())


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _child_setup() -> None:
    # The kernel kills the child if the bench dies without cleaning up (SIGKILL, crash).
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_range(n: int) -> int:
    """A base port P with P..P+n-1 free right now (best effort)."""
    for base in range(20000, 60000 - n, 997):
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", p))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """``field`` of /proc/PID/status in MiB: VmRSS now, VmHWM the peak so far."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_cell(mib: float) -> str:
    """RSS in MiB and in MB (10^6 bytes), the unit the goal is given in."""
    return f"{mib:.0f} MiB = {mib * 1.048576:.0f} MB"


RSS_GOAL_MIB = 150e6 / 2**20  # "under 150 MB", read strictly: 143.1 MiB


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(p * len(s)))]


def utc_z(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def wait_file(path: Path, proc: subprocess.Popen[bytes], what: str, limit: float) -> Any:
    deadline = time.monotonic() + limit
    while not path.exists():
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} not ready within {limit:.0f} s")
        await asyncio.sleep(0.05)
    return json.loads(path.read_text())


class Http:
    """Tiny JSON client for the control API, the receiver and the agent's local API."""

    def __init__(self) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    async def get(self, url: str) -> Any:
        async with self._session.get(url) as r:
            return await r.json(content_type=None)

    async def post(self, url: str, body: dict[str, Any] | None = None) -> Any:
        async with self._session.post(url, json=body or {}) as r:
            data = await r.json(content_type=None)
            if r.status >= 300:
                raise RuntimeError(f"POST {url}: {r.status} {data}")
            return data

    async def close(self) -> None:
        await self._session.close()


# --------------------------------------------------------------------------------------------
# The bench
# --------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.rows: list[tuple[str, str, str, str, str]] = []  # figure, value, goal, met, bound
        self.http = Http()
        self.rx = ""
        self.ctl = ""
        self.api = ""
        self.agent: subprocess.Popen[bytes] | None = None
        self.spy: subprocess.Popen[bytes] | None = None
        self.sim_pid = 0
        self.rx_pid = 0
        self.broker_pid = 0
        self.mqtt = args.sink == "mqtt"
        self.rx_name = "subscriber" if self.mqtt else "receiver"

    def spawn(
        self, argv: list[str], log: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        out = open(self.tmp / log, "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            preexec_fn=_child_setup,
        )  # noqa: PLW1509 - before any thread
        out.close()
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):  # the agent first: it drains, then exits
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)

    def profile(self, phase: str) -> None:
        """With ``--profile DIR``: py-spy (collapsed stacks) on the agent, one file per phase."""
        self.profile_stop()
        if self.args.profile and self.agent is not None:
            out = Path(self.args.profile) / f"agent-{phase}.txt"
            self.spy = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "py-spy"),
                    "record",
                    "-p",
                    str(self.agent.pid),
                    "-r",
                    "200",
                    "-f",
                    "raw",
                    "-o",
                    str(out),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=_child_setup,
            )  # noqa: PLW1509 - before any thread

    def profile_stop(self) -> None:
        spy = self.spy
        if spy is not None and spy.poll() is None:
            spy.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(15)
        self.spy = None

    async def rx_trace(self, clear: bool = True) -> list[list[Any]]:
        data = await self.http.get(f"{self.rx}/stats?trace=1{'&clear=1' if clear else ''}")
        return list(data["trace"])

    # ---- setup ----------------------------------------------------------------------------

    async def start_broker(self) -> int:
        """mosquitto on a free 127.0.0.1 port (a child like the others); returns the port."""
        from tests.mosquitto import Mosquitto, mosquitto_binary

        inflight = self.args.broker_inflight
        conf = Mosquitto(self.tmp, extra_config=f"max_inflight_messages {inflight}")
        path = conf.dir / "mosquitto.conf"
        path.write_text(conf.config_text())
        proc = self.spawn([mosquitto_binary(), "-c", str(path)], "mosquitto.log")
        self.broker_pid = proc.pid
        self.broker_log = conf.log_path
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                raise SystemExit(
                    f"mosquitto exited with {proc.returncode}; see {self.tmp / 'mosquitto.log'}"
                )
            try:
                with socket.create_connection(("127.0.0.1", conf.port), timeout=0.2):
                    return conf.port
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(
                        f"mosquitto not listening on {conf.port} within 10 s"
                    ) from None
                await asyncio.sleep(0.02)

    async def start(self) -> None:
        a = self.args
        n = a.devices
        rx_ready = self.tmp / "rx.json"
        if self.mqtt:
            self.broker_port = await self.start_broker()
            rx = self.spawn(
                [
                    sys.executable,
                    str(Path(__file__).resolve().parent / "_mqtt_subscriber.py"),
                    "--ready",
                    str(rx_ready),
                    "--port",
                    str(self.broker_port),
                    "--topic",
                    f"{MQTT_BASE}/devices/+/events",
                ],
                "receiver.log",
            )
        else:
            rx = self.spawn(
                [sys.executable, str(Path(__file__).resolve()), "--receiver-ready", str(rx_ready)],
                "receiver.log",
            )
        info = await wait_file(rx_ready, rx, f"the {self.rx_name}", 30)
        self.rx = f"http://127.0.0.1:{info['port']}"
        self.rx_pid = info["pid"]

        base, control = free_port_range(n), free_port()
        sim_ready = self.tmp / "sim.json"
        t0 = time.monotonic()
        sim = self.spawn(
            [
                sys.executable,
                "-m",
                "device_sim",
                "--devices",
                str(n),
                "--host",
                "127.0.0.1",
                "--port",
                str(base),
                "--control-port",
                str(control),
                "--ready-file",
                str(sim_ready),
                "--password",
                PASSWORD,
                "--log-level",
                "WARNING",
            ],
            "sim.log",
        )
        sim_info = await wait_file(sim_ready, sim, "the simulator", 120)
        self.sim_pid = sim_info["pid"]
        self.ctl = sim_info["control_url"]
        print(
            f"simulator: {n} devices on 127.0.0.1:{base}..{base + n - 1} "
            f"(ready in {time.monotonic() - t0:.1f} s); {self.rx_name} {self.rx}"
            + (
                f"; mosquitto 127.0.0.1:{self.broker_port} (max_inflight_messages "
                f"{a.broker_inflight})"
                if self.mqtt
                else ""
            )
        )

        # Bookings, all added before the agent starts (no re-lists from Created/Updated):
        # 40 per device three hours ahead for the flood, and one per device at the top of the
        # hour H (at least 10 min ahead) for the burst.
        clock = await self.http.get(f"{self.ctl}/clock")
        sim_now = datetime.fromisoformat(clock["now"])
        first = (sim_now + timedelta(hours=3)).replace(second=0, microsecond=0)
        t0 = time.monotonic()
        for i in range(self.args.flood_bookings):
            await self.http.post(
                f"{self.ctl}/devices/all/calendar/add",
                {
                    "start": utc_z(first + timedelta(minutes=5 * i)),
                    "duration_min": 5,
                    "title": f"Flood {i}",
                    "organizer": "Bench Flood",
                },
            )
        self.burst_at = (sim_now + timedelta(minutes=10)).replace(
            minute=0, second=0, microsecond=0
        ) + timedelta(hours=1)
        self.burst_meeting = "burst-" + self.burst_at.strftime("%Y%m%dT%H%M")
        if not a.skip_burst:
            await self.http.post(
                f"{self.ctl}/devices/all/calendar/add",
                {
                    "start": utc_z(self.burst_at),
                    "duration_min": 30,
                    "title": "All hands",
                    "organizer": "Bench Burst",
                    "meeting_id": self.burst_meeting,
                },
            )
        print(
            f"bookings: {self.args.flood_bookings} per device for the flood"
            + ("" if a.skip_burst else f", 1 per device at {utc_z(self.burst_at)}")
            + f" ({time.monotonic() - t0:.1f} s)"
        )

        api_port = free_port()
        self.api = f"http://127.0.0.1:{api_port}"
        cfg = self.tmp / "agent.toml"
        lines = [
            'site = "bench"',
            "[store]",
            f'path = "{self.tmp / "agent.db"}"',
            'synchronous = "normal"',
            "[defaults]",
            'username = "admin"',
            'password_env = "BENCH_DEVICE_PASSWORD"',
            'time_zone = "UTC"',
            *(
                [
                    "[mqtt]",
                    f'url = "mqtt://127.0.0.1:{self.broker_port}"',
                    f'protocol = "{a.mqtt_protocol}"',
                ]
                if self.mqtt
                else [
                    "[webhook]",
                    f'url = "{self.rx}/hook"',
                    'secret_env = "BENCH_WEBHOOK_SECRET"',
                    f"batch_max = {a.batch_max}",
                    f"max_in_flight = {a.max_in_flight}",
                ]
            ),
            "[api]",
            f'listen = "127.0.0.1:{api_port}"',
            "[log]",
            'level = "warning"',
        ]
        for d in sim_info["devices"]:
            lines += [
                "[[devices]]",
                f'id = "{d["id"]}"',
                f'url = "{d["url"]}"',
                f'fingerprint = "{sim_info["cert_sha256"]}"',
            ]
        cfg.write_text("\n".join(lines) + "\n")

        t0 = time.monotonic()
        self.agent = self.spawn(
            [sys.executable, "-m", "edge_agent", "run", "-c", str(cfg)],
            "agent.log",
            env={"BENCH_DEVICE_PASSWORD": PASSWORD, "BENCH_WEBHOOK_SECRET": SECRET},
        )
        self.profile("connect")
        deadline = t0 + 120
        connected = 0
        while True:
            if self.agent.poll() is not None:
                raise SystemExit(
                    f"the agent exited ({self.agent.returncode}); see {self.tmp / 'agent.log'}"
                )
            with contextlib.suppress(Exception):
                devs = (await self.http.get(f"{self.api}/v1/devices"))["devices"]
                connected = sum(1 for d in devs if d.get("connected"))
                if connected == n:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"only {connected}/{n} devices connected within 120 s")
            await asyncio.sleep(0.1)
        t_conn = time.monotonic() - t0
        # The connect events (device.online, bookings.snapshot, room.availability per device)
        # delivered: the outbox is empty.
        left = await self.drain_outbox(30)
        t_all = time.monotonic() - t0
        if left:
            print(
                f"WARNING: {left} connect events still in the agent's outbox after 30 s "
                "(the drainer is not delivering them)"
            )
        accepted = (await self.http.get(f"{self.rx}/stats"))["accepted"]
        await self.rx_trace()  # drop the connect events from the trace
        await asyncio.sleep(2)
        rss = rss_mib(self.agent.pid)
        print(
            f"agent: {n}/{n} devices connected in {t_conn:.1f} s (CLI start included); "
            f"connect events delivered at {t_all:.1f} s ({accepted} events); "
            f"RSS {rss:.1f} MiB"
        )
        self.rows.append(
            (
                f"agent RSS, {n} devices connected",
                rss_cell(rss),
                "< 150 MB" if n >= 1000 else "-",
                "yes" if rss < RSS_GOAL_MIB else "NO",
                f"{a.flood_bookings + int(not a.skip_burst)} bookings/device in window",
            )
        )

    async def drain_outbox(self, limit: float) -> int:
        deadline = time.monotonic() + limit
        depth = -1
        while time.monotonic() < deadline:
            stats = await self.http.get(f"{self.api}/v1/outbox")
            sinks = stats.get("sinks", {})
            depth = sum(int(v.get("depth", 0)) for v in sinks.values())
            if os.environ.get("BENCH_DEBUG"):
                print("  outbox", stats, file=sys.stderr)
            if depth == 0:
                return 0
            await asyncio.sleep(0.2)
        return depth

    async def flood(self, total_rate: float, seconds: float, trace: bool) -> dict[str, Any]:
        n = self.args.devices
        return dict(
            await self.http.post(
                f"{self.ctl}/devices/all/flood",
                {
                    "rate": total_rate / n,
                    "duration_s": seconds,
                    "bookings": self.args.flood_bookings,
                    "trace": trace,
                },
            )
        )

    # ---- phases ---------------------------------------------------------------------------

    async def latency(self) -> None:
        a = self.args
        await self.http.get(f"{self.ctl}/flood?clear=1")
        await self.rx_trace()
        self.profile("latency")
        await self.flood(a.latency_rate, a.latency_s, trace=True)
        await asyncio.sleep(a.latency_s + 0.5)
        await self.drain_outbox(10)
        await asyncio.sleep(0.5)
        sim = (await self.http.get(f"{self.ctl}/flood?clear=1"))["trace"]
        arrivals = await self.rx_trace()
        emitted: dict[tuple[str, str, str], deque[float]] = defaultdict(deque)
        for t, dev, bid, name in sim:
            emitted[(dev, str(bid), name)].append(t)
        names = {"booking.started": "Start", "booking.ended": "End"}
        e2e: list[float] = []
        agent_leg: list[float] = []
        device_leg: list[float] = []
        for arr, typ, dev, bid, _mid, obs in arrivals:
            name = names.get(typ)
            if name is None:
                continue
            q = emitted.get((dev, str(bid), name))
            if not q:
                continue
            t_emit = q.popleft()
            e2e.append(arr - t_emit)
            if obs is not None:
                agent_leg.append(arr - obs)
                device_leg.append(obs - t_emit)
        missing = sum(len(q) for q in emitted.values())
        ms = 1000.0
        r = self.rx_name
        print(
            f"latency at {a.latency_rate:.0f} events/s for {a.latency_s:.0f} s: "
            f"{len(sim)} emitted, {len(e2e)} matched at the {r}, {missing} missing"
        )
        print(
            f"  device -> {r} (sim emission -> arrival): p50 {pct(e2e, 0.5) * ms:.1f} ms, "
            f"p99 {pct(e2e, 0.99) * ms:.1f} ms, max {max(e2e, default=0) * ms:.1f} ms"
        )
        print(
            f"  agent -> {r} (observed_at -> arrival):   p50 "
            f"{pct(agent_leg, 0.5) * ms:.1f} ms, p99 {pct(agent_leg, 0.99) * ms:.1f} ms"
        )
        print(
            f"  device -> agent (sim emission -> observed_at): p50 "
            f"{pct(device_leg, 0.5) * ms:.1f} ms, p99 {pct(device_leg, 0.99) * ms:.1f} ms"
        )
        p99 = pct(e2e, 0.99) * ms
        self.rows.append(
            (
                f"p99 device -> {r} at {a.latency_rate:.0f}/s",
                f"{p99:.1f} ms (p50 {pct(e2e, 0.5) * ms:.1f})",
                "< 100 ms",
                "yes" if p99 < 100 and missing == 0 else "NO",
                f"device->agent p99 {pct(device_leg, 0.99) * ms:.0f} ms",
            )
        )
        self.rows.append(
            (
                f"p99 agent observed_at -> {r}",
                f"{pct(agent_leg, 0.99) * ms:.1f} ms (p50 {pct(agent_leg, 0.5) * ms:.1f})",
                "-",
                "-",
                "agent store commit + drainer + " + ("PUBLISH + broker" if self.mqtt else "HTTP"),
            )
        )

    async def sustained(self) -> None:
        a = self.args
        assert self.agent is not None
        pids = {"agent": self.agent.pid, "simulator": self.sim_pid, self.rx_name: self.rx_pid}
        if self.mqtt:
            pids["mosquitto"] = self.broker_pid
        await self.rx_trace()
        before_rx = (await self.http.get(f"{self.rx}/stats"))["accepted"]
        cpu0 = {k: cpu_s(p) for k, p in pids.items()}
        w0 = time.time()
        self.profile("sustained")
        await self.flood(a.rate, a.duration, trace=False)
        await asyncio.sleep(a.duration)
        cpu1 = {k: cpu_s(p) for k, p in pids.items()}
        w1 = time.time()
        depth_at_end = await self.drain_outbox(0.01)
        left = await self.drain_outbox(30)
        arrivals = await self.rx_trace()
        rx_stats = await self.http.get(f"{self.rx}/stats")
        after_rx = rx_stats["accepted"]
        per_s = Counter(int(arr - w0) for arr, *_ in arrivals)
        secs = int(a.duration)
        steady = [per_s.get(s, 0) for s in range(2, secs)]  # skip the ramp-up seconds
        in_window = sum(per_s.get(s, 0) for s in range(secs))
        cpu = {k: (cpu1[k] - cpu0[k]) / (w1 - w0) * 100 for k in pids}
        avg = in_window / (w1 - w0)
        med = statistics.median(steady) if steady else 0
        low = min(steady) if steady else 0
        last = max((arr for arr, *_ in arrivals), default=w1)
        print(
            f"sustained: {a.rate:.0f} events/s offered by {a.devices} devices for "
            f"{a.duration:.0f} s ({a.rate / a.devices:.2f}/s each)"
        )
        print(
            f"  accepted at the {self.rx_name}: {in_window / (w1 - w0):.0f} events/s over the "
            f"flood window; per second (after 2 s) median {med:.0f}, min {low:.0f}, "
            f"max {max(steady, default=0):.0f}"
        )
        print(
            f"  outbox depth when the flood ended: {depth_at_end}; drained "
            f"{last - w1:+.1f} s after it ({'all' if left == 0 else f'{left} left'}); "
            f"{after_rx - before_rx} distinct events in total; duplicates dropped by "
            f"event_id since the start: {rx_stats['duplicates']}"
        )
        print(
            "  CPU over the flood (100% = one core): "
            + ", ".join(f"{k} {v:.0f}%" for k, v in cpu.items())
            + f"; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
        )
        goal = 3000 if self.mqtt else 2000
        self.rows.append(
            (
                f"sustained events/s, {a.devices} devices",
                f"{avg:.0f}/s (median/s {med:.0f}, min {low:.0f})",
                f">= {goal:,}",
                "yes" if avg >= goal else "NO",
                f"agent CPU {cpu['agent']:.0f}% of 1 core"
                + (" (saturated)" if cpu["agent"] >= 90 else ""),
            )
        )
        self.sustained_cpu = cpu

    async def burst(self) -> None:
        n = self.args.devices
        assert self.agent is not None
        await self.http.post(f"{self.ctl}/flood/stop")
        await self.drain_outbox(10)
        await self.rx_trace()
        clock = await self.http.get(f"{self.ctl}/clock")
        sim_now = datetime.fromisoformat(clock["now"])
        advance = (self.burst_at - sim_now).total_seconds() - BURST_LEAD_S
        if advance < 0:
            raise SystemExit("the burst minute has passed: run again")
        await self.http.post(f"{self.ctl}/clock", {"advance_s": advance})
        # When does the simulator clock read H, in this machine's wall time?
        t_a = time.time()
        clock = await self.http.get(f"{self.ctl}/clock")
        t_b = time.time()
        crossing = (t_a + t_b) / 2 + (self.burst_at.timestamp() - float(clock["unix"])) / float(
            clock["speed"]
        )
        print(
            f"burst: simulator clock {BURST_LEAD_S:.0f} s before the minute (read within "
            f"{(t_b - t_a) * 1000:.1f} ms)"
        )
        self.profile("burst")
        cpu0, w0 = cpu_s(self.agent.pid), time.time()
        started: dict[str, float] = {}
        deadline = crossing + 30
        while len(started) < n and time.time() < deadline:
            await asyncio.sleep(0.25)
            for arr, typ, dev, _bid, mid, _obs in await self.rx_trace():
                if typ == "booking.started" and mid == self.burst_meeting:
                    started.setdefault(dev, arr)
        cpu = (cpu_s(self.agent.pid) - cpu0) / (time.time() - w0) * 100
        times = sorted(t - crossing for t in started.values())
        last = times[-1] if times else float("nan")
        print(
            f"burst at {utc_z(self.burst_at)}: {len(started)}/{n} booking.started delivered; "
            f"after the simulator clock reached it: first {times[0] if times else 0:.2f} s, "
            f"median {pct(times, 0.5):.2f} s, last {last:.2f} s (agent CPU {cpu:.0f}%)"
        )
        self.rows.append(
            (
                f"top-of-hour burst, {n} devices",
                f"{last:.2f} s ({len(started)}/{n})",
                "<= 3 s",
                "yes" if len(started) == n and last <= 3 else "NO",
                f"{2 * n} events (start + availability)",
            )
        )
        await asyncio.sleep(2)
        rss = rss_mib(self.agent.pid)
        bookings = f"{self.args.flood_bookings + 1} bookings/device in window"
        peak = rss_mib(self.agent.pid, "VmHWM")
        print(f"agent RSS after the burst: {rss:.1f} MiB (peak over the whole run {peak:.1f} MiB)")
        self.rows.append(
            (
                "agent RSS after the burst",
                rss_cell(rss),
                "< 150 MB" if n >= 1000 else "-",
                "yes" if rss < RSS_GOAL_MIB else "NO",
                bookings,
            )
        )
        self.rows.append(
            ("agent peak RSS (VmHWM), whole run", rss_cell(peak), "-", "-", "during the flood")
        )

    def table(self) -> None:
        print()
        print(f"{'figure':38} {'measured':30} {'goal':9} {'met':4} context")
        for fig, val, goal, met, bound in self.rows:
            print(f"{fig:38} {val:30} {goal:9} {met:4} {bound}")


async def run(args: argparse.Namespace) -> None:
    limit = raise_nofile()
    if limit < 2 * args.devices + 200:
        raise SystemExit(f"RLIMIT_NOFILE {limit} is too low for {args.devices} devices")
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as t:
        bench = Bench(args, Path(t))
        try:
            async with asyncio.timeout(args.time_limit):
                await bench.start()
                if not args.skip_latency:
                    await bench.latency()
                await bench.sustained()
                if not args.skip_burst:
                    await bench.burst()
            bench.table()
        except BaseException:
            log = Path(t) / "agent.log"
            if log.exists():
                tail = log.read_text(errors="replace").splitlines()[-15:]
                print("agent log (tail):\n  " + "\n  ".join(tail), file=sys.stderr)
            raise
        finally:
            await bench.http.close()
            bench.profile_stop()
            bench.stop_all()
            if args.keep_logs:
                for name in ("agent.log", "sim.log", "receiver.log", "mosquitto.log"):
                    p = Path(t) / name
                    if p.exists():
                        dest = Path(args.keep_logs) / name
                        dest.write_bytes(p.read_bytes())
                broker_log = getattr(bench, "broker_log", None)
                if broker_log is not None and broker_log.exists():
                    (Path(args.keep_logs) / "mosquitto.log").write_bytes(broker_log.read_bytes())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--sink",
        choices=["webhook", "mqtt"],
        default="webhook",
        help="the agent's one sink: a webhook receiver, or mosquitto + a subscriber",
    )
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--duration", type=float, default=25.0, help="sustained phase, s")
    ap.add_argument("--rate", type=float, default=3000.0, help="sustained offered events/s")
    ap.add_argument("--latency-rate", type=float, default=200.0)
    ap.add_argument("--latency-s", type=float, default=10.0)
    ap.add_argument("--batch-max", type=int, default=20, help="[webhook] batch_max")
    ap.add_argument("--max-in-flight", type=int, default=8, help="[webhook] max_in_flight")
    ap.add_argument(
        "--flood-bookings",
        type=int,
        default=0,
        help="bookings per device to cycle through (default: enough that no event "
        "repeats within the agent's 5 s duplicate horizon: 12 at <= 3.6 events/s "
        "per device, up to 40, where 80 > the agent's 64 remembered events)",
    )
    ap.add_argument(
        "--mqtt-protocol",
        choices=["3.1.1", "5"],
        default="5",
        help="[mqtt] protocol (the agent's default: 5)",
    )
    ap.add_argument(
        "--broker-inflight",
        type=int,
        default=52,
        help="mosquitto max_inflight_messages (MQTT 5: the Receive Maximum the "
        "agent gets; it keeps 2 spare, so 52 lets its 50-publish window run)",
    )
    ap.add_argument("--skip-burst", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--time-limit", type=float, default=300.0, help="whole run, s")
    ap.add_argument(
        "--profile",
        metavar="DIR",
        help="py-spy the agent (collapsed stacks per phase, needs py-spy in the venv)",
    )
    ap.add_argument("--keep-logs", metavar="DIR", help="copy the processes' logs here")
    ap.add_argument("--receiver-ready", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not args.flood_bookings:
        per_device = max(args.rate, args.latency_rate) / max(1, args.devices)
        args.flood_bookings = max(12, min(FLOOD_BOOKINGS, int(2.5 * per_device) + 4))
    if args.receiver_ready:
        receiver_main(args.receiver_ready)
        return
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        print("interrupted; children stopped", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
