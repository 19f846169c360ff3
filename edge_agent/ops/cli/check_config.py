"""``edge-agent check-config [--connect [--failures-only]]``: validate a config; reach every
device and sink.

Without ``--connect`` it also checks what the file names on this machine (:func:`local_checks`):
a store directory that does not exist fails (exit 78, like the config errors: the agent could
not start); an unreadable ``ca_file`` (that device cannot connect), an API listening beyond
loopback and ``insecure = true`` are warnings (printed, exit 0). ``--connect`` reports an
unreadable ``ca_file`` as that device's failed connect, naming the file.

``--connect`` uses the agent's own clients: the device checks its xAPI client, the sink checks
the very sinks the agent would build (:func:`edge_agent.agent.build_webhook_sink` and
:func:`~edge_agent.agent.build_mqtt_sink`), so a pass means the agent's code connects.
``[microsoft]`` is checked with the agent's Graph client
(:func:`edge_agent.agent.build_graph_client`): the token, ``Place.Read.All`` (the rooms found
are listed), and one calendar read (``Calendars.Read`` and the application access policy).
``[google]`` likewise with the agent's Google client
(:func:`edge_agent.agent.build_google_client`): the key (parsed), the delegation (a token by
the JWT grant as ``subject``), both scopes (the resource list and one events.list), the rooms;
a failure names the Admin console page where delegation is granted, the client ID and scopes.
The scopes named are those of what is configured (:func:`google_booking_ways`): the two
read-only ones, and the write scope ``.../auth/calendar`` too when a calendar-only room can be
booked through the agent (``[api]`` tokens or ``[mqtt]``), checked then by a token asking for it
(a WARN when refused: polling runs, booking answers 503).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edge_agent.config import (
    EX_CONFIG,
    AgentConfig,
    DeviceSettings,
    Secrets,
    device_settings,
    parse_listen,
)
from edge_agent.ops.cli.common import (
    EX_FAIL,
    EX_OK,
    err,
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
    local = local_checks(cfg, secrets)
    if any(r.result == "FAIL" for r in local):
        err(
            f"edge-agent: invalid configuration in {args.config}:",
            *(f"  {r.target}: {r.detail}" for r in local if r.result == "FAIL"),
        )
        return EX_CONFIG
    rooms = ""
    if cfg.microsoft is not None:
        linked = sum(1 for d in cfg.devices if d.calendar)
        found = " + the directory's" if cfg.microsoft.discover_rooms else ""
        rooms = f", microsoft rooms: {len(cfg.rooms)} listed, {linked} linked{found}"
    if cfg.google is not None:
        g_linked = sum(1 for d in cfg.devices if d.calendar and d.calendar_source == "google")
        g_listed = sum(1 for r in cfg.rooms if r.source == "google")
        g_found = " + the directory's" if cfg.google.discover_rooms else ""
        rooms += f", google rooms: {g_listed} listed, {g_linked} linked{g_found}"
    print(
        f"{args.config}: OK (site {cfg.site}, {len(cfg.devices)} device(s){rooms}, "
        f"sinks: {sinks}, store {store_named(cfg)})"
    )
    for r in local:
        print(f"warning: {r.target}: {r.detail}")
    if not args.connect:
        return EX_OK
    results = asyncio.run(connect_checks(cfg, secrets, timeout=args.timeout))
    failed = sum(r.result == "FAIL" for r in results)
    warned = sum(r.result == "WARN" for r in results)
    shown = [r for r in results if r.result != "ok"] if args.failures_only else results
    if shown:
        print_table(
            ["TARGET", "CHECK", "RESULT", "DETAIL"],
            [[r.target, r.check, r.result, r.detail] for r in shown],
        )
    print(f"{len(results) - failed - warned} passed, {warned} warning(s), {failed} failed")
    return EX_OK if failed == 0 else EX_FAIL


# The shipped unit's StateDirectory=edge-agent: systemd creates it when the unit first starts,
# which the README's install order runs after check-config.
UNIT_STATE_DIRECTORY = Path("/var/lib/edge-agent")


def local_checks(cfg: AgentConfig, secrets: Secrets) -> list[CheckResult]:
    """What the config names on this machine: FAIL rows stop the agent, WARN rows are risks.

    The target is the config key, so a line reads ``store.path: ...``."""
    out: list[CheckResult] = []
    store_dir = cfg.store_path.parent
    if not store_dir.is_dir():
        what = "is not a directory" if store_dir.exists() else "does not exist"
        if store_dir == UNIT_STATE_DIRECTORY and not store_dir.exists():
            out.append(
                CheckResult(
                    "store.path",
                    "directory",
                    False,
                    f"{store_dir} does not exist yet; the systemd unit creates it "
                    "(StateDirectory=edge-agent); create it yourself to run the agent otherwise",
                    warning=True,
                )
            )
        else:
            out.append(
                CheckResult(
                    "store.path",
                    "directory",
                    False,
                    f"the directory of {cfg.store_path} {what}; create it or set store.path "
                    "to a file in an existing directory",
                )
            )
    if not cfg.api.loopback and cfg.api.cert_file is None:
        # The config demands a token off loopback; without TLS it crosses the network in clear.
        _, port = parse_listen(cfg.api.listen)
        out.append(
            CheckResult(
                "api.listen",
                "exposure",
                False,
                f"{cfg.api.listen!r} serves the local API beyond this machine over plain HTTP: "
                "the bearer token and the bookings cross the network unencrypted; set "
                "api.cert_file and api.key_file, or listen on 127.0.0.1 (a firewall guarding "
                f"port {port} still sees the token)",
                warning=True,
            )
        )
    for ds in device_settings(cfg, secrets):
        key = f"devices[{ds.id}]"
        if ds.ca_file is not None and (problem := _unreadable(ds.ca_file)):
            # Not fatal: the agent runs its other devices; this one cannot connect.
            out.append(
                CheckResult(
                    f"{key}.ca_file",
                    "file",
                    False,
                    f"{ds.ca_file}: {problem}; this device cannot connect",
                    warning=True,
                )
            )
        if ds.insecure and ds.url.startswith("wss:") and not ds.fingerprint:
            out.append(
                CheckResult(
                    f"{key}.insecure",
                    "trust",
                    False,
                    "true: the device's certificate is not verified (anyone on the path can "
                    f"read its password); pin it with `edge-agent trust {ds.id}` or give ca_file",
                    warning=True,
                )
            )
    return out


def _unreadable(path: Path) -> str | None:
    """Why ``path`` cannot be read as a file (None: it can)."""
    try:
        with path.open("rb"):
            return None
    except FileNotFoundError:
        return "no such file (a relative ca_file is taken from the config file's directory)"
    except IsADirectoryError:
        return "is a directory, not a PEM file"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"


async def connect_checks(
    cfg: AgentConfig, secrets: Secrets, *, timeout: float = 10.0
) -> list[CheckResult]:
    """Reach every device and sink concurrently; the results in config order."""
    jobs = [_check_device(ds, timeout) for ds in device_settings(cfg, secrets)]
    if cfg.webhook is not None:
        jobs.append(_check_webhook(cfg, secrets, timeout))
    if cfg.mqtt is not None:
        jobs.append(_check_mqtt(cfg, secrets, timeout))
    if cfg.microsoft is not None:
        jobs.append(_check_graph(cfg, secrets, timeout))
    if cfg.google is not None:
        jobs.append(_check_google(cfg, timeout))
    if cfg.store.url is not None:
        jobs.append(_check_store(cfg, timeout))
    out: list[CheckResult] = []
    for rows in await asyncio.gather(*jobs):
        out.extend(rows)
    return out


def store_named(cfg: AgentConfig) -> str:
    """The store as the OK line names it: the SQLite file, or the fleet's database."""
    if cfg.store.url is None:
        return str(cfg.store_path)
    from edge_agent.store.postgres import describe  # imports no driver

    return f"postgresql {describe(cfg.store.url)}"


async def _check_store(cfg: AgentConfig, timeout: float) -> list[CheckResult]:
    """The fleet's PostgreSQL: reachable with this member's password and TLS, a schema this
    agent can use (read-only: nothing is migrated here)."""
    from edge_agent.ops.cli import pgstore
    from edge_agent.store import StoreError

    try:
        async with asyncio.timeout(timeout + 1):
            ok, detail = await pgstore.probe(cfg, timeout=timeout)
    except StoreError as exc:
        return [CheckResult("store", "connect", False, str(exc))]
    except TimeoutError:
        return [CheckResult("store", "connect", False, f"no answer within {timeout:g} s")]
    return [CheckResult("store", "connect", ok, detail)]


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
    if ds.ca_file is not None and (problem := _unreadable(ds.ca_file)):
        # The TLS layer reports this as an OSError, which reads like a network problem.
        return [CheckResult(ds.id, "connect", False, f"ca_file {ds.ca_file}: {problem}")]
    # One bare open first: it raises the typed handshake error (403, TLS, 404 on /ws...),
    # which run() would only log and retry.
    try:
        async with asyncio.timeout(timeout + 1):
            await client.check_connection()
    except Exception as exc:  # noqa: BLE001 - every failure becomes a FAIL row
        hint = _connect_hint(exc)
        if type(exc).__name__ == "HandshakeFailed" and ds.url.startswith("ws:"):
            if await _speaks_tls(ds.url, timeout):
                hint = f"the port speaks TLS: use {'wss:' + ds.url[3:]} (or host = ...)"
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
                "; the user needs the User (or Admin) role: Integrator may not use Bookings"
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


async def _speaks_tls(url: str, timeout: float) -> bool:
    """Whether ``url``'s port completes a TLS handshake: a plain ``ws://`` upgrade sent to a TLS
    port gets an alert or a close, which reads like a broken HTTP server. Sends no request and
    no credentials; the certificate is not checked (only the protocol is asked)."""
    parts = urlsplit(url)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(parts.hostname, parts.port or 80, ssl=ctx)
    except (OSError, TimeoutError, ssl.SSLError):
        return False
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return True


def webhook_reach(url: str, status: int) -> CheckResult:
    """The ``reach`` row from the status the receiver gave the probe (``OPTIONS``).

    Any HTTP answer proves DNS, TCP, TLS (the certificate was verified) and that a server
    listens; many receivers accept POST only and answer the probe 405 or 501 (Python's
    ``http.server``): that is a pass. A 404 is a warning (a wrong path answers so too); 410
    (the receiver disabled the endpoint) and other 5xx (a proxy whose backend is down) fail.
    """
    detail = f"{url}: HTTP {status}" + (", TLS verified" if url.startswith("https:") else "")
    if status in (405, 501):
        return CheckResult("webhook", "reach", True, f"{detail} (answers; accepts POST only)")
    if status == 404:
        return CheckResult(
            "webhook", "reach", False, f"{detail} (Not Found: check the URL's path)", warning=True
        )
    if status == 410:
        return CheckResult(
            "webhook", "reach", False, f"{detail} (Gone: the receiver disabled this endpoint)"
        )
    if status >= 500:
        return CheckResult("webhook", "reach", False, f"{detail} (server error)")
    return CheckResult("webhook", "reach", True, detail)


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
        rows.append(webhook_reach(url, status))
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


ROOMS_LISTED = 20  # rooms named in the table; the rest are counted


async def _check_graph(cfg: AgentConfig, secrets: Secrets, timeout: float) -> list[CheckResult]:
    """Token, directory (``Place.Read.All``), one calendar read (``Calendars.Read`` + policy)."""
    from datetime import UTC, datetime, timedelta

    from edge_agent.agent import build_graph_client, graph_rooms
    from edge_agent.bookings.window import WindowBounds
    from edge_agent.calendars.graph.auth import AuthError
    from edge_agent.calendars.graph.errors import GraphError, GraphPermissionError
    from edge_agent.calendars.model import room_id_from_mailbox

    ms = cfg.microsoft
    assert ms is not None
    t = "microsoft"
    try:
        client, tokens, http = build_graph_client(cfg, secrets, max_connections=4)
    except Exception as exc:  # noqa: BLE001 - an unreadable certificate: a FAIL row
        return [CheckResult(t, "credential", False, _describe(exc))]
    rows: list[CheckResult] = []
    try:
        try:
            async with asyncio.timeout(timeout + 1):
                await tokens.token()
            how = "certificate" if ms.certificate_file else "client secret"
            rows.append(CheckResult(t, "token", True, f"{tokens.authority}: {how} accepted"))
        except (AuthError, TimeoutError) as exc:
            rows.append(CheckResult(t, "token", False, _describe(exc) or "no answer in time"))
            return rows
        configured = graph_rooms(cfg)
        found: list[tuple[str, str]] = []
        try:
            async with asyncio.timeout(timeout * 3):
                listed = await client.list_rooms()
            found = [(g.mailbox, room_id_from_mailbox(g.mailbox)) for g in listed]
            names = ", ".join(f"{rid} ({mail})" for mail, rid in found[:ROOMS_LISTED])
            more = f" and {len(found) - ROOMS_LISTED} more" if len(found) > ROOMS_LISTED else ""
            rows.append(
                CheckResult(
                    t, "rooms (Place.Read.All)", True, f"{len(found)} room(s): {names}{more}"
                )
            )
        except (GraphError, AuthError, TimeoutError) as exc:
            hint = ""
            if isinstance(exc, GraphPermissionError):
                hint = "" if "Place.Read.All" in str(exc) else "; grant Place.Read.All"
            rows.append(
                CheckResult(
                    t,
                    "rooms (Place.Read.All)",
                    False,
                    (_describe(exc) or "no answer in time") + hint,
                    # Without discovery the configured rooms still run: not fatal.
                    warning=not ms.discover_rooms,
                )
            )
        for room in configured:
            rows.append(
                CheckResult(
                    room.room_id,
                    "room",
                    True,
                    f"{room.mailbox}"
                    + (
                        f", linked to device {room.device_id}"
                        if room.device_id
                        else ", calendar-only"
                    )
                    + f", zone {room.time_zone}",
                )
            )
        probe = configured[0].mailbox if configured else (found[0][0] if found else None)
        if probe is None:
            rows.append(
                CheckResult(t, "calendar (Calendars.Read)", False, "no room to read", warning=True)
            )
            return rows
        now = datetime.now(UTC)
        try:
            async with asyncio.timeout(timeout * 3):
                got = await client.calendar_delta(
                    "check", probe, WindowBounds(now, now + timedelta(days=1)), None
                )
            rows.append(
                CheckResult(
                    t,
                    "calendar (Calendars.Read)",
                    True,
                    f"{probe}: {len(got.values)} event(s) in the next 24 h",
                )
            )
        except (GraphError, AuthError, TimeoutError) as exc:
            rows.append(
                CheckResult(
                    t,
                    "calendar (Calendars.Read)",
                    False,
                    _describe(exc, "check") or "no answer in time",
                )
            )
        return rows
    finally:
        await http.aclose()


def _google_client_id(cfg: AgentConfig) -> tuple[str | None, str | None]:
    """The key file's ``client_id`` and ``client_email`` (what the Admin console asks for);
    None when unreadable. resolve_secrets has checked the file already."""
    import json

    from edge_agent.config.secrets import google_key_path

    assert cfg.google is not None
    path = google_key_path(cfg.google.service_account_file, os.environ)
    try:
        doc = json.loads(path.read_text(encoding="utf-8")) if path is not None else None
    except (OSError, ValueError):
        return None, None
    if not isinstance(doc, dict):
        return None, None
    cid, mail = doc.get("client_id"), doc.get("client_email")
    return (cid if isinstance(cid, str) else None, mail if isinstance(mail, str) else None)


def google_booking_ways(cfg: AgentConfig) -> list[str]:
    """How a calendar-only Google room can be booked through this configuration (empty: it
    cannot, and the read-only scopes are all the site must grant). A calendar-only room is a
    ``[[rooms]]`` entry of source google or any directory room; booking reaches it through the
    local API's POST route (which needs ``[api]`` tokens) or the MQTT mirror (with ``[mqtt]``).
    A linked device's room books through the device, not the calendar."""
    g = cfg.google
    if g is None or not (g.discover_rooms or any(r.source == "google" for r in cfg.rooms)):
        return []
    ways = []
    if cfg.api.token_env is not None or cfg.api.token_file is not None:
        ways.append("POST /v1/rooms/{room}/bookings ([api] has tokens)")
    if cfg.mqtt is not None:
        ways.append("the MQTT mirror bridge/request/book ([mqtt])")
    return ways


async def _check_google(cfg: AgentConfig, timeout: float) -> list[CheckResult]:
    """Key, delegation (the token grant), the directory scope (rooms listed), the calendar
    scope (one events.list), and when rooms can be booked through the agent the write scope
    (a token asking for it, as the agent's booking does)."""
    from datetime import UTC, datetime, timedelta

    from edge_agent.agent import build_google_client, google_rooms
    from edge_agent.bookings.window import WindowBounds
    from edge_agent.calendars.auth import AuthError
    from edge_agent.calendars.google.auth import DELEGATION_PAGE, delegation_scopes
    from edge_agent.calendars.google.errors import GoogleError
    from edge_agent.calendars.model import room_id_from_mailbox

    g = cfg.google
    assert g is not None
    t = "google"
    client_id, client_email = _google_client_id(cfg)
    booking = google_booking_ways(cfg)
    grant = (
        f"in the Google Admin console ({DELEGATION_PAGE}) add client ID {client_id or '?'} "
        f"with the scopes {','.join(delegation_scopes(bool(booking)))}"
        + (" (the last one for booking)" if booking else "")
    )
    try:
        # Few attempts: a throttled check says so now rather than backing off for minutes.
        client, tokens, http = build_google_client(cfg, max_connections=4, max_attempts=2)
    except Exception as exc:  # noqa: BLE001 - a bad subject or key path: a FAIL row
        return [CheckResult(t, "key", False, _describe(exc))]
    rows: list[CheckResult] = []
    try:
        try:
            await asyncio.wait_for(tokens.check_key(), timeout)
            rows.append(
                CheckResult(
                    t, "key", True, f"{tokens.key_path}: {client_email}, client ID {client_id}"
                )
            )
        except (AuthError, TimeoutError) as exc:
            rows.append(CheckResult(t, "key", False, _describe(exc) or "not read in time"))
            return rows
        try:
            async with asyncio.timeout(timeout + 1):
                await tokens.token()
            rows.append(
                CheckResult(t, "delegation", True, f"a token as {g.subject} (JWT grant accepted)")
            )
        except (AuthError, TimeoutError) as exc:
            detail = _describe(exc) or "no answer in time"
            hint = f" (client ID {client_id})" if DELEGATION_PAGE in detail else f"; {grant}"
            rows.append(CheckResult(t, "delegation", False, detail + hint))
            return rows
        configured = google_rooms(cfg)
        found: list[tuple[str, str]] = []
        scope = "rooms (directory scope)"
        try:
            async with asyncio.timeout(timeout * 3):
                listed = await client.list_rooms()
            found = [(r.mailbox, room_id_from_mailbox(r.mailbox)) for r in listed]
            names = ", ".join(f"{rid} ({mail})" for mail, rid in found[:ROOMS_LISTED])
            more = f" and {len(found) - ROOMS_LISTED} more" if len(found) > ROOMS_LISTED else ""
            rows.append(CheckResult(t, scope, True, f"{len(found)} room(s): {names}{more}"))
        except (GoogleError, AuthError, TimeoutError) as exc:
            detail = _describe(exc) or "no answer in time"
            hint = f" (client ID {client_id})" if DELEGATION_PAGE in detail else f"; {grant}"
            # Without discovery the configured rooms still run: not fatal.
            rows.append(CheckResult(t, scope, False, detail + hint, warning=not g.discover_rooms))
        for room in configured:
            rows.append(
                CheckResult(
                    room.room_id,
                    "room",
                    True,
                    f"{room.mailbox}"
                    + (
                        f", linked to device {room.device_id}"
                        if room.device_id
                        else ", calendar-only"
                    )
                    + f", zone {room.time_zone}",
                )
            )
        probe = configured[0].mailbox if configured else (found[0][0] if found else None)
        scope = "calendar (calendar scope)"
        if probe is None:
            rows.append(CheckResult(t, scope, False, "no room to read", warning=True))
            return rows
        now = datetime.now(UTC)
        try:
            async with asyncio.timeout(timeout * 3):
                got = await client.list_events(
                    "check", probe, WindowBounds(now, now + timedelta(days=1)), None
                )
            rows.append(
                CheckResult(t, scope, True, f"{probe}: {len(got.values)} event(s) in the next 24 h")
            )
        except (GoogleError, AuthError, TimeoutError) as exc:
            detail = _describe(exc, "check") or "no answer in time"
            hint = f" (client ID {client_id})" if DELEGATION_PAGE in detail else f"; {grant}"
            rows.append(CheckResult(t, scope, False, detail + hint))
        rows.append(await _check_google_booking(cfg, booking, grant, timeout))
        return rows
    finally:
        await http.aclose()


async def _check_google_booking(
    cfg: AgentConfig, booking: list[str], grant: str, timeout: float
) -> CheckResult:
    """The write scope, when rooms can be booked: a token asking for it alone, as the agent's
    booking does. Without it polling still runs and booking answers 503 naming the scope, so a
    refusal is a warning; with no way to book, a row saying the read scopes are enough."""
    from edge_agent.calendars.auth import AuthError
    from edge_agent.calendars.google.auth import CALENDAR_WRITE_SCOPE, ServiceAccountTokens

    g = cfg.google
    assert g is not None
    check = "booking (write scope)"
    if not booking:
        return CheckResult(
            "google",
            check,
            True,
            "no way to book a calendar-only room is configured (no [api] tokens, no [mqtt]): "
            "the two read-only scopes are all the site must delegate",
        )
    tokens = ServiceAccountTokens(
        service_account_file=g.service_account_file,
        subject=g.subject,
        scopes=(CALENDAR_WRITE_SCOPE,),
        ca_file=str(g.ca_file) if g.ca_file else None,
    )
    ways = " and ".join(booking)
    try:
        async with asyncio.timeout(timeout + 1):
            await tokens.token()
    except (AuthError, TimeoutError) as exc:
        detail = _describe(exc) or "no answer in time"
        return CheckResult(
            "google",
            check,
            False,
            f"rooms can be booked through {ways}, but {detail.split(';')[0].rstrip('.')}; "
            f"{grant} "
            "(until then booking answers 503 naming the scope; polling is not affected)",
            warning=True,
        )
    return CheckResult(
        "google",
        check,
        True,
        f"a token with {CALENDAR_WRITE_SCOPE} as {g.subject}: rooms can be booked through {ways}",
    )
