"""When a device link is dead: the WebSocket ping and the application probe, as deadlines.

Pure: no awaits, no clock. The link's reader (:meth:`XapiClient._read`) asks :meth:`Liveness.
deadline` when to wake, tells it what was answered, and asks :meth:`Liveness.tick` what to do
at ``now``: send a ping, send the probe, or give up on the link (:class:`Dead`).

Two checks, because they catch different failures: the WebSocket ping proves the TCP path and
the device's WebSocket stack; the probe (an ``xGet`` of ``Status SystemUnit Uptime``) proves the
xAPI behind it still answers (a device busy rebooting its xAPI keeps answering pings). At most
one of each is outstanding; the next is due an interval after the previous one was sent, and
never before the previous one's deadline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

_INF = math.inf


@dataclass(frozen=True, slots=True)
class LivenessTimes:
    """Seconds. ``None`` disables a check; ``ping_timeout=None`` sends pings as keepalive
    traffic only (no answer is awaited)."""

    ping_interval: float | None = 25.0
    ping_timeout: float | None = 20.0
    probe_interval: float | None = 60.0
    probe_timeout: float = 15.0

    def __post_init__(self) -> None:
        for name in ("ping_interval", "ping_timeout", "probe_interval", "probe_timeout"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 s (or None), not {value!r}")


@dataclass(frozen=True, slots=True)
class Due:
    """What to send now (both may be false: nothing is due yet)."""

    ping: bool = False
    probe: bool = False


@dataclass(frozen=True, slots=True)
class Dead:
    """The link is dead; ``why`` completes "link is dead: ..."."""

    why: str


NOTHING_DUE = Due()


class Liveness:
    """The deadline machine of one open link (a new one for every connection)."""

    __slots__ = (
        "_next_ping",
        "_next_probe",
        "_pong_deadline",
        "_probe_deadline",
        "times",
    )

    def __init__(self, times: LivenessTimes, now: float) -> None:
        self.times = times
        self._next_ping = now + times.ping_interval if times.ping_interval else _INF
        self._next_probe = now + times.probe_interval if times.probe_interval else _INF
        self._pong_deadline = _INF  # finite while a ping awaits its pong
        self._probe_deadline = _INF  # finite while the probe awaits its answer

    @property
    def awaiting_pong(self) -> bool:
        return self._pong_deadline != _INF

    @property
    def awaiting_probe(self) -> bool:
        return self._probe_deadline != _INF

    def deadline(self) -> float | None:
        """When :meth:`tick` next has something to decide (``None``: never)."""
        ping = self._pong_deadline if self.awaiting_pong else self._next_ping
        probe = self._probe_deadline if self.awaiting_probe else self._next_probe
        d = min(ping, probe)
        return None if d == _INF else d

    def tick(self, now: float) -> Due | Dead:
        """What to do at ``now``. Call :meth:`ping_sent` / :meth:`probe_sent` for what you sent."""
        t = self.times
        if self.awaiting_pong and now >= self._pong_deadline:
            return Dead(f"no WebSocket pong within {t.ping_timeout:g} s")
        if self.awaiting_probe and now >= self._probe_deadline:
            return Dead(f"no answer to the liveness probe within {t.probe_timeout:g} s")
        ping = not self.awaiting_pong and now >= self._next_ping
        probe = not self.awaiting_probe and now >= self._next_probe
        if not (ping or probe):
            return NOTHING_DUE
        return Due(ping=ping, probe=probe)

    def ping_sent(self, now: float) -> None:
        t = self.times
        interval = t.ping_interval or _INF
        if t.ping_timeout is None:
            self._next_ping = now + interval
            return
        self._pong_deadline = now + t.ping_timeout
        self._next_ping = max(self._pong_deadline, now + interval)

    def pong_received(self) -> None:
        self._pong_deadline = _INF

    def probe_sent(self, now: float) -> None:
        t = self.times
        self._probe_deadline = now + t.probe_timeout
        self._next_probe = max(self._probe_deadline, now + (t.probe_interval or _INF))

    def probe_answered(self) -> None:
        """Any answer, an error included (``NotReady`` still proves the xAPI alive)."""
        self._probe_deadline = _INF
