"""``google-sim``: serve the Google Workspace fake over HTTPS (and its control API)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from ..common import ControlServer
from .control import add_routes
from .quota import PROJECT_PER_MINUTE, USER_PER_MINUTE
from .sim import GoogleSim, GoogleSimConfig, fault_from_json


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="google-sim",
        description="A fake of Google's OAuth token endpoint (service accounts), the Directory "
        "API's calendar resources and Calendar events (sync tokens, watch channels), over HTTPS.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8446, help="HTTPS port (0: any free port)")
    p.add_argument("--control-port", type=int, help="control API on 127.0.0.1:PORT")
    p.add_argument("--rooms", type=int, default=3, help="room-1..room-N@DOMAIN")
    p.add_argument("--domain", default="example.com")
    p.add_argument("--admin", default="admin@example.com", help="the delegated admin (sub)")
    p.add_argument("--start", help="simulated start, e.g. 2026-11-23T07:00:00Z (default: now)")
    p.add_argument("--speed", type=float, default=1.0)
    p.add_argument("--write-ca", help="write the serving certificate (PEM) to this file")
    p.add_argument("--write-key", help="write the service-account JSON key to this file")
    p.add_argument("--notification-ca", help="PEM CA trusted for https channel addresses")
    p.add_argument("--allow-http-notifications", action="store_true")
    p.add_argument("--fault", action="append", default=[], metavar="JSON")
    p.add_argument(
        "--generate-days", type=int, default=0, help="office-hours meetings per room, N days"
    )
    p.add_argument("--seed", type=int, default=1, help="the generator's seed")
    p.add_argument(
        "--user-quota",
        type=int,
        default=USER_PER_MINUTE,
        help="Calendar requests a minute per user (sliding; 0: no limit)",
    )
    p.add_argument(
        "--project-quota",
        type=int,
        default=PROJECT_PER_MINUTE,
        help="Calendar requests a minute per project (sliding; 0: no limit)",
    )
    return p


def _config(args: argparse.Namespace) -> GoogleSimConfig:
    start = None
    if args.start:
        start = datetime.fromisoformat(args.start)
        start = start if start.tzinfo else start.replace(tzinfo=UTC)
    ca = Path(args.notification_ca).read_bytes() if args.notification_ca else None
    return GoogleSimConfig(
        host=args.host,
        port=args.port,
        domain=args.domain,
        admin=args.admin,
        start=start,
        speed=args.speed,
        rooms=args.rooms,
        notification_ca_pem=ca,
        allow_http_notifications=args.allow_http_notifications,
        user_quota_per_min=args.user_quota,
        project_quota_per_min=args.project_quota,
        generate_days=args.generate_days,
        seed=args.seed,
    )


async def _serve(args: argparse.Namespace) -> None:
    sim = GoogleSim(_config(args))
    for spec in args.fault:
        sim.faults.add(fault_from_json(json.loads(spec)))
    await sim.start()
    control = None
    if args.control_port is not None:
        control = ControlServer(sim.clock, sim.faults, fault_from_json, port=args.control_port)
        add_routes(control.app, sim)
        await control.start()
    if args.write_ca:
        Path(args.write_ca).write_bytes(sim.cert_pem)
    if args.write_key:
        key_path = Path(args.write_key)
        key_path.touch(mode=0o600)
        key_path.write_text(json.dumps(sim.key_file(), indent=2))
    print(
        json.dumps(
            {
                "url": sim.url,
                "token_uri": sim.token_uri,
                "directory_url": sim.directory_url,
                "calendar_url": sim.calendar_url,
                "admin": args.admin,
                "control_url": control.url if control else None,
                "rooms": len(sim.calendars),
                "events": sum(len(c.events) for c in sim.calendars.values()),
            }
        ),
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        if control is not None:
            await control.stop()
        await sim.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        _config(args)
        for spec in args.fault:
            fault_from_json(json.loads(spec))
    except (OSError, ValueError) as exc:
        print(f"google-sim: {exc}", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
