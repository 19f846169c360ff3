"""Calendar-only rooms at scale: N Microsoft 365 rooms (``--source microsoft``, the default)
or N Google Workspace resource calendars (``--source google``) polled by the agent against the
repository's simulator, and the delay from a change "in Outlook / Google Calendar" to its
webhook.

Three processes on 127.0.0.1, each its own: the simulator (``python -m calendar_sim.graph`` or
``python -m calendar_sim.google``: HTTPS with the certificate it makes at start, written as the
agent's ``ca_file``; a control API), the agent (``edge-agent run -c FILE``: ``[microsoft]`` or
``[google]`` with ``discover_rooms``, a webhook sink) and the bench's webhook receiver
(``bench/_harness.py``).

1. setup: every room discovered and its full sync done (``/v1/rooms``: ``last_sync`` set on
   all N); the time it took.
2. steady state, ``--duration`` s: ``--changes`` changes spread evenly over the window minus
   one poll interval, each in another room (alternately an event created, and one of the
   created ones moved), made through the simulator's control API; its wall time is taken just
   before the request. The delay is that time -> the matching ``booking.created`` /
   ``booking.moved`` (by the simulator's event id) at the receiver. Delta polling bounds it
   from below by the poll phase: with a 60 s interval the p50 is about 30 s by design.
   Over the same window: the requests/s the agent makes to Graph / Google Calendar (the
   simulator's own per-route counters), the CPU of the agent, the simulator and the receiver
   (``/proc``), and the agent's RSS.

Google's quota (``--source google``): every request runs as the one impersonated admin, and
Google allows 600 Calendar requests a minute per user over a sliding minute; the simulator
enforces it (403 ``rateLimitExceeded`` past it) and counts, per user, the most requests it saw
in any sliding minute. The bench prints the requests/min the agent sent, that peak against the
quota, how many requests were refused, and the poll interval each room effectively reached
(rooms x window / rounds, from ``/v1/rooms``) against the one the agent planned.

The simulator and the agent run on this machine's wall clock (the agent has no other), and
the changes are placed at whole days from today's UTC midnight, inside the agent's
``horizon_days`` window at any hour. Self-stopping: every child gets SIGTERM at the end and
is killed with the bench (PR_SET_PDEATHSIG).

    .venv/bin/python bench/bench_rooms.py --rooms 300 --poll-interval 20 --duration 60
    .venv/bin/python bench/bench_rooms.py --source google --rooms 2000 --duration 560
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (  # the bench directory is on sys.path above, not a package
    MS,
    SECRET,
    Rig,
    Target,
    cpu_s,
    free_port,
    pct,
    raise_nofile,
    rss_mib,
)

from edge_agent.calendars.ratelimit import DEFAULT_PER_MINUTE, quota_poll_interval_s

SIM_SECRET = "bench-rooms-graph-secret"
DOMAIN = "contoso.com"
IDENTITY = {"token", "discovery", "keys", "instance"}  # the identity platform, not Graph
GOOGLE_ADMIN = f"admin@{DOMAIN}"
GOOGLE_CALENDAR = {"events", "event", "watch", "channels"}  # the Calendar API's routes
GOOGLE_USER_QUOTA = 600  # Calendar requests per minute per user (Google's usage limits)


def mailbox(i: int) -> str:
    return f"room-{i}@{DOMAIN}"


def events_path(source: str, box: str) -> str:
    """The control API's events of one room (the two simulators name them differently)."""
    return f"/calendars/{box}/events" if source == "google" else f"/mailboxes/{box}/events"


def planned_interval(args: argparse.Namespace) -> float:
    """The poll interval the agent runs at: Google's is stretched to the request quota."""
    if args.source != "google":
        return float(args.poll_interval)
    return max(args.poll_interval, quota_poll_interval_s(args.rooms, DEFAULT_PER_MINUTE))


def day_at(days: int, minutes: int) -> str:
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight + timedelta(days=days, minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")


async def start_sim(rig: Rig, source: str, rooms: int, generate_days: int) -> dict[str, Any]:
    """The simulator in its own process; its first stdout line is its description (JSON)."""
    name = "google-sim" if source == "google" else "graph-sim"
    log = rig.tmp / f"{name}.log"
    ca = rig.tmp / f"{name}-ca.pem"
    key = rig.tmp / "google-key.json"
    argv = (
        [
            sys.executable,
            "-m",
            "calendar_sim.google",
            "--port",
            "0",
            "--control-port",
            str(free_port()),
            "--rooms",
            str(rooms),
            "--domain",
            DOMAIN,
            "--admin",
            GOOGLE_ADMIN,
            "--generate-days",
            str(generate_days),
            "--user-quota",
            str(GOOGLE_USER_QUOTA),
            "--write-ca",
            str(ca),
            "--write-key",
            str(key),
        ]
        if source == "google"
        else [
            sys.executable,
            "-m",
            "calendar_sim.graph",
            "--port",
            "0",
            "--control-port",
            str(free_port()),
            "--rooms",
            str(rooms),
            "--domain",
            DOMAIN,
            "--time-zone",
            "UTC",
            "--generate-days",
            str(generate_days),
            "--client-secret",
            SIM_SECRET,
            "--write-ca",
            str(ca),
        ]
    )
    proc = rig.spawn(argv, f"{name}.log")
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited with {proc.returncode}; see {log}")
        for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
            if line.startswith("{"):
                info: dict[str, Any] = json.loads(line)
                info["pid"] = proc.pid
                info["ca"] = str(ca)
                info["key"] = str(key)
                info["name"] = name
                return info
        if time.monotonic() > deadline:
            raise SystemExit(f"{name} not ready within 120 s")
        await asyncio.sleep(0.1)


def source_section(source: str, sim: dict[str, Any], rig: Rig, poll_s: float) -> list[str]:
    if source == "google":
        return [
            "[google]",
            f'service_account_file = "{sim["key"]}"',
            f'subject = "{GOOGLE_ADMIN}"',
            f'directory_url = "{sim["directory_url"]}"',
            f'calendar_url = "{sim["calendar_url"]}"',
            f'ca_file = "{sim["ca"]}"',
            f"poll_interval_s = {poll_s:g}",
        ]
    (rig.tmp / "graph-secret").write_text(SIM_SECRET + "\n")
    return [
        "[microsoft]",
        f'tenant_id = "{sim["tenant_id"]}"',
        f'client_id = "{sim["client_id"]}"',
        f'client_secret_file = "{rig.tmp / "graph-secret"}"',
        f'authority_url = "{sim["authority_url"]}"',
        f'graph_url = "{sim["graph_url"]}"',
        f'ca_file = "{sim["ca"]}"',
        f"poll_interval_s = {poll_s:g}",
    ]


def write_config(rig: Rig, source: str, sim: dict[str, Any], api_port: int, poll_s: float) -> Path:
    cfg = rig.tmp / "agent.toml"
    cfg.write_text(
        "\n".join(
            [
                'site = "bench"',
                "[store]",
                f'path = "{rig.tmp / "agent.db"}"',
                'synchronous = "normal"',
                "[webhook]",
                f'url = "{rig.rx}/hook"',
                'secret_env = "WEBHOOK_SECRET"',
                "timeout_s = 10",
                "[api]",
                f'listen = "127.0.0.1:{api_port}"',
                *source_section(source, sim, rig, poll_s),
                "",
            ]
        )
    )
    return cfg


def api_requests(source: str, state: dict[str, Any]) -> int:
    """Requests to the calendar API (Graph without the identity platform; Google Calendar
    without the token endpoint and the Directory, which the Calendar quota does not count)."""
    if source == "google":
        return sum(int(v) for k, v in state["requests"].items() if k in GOOGLE_CALENDAR)
    return sum(int(v) for k, v in state["requests"].items() if k not in IDENTITY)


async def room_rounds(rig: Rig, agent: Target, source: str) -> int:
    listed = (await rig.http.get(f"{agent.api}/v1/rooms"))["rooms"]
    return sum(int(r.get("rounds") or 0) for r in listed if r.get("source") == source)


async def wait_synced(rig: Rig, agent: Target, source: str, rooms: int, limit: float) -> float:
    t0 = time.monotonic()
    synced = 0
    while True:
        if agent.proc.poll() is not None:
            raise SystemExit(f"the agent exited ({agent.proc.returncode}); see {agent.log}")
        with contextlib.suppress(Exception):
            listed = (await rig.http.get(f"{agent.api}/v1/rooms"))["rooms"]
            synced = sum(1 for r in listed if r.get("source") == source and r["last_sync"])
            if synced >= rooms:
                return time.monotonic() - t0
        if time.monotonic() - t0 > limit:
            raise SystemExit(f"only {synced}/{rooms} rooms synced in {limit:.0f} s")
        await asyncio.sleep(0.5)


async def run(args: argparse.Namespace) -> None:
    t_start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="bench-rooms-"))
    rig = Rig(tmp, sink="webhook", devices=0, flood_bookings=0, bursts=0)
    try:
        await rig.start_receiving_end()
        t0 = time.monotonic()
        src = args.source
        api_name = "Google Calendar" if src == "google" else "Graph"
        sim = await start_sim(rig, src, args.rooms, args.generate_days)
        ctl = str(sim["control_url"])
        print(
            f"{sim['name']}: {sim['rooms']} rooms, {sim['events']} events, {sim['url']} (ready "
            f"in {time.monotonic() - t0:.1f} s); receiver {rig.rx}"
        )
        interval = planned_interval(args)
        if interval > args.poll_interval:
            print(
                f"planned: {args.rooms} rooms every {args.poll_interval:g} s would be "
                f"{args.rooms * 60 / args.poll_interval:.0f} requests/min as one user (quota "
                f"{GOOGLE_USER_QUOTA}/min); the agent polls each room every {interval:.0f} s"
            )
        api_port = free_port()
        cfg = write_config(rig, src, sim, api_port, args.poll_interval)
        env = {"WEBHOOK_SECRET": SECRET, "EDGE_AGENT_LOG_LEVEL": "warning"}
        proc = rig.spawn(
            [sys.executable, "-m", "edge_agent", "run", "-c", str(cfg)], "agent.log", env=env
        )
        agent = Target("agent", proc, f"http://127.0.0.1:{api_port}", tmp / "agent.log")
        took = await wait_synced(rig, agent, src, args.rooms, args.setup_limit)
        print(
            f"setup: {args.rooms} rooms discovered and fully synced in {took:.1f} s; agent RSS "
            f"{rss_mib(agent.pid):.1f} MiB"
        )
        # the events the window moves, created (and delivered) before it: an event created
        # and moved inside one poll interval reaches the agent as one creation
        moves = args.changes // 2
        to_move: list[tuple[str, str]] = []
        for k in range(moves):
            box = mailbox(1 + (k * 7919 + 3) % args.rooms)
            ev = await rig.http.post(
                ctl + events_path(src, box),
                {"start": day_at(3, 480 + k), "minutes": 30, **title(src, f"bench move {k}")},
            )
            to_move.append((box, str(ev["id"])))
        pending = {eid for _box, eid in to_move}
        deadline = time.monotonic() + interval * 1.1 + 60
        while pending and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            for _arr, typ, _dev, bid, _mid, _obs in await rig.rx_trace():
                if typ == "booking.created":
                    pending.discard(str(bid))
        if pending:
            raise SystemExit(f"{len(pending)} of the events to move never reached the receiver")
        await agent.drain(rig.http, 60)
        await rig.rx_trace()

        # ---- steady state ----------------------------------------------------------------
        pids = {"agent": agent.pid, str(sim["name"]): int(sim["pid"]), "receiver": rig.rx_pid}
        cpu0 = {k: cpu_s(p) for k, p in pids.items()}
        state0 = await rig.http.get(f"{ctl}/state")
        req0 = api_requests(src, state0)
        rounds0 = await room_rounds(rig, agent, src)
        w0 = time.time()
        spread = max(1.0, args.duration - interval - 2)
        made: dict[tuple[str, str], float] = {}  # (booking id, event type) -> change time
        peak_rss = 0.0
        for k in range(args.changes):
            due = w0 + k * spread / max(1, args.changes)
            await asyncio.sleep(max(0.0, due - time.time()))
            peak_rss = max(peak_rss, rss_mib(agent.pid))
            if k % 2 == 1 and to_move:
                box, eid = to_move.pop(0)
                t = time.time()
                await rig.http.post(
                    f"{ctl}{events_path(src, box)}/{eid}/move", {"start": day_at(3, 600 + k)}
                )
                made[(eid, "booking.moved")] = t
            else:
                box = mailbox(1 + (k * 7919) % args.rooms)  # spread across the rooms
                t = time.time()
                ev = await rig.http.post(
                    ctl + events_path(src, box),
                    {"start": day_at(2, 480 + k), "minutes": 30, **title(src, f"bench {k}")},
                )
                made[(str(ev["id"]), "booking.created")] = t
        await asyncio.sleep(max(0.0, w0 + args.duration - time.time()))
        w1 = time.time()
        cpu1 = {k: cpu_s(p) for k, p in pids.items()}
        state1 = await rig.http.get(f"{ctl}/state")
        req1 = api_requests(src, state1)
        rounds1 = await room_rounds(rig, agent, src)
        rss = rss_mib(agent.pid)
        peak_rss = max(peak_rss, rss)

        # stragglers: a change made near the end waits for its room's next poll
        arrived: dict[tuple[str, str], float] = {}
        deadline = time.time() + interval * 1.1 + 15
        while True:
            for arr, typ, _dev, bid, _mid, _obs in await rig.rx_trace():
                key = (str(bid), str(typ))
                if key in made:
                    arrived.setdefault(key, float(arr))
            if len(arrived) >= len(made) or time.time() > deadline:
                break
            await asyncio.sleep(0.5)
        delays = [arrived[k] - made[k] for k in arrived]
        window = w1 - w0
        print(
            f"steady state over {window:.0f} s, {args.rooms} calendar-only rooms, "
            f"poll_interval_s {args.poll_interval:g}:"
        )
        print(
            f"  requests to {api_name}: {(req1 - req0) / window:.1f}/s = "
            f"{(req1 - req0) / window * 60:.0f}/min (expected ~{args.rooms / interval:.1f}/s: "
            f"one round per room every {interval:.0f} s)"
        )
        rounds = rounds1 - rounds0
        reached = args.rooms * window / rounds if rounds else float("inf")
        print(
            f"  poll interval reached: {reached:.0f} s per room ({rounds} rounds over "
            f"{args.rooms} rooms; planned {interval:.0f} s)"
        )
        if src == "google":
            quota = state1["quota"]
            peak = max(quota["peak"].values(), default=0)
            refused = int(quota["refused"]) - int(state0["quota"]["refused"])
            verdict = "under" if peak <= GOOGLE_USER_QUOTA and not refused else "OVER"
            print(
                f"  Google quota: at most {peak} requests in any sliding minute as "
                f"{GOOGLE_ADMIN} (quota {GOOGLE_USER_QUOTA}/min per user, agent limiter "
                f"{DEFAULT_PER_MINUTE:.0f}/min): {verdict}; {refused} answered 403/429 "
                f"rateLimitExceeded in the window, {quota['refused']} since start"
            )
        print(
            f"  change -> receiver ({len(made)} changes, {len(delays)} delivered, "
            f"{len(made) - len(delays)} missing): p50 {pct(delays, 0.5) * MS:.0f} ms, p99 "
            f"{pct(delays, 0.99) * MS:.0f} ms, max {max(delays, default=0) * MS:.0f} ms"
        )
        print(
            "  CPU (100% = one core): "
            + ", ".join(f"{k} {(cpu1[k] - cpu0[k]) / window * 100:.1f}%" for k in pids)
            + f"; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
        )
        print(f"  agent RSS {rss:.1f} MiB at the end, {peak_rss:.1f} MiB highest sampled")
        print(f"total {time.monotonic() - t_start:.0f} s")
    except BaseException:
        print(f"logs in {tmp}", file=sys.stderr)
        raise
    finally:
        await rig.close()


def title(source: str, text: str) -> dict[str, str]:
    return {"summary": text} if source == "google" else {"subject": text}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", choices=("microsoft", "google"), default="microsoft")
    ap.add_argument("--rooms", type=int, default=2000)
    ap.add_argument("--poll-interval", type=float, default=60.0, help="poll_interval_s")
    ap.add_argument("--duration", type=float, default=180.0, help="steady-state window, s")
    ap.add_argument("--changes", type=int, default=100)
    ap.add_argument("--generate-days", type=int, default=1, help="office days of bookings per room")
    ap.add_argument("--setup-limit", type=float, default=900.0, help="discovery + full sync, s")
    args = ap.parse_args()
    raise_nofile()
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        print("interrupted; children stopped", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
