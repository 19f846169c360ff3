"""The calendar backend behind a device: who says yes to a Book, Edit or Extend, and when.

``local``: the device's own calendar answers at once. ``hybrid`` (Exchange, Google behind a
Webex hybrid calendar): the answer comes ``confirm_delay_s`` later, or never within the
device's ``BookingTimeout`` (the device then reports ``Timeout``). ``decline_next`` makes the
backend refuse the next requests (a busy organizer calendar, a policy). Sans-I/O: ``submit``
and ``ready`` take ``now``; nothing here reads a clock.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from .model import CalendarMode, Outcome, PendingRequest


class Backend:
    """Outcomes and timing of the requests a device forwards to its calendar backend."""

    def __init__(
        self,
        mode: CalendarMode = "local",
        *,
        confirm_delay_s: float = 5.0,
        booking_timeout_s: int = 60,
    ) -> None:
        self.mode: CalendarMode = mode
        self.confirm_delay_s = confirm_delay_s
        self.booking_timeout_s = booking_timeout_s
        self.decline_next = 0  # refuse this many of the next requests
        self.pending: list[PendingRequest] = []

    def outcome(self, *, conflict: bool = False) -> Outcome:
        """How the backend will answer a request made now (``conflict``: the slot is taken)."""
        if self.decline_next > 0:
            self.decline_next -= 1
            return "decline"
        return "decline" if conflict else "accept"

    def submit(self, request: PendingRequest, now: datetime) -> bool:
        """Take a request; True when it is answered at once (local), False when it waits."""
        if self.mode == "local":
            request.due = now
            return True
        if self.confirm_delay_s > self.booking_timeout_s:
            request.outcome = "timeout"
            request.due = now + timedelta(seconds=self.booking_timeout_s)
        else:
            request.due = now + timedelta(seconds=self.confirm_delay_s)
        self.pending.append(request)
        return False

    def ready(self, now: datetime) -> list[PendingRequest]:
        """Remove and return the requests answered at or before ``now``, oldest first."""
        ready = sorted((p for p in self.pending if p.due <= now), key=lambda p: p.due)
        for request in ready:
            self.pending.remove(request)
        return ready

    def next_due(self) -> datetime | None:
        return min((p.due for p in self.pending), default=None)
