"""``graph-sim``: serve the Microsoft Graph + identity platform fake over HTTPS."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from .sim import GraphSim, GraphSimConfig, fault_from_json


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="graph-sim",
        description="A fake of Microsoft Graph (places, calendarView/delta, events, "
        "subscriptions) and of the identity platform's token endpoint, over HTTPS.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8445, help="HTTPS port (0: any free port)")
    p.add_argument("--control-port", type=int, help="control API on 127.0.0.1:PORT")
    p.add_argument("--tenant-id", default=GraphSimConfig.tenant_id)
    p.add_argument("--client-id", default=GraphSimConfig.client_id)
    p.add_argument(
        "--client-secret",
        default=os.environ.get("GRAPH_SIM_CLIENT_SECRET", GraphSimConfig.client_secret),
        help="the app's secret (default: $GRAPH_SIM_CLIENT_SECRET or a fixed test value)",
    )
    p.add_argument(
        "--client-cert",
        action="append",
        default=[],
        metavar="PEM",
        help="a certificate registered on the app (client assertions)",
    )
    p.add_argument("--rooms", type=int, default=3, help="room-1..room-N@DOMAIN")
    p.add_argument("--domain", default="contoso.com")
    p.add_argument("--time-zone", default="Europe/Oslo", help="IANA zone of the rooms")
    p.add_argument("--generate-days", type=int, default=5, help="office days of bookings")
    p.add_argument("--start", help="simulated start, e.g. 2026-11-23T07:00:00Z (default: now)")
    p.add_argument("--speed", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--token-lifetime", type=int, default=3599, help="seconds")
    p.add_argument("--cert", help="PEM certificate (default: self-signed, made at start)")
    p.add_argument("--key", help="PEM key of --cert")
    p.add_argument("--write-ca", help="write the serving certificate (PEM) to this file")
    p.add_argument("--notification-ca", help="PEM CA trusted for https notification URLs")
    p.add_argument("--allow-http-notifications", action="store_true")
    p.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="JSON",
        help='a fault at start, e.g. \'{"kind": "throttle", "retry_after": 5}\'',
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _config(args: argparse.Namespace) -> GraphSimConfig:
    start = None
    if args.start:
        start = datetime.fromisoformat(args.start)
        start = start if start.tzinfo else start.replace(tzinfo=UTC)
    return GraphSimConfig(
        host=args.host,
        port=args.port,
        tenant_id=args.tenant_id,
        client_id=args.client_id,
        client_secret=args.client_secret or None,
        client_certificates=[Path(c).read_bytes() for c in args.client_cert],
        token_lifetime_s=args.token_lifetime,
        start=start,
        speed=args.speed,
        seed=args.seed,
        rooms=args.rooms,
        domain=args.domain,
        time_zone=args.time_zone,
        generate_days=args.generate_days,
        cert_file=args.cert,
        key_file=args.key,
        notification_ca_pem=Path(args.notification_ca).read_bytes()
        if args.notification_ca
        else None,
        allow_http_notifications=args.allow_http_notifications,
        control_port=args.control_port,
    )


async def _serve(args: argparse.Namespace) -> None:
    sim = GraphSim(_config(args))
    for spec in args.fault:
        sim.faults.add(fault_from_json(json.loads(spec)))
    await sim.start()
    if args.write_ca:
        Path(args.write_ca).write_bytes(sim.cert_pem)
    info = sim.describe()
    info["control_url"] = sim.control.url if sim.control else None
    print(
        json.dumps(
            {
                k: info[k]
                for k in (
                    "url",
                    "authority_url",
                    "graph_url",
                    "tenant_id",
                    "client_id",
                    "rooms",
                    "events",
                    "control_url",
                )
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
        await sim.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        _config(args)
        for spec in args.fault:
            fault_from_json(json.loads(spec))
    except (OSError, ValueError) as exc:
        print(f"graph-sim: {exc}", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
