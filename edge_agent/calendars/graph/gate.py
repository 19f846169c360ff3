"""One concurrency gate per room mailbox, shared by every Graph call that reaches the mailbox.

Outlook's service limits: "A maximum of 10,000 API requests every 10 minutes. A maximum of 4
concurrent requests." per mailbox (Graph throttling limits, Outlook service limits); the fifth
concurrent request is a 429 ``MailboxConcurrency``. Polling (:class:`GraphClient`), bookings
(:class:`GraphBooking`) and subscription creation (:class:`PushManager`) all count, so they
take slots of one :class:`MailboxGates` (the poller's: ``GraphClient.gates``), and a 429's
``Retry-After`` seen by a poll or a booking holds back every call to that mailbox.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

__all__ = ["MAILBOX_CONCURRENCY", "MailboxBusy", "MailboxGate", "MailboxGates"]

MAILBOX_CONCURRENCY = 4  # Outlook's limit of concurrent requests per mailbox (throttling docs)


class MailboxBusy(Exception):
    """The mailbox is held back by a 429 for longer than the caller may wait."""

    def __init__(self, key: str, wait_s: float) -> None:
        super().__init__(f"{key} is throttled by Graph for another {wait_s:.0f} s")
        self.key = key
        self.wait_s = wait_s


@dataclass(slots=True)
class MailboxGate:
    slots: asyncio.Semaphore
    not_before: float = 0.0  # monotonic time before which nothing is sent (a 429's Retry-After)


@dataclass(slots=True)
class MailboxGates:
    """The gates by key (a lower-cased mailbox, or ``places`` for the directory). Bounded by
    the rooms: :meth:`forget` drops a removed room's gate."""

    concurrency: int = MAILBOX_CONCURRENCY
    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    _gates: dict[str, MailboxGate] = field(default_factory=dict)

    def gate(self, key: str) -> MailboxGate:
        key = key.lower()
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = MailboxGate(asyncio.Semaphore(self.concurrency))
        return gate

    def forget(self, key: str) -> None:
        self._gates.pop(key.lower(), None)

    def __len__(self) -> int:
        return len(self._gates)

    def throttled(self, key: str, seconds: float) -> None:
        """A 429 for ``key``: nothing more is sent to it for ``seconds``."""
        gate = self.gate(key)
        gate.not_before = max(gate.not_before, self.monotonic() + seconds)

    @asynccontextmanager
    async def slot(self, key: str, *, max_wait_s: float | None = None) -> AsyncIterator[None]:
        """Hold one of ``key``'s slots, after its ``Retry-After`` (if any) has passed. With
        ``max_wait_s``, a longer hold-back raises :class:`MailboxBusy` instead of waiting."""
        gate = self.gate(key)
        async with gate.slots:
            wait = gate.not_before - self.monotonic()
            if wait > 0:
                if max_wait_s is not None and wait > max_wait_s:
                    raise MailboxBusy(key, wait)
                await self.sleep(wait)
            yield
