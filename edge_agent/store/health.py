"""The failing streak of a store's writes, shared by both writers (SQLite and PostgreSQL).

The rules are in "Health" in :mod:`edge_agent.store.writer`: every failed write counts in
``edge_agent_store_errors{kind}``; writes failing in a row make the store unhealthy
(:class:`~edge_agent.store.base.StoreHealth`, ``edge_agent_store_healthy`` 0); a successful
write that stored changes ends the streak, a progress-only one does not when changes are what
failed (events are what must get in). Each writer says what its errors are (``kind``); this
keeps the count, so the two backends cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edge_agent.metrics import STORE_ERRORS, STORE_HEALTHY
from edge_agent.store.base import UNREADY_AFTER_FAILURES, StoreHealth


class WriteHealth:
    """One writer's failing streak: since when (the store's clock), how many, the last error."""

    def __init__(self, clock: Callable[[], float], log: Any) -> None:
        self._time = clock
        self._log = log
        self._failures = 0
        self._failing_since = 0.0
        self._changes_failing = False
        self._last_error: tuple[str, str] | None = None  # (kind, message)

    def health(self) -> StoreHealth:
        """The failing streak now; also sets ``edge_agent_store_healthy``."""
        if not self._failures or self._last_error is None:
            STORE_HEALTHY.set(1)
            return StoreHealth()
        kind, error = self._last_error
        h = StoreHealth(self._failures, max(0.0, self._time() - self._failing_since), kind, error)
        STORE_HEALTHY.set(1 if h.healthy else 0)
        return h

    def failed(self, kind: str, message: str, *, changes: bool) -> None:
        """A write failed (``changes``: it carried changes, not only progress or a call)."""
        STORE_ERRORS.labels(kind=kind).inc()
        if not self._failures:
            self._failing_since = self._time()
        self._failures += 1
        self._changes_failing = self._changes_failing or changes
        self._last_error = (kind, message)
        if self._failures == UNREADY_AFTER_FAILURES:
            self._log.error(
                "store writes keep failing: the agent reports not ready until they succeed",
                error=message,
                kind=kind,
                failures=self._failures,
            )
        self.health()

    def succeeded(self, *, changes: bool) -> bool:
        """A write got in; returns whether that ended a failing streak."""
        if not self._failures or (self._changes_failing and not changes):
            return False
        self._log.info(
            "store writes succeed again",
            failures=self._failures,
            failing_for_s=round(self._time() - self._failing_since, 1),
        )
        self._failures = 0
        self._changes_failing = False
        self._last_error = None
        STORE_HEALTHY.set(1)
        return True
