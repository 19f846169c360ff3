"""``device-sim``: run N simulated RoomOS devices (device k on port P+k) and a control API."""

from __future__ import annotations

import argparse
import asyncio
import asyncio.sslproto
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from datetime import datetime

from .calendar import parse_time
from .control import ControlServer
from .faultspec import parse_fault_spec
from .fleet import DeviceFleet, SimConfig
from .occupancy import SensingSettings

log = logging.getLogger("device_sim")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="device-sim",
        description="Simulate Cisco RoomOS devices speaking xAPI over WebSocket (Bookings).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--devices", type=int, default=1, help="how many devices")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8443, help="port of device 0; device k on P+k")
    # The agent's default user name ([defaults] username), so the two work together as they come.
    p.add_argument("--user", default="edge-agent", help="the device's local user")
    p.add_argument(
        "--password",
        # SUPPRESS: the help must not print a password taken from the environment.
        default=argparse.SUPPRESS,
        help="its password (default: $DEVICE_SIM_PASSWORD, else 'secret')",
    )
    p.add_argument("--http", action="store_true", help="serve ws:// instead of wss://")
    p.add_argument(
        "--https-only", action="store_true", help="with --http: refuse upgrades with 401"
    )
    p.add_argument("--mode", choices=("local", "hybrid"), default="local")
    p.add_argument("--profile", choices=("current", "modern", "legacy"), default="modern")
    p.add_argument("--speed", type=float, default=1.0, help="simulated seconds per real second")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--time-zone", default="Etc/UTC", help="IANA zone of every device")
    p.add_argument("--start", help="simulated start time, e.g. 2026-11-23T07:55:00Z")
    p.add_argument("--confirm-delay", type=float, default=5.0, help="hybrid confirmation, s")
    p.add_argument("--booking-timeout", type=int, default=60, help="BookingTimeout, 60..300 s")
    p.add_argument("--generate", action="store_true", help="fill calendars with an office day")
    p.add_argument("--cert", help="PEM certificate (none: a self-signed one made at start)")
    p.add_argument("--key", help="PEM private key for --cert")
    p.add_argument("--control-port", type=int, help="serve the control API on 127.0.0.1:PORT")
    p.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="SPEC",
        help="inject a fault at start, e.g. malformed:every=10 or reboot:after=20,device=3",
    )
    p.add_argument(
        "--device-profile",
        action="append",
        default=[],
        metavar="K=PROFILE",
        help="device K runs another software profile (current, modern, legacy)",
    )
    p.add_argument(
        "--counting-off",
        action="append",
        type=int,
        default=[],
        metavar="K",
        help="device K has RoomAnalytics PeopleCountOutOfCall Off (PeopleCount Current -1)",
    )
    p.add_argument(
        "--presence-off",
        action="append",
        type=int,
        default=[],
        metavar="K",
        help="device K has RoomAnalytics PeoplePresenceDetector Off (PeoplePresence Unknown)",
    )
    p.add_argument(
        "--extra-user",
        action="append",
        default=[],
        metavar="USER:PASSWORD:ROLE",
        help="another device user, e.g. kiosk:pw:RoomControl (a role without RoomAnalytics)",
    )
    p.add_argument("--attendance", type=float, default=0.8, help="P(a booking's people come)")
    p.add_argument("--walkins", type=float, default=0.1, help="P(a walk-in) per hour")
    p.add_argument("--no-jitter", action="store_true", help="a head count that does not jitter")
    p.add_argument("--ready-file", help="write JSON (ports, cert fingerprint) once listening")
    p.add_argument("--log-level", default="INFO")
    return p


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (1,000 devices need the descriptors)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return (0, 0)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft, hard


def config_from_args(args: argparse.Namespace) -> SimConfig:
    if not 60 <= args.booking_timeout <= 300:
        raise SystemExit("device-sim: --booking-timeout must be within 60..300 seconds")
    if bool(args.cert) != bool(args.key):
        raise SystemExit("device-sim: give both --cert and --key, or neither")
    for spec in args.fault:
        try:
            parse_fault_spec(spec)
        except ValueError as exc:
            raise SystemExit(f"device-sim: --fault: {exc}") from None
    profiles: dict[int, str] = {}
    for spec in args.device_profile:
        k, _, name = spec.partition("=")
        if not k.isdigit() or name not in ("current", "modern", "legacy"):
            raise SystemExit(f"device-sim: --device-profile {spec!r}: want K=current|modern|legacy")
        profiles[int(k)] = name
    users: dict[str, tuple[str, str]] = {}
    for spec in args.extra_user:
        parts = spec.split(":")
        if len(parts) != 3 or not all(parts):
            raise SystemExit(f"device-sim: --extra-user {spec!r}: want USER:PASSWORD:ROLE")
        users[parts[0]] = (parts[1], parts[2])
    if not (0 <= args.attendance <= 1 and 0 <= args.walkins <= 1):
        raise SystemExit("device-sim: --attendance and --walkins are probabilities (0..1)")
    start: datetime | None = None
    if args.start:
        try:
            start = parse_time(args.start)
        except ValueError:
            raise SystemExit(f"device-sim: --start {args.start!r} is not an ISO time") from None
    return SimConfig(
        devices=args.devices,
        host=args.host,
        port=args.port,
        http=args.http,
        https_only=args.https_only,
        username=args.user,
        password=getattr(args, "password", None)
        or os.environ.get("DEVICE_SIM_PASSWORD")
        or "secret",
        mode=args.mode,
        profile=args.profile,
        speed=args.speed,
        seed=args.seed,
        time_zone=args.time_zone,
        start=start,
        confirm_delay_s=args.confirm_delay,
        booking_timeout_s=args.booking_timeout,
        cert_file=args.cert,
        key_file=args.key,
        generate_day=args.generate,
        faults=list(args.fault),
        profiles=profiles,
        users=users,
        counting_off=frozenset(args.counting_off),
        presence_off=frozenset(args.presence_off),
        sensing=SensingSettings(
            attendance=args.attendance, walkin_per_hour=args.walkins, jitter=not args.no_jitter
        ),
    )


async def run(config: SimConfig, control_port: int | None, ready_file: str | None) -> None:
    """Run the fleet until SIGINT/SIGTERM (safe to cancel)."""
    fleet = DeviceFleet(config)
    control: ControlServer | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await fleet.start()
        if control_port is not None:
            control = ControlServer(fleet, control_port)
            await control.start()
        if ready_file:
            info = {
                "pid": os.getpid(),
                "devices": [
                    {"index": d.device_index, "id": d.device_id, "port": d.port, "url": d.url}
                    for d in fleet.devices
                ],
                "control_port": control.port if control else None,
                "control_url": f"http://127.0.0.1:{control.port}" if control else None,
                "cert_sha256": fleet.cert_sha256 or None,
                "cert_pem": fleet.cert_pem.decode() or None,
            }
            tmp = ready_file + ".tmp"
            with open(tmp, "w") as f:
                json.dump(info, f, indent=1)
            os.replace(tmp, ready_file)
        log.info(
            "device-sim ready: %d devices on %s..%d%s",
            len(fleet.devices),
            fleet.devices[0].url if fleet.devices else "-",
            fleet.devices[-1].port if fleet.devices else 0,
            f", control http://127.0.0.1:{control.port}" if control else "",
        )
        await stop.wait()
    finally:
        if control is not None:
            await control.stop()
        await fleet.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("device_sim.ws").setLevel(logging.WARNING)
    config = config_from_args(args)
    raise_nofile_limit()
    # asyncio gives every TLS connection a 256 KiB read buffer; with 1,000 devices that is
    # 250 MiB for buffers alone. Device frames are small: 16 KiB (one TLS record) is enough.
    asyncio.sslproto.SSLProtocol.max_size = 16 * 1024
    try:
        asyncio.run(run(config, args.control_port, args.ready_file))
    except OSError as exc:
        print(f"device-sim: cannot listen: {exc}; choose other ports with --port", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
