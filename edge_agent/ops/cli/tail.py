"""``edge-agent tail [--room ID] [--type T]``: events as the running agent stores them.

Reads the agent's ``GET /v1/events/stream`` (:mod:`edge_agent.ops.event_stream`): only events
stored from now on, never the history (that is the receiver's job). One line an event::

    2026-11-23T09:00:00.123Z  room-4a  booking.created  10:00-10:30Z "Standup"

or the envelopes themselves with ``--json`` (one a line, for ``jq``). ``--count N`` stops after
N events (``tail | head`` ends like ``status | head``: exit 141, no traceback). The
agent keeps up to 1,000 events for a slow reader, then ends its stream (this
exits 1 and says so). Ctrl-C ends it (exit 130).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from edge_agent.ops.cli.common import (
    CONFIG_ENV,
    DEFAULT_API_URL,
    DEFAULT_CONFIG,
    EX_FAIL,
    EX_OK,
    EX_UNAVAILABLE,
    config_api_url,
    err,
    load_config_or_exit,
    setup_logging,
)


def add_tail_parser(sub: Any, *, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "tail", parents=parents, help="stream events as the running agent stores them"
    )
    p.add_argument("--room", action="append", metavar="ID", help="only this room's events (repeat)")
    p.add_argument(
        "--type",
        action="append",
        metavar="T",
        help="only events of this type; shell patterns work (booking.*) (repeat)",
    )
    p.add_argument("--json", action="store_true", help="print each envelope as one JSON line")
    p.add_argument("--count", type=int, metavar="N", help="stop after N events")
    p.add_argument("--api", metavar="URL", help=f"local API URL (default {DEFAULT_API_URL})")
    p.add_argument(
        "-c",
        "--config",
        type=Path,
        metavar="FILE",
        help=f"take the URL from [api] (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG} if it "
        "exists)",
    )
    p.add_argument(
        "--timeout", type=float, default=5.0, metavar="S", help="to connect (default 5 s)"
    )
    p.set_defaults(func=cmd_tail, config_need="optional")


def _api_url(args: argparse.Namespace) -> str:
    if args.api:
        return str(args.api).rstrip("/")
    if args.config is not None:
        return config_api_url(load_config_or_exit(args.config, require_sink=False))
    return os.environ.get("EDGE_AGENT_API", DEFAULT_API_URL).rstrip("/")


def describe(envelope: Mapping[str, Any]) -> str:
    """One line for a person: when, which room, what, and the booking it is about."""
    data = envelope.get("data")
    data = data if isinstance(data, Mapping) else {}
    parts = [
        str(data.get("observed_at") or envelope.get("timestamp") or "-"),
        str(data.get("room_id") or data.get("device_id") or "-"),
        str(envelope.get("type") or "-"),
    ]
    booking = data.get("booking")
    if isinstance(booking, Mapping):
        start, end = str(booking.get("start") or ""), str(booking.get("end") or "")
        if start and end:
            parts.append(f"{start[11:16]}-{end[11:16]}Z")
        if booking.get("hidden"):
            parts.append("(private)")
        elif booking.get("title"):
            parts.append(f'"{booking["title"]}"')
    bookings = data.get("bookings")
    if isinstance(bookings, list):
        parts.append(f"{len(bookings)} booking(s)")
    for key in ("reason", "booking_request_uuid"):
        if data.get(key):
            parts.append(f"{key}={data[key]}")
    return "  ".join(parts)


def cmd_tail(args: argparse.Namespace) -> int:
    import httpx

    from edge_agent import jsoncodec

    setup_logging(args)
    if args.count is not None and args.count < 1:
        err("edge-agent: --count must be at least 1")
        return EX_FAIL
    url = _api_url(args)
    # ``room``: matched against data.room_id, so calendar-only rooms are found too.
    params = {"room": list(args.room or []), "type": list(args.type or [])}
    out: TextIO = sys.stdout
    seen = 0
    # The read timeout is above the stream's 15 s keepalive: a silent minute means a dead agent.
    timeout = httpx.Timeout(args.timeout, read=60.0)
    try:
        with (
            httpx.Client(base_url=url, timeout=timeout) as http,
            http.stream("GET", "/v1/events/stream", params=params) as resp,
        ):
            if resp.status_code != 200:
                resp.read()
                err(
                    f"edge-agent: {url}/v1/events/stream answered HTTP {resp.status_code}: "
                    f"{resp.text[:200]}"
                )
                return EX_UNAVAILABLE
            for line in resp.iter_lines():
                if not line.strip():
                    continue  # keepalive
                envelope = jsoncodec.loads(line)
                if isinstance(envelope, dict) and "error" in envelope and "type" not in envelope:
                    err(
                        f"edge-agent: the agent ended the stream: {envelope['error']} "
                        f"({envelope.get('dropped', '?')} event(s) not shown)"
                    )
                    return EX_FAIL
                print(line if args.json else describe(envelope), file=out, flush=True)
                seen += 1
                if args.count is not None and seen >= args.count:
                    return EX_OK
    except httpx.HTTPError as exc:
        err(
            f"edge-agent: cannot reach the agent's event stream at {url}: {exc}",
            "  is the agent running? (systemctl status edge-agent); is [api] listen the same?",
        )
        return EX_UNAVAILABLE
    err("edge-agent: the agent closed the event stream (stopping?)")
    return EX_FAIL
