"""``edge-agent status``: devices, sinks and outbox, from the running agent's local API."""

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
    if getattr(args, "problems", False):
        body = only_problems(body)
    if args.json:
        from edge_agent import jsoncodec

        print(jsoncodec.dumps({"readyz": body, "outbox": outbox}))
    else:
        print_status(url, body, outbox)
        if getattr(args, "problems", False) and not (body["devices"] or body["sinks"]):
            print("no problems: every room connected, every sink delivering")
    if getattr(args, "problems", False):
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


def print_status(
    url: str, readyz: dict[str, Any], outbox: dict[str, Any] | None, out: TextIO | None = None
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
