"""``edge-agent trust``: pin each device's certificate, or check the pins still match.

Devices ship self-signed certificates; pinning their SHA-256 is the practical trust for a
fleet. This command opens a TLS connection to each device and reads the certificate -- the
handshake only: no HTTP request, no WebSocket upgrade, so no credentials are ever sent to a
device that is not yet trusted (the agent's own connect checks the pin before its upgrade for
the same reason). On confirmation the pins are written where each device is listed: the CSV's
fingerprint column, the included TOML file, or the main config (:mod:`edge_agent.config.pins`).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import ssl
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edge_agent.config import ConfigError
from edge_agent.config.inventory import Inventory, Origin
from edge_agent.config.load import EX_CONFIG, load_config_and_inventory
from edge_agent.config.models import AgentConfig, DeviceConfig
from edge_agent.config.pins import PinWriteError, write_csv_pins, write_toml_pins
from edge_agent.ops.cli.common import (
    EX_FAIL,
    EX_OK,
    EX_UNAVAILABLE,
    EX_USAGE,
    Exit,
    err,
    print_config_error,
    print_table,
    setup_logging,
)

_CONCURRENCY = 32
"""Handshakes in flight: a 300-room site is read in seconds without a connect storm."""


@dataclass(frozen=True, slots=True)
class Seen:
    """What one device presented (or why it could not be read)."""

    device: DeviceConfig
    origin: Origin
    fingerprint: str | None = None
    subject: str | None = None
    error: str | None = None

    @property
    def state(self) -> str:
        if self.fingerprint is None:
            return "unreachable"
        if self.device.fingerprint is None:
            return "new"
        return "same" if self.device.fingerprint == self.fingerprint else "CHANGED"


def add_trust_parser(sub: Any, *, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "trust",
        parents=parents,
        help="show each device's certificate (TLS only, no credentials sent) and pin it",
    )
    p.add_argument("ids", nargs="*", metavar="ID", help="the rooms to trust (or --all)")
    p.add_argument("--all", action="store_true", help="every device in the inventory")
    p.add_argument(
        "--yes",
        action="store_true",
        help="write pins for devices that have none without asking (a first install); a pin "
        "that changed is replaced only after a confirmation",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="only list rooms whose certificate no longer matches its pin (exit 1 if any)",
    )
    p.add_argument("--timeout", type=float, default=10.0, metavar="S", help="per device")
    p.set_defaults(func=cmd_trust)


def cmd_trust(args: argparse.Namespace) -> int:
    setup_logging(args)
    try:
        cfg, inv = load_config_and_inventory(args.config)
    except ConfigError as exc:
        print_config_error(args.config, exc)
        raise Exit(EX_CONFIG) from None
    selected = _select(cfg, inv, args)
    seen = asyncio.run(_read_all(selected, args.timeout))
    if args.check:
        return _report_check(seen)
    _print_seen(seen)
    return _pin(seen, yes=args.yes)


def _select(
    cfg: AgentConfig, inv: Inventory, args: argparse.Namespace
) -> list[tuple[DeviceConfig, Origin]]:
    pairs = list(zip(cfg.devices, inv.origins, strict=True))
    if args.ids and args.all:
        err("edge-agent trust: give room ids or --all, not both")
        raise Exit(EX_USAGE)
    if args.ids:
        by_id = {d.id: (d, o) for d, o in pairs}
        unknown = [i for i in args.ids if i not in by_id]
        if unknown:
            err(f"edge-agent trust: not in the inventory: {', '.join(unknown)}")
            raise Exit(EX_USAGE)
        return [by_id[i] for i in dict.fromkeys(args.ids)]
    if not args.all and not args.check:
        err("edge-agent trust: name the rooms to trust (ID ...), or --all")
        raise Exit(EX_USAGE)
    return pairs


# ---- reading certificates -----------------------------------------------------------------


async def _read_all(selected: list[tuple[DeviceConfig, Origin]], timeout: float) -> list[Seen]:
    gate = asyncio.Semaphore(_CONCURRENCY)
    # Discovery: nothing is trusted yet, so nothing is verified; the fingerprint shown is what
    # the admin confirms. No application data is ever written on this connection.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    async def one(dev: DeviceConfig, origin: Origin) -> Seen:
        async with gate:
            return await _read_one(dev, origin, ctx, timeout)

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(one(d, o), name=f"trust[{d.id}]") for d, o in selected]
    return [t.result() for t in tasks]


async def _read_one(dev: DeviceConfig, origin: Origin, ctx: ssl.SSLContext, timeout: float) -> Seen:
    parts = urlsplit(dev.endpoint_url)
    if parts.scheme != "wss":
        return Seen(dev, origin, error="ws:// has no certificate to pin (use wss://)")
    host = parts.hostname or ""
    port = parts.port or 443
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=host)
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    except TimeoutError:
        return Seen(dev, origin, error=f"no TLS handshake from {host}:{port} within {timeout:g} s")
    except ssl.SSLError as exc:
        return Seen(dev, origin, error=f"TLS failed with {host}:{port}: {exc.reason or exc}")
    except OSError as exc:
        return Seen(dev, origin, error=f"cannot connect to {host}:{port}: {exc.strerror or exc}")
    finally:
        if writer is not None:
            writer.close()
            try:
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()
            except (OSError, TimeoutError, ssl.SSLError):
                pass  # the certificate is read; a close_notify lost on the way changes nothing
    if not der:
        return Seen(dev, origin, error=f"{host}:{port} presented no certificate")
    return Seen(dev, origin, hashlib.sha256(der).hexdigest(), _subject(der))


def _subject(der: bytes) -> str:
    try:
        from cryptography import x509  # present with msal and google-auth, which need it
    except ImportError:  # pragma: no cover - the fingerprint is what is pinned
        return "-"
    try:
        return x509.load_der_x509_certificate(der).subject.rfc4514_string() or "(empty)"
    except ValueError:
        return "(unreadable)"


def colons(fp: str) -> str:
    return ":".join(fp[i : i + 2] for i in range(0, len(fp), 2)).upper()


# ---- reporting and pinning ----------------------------------------------------------------


def _print_seen(seen: list[Seen]) -> None:
    rows = [
        [
            s.device.id,
            s.state,
            colons(s.fingerprint) if s.fingerprint else s.error,
            s.subject,
            s.origin.where(),
        ]
        for s in seen
    ]
    print_table(["ROOM", "PIN", "SHA-256", "SUBJECT", "LISTED IN"], rows)


def _report_check(seen: list[Seen]) -> int:
    changed = [s for s in seen if s.state == "CHANGED"]
    unreachable = [s for s in seen if s.state == "unreachable"]
    unpinned = [s for s in seen if s.state == "new"]
    for s in changed:
        assert s.fingerprint is not None and s.device.fingerprint is not None
        print(
            f"{s.device.id}: certificate changed ({s.origin.where()}): pinned "
            f"{colons(s.device.fingerprint)}, now {colons(s.fingerprint)} ({s.subject}); if the "
            f"device's certificate was replaced, run `edge-agent trust {s.device.id}`"
        )
    for s in unreachable:
        print(f"{s.device.id}: not checked: {s.error}")
    for s in unpinned:
        print(f"{s.device.id}: no pin ({s.origin.where()})")
    matched = len(seen) - len(changed) - len(unreachable) - len(unpinned)
    print(
        f"{matched} match, {len(changed)} changed, {len(unpinned)} not pinned, "
        f"{len(unreachable)} not checked"
    )
    if changed:
        return EX_FAIL
    return EX_UNAVAILABLE if unreachable else EX_OK


def _pin(seen: list[Seen], *, yes: bool) -> int:
    new = [s for s in seen if s.state == "new"]
    changed = [s for s in seen if s.state == "CHANGED"]
    unreachable = [s for s in seen if s.state == "unreachable"]
    to_write = list(new)
    if new and not yes and not _confirm(f"Pin the certificates of {len(new)} room(s) shown new?"):
        to_write = []
    if changed:
        ids = ", ".join(s.device.id for s in changed)
        print(
            f"{len(changed)} room(s) present a certificate other than their pin: {ids}. "
            "Replace a pin only if you know the device's certificate was renewed."
        )
        if _confirm(f"Replace the pins of {len(changed)} room(s)?"):
            to_write += changed
    code = EX_OK
    if to_write:
        code = _write(to_write)
    else:
        print("no pins written")
    if changed and not any(s in to_write for s in changed):
        code = code or EX_FAIL
    return code or (EX_UNAVAILABLE if unreachable else EX_OK)


def _confirm(question: str) -> bool:
    print(f"{question} [y/N] ", end="", flush=True)
    try:
        answer = sys.stdin.readline()
    except (OSError, ValueError):
        answer = ""
    if not answer:
        print()  # no terminal (a script, a closed stdin): the safe answer is no
    return answer.strip().lower() in ("y", "yes")


def _write(to_write: list[Seen]) -> int:
    by_file: dict[tuple[str, str], dict[int, str]] = defaultdict(dict)
    label: dict[tuple[str, str], str] = {}
    for s in to_write:
        assert s.fingerprint is not None
        o = s.origin
        key = ("csv" if o.kind == "csv" else "toml", str(o.file))
        if o.kind == "csv":
            assert o.line is not None
            by_file[key][o.line] = s.fingerprint
        else:
            by_file[key][o.index] = s.fingerprint
        label[key] = o.label
    failed = False
    for (kind, file), pins in by_file.items():
        try:
            if kind == "csv":
                write_csv_pins(Path(file), pins)
            else:
                write_toml_pins(Path(file), pins)
        except (PinWriteError, OSError) as exc:
            failed = True
            err(f"edge-agent trust: {exc}; nothing written to {label[(kind, file)]}")
            for s in to_write:
                if str(s.origin.file) == file:
                    err(f'  {s.device.id}: fingerprint = "{s.fingerprint}"')
            continue
        print(f"wrote {len(pins)} pin(s) to {label[(kind, file)]}")
    if not failed:
        print("reload the agent to use them: systemctl reload edge-agent (SIGHUP)")
    return EX_FAIL if failed else EX_OK
