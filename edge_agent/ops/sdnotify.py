"""systemd ``sd_notify`` and the service watchdog, without libsystemd.

Everything is a no-op when ``$NOTIFY_SOCKET`` is unset (not started by systemd with
``Type=notify``), so the agent runs the same way from a shell.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Mapping

import structlog

log = structlog.get_logger(__name__)


def _socket_address(env: Mapping[str, str]) -> str | None:
    addr = env.get("NOTIFY_SOCKET")
    if not addr:
        return None
    if addr.startswith("@"):
        # Linux abstract namespace: systemd writes it with a leading '@' for the NUL byte.
        return "\0" + addr[1:]
    if addr.startswith("/"):
        return addr
    return None  # vsock and other forms: not used for local services


def notify(state: str, *, env: Mapping[str, str] | None = None) -> bool:
    """Send one ``sd_notify`` datagram (``"READY=1"``, ``"STATUS=..."``, newline-separated).

    Returns ``False`` when not under systemd or the send failed (never raises: a notification
    must not take the agent down).
    """
    address = _socket_address(os.environ if env is None else env)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
        return True
    except OSError as exc:
        log.warning("sd_notify failed", error=str(exc), state=state.split("=", 1)[0])
        return False


def ready(status_text: str | None = None) -> bool:
    """Tell systemd the service is up (``Type=notify`` waits for this)."""
    return notify("READY=1" + (f"\nSTATUS={status_text}" if status_text else ""))


def status(text: str) -> bool:
    """Free-form one-line status shown by ``systemctl status``."""
    return notify("STATUS=" + text.replace("\n", " "))


def watchdog() -> bool:
    """Keep-alive ping for ``WatchdogSec=``."""
    return notify("WATCHDOG=1")


def stopping(status_text: str | None = None) -> bool:
    return notify("STOPPING=1" + (f"\nSTATUS={status_text}" if status_text else ""))


def reloading() -> bool:
    """Announce a reload (``ExecReload`` / SIGHUP); send :func:`ready` when it is done."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """``WatchdogSec=`` in seconds from ``$WATCHDOG_USEC``, or ``None`` when no watchdog is set.

    ``$WATCHDOG_PID``, when present, must be this process: a child must not ping for us.
    """
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None


async def watchdog_loop(
    healthy: Callable[[], bool],
    *,
    interval: float | None = None,
    max_lag: float | None = None,
) -> None:
    """Ping the watchdog every ``interval / 2`` seconds while the agent is healthy.

    ``interval`` defaults to :func:`watchdog_interval`; without one this returns at once. The
    ping runs on the event loop itself, so a blocked loop stops it and systemd restarts the
    service; a tick that wakes more than ``max_lag`` (default ``interval / 4``) late is logged
    (and still pings); a tick where ``healthy()`` is false (or raises) skips the ping.
    Cancelling is safe.
    """
    interval = watchdog_interval() if interval is None else interval
    if not interval:
        return
    period = interval / 2
    max_lag = interval / 4 if max_lag is None else max_lag
    loop = asyncio.get_running_loop()
    unhealthy_since: float | None = None
    while True:
        due = loop.time() + period
        await asyncio.sleep(period)
        lag = loop.time() - due
        if lag > max_lag:
            # Waking at all proves the loop turns again: still ping, or one stall of a quarter
            # of the interval would become a restart.
            log.warning("event loop was blocked for a while", lag_s=round(lag, 3))
        try:
            ok = healthy()
        except Exception:
            log.exception("health check failed")
            ok = False
        if ok:
            if unhealthy_since is not None:
                log.info("agent healthy again; watchdog pings resumed")
                unhealthy_since = None
            watchdog()
        elif unhealthy_since is None:
            unhealthy_since = loop.time()
            log.error(
                "agent unhealthy; withholding watchdog pings (systemd restarts the service "
                "if this lasts)",
                watchdog_s=interval,
            )
