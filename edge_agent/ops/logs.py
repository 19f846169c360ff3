"""Logging: structlog for the agent, the stdlib loggers of our libraries through the same renderer.

JSON lines when stderr is not a terminal (journald, containers), readable console lines when it
is. Every line, at every level and from every library, passes :func:`redact` last before being
rendered: values of keys such as ``password``, ``secret``, ``token`` or ``authorization`` are
replaced; ``whsec_...`` secrets, ``Basic``/``Bearer`` credentials, the jsxapi ``auth-...``
subprotocol and URL passwords (``user:pass@``, and query keys such as ``?password=`` or
``sslpassword=``) are masked inside any string; and every secret value registered
with :func:`register_secrets` (the resolved device passwords, webhook and MQTT secrets) is
masked wherever it appears, tracebacks included.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

LEVEL_ENV = "EDGE_AGENT_LOG_LEVEL"
LEVELS = ("trace", "debug", "info", "warning", "error", "critical")
MASK = "[REDACTED]"

TRACE = 5
"""Below DEBUG: the wire itself (websockets logs every frame at DEBUG). ``debug`` is for
reading what the agent decided; ``trace`` adds the frames, for a protocol problem."""
logging.addLevelName(TRACE, "TRACE")

# Libraries that are chatty in ways that do not help running a site (aiosqlite logs every
# statement at DEBUG, httpx every request at INFO): their floor, whatever the agent's level.
_QUIET_LIBRARIES = {
    "aiosqlite": logging.INFO,
    "httpcore": logging.INFO,
    "hpack": logging.INFO,
    "asyncio": logging.INFO,
    "httpx": logging.WARNING,
}
# Libraries whose DEBUG is a dump of the wire: shown at ``trace`` only, INFO and up otherwise.
_TRACE_LIBRARIES = ("websockets",)

_SECRET_KEY_RE = re.compile(
    r"passw|secret|token|authori[sz]ation|api[_-]?key|credential|cookie|private[_-]?key|"
    r"passphrase",
    re.IGNORECASE,
)
# A key naming *where* a secret lives is not itself secret (password_env, secret_file).
_SECRET_REF_RE = re.compile(r"_(env|file|path|dir|len|length|source)$", re.IGNORECASE)
_VALUE_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"whsec_[A-Za-z0-9+/=_-]*"), "whsec_" + MASK),
    (re.compile(r"\b(Basic|Bearer|Digest)\s+[A-Za-z0-9+/=._~-]{4,}", re.IGNORECASE), r"\1 " + MASK),
    # jsxapi sends the credentials as the WebSocket subprotocol auth-<base64url(user:pass)>.
    (re.compile(r"\bauth-[A-Za-z0-9_-]{4,}"), "auth-" + MASK),
    (
        re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/?#@\s]*:)[^@/?#\s]+@", re.IGNORECASE),
        r"\1" + MASK + "@",
    ),
    # ...and in a URL's query string: libpq reads ?password= / sslpassword= / passfile= from a
    # postgresql:// URL; access_token=, secret=, api_key= are credentials in any URL.
    (
        re.compile(
            r"([?&;](?:[a-z0-9_.-]*(?:passw|passfile|secret|token|api[_-]?key|credential)"
            r"[a-z0-9_.-]*)=)[^&#\s\"']*",
            re.IGNORECASE,
        ),
        r"\1" + MASK,
    ),
)
_MIN_REGISTERED_LEN = 4

_lock = threading.Lock()
_registered: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------
# Redaction
# ---------------------------------------------------------------------------------------------


def register_secrets(values: Iterable[str]) -> None:
    """Mask these exact values wherever they appear in a log line from now on.

    Values shorter than 4 characters are ignored (masking ``"ab"`` everywhere would garble the
    logs and hide nothing worth hiding).
    """
    global _registered
    with _lock:
        merged = set(_registered)
        merged.update(v for v in values if isinstance(v, str) and len(v) >= _MIN_REGISTERED_LEN)
        # Longest first, so a secret that contains another is masked whole.
        _registered = tuple(sorted(merged, key=len, reverse=True))


def clear_registered_secrets() -> None:
    """Forget every registered value (tests)."""
    global _registered
    with _lock:
        _registered = ()


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY_RE.search(key)) and not _SECRET_REF_RE.search(key)


def redact_text(text: str) -> str:
    """``text`` with registered secret values and credential-looking substrings masked."""
    for value in _registered:
        if value in text:
            text = text.replace(value, MASK)
    for pattern, repl in _VALUE_PATTERNS:
        text = pattern.sub(repl, text)
    return text


def redact_value(value: Any, _depth: int = 0) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if _depth > 8:
        return value
    if isinstance(value, Mapping):
        return {
            k: (
                MASK
                if isinstance(k, str) and is_secret_key(k) and v is not None
                else redact_value(v, _depth + 1)
            )
            for k, v in value.items()
        }
    if type(value) in (list, tuple, set, frozenset):
        return type(value)(redact_value(v, _depth + 1) for v in value)
    if isinstance(value, bytes | bytearray):
        text = bytes(value).decode("utf-8", "replace")
        masked = redact_text(text)
        return masked if masked != text else value
    if isinstance(value, int | float | bool) or value is None:
        return value
    # Anything else is rendered later with repr() (console) or str() (JSON): check both now.
    for rendered in (str(value), repr(value)):
        if redact_text(rendered) != rendered:
            return redact_text(str(value))
    return value


def redact(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask secrets in every key and value of the event."""
    for key in list(event_dict):
        value = event_dict[key]
        if is_secret_key(key) and value is not None:
            event_dict[key] = MASK
        else:
            event_dict[key] = redact_value(value)
    return event_dict


# ---------------------------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------------------------


class LogLevelError(ValueError):
    """A log level that is not one of :data:`LEVELS`; the message names where it came from."""


def resolve_level(cli_level: str | None = None, config_level: str | None = None) -> str:
    """``--log-level`` beats ``$EDGE_AGENT_LOG_LEVEL`` beats ``[log] level`` beats ``info``.

    Raises :class:`LogLevelError` for a level that is not one of :data:`LEVELS` (``warn`` is
    taken for ``warning``): a typo must not quietly give a different level than was asked for.
    """
    sources = (
        ("--log-level", cli_level),
        (f"${LEVEL_ENV}", os.environ.get(LEVEL_ENV)),
        ("[log] level", config_level),
    )
    for where, candidate in sources:
        if candidate is None or not candidate.strip():
            continue
        level = candidate.strip().lower()
        if level == "warn":
            level = "warning"
        if level not in LEVELS:
            raise LogLevelError(
                f"{where} = {candidate!r} is not a log level; use one of {', '.join(LEVELS)}"
            )
        return level
    return "info"


def configure_logging(
    level: str = "info", *, json: bool | None = None, stream: TextIO | None = None
) -> None:
    """Set up structlog and the stdlib root logger to render the same way, redacted.

    ``json=None`` picks JSON lines when ``stream`` (default stderr) is not a TTY. Safe to call
    again (the CLI calls it once early, then again with the config's level).
    """
    stream = sys.stderr if stream is None else stream
    if json is None:
        isatty = getattr(stream, "isatty", None)
        json = not (callable(isatty) and isatty())
    lvl = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Processor
    if json:
        renderer = structlog.processors.JSONRenderer(serializer=_json_dumps)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=_colors_ok(stream))

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # Tracebacks become text *before* redaction, so a secret in an exception
            # message or a local repr is masked too.
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.set_name("edge-agent")

    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == "edge-agent":
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(lvl)
    for name, floor in _QUIET_LIBRARIES.items():
        logging.getLogger(name).setLevel(max(lvl, floor))
    for name in _TRACE_LIBRARIES:
        logging.getLogger(name).setLevel(logging.DEBUG if lvl <= TRACE else max(lvl, logging.INFO))
    logging.captureWarnings(True)

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def _colors_ok(stream: TextIO) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(callable(isatty) and isatty())


def _json_dumps(obj: Any, **_: Any) -> str:
    from edge_agent import jsoncodec

    try:
        return jsoncodec.dumps(obj)
    except TypeError:
        return jsoncodec.dumps({k: _plain(v) for k, v in obj.items()})


def _plain(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    return str(value)
