"""The ``edge-agent`` parser and entry point; each subcommand lives in a module of its own."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from edge_agent import __version__
from edge_agent.config import EX_CONFIG
from edge_agent.ops.cli import book
from edge_agent.ops.cli.common import (
    CONFIG_ENV,
    DEFAULT_API_URL,
    DEFAULT_CONFIG,
    EX_INTERRUPTED,
    EX_USAGE,
    Exit,
    resolve_config_path,
)
from edge_agent.ops.cli.completion import SHELLS, cmd_completion
from edge_agent.ops.cli.config_cmd import add_config_parser
from edge_agent.ops.cli.run import cmd_run
from edge_agent.ops.cli.tail import add_tail_parser
from edge_agent.ops.cli.trust import add_trust_parser
from edge_agent.ops.cli.webhook_cmd import add_webhook_parser
from edge_agent.ops.logs import LEVELS, LogLevelError

EX_BROKEN_PIPE = 128 + 13
"""What a shell reports for a process killed by SIGPIPE."""


def _command(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """The subcommand function ``name`` of ``edge_agent.ops.cli.<module>``, imported when it
    runs: ``run`` never loads the other commands' code (check-config's alone is ~1.2 MiB of a
    running agent's RSS)."""

    def command(args: argparse.Namespace) -> int:
        return int(getattr(importlib.import_module(f"edge_agent.ops.cli.{module}"), name)(args))

    command.__qualname__ = command.__name__ = name
    return command


cmd_check_config = _command("check_config", "cmd_check_config")
cmd_dead_letter = _command("dead_letter", "cmd_dead_letter")
cmd_demo = _command("demo", "cmd_demo")
cmd_report = _command("report", "cmd_report")
cmd_status = _command("status", "cmd_status")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level",
        default=argparse.SUPPRESS,
        choices=LEVELS,
        type=str.lower,
        help="log level; trace adds the WebSocket frames (default: $EDGE_AGENT_LOG_LEVEL, else "
        "[log] level, else info)",
    )
    config_opt = argparse.ArgumentParser(add_help=False)
    config_opt.add_argument(
        "-c",
        "--config",
        type=Path,
        metavar="FILE",
        help=f"the agent's TOML config (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG})",
    )
    config_opt.set_defaults(config_need="required")

    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="RoomOS edge agent: buffers Cisco device bookings and forwards them.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("run", parents=[common, config_opt], help="run the agent")
    p.set_defaults(func=cmd_run)

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
        "--failures-only",
        action="store_true",
        help="with --connect: print only the checks that failed or warned (and the summary)",
    )
    p.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="per check (default 10 s)"
    )
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser(
        "demo", help="run the self-contained demo (simulated devices)", add_help=False
    )
    p.add_argument("demo_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "status", parents=[common], help="devices, sinks and outbox from the running agent"
    )
    p.add_argument("--api", metavar="URL", help=f"local API URL (default {DEFAULT_API_URL})")
    p.add_argument(
        "-c",
        "--config",
        type=Path,
        metavar="FILE",
        help=f"take the URL from [api] (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG} if it "
        "exists)",
    )
    p.set_defaults(config_need="optional")
    p.add_argument("--json", action="store_true", help="print the raw JSON")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S")
    p.add_argument(
        "--problems",
        action="store_true",
        help="only rooms that are down and sinks that cannot deliver; exit 1 when any",
    )
    p.set_defaults(func=cmd_status)

    book.add_parsers(sub, [common, config_opt])

    p = sub.add_parser(
        "report",
        parents=[common, config_opt],
        help="per room: hours booked and used, ghosts, no-shows, walk-ins, peak people "
        "(reads the database; fine while the agent runs)",
    )
    p.add_argument("--since", default="7d", help="how far back: 7d (default), 12h, 2w...")
    p.add_argument("--until", metavar="TIME", help="end of the range, UTC ISO (default: now)")
    p.add_argument("--room", metavar="ID", help="only this room")
    p.add_argument(
        "--format", choices=("table", "csv", "json", "html"), default="table", help="output"
    )
    p.add_argument("--time-zone", default="UTC", help="days of the html chart in this zone")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    p.set_defaults(func=cmd_report)

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
    p.set_defaults(func=cmd_dead_letter)
    p = dl.add_parser(
        "replay",
        parents=[common, config_opt, selection, via_api],
        help="put dead letters back in the outbox (all, --id, or --sink); through the running "
        "agent's API, or on the database when no agent runs",
    )
    p.set_defaults(func=cmd_dead_letter)
    p = dl.add_parser(
        "purge",
        parents=[common, config_opt, selection, via_api],
        help="delete dead letters (--id, --sink, or --all); like replay, through the agent",
    )
    p.add_argument("--all", action="store_true", help="delete every dead letter")
    p.set_defaults(func=cmd_dead_letter)

    add_trust_parser(sub, parents=[common, config_opt])
    add_webhook_parser(sub, parents=[common, config_opt])
    add_tail_parser(sub, parents=[common])
    add_config_parser(sub)

    p = sub.add_parser("completion", help="print a shell completion script (bash or zsh)")
    p.add_argument("shell", choices=SHELLS)
    p.set_defaults(func=cmd_completion)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``edge-agent`` console script."""
    try:
        code = _main(list(sys.argv[1:] if argv is None else argv))
        sys.stdout.flush()  # here, not at exit: a closed pipe must end in the handler below
        return code
    except BrokenPipeError:
        # `edge-agent status | head`: the reader left. Python ignores SIGPIPE (the agent's
        # sockets need that), so the write raised; point stdout at /dev/null so the flush at
        # exit cannot raise again, and exit as a process killed by SIGPIPE would.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EX_BROKEN_PIPE


def _main(args_list: list[str]) -> int:
    parser = build_parser()
    try:
        # The demo has its own parser; argparse's REMAINDER would not pass it leading options.
        args, unknown = parser.parse_known_args(args_list)
        if unknown and getattr(args, "func", None) is cmd_demo:
            args.demo_args = unknown + list(args.demo_args)
        elif unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    except SystemExit as exc:  # argparse: --help / --version (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EX_USAGE
    try:
        need = getattr(args, "config_need", None)
        if need == "required" or (
            need == "optional"
            and not getattr(args, "api", None)
            and not os.environ.get("EDGE_AGENT_API")
        ):
            resolve_config_path(args, need)
        return int(args.func(args))
    except Exit as exc:
        return exc.code
    except KeyboardInterrupt:
        return EX_INTERRUPTED
    except LogLevelError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return EX_CONFIG
