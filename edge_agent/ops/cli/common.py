"""What every subcommand shares: exit codes, loading the config, printing tables."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TextIO

from edge_agent.config import (
    EX_CONFIG,
    AgentConfig,
    ConfigError,
    Secrets,
    load_config,
    parse_listen,
    resolve_secrets,
)
from edge_agent.ops.logs import configure_logging, resolve_level

EX_OK = 0
EX_FAIL = 1
EX_USAGE = 2
EX_UNAVAILABLE = 69
EX_TEMPFAIL = 75
"""sysexits ``EX_TEMPFAIL``: the agent answered but cannot do it now (the device is offline,
the calendar unreachable, an outcome not known yet); the same command may work later."""
EX_INTERRUPTED = 130
DEFAULT_API_URL = "http://127.0.0.1:9780"
DEFAULT_CONFIG = Path("/etc/edge-agent/agent.toml")
CONFIG_ENV = "EDGE_AGENT_CONFIG"


class Exit(Exception):
    """Leave the command with this exit code (its message is already printed)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def err(*lines: str) -> None:
    for line in lines:
        print(line, file=sys.stderr)


def resolve_config_path(
    args: argparse.Namespace,
    need: Literal["required", "optional"],
    env: Mapping[str, str] | None = None,
) -> None:
    """Fill in ``args.config`` when ``-c`` was not given: ``$EDGE_AGENT_CONFIG``, else
    ``/etc/edge-agent/agent.toml``.

    ``required``: no file there is an error (exit 78) that says which paths were tried.
    ``optional`` (``status``, which can do without): the default is taken only when it exists.
    """
    if getattr(args, "config", None) is not None:
        return
    env = os.environ if env is None else env
    from_env = env.get(CONFIG_ENV)
    if from_env:
        # Set but missing is a mistake to report, not a reason to fall back to another file.
        path, tried = Path(from_env), f"${CONFIG_ENV}={from_env}"
    else:
        path, tried = DEFAULT_CONFIG, f"{DEFAULT_CONFIG} (${CONFIG_ENV} is not set)"
    if path.is_file():
        args.config = path
        return
    if need == "optional":
        return
    err(
        f"edge-agent: no configuration file: -c was not given; tried {tried}: no such file",
        f"  give -c FILE, or set {CONFIG_ENV}; `edge-agent config example` prints an annotated "
        "example to start from",
    )
    raise Exit(EX_CONFIG)


def setup_logging(args: argparse.Namespace, cfg: AgentConfig | None = None) -> None:
    configure_logging(
        resolve_level(getattr(args, "log_level", None), cfg.log.level if cfg else None)
    )


def load_config_or_exit(path: Path, *, require_sink: bool) -> AgentConfig:
    try:
        return load_config(path, require_sink=require_sink)
    except ConfigError as exc:
        print_config_error(path, exc)
        raise Exit(EX_CONFIG) from None


def secrets_or_exit(path: Path, cfg: AgentConfig) -> Secrets:
    try:
        secrets = resolve_secrets(cfg)
    except ConfigError as exc:
        print_config_error(path, exc)
        raise Exit(EX_CONFIG) from None
    return secrets  # resolve_secrets registered the values with the log redactor


def print_config_error(path: Path, exc: ConfigError) -> None:
    err(f"edge-agent: invalid configuration in {path}:", *(f"  {line}" for line in exc.lines()))


def config_api_url(cfg: AgentConfig) -> str:
    """Where a client on this host reaches the agent's ``[api] listen``."""
    host, port = parse_listen(cfg.api.listen)
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    scheme = "https" if cfg.api.cert_file is not None else "http"
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


def api_headers(path: Path, cfg: AgentConfig, *, required: bool = False) -> dict[str, str]:
    """``Authorization: Bearer`` with the first ``[api]`` token (the same source the agent
    reads); no header when the config names none. Exit 78 when the named source is unset, and
    with ``required`` (a state-changing route: the agent always wants the token there) when
    the config names none: found before anything is sent, not as the agent's 401."""
    from edge_agent.config.secrets import resolve_api_tokens

    if required and cfg.api.token_env is None and cfg.api.token_file is None:
        err(
            f"edge-agent: {path} names no API token source: the agent's booking, release and "
            "dead-letter routes need its token",
            "  set api.token_env or api.token_file to the same source as the agent's",
        )
        raise Exit(EX_CONFIG)
    try:
        tokens = resolve_api_tokens(cfg)
    except ConfigError as exc:
        print_config_error(path, exc)
        raise Exit(EX_CONFIG) from None
    if required and not tokens:
        key = "api.token_env" if cfg.api.token_env else "api.token_file"
        err(f"edge-agent: {key} in {path} holds no token (it is empty)")
        raise Exit(EX_CONFIG)
    return {"Authorization": f"Bearer {tokens[0]}"} if tokens else {}


def fmt(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if value is True:
        return "yes"
    if value is False:
        return "no"
    if isinstance(value, float):
        return f"{value:.0f}s" if value >= 1 else f"{value:.1f}s"
    return str(value)


def print_table(headers: list[str], rows: list[list[Any]], out: TextIO | None = None) -> None:
    out = sys.stdout if out is None else out
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    for row in [headers, *cells]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)


def api_verify(cfg: AgentConfig) -> str | bool:
    """How a CLI client checks the API's TLS certificate: against ``[api] cert_file`` itself
    (a self-signed certificate is its own authority), else the system's CAs."""
    return str(cfg.api.cert_file) if cfg.api.cert_file is not None else True
