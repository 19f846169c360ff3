"""``edge-agent check-config [--connect]``: validate a config; reach every device and sink.

``--connect`` uses the agent's own clients: the device checks its xAPI client, the sink checks
the very sinks the agent would build (:func:`edge_agent.agent.build_webhook_sink` and
:func:`~edge_agent.agent.build_mqtt_sink`), so a pass means the agent's code connects.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from dataclasses import dataclass
from typing import Any

from edge_agent.config import AgentConfig, DeviceSettings, Secrets, device_settings
from edge_agent.ops.cli.common import (
    EX_FAIL,
    EX_OK,
    load_config_or_exit,
    print_table,
    secrets_or_exit,
    setup_logging,
)


@dataclass(frozen=True, slots=True)
class CheckResult:
    target: str  # "room-4a", "webhook", "mqtt"
    check: str
    ok: bool
    detail: str = ""
    warning: bool = False
    """Not fatal: the agent copes (e.g. a setting it cannot read has a configured fallback)."""

    @property
    def result(self) -> str:
        return "ok" if self.ok else "WARN" if self.warning else "FAIL"


def cmd_check_config(args: argparse.Namespace) -> int:
    setup_logging(args)
    cfg = load_config_or_exit(args.config, require_sink=True)
    secrets = secrets_or_exit(args.config, cfg)
    setup_logging(args, cfg)
    sinks = ", ".join(cfg.sink_names())
    print(
        f"{args.config}: OK (site {cfg.site}, {len(cfg.devices)} device(s), sinks: {sinks}, "
        f"store {cfg.store_path})"
    )
    if not args.connect:
        return EX_OK
    results = asyncio.run(connect_checks(cfg, secrets, timeout=args.timeout))
    print_table(
        ["TARGET", "CHECK", "RESULT", "DETAIL"],
        [[r.target, r.check, r.result, r.detail] for r in results],
    )
    failed = sum(r.result == "FAIL" for r in results)
    warned = sum(r.result == "WARN" for r in results)
    print(f"{len(results) - failed - warned} passed, {warned} warning(s), {failed} failed")
    return EX_OK if failed == 0 else EX_FAIL


async def connect_checks(
    cfg: AgentConfig, secrets: Secrets, *, timeout: float = 10.0
) -> list[CheckResult]:
    """Reach every device and sink concurrently; the results in config order."""
    jobs = [_check_device(ds, timeout) for ds in device_settings(cfg, secrets)]
    if cfg.webhook is not None:
        jobs.append(_check_webhook(cfg, secrets, timeout))
    if cfg.mqtt is not None:
        jobs.append(_check_mqtt(cfg, secrets, timeout))
    out: list[CheckResult] = []
    for rows in await asyncio.gather(*jobs):
        out.extend(rows)
    return out


# Paths the agent reads on every connect; a device must let the agent's user read them.
_DEVICE_SETTINGS = (
    ("Configuration Time Zone", "time zone"),
    ("Configuration Bookings AdhocBooking BookingTimeout", "booking timeout"),
    ("Configuration NetworkServices Websocket", "websocket setting"),
)
_WEBSOCKET_HINT = (
    "the device's WebSocket must be on: set Configuration NetworkServices Websocket to "
    "FollowHTTPService (and HTTP Mode to HTTPS)"
)


def _describe(exc: BaseException, device: str | None = None) -> str:
    text = str(exc) or type(exc).__name__
    if device and text.startswith(f"{device}: "):
        text = text[len(device) + 2 :]  # the table's first column already names the device
    # The client's advice about its reconnect schedule does not apply to a one-shot check.
    text = text.split("; retrying")[0]
    name = type(exc).__name__
    return (
        text if name in text or type(exc).__module__.startswith("edge_agent") else f"{name}: {text}"
    )


def _connect_hint(exc: BaseException) -> str:
    """What to do next, from the connect error (see DESIGN.md: handshake answers)."""
    name = type(exc).__name__
    text = str(exc)
    if name == "AuthenticationFailed":
        return ""  # the client's message says what to check
    if name == "HttpsOnly":
        return "the device accepts HTTPS only: use wss:// (host = ... gives wss:// already)"
    if name == "FingerprintMismatch":
        return "the certificate changed or the pin is wrong: compare the fingerprint"
    if name == "TlsError":
        return "give ca_file, pin the fingerprint, or set insecure = true for this device"
    if name == "Unreachable":
        return "check host/port and the firewall (TCP 443 to the device)"
    if name in ("DeviceRebooting", "RateLimited"):
        return "the device is busy (rebooting or rate limiting): try again in a minute"
    if any(code in text for code in ("404", "426", "400", "Not Found", "Upgrade Required")):
        return _WEBSOCKET_HINT
    if name == "HandshakeFailed":
        return _WEBSOCKET_HINT
    return ""


async def _check_device(ds: DeviceSettings, timeout: float) -> list[CheckResult]:
    from edge_agent.xapi import PermissionDenied, XapiClient

    client = XapiClient(
        ds.endpoint(),
        request_timeout=min(timeout, ds.request_timeout_s),
        open_timeout=timeout,
        probe_interval=None,
    )
    # One bare open first: it raises the typed handshake error (403, TLS, 404 on /ws...),
    # which run() would only log and retry.
    try:
        async with asyncio.timeout(timeout + 1):
            await client.check_connection()
    except Exception as exc:  # noqa: BLE001 - every failure becomes a FAIL row
        hint = _connect_hint(exc)
        detail = f"{ds.url}: {_describe(exc, ds.id)}" + (f"; {hint}" if hint else "")
        return [CheckResult(ds.id, "connect", False, detail)]
    tls = "TLS, " if ds.url.startswith("wss:") else "no TLS (ws://), "
    trust = (
        "pinned fingerprint"
        if ds.fingerprint
        else "NOT verified (insecure = true)"
        if ds.insecure
        else f"CA {ds.ca_file}"
        if ds.ca_file
        else "system CAs"
    )
    results = [CheckResult(ds.id, "connect", True, f"{ds.url}: {tls}{trust}, credentials accepted")]
    runner = asyncio.create_task(client.run(), name=f"check[{ds.id}].xapi")
    try:
        try:
            await client.wait_connected(timeout)
        except TimeoutError:
            results.append(
                CheckResult(ds.id, "session", False, client.last_error or "no session in time")
            )
            return results
        try:
            listing = await client.command("Bookings List", DayOffset=0, Days=1, Limit=1)
            total = ((listing or {}).get("ResultInfo") or {}).get("TotalRows", "?")
            results.append(CheckResult(ds.id, "Bookings List", True, f"{total} booking(s) today"))
        except Exception as exc:  # noqa: BLE001 - every failure becomes a FAIL row
            hint = (
                "; the user needs a role that may use Bookings (Integrator)"
                if isinstance(exc, PermissionDenied)
                else ""
            )
            results.append(CheckResult(ds.id, "Bookings List", False, _describe(exc, ds.id) + hint))
        for path, label in _DEVICE_SETTINGS:
            try:
                value = await client.get(path)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a row
                # The agent runs without these (configured fallbacks; the link itself proves
                # the WebSocket is on), so a user that may not read configuration is a warning.
                fallback = {
                    "time zone": f"; the agent uses time_zone = {ds.time_zone!r}",
                    "booking timeout": (
                        f"; the agent uses booking_timeout_s = {ds.booking_timeout_s}"
                    ),
                }.get(label, "")
                results.append(
                    CheckResult(ds.id, label, False, _describe(exc, ds.id) + fallback, warning=True)
                )
                continue
            if label == "websocket setting" and str(value) == "Off":
                results.append(CheckResult(ds.id, label, False, f"Off; {_WEBSOCKET_HINT}"))
            else:
                results.append(CheckResult(ds.id, label, True, str(value)))
        results.append(await _check_occupancy(client, ds.id))
        return results
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await client.close()
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await runner


async def _check_webhook(cfg: AgentConfig, secrets: Secrets, timeout: float) -> list[CheckResult]:
    from edge_agent.agent import build_webhook_sink

    assert cfg.webhook is not None
    url = cfg.webhook.url
    n = len(secrets.webhook_secrets)
    rows = [
        CheckResult(
            "webhook", "secret", True, f"{n} signing secret(s)" + (" (rotation)" if n > 1 else "")
        )
    ]
    # The sink the agent would run, on its own HTTP client (same TLS, pool and headers).
    try:
        sink = build_webhook_sink(cfg, secrets)
    except Exception as exc:  # noqa: BLE001 - an unreadable ca_file, say: a FAIL row
        rows.append(CheckResult("webhook", "tls files", False, f"{url}: {_describe(exc)}"))
        return rows
    try:
        async with asyncio.timeout(timeout):
            status = await sink.probe()
        ok = status < 500 and status != 410
        detail = f"{url}: HTTP {status}"
        if status == 410:
            detail += " (Gone: the receiver disabled this endpoint)"
        elif not ok:
            detail += " (server error)"
        rows.append(CheckResult("webhook", "reach", ok, detail))
    except Exception as exc:  # noqa: BLE001 - every failure becomes a FAIL row
        rows.append(CheckResult("webhook", "reach", False, f"{url}: {_describe(exc)}"))
    finally:
        await sink.close()
    return rows


async def _check_mqtt(cfg: AgentConfig, secrets: Secrets, timeout: float) -> list[CheckResult]:
    from edge_agent.agent import build_mqtt_sink
    from edge_agent.forward.mqtt import BrokerError

    assert cfg.mqtt is not None
    url = cfg.mqtt.url
    # The sink the agent would run (same TLS, credentials, protocol version, errors and hints),
    # probing under a client id of its own: the agent's would take over a running agent's link.
    try:
        sink = build_mqtt_sink(cfg, secrets, health=dict)
        async with asyncio.timeout(timeout + 1):
            detail = await sink.probe(
                client_id=f"{cfg.mqtt_client_id}-check-{os.getpid()}", timeout_s=timeout
            )
    except BrokerError as exc:
        check = "tls files" if exc.kind == "config" else "connect"
        return [CheckResult("mqtt", check, False, f"{url}: {_describe(exc, 'mqtt')}")]
    except Exception as exc:  # noqa: BLE001 - every failure becomes a FAIL row
        return [CheckResult("mqtt", "connect", False, f"{url}: {_describe(exc, 'mqtt')}")]
    return [CheckResult("mqtt", "connect", True, f"{url}: {detail}")]


async def _check_occupancy(client: Any, device_id: str) -> CheckResult:
    """What the device can tell of its room (Status RoomAnalytics): a warning, never fatal,
    when the user may not read it or counting / presence detection is off."""
    from edge_agent.session_occupancy import HINT_COUNTING, HINT_PERMISSION, HINT_PRESENCE
    from edge_agent.xapi import PermissionDenied

    try:
        ra = await client.get(["Status", "RoomAnalytics"])
    except PermissionDenied:
        return CheckResult(device_id, "occupancy", False, HINT_PERMISSION, warning=True)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a row
        return CheckResult(device_id, "occupancy", False, _describe(exc, device_id), warning=True)
    ra = ra if isinstance(ra, dict) else {}
    count = (ra.get("PeopleCount") or {}).get("Current")
    presence = ra.get("PeoplePresence")
    hints = []
    if count in (None, -1, "-1"):
        hints.append(HINT_COUNTING)
    if presence in (None, "Unknown"):
        hints.append(HINT_PRESENCE)
    seen = f"people count {count}, presence {presence}" + (
        f", in use {ra['RoomInUse']}" if "RoomInUse" in ra else ""
    )
    if hints:
        return CheckResult(
            device_id, "occupancy", False, f"{seen}; {'; '.join(hints)}", warning=True
        )
    return CheckResult(device_id, "occupancy", True, seen)

