"""``edge-agent book ROOM --title T --minutes N [--start ...]`` and ``edge-agent release ROOM ID``.

Both go through the running agent's local API (only the agent talks to its devices), with the
bearer token from ``[api] token_env`` / ``token_file``. ``book`` prints the request UUID and,
with ``--wait``, follows ``GET /v1/requests/{uuid}`` until the request is decided (``pending``
and ``overdue`` are not: an overdue request can still be created by the device).

Exit codes (sysexits where one fits):

====  ===========================================================================================
0     done: the request was accepted (``book`` without ``--wait``), created, or the release sent
1     refused: the agent or the device said no (4xx, 502, 501), or the request ended ``failed``
      or ``expired``
69    no agent: nothing answered at the API URL (``EX_UNAVAILABLE``)
75    not now: 503 (the device offline, the calendar unreachable), or still undecided when
      ``--wait`` gave up (``EX_TEMPFAIL``: the same command may work later)
78    the config: no ``[api]`` token source, or the one it names is unset (``EX_CONFIG``),
      found before anything is sent
====  ===========================================================================================
"""

from __future__ import annotations

import argparse
import time
from typing import Any
from urllib.parse import quote

from edge_agent.ops.cli.common import (
    EX_FAIL,
    EX_OK,
    EX_TEMPFAIL,
    EX_UNAVAILABLE,
    Exit,
    api_headers,
    api_verify,
    config_api_url,
    err,
    load_config_or_exit,
    setup_logging,
)

WAIT_POLL_S = 1.0
UNDECIDED = ("pending", "overdue")
"""``GET /v1/requests/{uuid}`` statuses that may still become ``created``."""


def add_parsers(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Register ``book`` and ``release`` on the ``edge-agent`` subparsers."""
    via_api = argparse.ArgumentParser(add_help=False)
    via_api.add_argument(
        "--api", metavar="URL", help="the agent's local API (default: from [api] listen)"
    )
    via_api.add_argument(
        "--timeout", type=float, default=30.0, metavar="S", help="for the API (default 30 s)"
    )
    p = sub.add_parser(
        "book", parents=[*parents, via_api], help="book a room through the running agent"
    )
    p.add_argument("room", metavar="ROOM", help="the room (device) id")
    p.add_argument("--title", required=True, help="the booking's title (at most 128 characters)")
    p.add_argument(
        "--minutes", type=int, required=True, metavar="N", help="duration, 1..1440 minutes"
    )
    p.add_argument(
        "--start",
        metavar="TIME",
        help="ISO 8601 start with offset, e.g. 2026-11-23T09:00Z (default: now)",
    )
    p.add_argument("--organizer-name", metavar="NAME")
    p.add_argument("--organizer-email", metavar="EMAIL")
    p.add_argument(
        "--wait",
        action="store_true",
        help="wait (up to --timeout) for the outcome: created, failed or expired",
    )
    p.set_defaults(func=cmd_book)
    p = sub.add_parser(
        "release", parents=[*parents, via_api], help="release (delete) a booking of a room"
    )
    p.add_argument("room", metavar="ROOM", help="the room (device) id")
    p.add_argument("booking_id", metavar="ID", help="the booking's id (from the window)")
    p.set_defaults(func=cmd_release)


def _client(args: argparse.Namespace) -> tuple[Any, str]:
    import httpx

    setup_logging(args)
    cfg = load_config_or_exit(args.config, require_sink=False)
    setup_logging(args, cfg)
    url = str(args.api).rstrip("/") if args.api else config_api_url(cfg)
    client = httpx.Client(
        base_url=url,
        timeout=args.timeout,
        headers=api_headers(args.config, cfg, required=True),
        verify=api_verify(cfg),
    )
    return client, url


def _call(client: Any, url: str, method: str, route: str, **kw: Any) -> tuple[int, dict[str, Any]]:
    import httpx

    try:
        resp = client.request(method, route, **kw)
    except httpx.HTTPError as exc:
        err(
            f"edge-agent: the agent's local API at {url} did not answer "
            f"({type(exc).__name__}: {exc}); is the agent running? (--api URL to point elsewhere)"
        )
        raise Exit(EX_UNAVAILABLE) from None
    try:
        body = resp.json()
    except ValueError:
        body = {"error": resp.text}
    return resp.status_code, body if isinstance(body, dict) else {"error": str(body)}


def _fail(url: str, route: str, status: int, body: dict[str, Any]) -> int:
    hint = ""
    if status == 401:
        hint = " (set [api] token_env or token_file to the agent's token)"
    field = f" [field {body['field']}]" if body.get("field") else ""
    err(f"edge-agent: {url}{route} answered HTTP {status}: {body.get('error')}{field}{hint}")
    # 503 is the agent answering "not now" (device offline, calendar unreachable): not 69,
    # which says no agent answered at all.
    return EX_TEMPFAIL if status == 503 else EX_FAIL


def cmd_book(args: argparse.Namespace) -> int:
    client, url = _client(args)
    order: dict[str, Any] = {"title": args.title, "duration_min": args.minutes}
    if args.start:
        order["start"] = args.start
    organizer = {
        k: v for k, v in (("name", args.organizer_name), ("email", args.organizer_email)) if v
    }
    if organizer:
        order["organizer"] = organizer
    route = f"/v1/rooms/{quote(args.room, safe='')}/bookings"
    with client:
        status, body = _call(client, url, "POST", route, json=order)
        if status != 202:
            return _fail(url, route, status, body)
        uuid = str(body["request_uuid"])
        print(f"requested {uuid} for {args.room}: pending until {body.get('expires_at')}")
        if not args.wait:
            return EX_OK
        follow = f"/v1/requests/{uuid}"
        deadline = time.monotonic() + args.timeout
        while True:
            status, body = _call(client, url, "GET", follow)
            if status != 200:
                return _fail(url, follow, status, body)
            if body.get("status") not in UNDECIDED:
                break
            if time.monotonic() >= deadline:
                err(
                    f"edge-agent: {uuid} still {body.get('status')} after {args.timeout:.0f} s; "
                    f"follow it with GET {url}{follow}"
                )
                return EX_TEMPFAIL
            time.sleep(WAIT_POLL_S)
    outcome = body["status"]
    if outcome == "created":
        print(f"created booking {body.get('booking_id')} (meeting {body.get('meeting_id')})")
        return EX_OK
    cause = f": {body.get('cause')}" if body.get("cause") else ""
    print(f"{outcome}{cause}")
    return EX_FAIL


def cmd_release(args: argparse.Namespace) -> int:
    client, url = _client(args)
    route = f"/v1/rooms/{quote(args.room, safe='')}/bookings/{quote(args.booking_id, safe='')}"
    with client:
        status, body = _call(client, url, "DELETE", route)
    if status != 202:
        return _fail(url, route, status, body)
    print(f"releasing booking {args.booking_id} of {args.room}: booking.deleted follows")
    return EX_OK
