"""What bench_pipeline.py and bench_reference.py share: the load side and the measurements.

A :class:`Rig` owns the child processes on 127.0.0.1 — the device simulator (``python -m
device_sim``, N TLS devices, control API), the receiving end (a tracing webhook receiver, or
mosquitto + bench/_mqtt_subscriber.py) — the bookings the flood and the bursts use, and the
flood itself. A :class:`Target` is the pipeline under test (the agent or the reference): a
process id for CPU accounting (``/proc/<pid>/stat`` utime + stime) and a local API that answers
``GET /v1/devices`` (``{"devices": [{"connected": bool}, ...]}``) and ``GET /v1/outbox``
(``{"sinks": {name: {"depth": n}}}``). The phases (:func:`latency`, :func:`sustained`,
:func:`burst`, :func:`backlog`, in that order by :func:`phases`) drive the rig against one
target and return figures; they never look inside the target, so both pipelines go through
exactly the same measurement. :func:`add_load_args` and :func:`bench_main` are both benches'
command line.

Latency is device -> receiver: the simulator's emission time (flood trace) to the receiver's
arrival time, both this machine's wall clock; ``data.observed_at`` (when the pipeline read the
frame) splits it in two legs.

Run as a script it is the webhook receiver process: ``python bench/_harness.py --receiver-ready
FILE`` (Standard Webhooks signatures verified, batches expanded, duplicates dropped by
``data.event_id``; ``GET /stats?trace=1&clear=1``; ``GET /stats?down=1`` answers 503 to
every webhook until ``GET /stats?down=0``).
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
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SECRET = "whsec_" + base64.b64encode(b"bench-pipeline-secret-0123456789").decode()
PASSWORD = "bench-device-password"
USERNAME = "admin"
SITE = "bench"
MQTT_BASE = "roomos-edge/bench"  # the agent's default base_topic for site = "bench"
FLOOD_BOOKINGS = 40
BURST_LEAD_S = 8.0
BURST_SPACING = timedelta(minutes=20)  # one burst booking per pipeline run, 15 min each
CLK_TCK = os.sysconf("SC_CLK_TCK")
MS = 1000.0
TIME_PER_RUN_S = 300.0  # one pipeline through every phase, setup included, at 1,000 devices


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def child_setup() -> None:
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


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far."""
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
    """Tiny JSON client for the control API, the receiver and the pipelines' local APIs."""

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
# The pipeline under test
# --------------------------------------------------------------------------------------------


@dataclass
class Target:
    """A pipeline process seen from outside: its pid and its local API."""

    name: str
    proc: subprocess.Popen[bytes]
    api: str
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def depth(self, http: Http) -> int:
        stats = await http.get(f"{self.api}/v1/outbox")
        if os.environ.get("BENCH_DEBUG"):
            print(f"  {self.name} outbox", stats, file=sys.stderr)
        return sum(int(v.get("depth", 0)) for v in stats.get("sinks", {}).values())

    async def drain(self, http: Http, limit: float) -> int:
        """Wait until the outbox is empty (0) or ``limit`` s pass (the depth left)."""
        deadline = time.monotonic() + limit
        depth = await self.depth(http)
        while depth and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            depth = await self.depth(http)
        return depth

    async def wait_connected(self, http: Http, n: int, limit: float) -> None:
        deadline = time.monotonic() + limit
        connected = 0
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited ({self.proc.returncode}); see {self.log}")
            with contextlib.suppress(Exception):
                devs = (await http.get(f"{self.api}/v1/devices"))["devices"]
                connected = sum(1 for d in devs if d.get("connected"))
                if connected >= n:
                    return
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.name}: only {connected}/{n} devices connected in time")
            await asyncio.sleep(0.1)

    def log_tail(self, lines: int = 15) -> str:
        if not self.log.exists():
            return ""
        return "\n  ".join(self.log.read_text(errors="replace").splitlines()[-lines:])


# --------------------------------------------------------------------------------------------
# The rig: simulator, receiving end, bookings, flood
# --------------------------------------------------------------------------------------------


class Rig:
    def __init__(
        self,
        tmp: Path,
        *,
        sink: str,
        devices: int,
        flood_bookings: int,
        bursts: int,
        broker_inflight: int = 52,
    ) -> None:
        self.tmp = tmp
        self.sink = sink
        self.mqtt = sink == "mqtt"
        self.devices = devices
        self.flood_bookings = flood_bookings
        self.bursts = bursts
        self.broker_inflight = broker_inflight
        self.rx_name = "subscriber" if self.mqtt else "receiver"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.http = Http()
        self.rx = ""
        self.ctl = ""
        self.rx_pid = 0
        self.sim_pid = 0
        self.broker_pid = 0
        self.broker_port = 0
        self.broker_log: Path | None = None
        self.sim_info: dict[str, Any] = {}
        self.burst_times: list[tuple[datetime, str]] = []  # (minute, meeting id), in order

    # ---- processes --------------------------------------------------------------------------

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
            preexec_fn=child_setup,  # noqa: PLW1509 - it only calls prctl
        )
        out.close()
        self.procs.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], grace: float = 10) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):  # the pipeline first: it drains, then exits
            self.stop(proc)

    async def close(self) -> None:
        await self.http.close()
        self.stop_all()

    def keep_logs(self, dest: Path) -> None:
        for p in self.tmp.glob("*.log"):
            (dest / p.name).write_bytes(p.read_bytes())
        if self.broker_log is not None and self.broker_log.exists():
            (dest / "mosquitto.log").write_bytes(self.broker_log.read_bytes())

    # ---- setup ------------------------------------------------------------------------------

    async def start(self) -> None:
        """The receiving end, then the simulator, then every booking (before any pipeline)."""
        await self.start_receiving_end()
        await self.start_simulator()
        await self.add_bookings()

    async def start_broker(self) -> int:
        """mosquitto on a free 127.0.0.1 port (a child like the others); returns the port."""
        from tests.mosquitto import Mosquitto, mosquitto_binary

        conf = Mosquitto(self.tmp, extra_config=f"max_inflight_messages {self.broker_inflight}")
        path = conf.dir / "mosquitto.conf"
        path.write_text(conf.config_text())
        proc = self.spawn([mosquitto_binary(), "-c", str(path)], "mosquitto-stdout.log")
        self.broker_pid = proc.pid
        self.broker_log = conf.log_path
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"mosquitto exited with {proc.returncode}; see {self.tmp}")
            try:
                with socket.create_connection(("127.0.0.1", conf.port), timeout=0.2):
                    return int(conf.port)
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(
                        f"mosquitto not listening on {conf.port} within 10 s"
                    ) from None
                await asyncio.sleep(0.02)

    async def start_receiving_end(self) -> None:
        rx_ready = self.tmp / "rx.json"
        if self.mqtt:
            self.broker_port = await self.start_broker()
            argv = [
                sys.executable,
                str(BENCH / "_mqtt_subscriber.py"),
                "--ready",
                str(rx_ready),
                "--port",
                str(self.broker_port),
                "--topic",
                f"{MQTT_BASE}/devices/+/events",
            ]
        else:
            argv = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--receiver-ready",
                str(rx_ready),
            ]
        rx = self.spawn(argv, "receiver.log")
        info = await wait_file(rx_ready, rx, f"the {self.rx_name}", 30)
        self.rx = f"http://127.0.0.1:{info['port']}"
        self.rx_pid = int(info["pid"])

    async def start_simulator(self) -> None:
        n = self.devices
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
                "--user",
                USERNAME,
                "--password",
                PASSWORD,
                "--log-level",
                "WARNING",
            ],
            "sim.log",
        )
        self.sim_info = await wait_file(sim_ready, sim, "the simulator", 120)
        self.sim_pid = int(self.sim_info["pid"])
        self.ctl = str(self.sim_info["control_url"])
        print(
            f"simulator: {n} devices on 127.0.0.1:{base}..{base + n - 1} "
            f"(ready in {time.monotonic() - t0:.1f} s); {self.rx_name} {self.rx}"
            + (
                f"; mosquitto 127.0.0.1:{self.broker_port} (max_inflight_messages "
                f"{self.broker_inflight})"
                if self.mqtt
                else ""
            )
        )

    async def add_bookings(self) -> None:
        """``flood_bookings`` per device three hours ahead for the flood, and ``bursts`` per
        device, 20 min apart from the first top of the hour at least 10 min ahead: one burst
        for each pipeline run, in run order. All before any pipeline connects (no re-lists)."""
        clock = await self.http.get(f"{self.ctl}/clock")
        sim_now = datetime.fromisoformat(clock["now"])
        first = (sim_now + timedelta(hours=3)).replace(second=0, microsecond=0)
        t0 = time.monotonic()
        for i in range(self.flood_bookings):
            await self.http.post(
                f"{self.ctl}/devices/all/calendar/add",
                {
                    "start": utc_z(first + timedelta(minutes=5 * i)),
                    "duration_min": 5,
                    "title": f"Flood {i}",
                    "organizer": "Bench Flood",
                },
            )
        hour = (sim_now + timedelta(minutes=10)).replace(
            minute=0, second=0, microsecond=0
        ) + timedelta(hours=1)
        for k in range(self.bursts):
            at = hour + k * BURST_SPACING
            meeting = "burst-" + at.strftime("%Y%m%dT%H%M")
            self.burst_times.append((at, meeting))
            await self.http.post(
                f"{self.ctl}/devices/all/calendar/add",
                {
                    "start": utc_z(at),
                    "duration_min": 15,
                    "title": "All hands",
                    "organizer": "Bench Burst",
                    "meeting_id": meeting,
                },
            )
        print(
            f"bookings: {self.flood_bookings} per device for the flood"
            + "".join(f", 1 per device at {utc_z(at)}" for at, _ in self.burst_times)
            + f" ({time.monotonic() - t0:.1f} s)"
        )

    # ---- load and observation ---------------------------------------------------------------

    async def flood(self, total_rate: float, seconds: float, trace: bool) -> dict[str, Any]:
        return dict(
            await self.http.post(
                f"{self.ctl}/devices/all/flood",
                {
                    "rate": total_rate / self.devices,
                    "duration_s": seconds,
                    "bookings": self.flood_bookings,
                    "trace": trace,
                },
            )
        )

    async def rx_trace(self, clear: bool = True) -> list[list[Any]]:
        data = await self.http.get(f"{self.rx}/stats?trace=1{'&clear=1' if clear else ''}")
        return list(data["trace"])

    async def rx_stats(self) -> dict[str, Any]:
        return dict(await self.http.get(f"{self.rx}/stats"))

    def cpu_pids(self, target: Target) -> dict[str, int]:
        pids = {target.name: target.pid, "simulator": self.sim_pid, self.rx_name: self.rx_pid}
        if self.mqtt:
            pids["mosquitto"] = self.broker_pid
        return pids


# --------------------------------------------------------------------------------------------
# Phases
# --------------------------------------------------------------------------------------------


@dataclass
class Connect:
    seconds: float  # process start -> all devices connected
    delivered_s: float  # process start -> its connect-time events delivered
    accepted: int
    rss: float


@dataclass
class Latency:
    rate: float
    emitted: int
    matched: int
    missing: int
    e2e: list[float] = field(repr=False)
    pipeline_leg: list[float] = field(repr=False)  # observed_at -> arrival
    device_leg: list[float] = field(repr=False)  # emission -> observed_at


@dataclass
class Sustained:
    rate: float
    seconds: float
    avg: float  # accepted events/s over the flood window
    median: float
    low: float
    high: float
    depth_at_end: int
    drained_after_s: float
    left: int
    events: int  # distinct events accepted from the flood start until drained
    cpu_pct: dict[str, float]  # over the flood window, per process
    pipeline_cpu_s: float  # the pipeline's CPU seconds from the flood start until drained

    @property
    def per_cpu_s(self) -> float:
        return self.events / self.pipeline_cpu_s if self.pipeline_cpu_s else float("nan")


@dataclass
class Burst:
    devices: int
    delivered: int
    times: list[float] = field(repr=False)
    cpu_pct: float
    rss_after: float  # MiB, 2 s after the last delivery (or the timeout)
    rss_peak: float  # VmHWM, the whole run so far

    @property
    def last(self) -> float:
        return self.times[-1] if self.times else float("nan")


@dataclass
class Backlog:
    queued: int
    depth_before: int
    drain_s: float
    left: int
    delivered: int
    pipeline_cpu_s: float


async def connected(rig: Rig, target: Target, t0: float, limit: float = 120) -> Connect:
    """All devices connected, the connect-time events delivered, the trace cleared."""
    await target.wait_connected(rig.http, rig.devices, limit)
    t_conn = time.monotonic() - t0
    left = await target.drain(rig.http, 30)
    t_all = time.monotonic() - t0
    if left:
        print(f"WARNING: {left} connect events still in {target.name}'s outbox after 30 s")
    accepted = int((await rig.rx_stats())["accepted"])
    await rig.rx_trace()
    await asyncio.sleep(2)
    c = Connect(t_conn, t_all, accepted, rss_mib(target.pid))
    print(
        f"{target.name}: {rig.devices}/{rig.devices} devices connected in {c.seconds:.1f} s "
        f"(process start included); connect events delivered at {c.delivered_s:.1f} s "
        f"({c.accepted} accepted at the {rig.rx_name} so far); RSS {c.rss:.1f} MiB"
    )
    return c


async def latency(rig: Rig, target: Target, rate: float, seconds: float) -> Latency:
    await rig.http.get(f"{rig.ctl}/flood?clear=1")
    await rig.rx_trace()
    await rig.flood(rate, seconds, trace=True)
    await asyncio.sleep(seconds + 0.5)
    await target.drain(rig.http, 10)
    await asyncio.sleep(0.5)
    sim = (await rig.http.get(f"{rig.ctl}/flood?clear=1"))["trace"]
    arrivals = await rig.rx_trace()
    emitted: dict[tuple[str, str, str], deque[float]] = defaultdict(deque)
    for t, dev, bid, name in sim:
        emitted[(dev, str(bid), name)].append(t)
    names = {"booking.started": "Start", "booking.ended": "End"}
    e2e: list[float] = []
    pipeline_leg: list[float] = []
    device_leg: list[float] = []
    for arr, typ, dev, bid, _mid, obs in arrivals:
        name = names.get(typ)
        q = emitted.get((dev, str(bid), name)) if name else None
        if not q:
            continue
        t_emit = q.popleft()
        e2e.append(arr - t_emit)
        if obs is not None:
            pipeline_leg.append(arr - obs)
            device_leg.append(obs - t_emit)
    missing = sum(len(q) for q in emitted.values())
    r = Latency(rate, len(sim), len(e2e), missing, e2e, pipeline_leg, device_leg)
    rx = rig.rx_name
    print(
        f"{target.name} latency at {rate:.0f} events/s for {seconds:.0f} s: {r.emitted} "
        f"emitted, {r.matched} matched at the {rx}, {r.missing} missing"
    )
    print(
        f"  device -> {rx} (sim emission -> arrival): p50 {pct(e2e, 0.5) * MS:.1f} ms, "
        f"p99 {pct(e2e, 0.99) * MS:.1f} ms, max {max(e2e, default=0) * MS:.1f} ms"
    )
    print(
        f"  {target.name} -> {rx} (observed_at -> arrival): p50 "
        f"{pct(pipeline_leg, 0.5) * MS:.1f} ms, p99 {pct(pipeline_leg, 0.99) * MS:.1f} ms"
    )
    print(
        f"  device -> {target.name} (sim emission -> observed_at): p50 "
        f"{pct(device_leg, 0.5) * MS:.1f} ms, p99 {pct(device_leg, 0.99) * MS:.1f} ms"
    )
    return r


async def sustained(rig: Rig, target: Target, rate: float, seconds: float) -> Sustained:
    pids = rig.cpu_pids(target)
    await rig.rx_trace()
    before_rx = int((await rig.rx_stats())["accepted"])
    cpu0 = {k: cpu_s(p) for k, p in pids.items()}
    w0 = time.time()
    await rig.flood(rate, seconds, trace=False)
    await asyncio.sleep(seconds)
    cpu1 = {k: cpu_s(p) for k, p in pids.items()}
    w1 = time.time()
    depth_at_end = await target.drain(rig.http, 0)
    left = await target.drain(rig.http, 30)
    cpu_done = cpu_s(target.pid)
    arrivals = await rig.rx_trace()
    rx_stats = await rig.rx_stats()
    per_s = Counter(int(arr - w0) for arr, *_ in arrivals)
    secs = int(seconds)
    steady = [per_s.get(s, 0) for s in range(2, secs)]  # skip the ramp-up seconds
    in_window = sum(per_s.get(s, 0) for s in range(secs))
    last = max((arr for arr, *_ in arrivals), default=w1)
    r = Sustained(
        rate=rate,
        seconds=seconds,
        avg=in_window / (w1 - w0),
        median=statistics.median(steady) if steady else 0,
        low=min(steady) if steady else 0,
        high=max(steady, default=0),
        depth_at_end=depth_at_end,
        drained_after_s=last - w1,
        left=left,
        events=int(rx_stats["accepted"]) - before_rx,
        cpu_pct={k: (cpu1[k] - cpu0[k]) / (w1 - w0) * 100 for k in pids},
        pipeline_cpu_s=cpu_done - cpu0[target.name],
    )
    print(
        f"{target.name} sustained: {rate:.0f} events/s offered by {rig.devices} devices for "
        f"{seconds:.0f} s ({rate / rig.devices:.2f}/s each)"
    )
    print(
        f"  accepted at the {rig.rx_name}: {r.avg:.0f} events/s over the flood window; per "
        f"second (after 2 s) median {r.median:.0f}, min {r.low:.0f}, max {r.high:.0f}"
    )
    print(
        f"  outbox depth when the flood ended: {depth_at_end}; drained {r.drained_after_s:+.1f} "
        f"s after it ({'all' if left == 0 else f'{left} left'}); {r.events} distinct events; "
        f"duplicates dropped by event_id since the start: {rx_stats['duplicates']}"
    )
    print(
        "  CPU over the flood (100% = one core): "
        + ", ".join(f"{k} {v:.0f}%" for k, v in r.cpu_pct.items())
        + f"; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"  {target.name}: {r.events} events for {r.pipeline_cpu_s:.2f} CPU s (flood start to "
        f"drained) = {r.per_cpu_s:.0f} events per CPU-second"
    )
    return r


async def burst(rig: Rig, target: Target, at: datetime, meeting: str) -> Burst:
    """One booking per device starting at ``at``: the simulator clock is moved to
    ``at - BURST_LEAD_S`` and runs into it; the time from the moment it reads ``at`` to each
    device's ``booking.started`` of meeting ``meeting`` at the receiver."""
    n = rig.devices
    await rig.http.post(f"{rig.ctl}/flood/stop")
    await target.drain(rig.http, 10)
    await rig.rx_trace()
    clock = await rig.http.get(f"{rig.ctl}/clock")
    advance = (at - datetime.fromisoformat(clock["now"])).total_seconds() - BURST_LEAD_S
    if advance < 0:
        raise SystemExit("the burst minute has passed: run again")
    await rig.http.post(f"{rig.ctl}/clock", {"advance_s": advance})
    # When does the simulator clock read `at`, in this machine's wall time?
    t_a = time.time()
    clock = await rig.http.get(f"{rig.ctl}/clock")
    t_b = time.time()
    crossing = (t_a + t_b) / 2 + (at.timestamp() - float(clock["unix"])) / float(clock["speed"])
    cpu0, w0 = cpu_s(target.pid), time.time()
    started: dict[str, float] = {}
    observed: dict[str, float] = {}  # data.observed_at: when the pipeline read the frame
    deadline = crossing + 30
    while len(started) < n and time.time() < deadline:
        await asyncio.sleep(0.25)
        for arr, typ, dev, _bid, mid, obs in await rig.rx_trace():
            if typ == "booking.started" and mid == meeting:
                started.setdefault(dev, arr)
                if obs is not None:
                    observed.setdefault(dev, obs)
    cpu = (cpu_s(target.pid) - cpu0) / (time.time() - w0) * 100
    await asyncio.sleep(2)
    rss, peak = rss_mib(target.pid), rss_mib(target.pid, "VmHWM")
    r = Burst(n, len(started), sorted(t - crossing for t in started.values()), cpu, rss, peak)
    print(
        f"{target.name} burst at {utc_z(at)}: {r.delivered}/{n} booking.started delivered; "
        f"after the simulator clock reached it: first {r.times[0] if r.times else 0:.2f} s, "
        f"median {pct(r.times, 0.5):.2f} s, last {r.last:.2f} s ({target.name} CPU {cpu:.0f}%)"
    )
    if observed:
        # The two legs: simulator clock -> the pipeline read the frame, read -> receiver.
        read = sorted(t - crossing for t in observed.values())
        through = sorted(started[d] - t for d, t in observed.items())
        print(
            f"  read by {target.name} (observed_at): first {read[0]:.2f} s, median "
            f"{pct(read, 0.5):.2f} s, last {read[-1]:.2f} s; {target.name} -> {rig.rx_name}: "
            f"median {pct(through, 0.5):.2f} s, max {through[-1]:.2f} s"
        )
    print(f"  {target.name} RSS after the burst {rss:.1f} MiB, peak over its run {peak:.1f} MiB")
    return r


async def backlog(
    rig: Rig,
    target: Target,
    events: int,
    rate: float,
    on_drain: Callable[[str], None] = lambda _: None,
) -> Backlog:
    """Webhooks only: the receiver answers 503 while ``events`` are flooded at ``rate``/s,
    then comes back; the time from its return until the pipeline's outbox is empty.
    ``on_drain("drain")`` runs just before the receiver comes back (the profiler's phase)."""
    await rig.http.post(f"{rig.ctl}/flood/stop")
    await target.drain(rig.http, 10)
    await rig.rx_trace()
    before = int((await rig.rx_stats())["accepted"])
    await rig.http.get(f"{rig.rx}/stats?down=1")
    seconds = events / rate
    await rig.flood(rate, seconds, trace=False)
    await asyncio.sleep(seconds + 1)
    depth = await target.depth(rig.http)
    on_drain("drain")
    cpu0 = cpu_s(target.pid)
    t0 = time.monotonic()
    await rig.http.get(f"{rig.rx}/stats?down=0")
    left = await target.drain(rig.http, 120)
    r = Backlog(
        queued=events,
        depth_before=depth,
        drain_s=time.monotonic() - t0,
        left=left,
        delivered=int((await rig.rx_stats())["accepted"]) - before,
        pipeline_cpu_s=cpu_s(target.pid) - cpu0,
    )
    await rig.rx_trace()
    print(
        f"{target.name} backlog: {events} events offered with the {rig.rx_name} down, outbox "
        f"depth {depth}; drained in {r.drain_s:.2f} s after it came back "
        f"({'all' if left == 0 else f'{left} left'}; {r.delivered} delivered; "
        f"{r.pipeline_cpu_s:.1f} CPU s)"
    )
    return r


@dataclass
class Run:
    """The figures of one pipeline run through the phases."""

    name: str
    connect: Connect | None = None
    latency: Latency | None = None
    sustained: Sustained | None = None
    burst: Burst | None = None
    backlog: Backlog | None = None


async def phases(
    rig: Rig,
    target: Target,
    args: argparse.Namespace,
    burst_k: int,
    t0: float,
    on_phase: Callable[[str], None] = lambda _: None,
) -> Run:
    """Every phase ``args`` asks for, against ``target`` (the agent goes through the same):
    ``burst_k`` picks the rig's burst minute, ``t0`` is when the process started,
    ``on_phase(name)`` runs before each phase (bench_pipeline's profiler)."""
    run = Run(target.name)
    on_phase("connect")
    run.connect = await connected(rig, target, t0)
    if not args.skip_latency:
        on_phase("latency")
        run.latency = await latency(rig, target, args.latency_rate, args.latency_s)
    if not args.skip_sustained:
        on_phase("sustained")
        run.sustained = await sustained(rig, target, args.rate, args.duration)
    if not args.skip_burst:
        on_phase("burst")
        at, meeting = rig.burst_times[burst_k]
        run.burst = await burst(rig, target, at, meeting)
    if args.backlog and not rig.mqtt:
        on_phase("backlog")
        run.backlog = await backlog(rig, target, args.backlog, args.backlog_rate, on_phase)
    return run


def add_load_args(ap: argparse.ArgumentParser, devices: int) -> None:
    """The options both benches take (the rig, the load, the phases)."""
    ap.add_argument("--sink", choices=["webhook", "mqtt"], default="webhook")
    ap.add_argument("--devices", type=int, default=devices)
    ap.add_argument("--duration", type=float, default=25.0, help="sustained phase, s")
    ap.add_argument("--rate", type=float, default=3000.0, help="sustained offered events/s")
    ap.add_argument("--latency-rate", type=float, default=200.0)
    ap.add_argument("--latency-s", type=float, default=10.0)
    ap.add_argument("--batch-max", type=int, default=20, help="[webhook] events per batch")
    ap.add_argument("--max-in-flight", type=int, default=8, help="[webhook] requests at once")
    ap.add_argument("--mqtt-protocol", choices=["3.1.1", "5"], default="5")
    ap.add_argument(
        "--broker-inflight",
        type=int,
        default=52,
        help="mosquitto max_inflight_messages (MQTT 5: the Receive Maximum a client gets; the "
        "agent keeps 2 spare, so 52 lets its 50-publish window run)",
    )
    ap.add_argument(
        "--flood-bookings",
        type=int,
        default=0,
        help="bookings per device to cycle through (default: enough that no event "
        "repeats within the agent's 5 s duplicate horizon: 12 at <= 3.6 events/s "
        "per device, up to 40, where 80 > the agent's 64 remembered events)",
    )
    ap.add_argument(
        "--backlog",
        type=int,
        default=0,
        help="[webhook] events queued while the receiver answers 503, then the "
        "drain time (0: skip)",
    )
    ap.add_argument(
        "--backlog-rate",
        type=float,
        default=0.0,
        help="events/s offered while the receiver is down (default: --rate, so no device "
        "repeats an event inside the agent's duplicate horizon)",
    )
    ap.add_argument("--skip-burst", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument(
        "--skip-sustained",
        action="store_true",
        help="no flood: connect, then the burst (the 1,000-room burst alone)",
    )
    ap.add_argument(
        "--time-limit",
        type=float,
        default=0.0,
        help=f"whole run, s (default: {TIME_PER_RUN_S:.0f} s per pipeline run)",
    )
    ap.add_argument("--keep-logs", metavar="DIR", help="copy the processes' logs here")


def settle_args(args: argparse.Namespace) -> None:
    args.backlog_rate = args.backlog_rate or args.rate
    if not args.flood_bookings:
        per_device = max(args.rate, args.latency_rate, args.backlog_rate) / max(1, args.devices)
        args.flood_bookings = max(12, min(FLOOD_BOOKINGS, int(2.5 * per_device) + 4))


def bench_main(
    ap: argparse.ArgumentParser, run: Callable[[argparse.Namespace], Coroutine[Any, Any, None]]
) -> None:
    """Parse the options, check the file limit, run ``run(args)``; Ctrl-C stops the children."""
    args = ap.parse_args()
    settle_args(args)
    limit = raise_nofile()
    if limit < 2 * args.devices + 200:
        raise SystemExit(f"RLIMIT_NOFILE {limit} is too low for {args.devices} devices")
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        print("interrupted; children stopped", file=sys.stderr)
        sys.exit(130)


# --------------------------------------------------------------------------------------------
# The webhook receiver process (``--receiver-ready FILE``)
# --------------------------------------------------------------------------------------------


def receiver_main(ready_file: str) -> None:
    import orjson
    from aiohttp import web

    from tests.receivers import Delivery, Reply, WebhookReceiver

    class TracingReceiver(WebhookReceiver):
        """Records (arrival, type, device, booking id, meeting id, observed_at) per accepted
        event; ``GET /stats?trace=1&clear=1`` returns and empties the trace; ``?down=1`` /
        ``?down=0`` switch the webhook answer to 503 / back to normal."""

        def __init__(self, secret: str) -> None:
            super().__init__(secret, record_bodies=False)
            self.trace: list[tuple[Any, ...]] = []
            self.down = False
            self.responder = lambda d: Reply(503) if self.down else None

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
            if "down" in q:
                self.down = q["down"] == "1"
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


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="the bench's webhook receiver process")
    ap.add_argument("--receiver-ready", required=True, metavar="FILE")
    receiver_main(ap.parse_args().receiver_ready)
