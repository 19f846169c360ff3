"""How long to wait before the next connection attempt. Pure: the caller sleeps.

Jittered, capped exponential delays (:class:`edge_agent.backoff.Backoff`, the one backoff
schedule) that grow across failed attempts *and* across links that die young: a device that
accepts the upgrade and drops the link a second later is not hammered at the initial delay.
The count resets only after a link stayed up :attr:`ReconnectPolicy.stable_after` seconds.
On top of that, per-error floors: after HTTP 403 the next try is at least
:attr:`ReconnectPolicy.auth_retry_delay` away (repeated bad logins can lock the device's
account), and a ``Retry-After`` (HTTP 503) is honoured.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from edge_agent.backoff import Backoff

from .errors import AuthenticationFailed, ConnectError


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    backoff: Backoff = field(
        default_factory=lambda: Backoff(initial=1.0, maximum=120.0, factor=2.0, jitter=0.3)
    )
    auth_retry_delay: float = 600.0
    stable_after: float = 60.0


class Reconnect:
    """The reconnect state of one device link: feed it what happened, it says how long to wait."""

    __slots__ = ("_connected_at", "_rng", "attempt", "policy")

    def __init__(self, policy: ReconnectPolicy, rng: random.Random | None = None) -> None:
        self.policy = policy
        self.attempt = 0
        """Failures (failed connects, links shorter than ``stable_after``) since the last
        stable link."""
        self._rng = rng
        self._connected_at: float | None = None

    def connect_failed(self, exc: ConnectError) -> float:
        """Seconds to wait after a failed connection attempt."""
        self.attempt += 1
        p = self.policy
        delay = p.backoff.delay_honouring(self.attempt, exc.retry_after, self._rng)
        if isinstance(exc, AuthenticationFailed):
            delay = max(delay, p.auth_retry_delay)
        return delay

    def connected(self, now: float) -> None:
        self._connected_at = now

    def lost(self, now: float) -> float:
        """Seconds to wait after an open link ended at ``now`` (monotonic, as :meth:`connected`)."""
        started = self._connected_at
        self._connected_at = None
        if started is not None and now - started >= self.policy.stable_after:
            self.attempt = 0
        self.attempt += 1
        return self.policy.backoff.delay(self.attempt, self._rng)
