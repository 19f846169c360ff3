"""``edge-agent``: run the agent, check a config, run the demo, show status, manage dead letters.

Exit codes: 0 ok; 1 a check failed / not ready / nothing done; 2 usage; 69 (EX_UNAVAILABLE) the
local API is unreachable; 78 (EX_CONFIG) the configuration is invalid or a secret is missing;
130 interrupted. The modules of the running agent (agent, xapi, store, forward, demo) are
imported inside the subcommands, so ``check-config`` and friends start fast.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import ssl
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from edge_agent import __version__
from edge_agent.config import (
    EX_CONFIG,
    AgentConfig,
    ConfigError,
    DeviceSettings,
    Secrets,
    device_settings,
    load_config,
    parse_listen,
    resolve_secrets,
)
from edge_agent.ops.logs import configure_logging, resolve_level

EX_OK = 0
EX_FAIL = 1
EX_USAGE = 2
EX_UNAVAILABLE = 69
EX_INTERRUPTED = 130
DEFAULT_API_URL = "http://127.0.0.1:9780"


class _Exit(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


# ---------------------------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level",
        default=argparse.SUPPRESS,
        choices=["debug", "info", "warning", "error", "critical"],
        type=str.lower,
        help="log level (default: $EDGE_AGENT_LOG_LEVEL, else [log] level, else info)",
    )
    config_opt = argparse.ArgumentParser(add_help=False)
    config_opt.add_argument(
        "-c", "--config", required=True, type=Path, metavar="FILE", help="the agent's TOML config"
    )

    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="RoomOS edge agent: buffers Cisco device bookings and forwards them.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("run", parents=[common, config_opt], help="run the agent")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "check-config",
        parents=[common, config_opt],
        help="validate a config (exit 78 when invalid); --connect also tries devices and sinks",
    )
    p.add_argument(
        "--connect",
        action="store_true",
        help="reach every device (TLS, credentials, Bookings permission, settings) and sink",
    )
    p.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="per check (default 10 s)"
    )
    p.set_defaults(func=_cmd_check_config)

    p = sub.add_parser(
        "demo", help="run the self-contained demo (simulated devices)", add_help=False
    )
    p.add_argument("demo_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "status", parents=[common], help="devices, sinks and outbox from the running agent"
    )
    p.add_argument("--api", metavar="URL", help=f"local API URL (default {DEFAULT_API_URL})")
    p.add_argument("-c", "--config", type=Path, metavar="FILE", help="take the URL from [api]")
    p.add_argument("--json", action="store_true", help="print the raw JSON")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("outbox", help="outbox administration")
    outbox = p.add_subparsers(dest="outbox_command", metavar="COMMAND", required=True)
    p = outbox.add_parser("dead-letter", help="list, replay or purge dead letters")
    dl = p.add_subparsers(dest="dl_command", metavar="ACTION", required=True)
    selection = argparse.ArgumentParser(add_help=False)
    selection.add_argument(
        "--id", dest="ids", type=int, action="append", metavar="ID", help="a dead letter (repeat)"
    )
    selection.add_argument("--sink", help="only this sink's dead letters (webhook, mqtt)")
    via_api = argparse.ArgumentParser(add_help=False)
    via_api.add_argument(
        "--api",
        metavar="URL",
        help="the running agent's local API (default: from [api] listen in the config)",
    )
    via_api.add_argument(
        "--timeout", type=float, default=30.0, metavar="S", help="for the API (default 30 s)"
    )
    p = dl.add_parser(
        "list",
        parents=[common, config_opt, selection],
        help="list dead letters (reads the database; fine while the agent runs)",
    )
    p.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    p.add_argument("--json", action="store_true", help="one JSON document per line")
    p.set_defaults(func=_cmd_dead_letter)
    p = dl.add_parser(
        "replay",
        parents=[common, config_opt, selection, via_api],
        help="put dead letters back in the outbox (all, --id, or --sink); through the running "
        "agent's API, or on the database when no agent runs",
    )
    p.set_defaults(func=_cmd_dead_letter)
    p = dl.add_parser(
        "purge",
        parents=[common, config_opt, selection, via_api],
        help="delete dead letters (--id, --sink, or --all); like replay, through the agent",
    )
    p.add_argument("--all", action="store_true", help="delete every dead letter")
    p.set_defaults(func=_cmd_dead_letter)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``edge-agent`` console script."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        # The demo has its own parser; argparse's REMAINDER would not pass it leading options.
        args, unknown = parser.parse_known_args(args_list)
        if unknown and getattr(args, "func", None) is _cmd_demo:
            args.demo_args = unknown + list(args.demo_args)
        elif unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    except SystemExit as exc:  # argparse: --help / --version (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EX_USAGE
    try:
        return int(args.func(args))
    except _Exit as exc:
        return exc.code
    except KeyboardInterrupt:
        return EX_INTERRUPTED


# ---------------------------------------------------------------------------------------------
# Shared steps
# ---------------------------------------------------------------------------------------------


def _err(*lines: str) -> None:
    for line in lines:
        print(line, file=sys.stderr)


def _setup_logging(args: argparse.Namespace, cfg: AgentConfig | None = None) -> None:
    configure_logging(
        resolve_level(getattr(args, "log_level", None), cfg.log.level if cfg else None)
    )


def _load(path: Path, *, require_sink: bool) -> AgentConfig:
    try:
        return load_config(path, require_sink=require_sink)
    except ConfigError as exc:
        _print_config_error(path, exc)
        raise _Exit(EX_CONFIG) from None


def _secrets(path: Path, cfg: AgentConfig) -> Secrets:
    try:
        secrets = resolve_secrets(cfg)
    except ConfigError as exc:
        _print_config_error(path, exc)
        raise _Exit(EX_CONFIG) from None
    return secrets  # resolve_secrets registered the values with the log redactor


def _print_config_error(path: Path, exc: ConfigError) -> None:
    _err(f"edge-agent: invalid configuration in {path}:", *(f"  {line}" for line in exc.lines()))


# ---------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    _setup_logging(args)
    cfg = _load(args.config, require_sink=True)
    secrets = _secrets(args.config, cfg)
    _setup_logging(args, cfg)
    from edge_agent.agent import run_agent
    from edge_agent.store import StoreError

    try:
        return int(asyncio.run(run_agent(cfg, secrets=secrets, config_path=args.config.resolve())))
    except KeyboardInterrupt:
        return EX_INTERRUPTED
    except StoreError as exc:  # cannot open the store: locked by another agent, unreadable...
        _err(f"edge-agent: {exc}")
        return EX_FAIL


# ---------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    # Imported by name: the demo pulls in the simulator, which `run` never needs.
    demo = importlib.import_module("edge_agent.ops.demo")
    rest = list(args.demo_args)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    return int(demo.main(rest))


# ---------------------------------------------------------------------------------------------
# check-config
# ---------------------------------------------------------------------------------------------


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


def _cmd_check_config(args: argparse.Namespace) -> int:
    _setup_logging(args)
    cfg = _load(args.config, require_sink=True)
    secrets = _secrets(args.config, cfg)
    _setup_logging(args, cfg)
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
        return results
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await client.close()
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await runner


def _tls_context(ca_file: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    return ctx


async def _check_webhook(cfg: AgentConfig, secrets: Secrets, timeout: float) -> list[CheckResult]:
    import httpx

    assert cfg.webhook is not None
    wh = cfg.webhook
    n = len(secrets.webhook_secrets)
    rows = [
        CheckResult(
            "webhook", "secret", True, f"{n} signing secret(s)" + (" (rotation)" if n > 1 else "")
        )
    ]
    # An OPTIONS request: it proves DNS, TCP, TLS and that an HTTP server answers, without
    # delivering anything (a signed test event would land in the receiver's data).
    try:
        verify: ssl.SSLContext | bool = _tls_context(wh.ca_file)
        async with httpx.AsyncClient(verify=verify, timeout=timeout) as http:
            resp = await http.request("OPTIONS", wh.url)
        ok = resp.status_code < 500 and resp.status_code != 410
        detail = f"{wh.url}: HTTP {resp.status_code}"
        if resp.status_code == 410:
            detail += " (Gone: the receiver disabled this endpoint)"
        elif not ok:
            detail += " (server error)"
        rows.append(CheckResult("webhook", "reach", ok, detail))
    except Exception as exc:  # noqa: BLE001 - every failure becomes a FAIL row
        rows.append(CheckResult("webhook", "reach", False, f"{wh.url}: {_describe(exc)}"))
    return rows


async def _check_mqtt(cfg: AgentConfig, secrets: Secrets, timeout: float) -> list[CheckResult]:
    import aiomqtt

    assert cfg.mqtt is not None
    m = cfg.mqtt
    tls_ctx: ssl.SSLContext | None = None
    try:
        if m.tls:
            tls_ctx = _tls_context(m.ca_file)
            if m.cert_file and m.key_file:
                tls_ctx.load_cert_chain(str(m.cert_file), str(m.key_file))
    except (OSError, ssl.SSLError) as exc:
        return [CheckResult("mqtt", "tls files", False, _describe(exc))]
    protocol = aiomqtt.ProtocolVersion.V5 if m.protocol == "5" else aiomqtt.ProtocolVersion.V311
    # A client id of its own: reusing the agent's would disconnect the running agent's session.
    client = aiomqtt.Client(
        m.hostname,
        m.port,
        username=m.username,
        password=secrets.mqtt_password.get_secret_value() if secrets.mqtt_password else None,
        identifier=f"{cfg.mqtt_client_id}-check-{os.getpid()}",
        protocol=protocol,
        tls_context=tls_ctx,
        keepalive=m.keepalive,
        timeout=timeout,
    )
    try:
        async with asyncio.timeout(timeout + 1):
            async with client:
                pass
    except Exception as exc:  # noqa: BLE001 - every failure becomes a FAIL row
        return [CheckResult("mqtt", "connect", False, f"{m.url}: {_describe(exc)}")]
    version = "MQTT 5" if m.protocol == "5" else "MQTT 3.1.1"
    return [CheckResult("mqtt", "connect", True, f"{m.url}: CONNACK ({version})")]


# ---------------------------------------------------------------------------------------------
# status
# ---------------------------------------------------------------------------------------------


def _api_url(args: argparse.Namespace) -> str:
    if args.api:
        return str(args.api).rstrip("/")
    if args.config is not None:
        return _config_api_url(_load(args.config, require_sink=False))
    return os.environ.get("EDGE_AGENT_API", DEFAULT_API_URL).rstrip("/")


def _config_api_url(cfg: AgentConfig) -> str:
    """Where a client on this host reaches the agent's ``[api] listen``."""
    host, port = parse_listen(cfg.api.listen)
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def _cmd_status(args: argparse.Namespace) -> int:
    import httpx

    _setup_logging(args)
    url = _api_url(args)
    try:
        with httpx.Client(base_url=url, timeout=args.timeout) as http:
            ready = http.get("/readyz")
            outbox_resp = http.get("/v1/outbox")
    except httpx.HTTPError as exc:
        _err(
            f"edge-agent: cannot reach the agent's local API at {url}: {exc}",
            "  is the agent running? (systemctl status edge-agent); is [api] listen the same?",
        )
        return EX_UNAVAILABLE
    if ready.status_code not in (200, 503):
        _err(f"edge-agent: {url}/readyz answered HTTP {ready.status_code}")
        return EX_UNAVAILABLE
    body: dict[str, Any] = ready.json()
    outbox: dict[str, Any] | None = outbox_resp.json() if outbox_resp.status_code == 200 else None
    if args.json:
        from edge_agent import jsoncodec

        print(jsoncodec.dumps({"readyz": body, "outbox": outbox}))
        return EX_OK if body.get("ready") else EX_FAIL
    print_status(url, body, outbox)
    return EX_OK if body.get("ready") else EX_FAIL


def _fmt(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if value is True:
        return "yes"
    if value is False:
        return "no"
    if isinstance(value, float):
        return f"{value:.0f}s" if value >= 1 else f"{value:.1f}s"
    return str(value)


def print_status(
    url: str, readyz: dict[str, Any], outbox: dict[str, Any] | None, out: TextIO | None = None
) -> None:
    out = sys.stdout if out is None else out
    state = "READY" if readyz.get("ready") else "NOT READY: " + "; ".join(readyz.get("reasons", []))
    print(f"agent {url}  {state}", file=out)
    devices = readyz.get("devices") or []
    print_table(
        ["DEVICE", "CONNECTED", "WINDOW", "RECONNECTS", "TIME ZONE", "LAST ERROR"],
        [
            [
                d.get("id"),
                d.get("connected"),
                d.get("window_size"),
                d.get("reconnects"),
                d.get("time_zone"),
                d.get("last_error"),
            ]
            for d in devices
        ],
        out=out,
    )
    sink_stats = (outbox or {}).get("sinks", {})
    print_table(
        ["SINK", "STATE", "READY", "BACKLOG", "OLDEST", "LAST ERROR"],
        [
            [
                s.get("name"),
                s.get("state"),
                s.get("ready"),
                sink_stats.get(s.get("name"), {}).get("depth", s.get("outbox_depth")),
                sink_stats.get(s.get("name"), {}).get("oldest_age_s"),
                s.get("last_error"),
            ]
            for s in readyz.get("sinks") or []
        ],
        out=out,
    )
    if outbox is not None:
        print(
            f"outbox: {outbox.get('outbox_total', '?')} stored, "
            f"{outbox.get('pending', '?')} pending request(s), "
            f"{outbox.get('dead_letters', '?')} dead letter(s)",
            file=out,
        )
    else:
        print("outbox: store not open", file=out)


def print_table(headers: list[str], rows: list[list[Any]], out: TextIO | None = None) -> None:
    out = sys.stdout if out is None else out
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    for row in [headers, *cells]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)


# ---------------------------------------------------------------------------------------------
# outbox dead-letter
# ---------------------------------------------------------------------------------------------


def _cmd_dead_letter(args: argparse.Namespace) -> int:
    _setup_logging(args)
    cfg = _load(args.config, require_sink=True)
    _setup_logging(args, cfg)
    if args.sink is not None and args.sink not in cfg.sink_names():
        _err(
            f"edge-agent: --sink {args.sink}: not a configured sink ({', '.join(cfg.sink_names())})"
        )
        return EX_USAGE
    if args.dl_command == "purge" and not (args.ids or args.sink or args.all):
        _err("edge-agent: purge needs --id ID, --sink NAME or --all")
        return EX_USAGE
    if not cfg.store_path.exists():
        _err(f"edge-agent: no store at {cfg.store_path} (has the agent run with this config?)")
        return EX_FAIL
    if args.dl_command == "list":
        return _dead_letter_list(args, cfg)
    return _dead_letter_change(args, cfg)


def _dead_letter_list(args: argparse.Namespace, cfg: AgentConfig) -> int:
    from edge_agent.store import StoreError, read_dead_letters

    # A read-only connection: WAL lets it read beside the running agent's writer.
    try:
        rows = read_dead_letters(cfg.store_path, limit=args.limit, sink=args.sink)
    except StoreError as exc:
        _err(f"edge-agent: {exc}")
        return EX_FAIL
    if args.ids:
        rows = [r for r in rows if r["id"] in set(args.ids)]
    if args.json:
        from edge_agent import jsoncodec

        for row in rows:
            print(jsoncodec.dumps(row))
        return EX_OK
    from datetime import UTC, datetime

    from edge_agent.clock import utc_iso

    print_table(
        ["ID", "SINK", "DEVICE", "TYPE", "ATTEMPTS", "DEAD AT", "REASON"],
        [
            [
                r["id"],
                r["sink"],
                r["device_id"],
                r["type"],
                r["attempts"],
                utc_iso(datetime.fromtimestamp(r["dead_at"], UTC)) if r.get("dead_at") else None,
                r["reason"],
            ]
            for r in rows
        ],
    )
    print(f"{len(rows)} dead letter(s)" + (" shown" if len(rows) == args.limit else ""))
    return EX_OK


def _dead_letter_change(args: argparse.Namespace, cfg: AgentConfig) -> int:
    """replay / purge: only the store's owner may write the database (it numbers the outbox).

    With no agent running this command opens the store itself (taking its lock); while the
    agent runs, the store is locked and the change goes through the agent's local API.
    """
    from edge_agent.store import StoreError, StoreLocked

    ids: list[int] | None = list(args.ids) if args.ids else None
    try:
        n = asyncio.run(_dead_letter_direct(args, cfg, ids))
        where = ""
    except StoreLocked as locked:
        url = str(args.api).rstrip("/") if args.api else _config_api_url(cfg)
        n = _dead_letter_via_api(args, url, ids, locked)
        where = f" through the running agent ({url})"
    except StoreError as exc:
        _err(f"edge-agent: {exc}")
        return EX_FAIL
    if args.dl_command == "replay":
        print(f"replayed {n} dead letter(s) into the outbox{where}")
    else:
        print(f"purged {n} dead letter(s){where}")
    return EX_OK


async def _dead_letter_direct(
    args: argparse.Namespace, cfg: AgentConfig, ids: list[int] | None
) -> int:
    from edge_agent.store import Store

    store = await Store.open(
        cfg.store_path,
        sinks=cfg.sink_names(),
        outbox_max_events=cfg.store.outbox_max_events,
        synchronous=cfg.store.synchronous,
    )
    try:
        if args.dl_command == "replay":
            return await store.replay_dead_letters(ids, sink=args.sink)
        return await store.purge_dead_letters(ids, sink=args.sink)
    finally:
        await store.close()


def _dead_letter_via_api(
    args: argparse.Namespace, url: str, ids: list[int] | None, locked: Exception
) -> int:
    import httpx

    body: dict[str, Any] = {"ids": ids, "sink": args.sink}
    if args.dl_command == "purge":
        body["all"] = bool(args.all)
    route = f"/v1/dead-letters/{args.dl_command}"
    try:
        with httpx.Client(base_url=url, timeout=args.timeout) as http:
            resp = http.post(route, json=body)
    except httpx.HTTPError as exc:
        _err(
            f"edge-agent: {locked}",
            f"  and its local API at {url} did not answer ({type(exc).__name__}: {exc});",
            "  give the agent's API with --api URL (or fix [api] listen in the config), or stop "
            "the agent and run this again",
        )
        raise _Exit(EX_UNAVAILABLE) from None
    try:
        answer: Any = resp.json()
    except ValueError:
        answer = {}
    if resp.status_code != 200 or not isinstance(answer, dict):
        error = answer.get("error") if isinstance(answer, dict) else None
        hint = " (an agent older than this command? restart it)" if resp.status_code == 404 else ""
        _err(
            f"edge-agent: {url}{route} answered HTTP {resp.status_code}: {error or resp.text}"
            + hint
        )
        raise _Exit(EX_FAIL)
    return int(answer["replayed" if args.dl_command == "replay" else "purged"])


if __name__ == "__main__":
    sys.exit(main())
