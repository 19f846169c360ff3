"""What every calendar source raises, so the one poller handles Graph and Google alike.

Each source has its own subclasses (``graph/errors.py``, ``google/errors.py``) whose messages
name the room (or the directory), what went wrong and what a person can do about it (STYLE.md
rule 10); the poller only needs the two bases below.
"""

from __future__ import annotations

__all__ = ["CalendarSourceError", "ResyncRequired"]


class CalendarSourceError(Exception):
    """Base: ``subject`` is the room id (or ``"directory"`` for the room list)."""

    def __init__(self, subject: str, message: str) -> None:
        super().__init__(f"{subject}: {message}")
        self.subject = subject


class ResyncRequired(CalendarSourceError):
    """The source lost the round (Graph 410 ``SyncStateNotFound``, Google 410
    ``fullSyncRequired``): list the window in full again and sweep what it no longer carries."""
