"""The fault table: answers a fake gives instead of the real one, per mailbox or for all.

A fault matches a request by mailbox (None: every mailbox, and requests about none, such as
the token endpoint) and by route tag (None: every route; the service tags each request, e.g.
``token``, ``places``, ``calendar_view``, ``delta``, ``delta_link``, ``events``,
``subscriptions``). The first fault that matches, in the order added, is applied; a fault with
a ``count`` is used up after that many requests. Kinds:

- ``status``: answer ``status`` with the service's error body (``code``, ``message``) and,
  when ``retry_after`` is set, a ``Retry-After`` header (429, 503, 410, 401, ...);
- ``slow``: wait ``delay_s`` real seconds, then answer normally;
- ``hold``: wait until ``release()`` (tests: requests in flight without timing).
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any, Literal

FaultKind = Literal["status", "slow", "hold"]
KINDS: tuple[FaultKind, ...] = ("status", "slow", "hold")
MAX_FAULTS = 1000


@dataclass(eq=False)
class Fault:
    kind: FaultKind
    mailbox: str | None = None
    route: str | None = None
    status: int = 503
    code: str = ""
    message: str = ""
    retry_after: float | None = None
    delay_s: float = 0.0
    count: int | None = None
    id: int = 0
    hits: int = 0
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def release(self) -> None:
        """Let every request held by this fault (and later ones) through."""
        self.released.set()

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "mailbox": self.mailbox,
            "route": self.route,
            "status": self.status,
            "code": self.code,
            "retry_after": self.retry_after,
            "delay_s": self.delay_s,
            "count": self.count,
            "hits": self.hits,
            "released": self.released.is_set(),
        }


class FaultTable:
    """Bounded list of faults (``MAX_FAULTS``); ``match`` is called once per request."""

    def __init__(self) -> None:
        self.faults: list[Fault] = []
        self._ids = itertools.count(1)

    def add(self, fault: Fault) -> Fault:
        if fault.kind not in KINDS:
            raise ValueError(f"unknown fault kind {fault.kind!r} (one of {', '.join(KINDS)})")
        if fault.count is not None and fault.count < 1:
            raise ValueError("count must be at least 1 (or absent: until cleared)")
        if len(self.faults) >= MAX_FAULTS:
            raise ValueError(f"too many faults (at most {MAX_FAULTS}); clear some first")
        fault.id = next(self._ids)
        fault.mailbox = fault.mailbox.lower() if fault.mailbox else None
        self.faults.append(fault)
        return fault

    def match(self, mailbox: str | None, tags: frozenset[str]) -> Fault | None:
        """The fault for a request about ``mailbox`` tagged ``tags``, counted as used."""
        box = mailbox.lower() if mailbox else None
        for fault in self.faults:
            if fault.mailbox is not None and fault.mailbox != box:
                continue
            if fault.route is not None and fault.route not in tags:
                continue
            fault.hits += 1
            if fault.count is not None:
                fault.count -= 1
                if fault.count <= 0:
                    self.faults.remove(fault)
            return fault
        return None

    def clear(self, mailbox: str | None = None) -> int:
        """Remove every fault (or those of ``mailbox``), releasing held requests; how many."""
        box = mailbox.lower() if mailbox else None
        gone = [f for f in self.faults if box is None or f.mailbox == box]
        for fault in gone:
            fault.release()
            self.faults.remove(fault)
        return len(gone)

    def describe(self) -> list[dict[str, Any]]:
        return [f.describe() for f in self.faults]
