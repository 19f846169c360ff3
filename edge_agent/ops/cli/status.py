"""``edge-agent status``: devices, rooms, sinks and outbox, from the running agent's local API."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, TextIO

from edge_agent.ops.cli.common import (
    DEFAULT_API_URL,
    EX_FAIL,
    EX_OK,
    EX_UNAVAILABLE,
    api_headers,
    api_verify,
    config_api_url,
    err,
    load_config_or_exit,
    print_table,
    setup_logging,
)


def _api_url(args: argparse.Namespace) -> str:
    if args.api:
        return str(args.api).rstrip("/")
    if args.config is not None:
        return config_api_url(load_config_or_exit(args.config, require_sink=False))
    return os.environ.get("EDGE_AGENT_API", DEFAULT_API_URL).rstrip("/")


def cmd_status(args: argparse.Namespace) -> int:
    import httpx

    setup_logging(args)
    url = _api_url(args)
    # Read routes need the token when the API is not on loopback, or with read_requires_token.
    headers: dict[str, str] = {}
    verify: str | bool = True
    if args.config is not None:
        cfg = load_config_or_exit(args.config, require_sink=False)
        headers, verify = api_headers(args.config, cfg), api_verify(cfg)
    try:
        with httpx.Client(
            base_url=url, timeout=args.timeout, headers=headers, verify=verify
        ) as http:
            ready = http.get("/readyz")
            outbox_resp = http.get("/v1/outbox")
            fleet_resp = http.get("/v1/fleet")
            rooms_resp = http.get("/v1/rooms")
    except httpx.HTTPError as exc:
        err(
            f"edge-agent: cannot reach the agent's local API at {url}: {exc}",
            "  is the agent running? (systemctl status edge-agent); is [api] listen the same?",
        )
        return EX_UNAVAILABLE
    if ready.status_code not in (200, 503):
        err(f"edge-agent: {url}/readyz answered HTTP {ready.status_code}")
        return EX_UNAVAILABLE
    body: dict[str, Any] = ready.json()
    outbox: dict[str, Any] | None = outbox_resp.json() if outbox_resp.status_code == 200 else None
    fleet: dict[str, Any] | None = fleet_resp.json() if fleet_resp.status_code == 200 else None
    # An older agent has no /v1/rooms (404): no rooms table rather than an error.
    rooms: list[dict[str, Any]] | None = (
        rooms_resp.json().get("rooms", []) if rooms_resp.status_code == 200 else None
    )
    problems_only = bool(getattr(args, "problems", False))
    if problems_only:
        body = only_problems(body)
    if args.json:
        from edge_agent import jsoncodec

        print(jsoncodec.dumps({"readyz": body, "outbox": outbox, "fleet": fleet, "rooms": rooms}))
    else:
        print_status(url, body, outbox, rooms=None if problems_only else rooms)
        if fleet is not None and not problems_only:
            print_fleet(fleet)
        if problems_only and not (body["devices"] or body["sinks"]):
            print("no problems: every room connected, every sink delivering")
    if problems_only:
        return EX_FAIL if body["devices"] or body["sinks"] or not body.get("ready") else EX_OK
    return EX_OK if body.get("ready") else EX_FAIL


def only_problems(readyz: dict[str, Any]) -> dict[str, Any]:
    """``readyz`` with only the rooms that are down and the sinks that cannot deliver."""
    return {
        **readyz,
        "devices": [d for d in readyz.get("devices") or [] if not d.get("connected")],
        "sinks": [
            s
            for s in readyz.get("sinks") or []
            if s.get("state") == "gone" or not s.get("ready", True)
        ],
    }


def error_cells(entry: dict[str, Any]) -> list[Any]:
    """``[ERROR AT, LAST ERROR]`` of a device, room or sink: the error now with its time, else
    the one it recovered from, marked so (``previous_error``), else nothing."""
    if entry.get("last_error"):
        return [entry.get("last_error_at"), entry["last_error"]]
    if entry.get("previous_error"):
        return [entry.get("previous_error_at"), f"(recovered) {entry['previous_error']}"]
    return [None, None]


def print_status(
    url: str,
    readyz: dict[str, Any],
    outbox: dict[str, Any] | None,
    out: TextIO | None = None,
    *,
    rooms: list[dict[str, Any]] | None = None,
) -> None:
    out = sys.stdout if out is None else out
    state = "READY" if readyz.get("ready") else "NOT READY: " + "; ".join(readyz.get("reasons", []))
    print(f"agent {url}  {state}", file=out)
    devices = readyz.get("devices") or []
    print_table(
        [
            "DEVICE",
            "CONNECTED",
            "DOWN SINCE",
            "LAST SEEN",
            "WINDOW",
            "RECONNECTS",
            "TIME ZONE",
            "ERROR AT",
            "LAST ERROR",
        ],
        [
            [
                d.get("id"),
                d.get("connected"),
                d.get("down_since"),
                d.get("last_seen"),
                d.get("window_size"),
                d.get("reconnects"),
                d.get("time_zone"),
                *error_cells(d),
            ]
            for d in devices
        ],
        out=out,
    )
    if rooms:
        print_table(
            [
                "ROOM",
                "SOURCE",
                "DEVICE",
                "CALENDAR",
                "WINDOW",
                "LAST SYNC",
                "ERROR AT",
                "LAST ERROR",
            ],
            [
                [
                    r.get("id"),
                    r.get("source"),
                    r.get("device_id"),
                    r.get("calendar"),
                    r.get("window_size"),
                    r.get("last_sync") or ("-" if r.get("source") == "device" else "never"),
                    *error_cells(r),
                ]
                for r in rooms
            ],
            out=out,
        )
    sink_stats = (outbox or {}).get("sinks", {})
    print_table(
        ["SINK", "STATE", "READY", "BACKLOG", "OLDEST", "ERROR AT", "LAST ERROR"],
        [
            [
                s.get("name"),
                s.get("state"),
                s.get("ready"),
                sink_stats.get(s.get("name"), {}).get("depth", s.get("outbox_depth")),
                sink_stats.get(s.get("name"), {}).get("oldest_age_s"),
                *error_cells(s),
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


def print_fleet(fleet: dict[str, Any], out: TextIO | None = None) -> None:
    """Fleet mode: every member, how fresh its heartbeat is, its devices and calendar rooms
    (their leases' ages), then the rooms each member polls."""
    out = sys.stdout if out is None else out
    print(f"fleet: member {fleet.get('member_id')}, lease {fleet.get('lease_s')} s", file=out)
    rows = []
    polled: list[tuple[str, list[str]]] = []
    for m in fleet.get("members") or []:
        devices = m.get("devices") or []
        rooms = m.get("rooms") or []
        held = [d.get("held_s") or 0.0 for d in [*devices, *rooms]]
        rows.append(
            [
                m.get("member_id") + (" (this)" if m.get("self") else ""),
                "live" if m.get("live") else "stale",
                m.get("last_seen_age_s"),
                len(devices),
                len(rooms),
                min(held) if held else None,
                max(held) if held else None,
            ]
        )
        if rooms:
            polled.append((str(m.get("member_id")), [str(r.get("room_id")) for r in rooms]))
    print_table(
        ["MEMBER", "STATE", "LAST SEEN", "DEVICES", "ROOMS", "NEWEST LEASE", "OLDEST LEASE"],
        rows,
        out=out,
    )
    for member, ids in polled:
        more = f" (+{len(ids) - 20})" if len(ids) > 20 else ""
        print(f"calendar rooms of {member} ({len(ids)}): {', '.join(ids[:20])}{more}", file=out)
    unowned_rooms = fleet.get("unowned_rooms") or []
    if unowned_rooms:
        print(
            f"unowned calendar rooms ({len(unowned_rooms)}): {', '.join(unowned_rooms[:20])}",
            file=out,
        )
    unowned = fleet.get("unowned") or []
    if unowned:
        print(f"unowned devices ({len(unowned)}): {', '.join(unowned[:20])}", file=out)
