"""Typed Google errors. Every message names the room (or the directory), what went wrong, and
what a person can do about it (STYLE.md rule 10)."""

from __future__ import annotations

from edge_agent.calendars import errors as source_errors

__all__ = [
    "CalendarNotFound",
    "GoogleAuthError",
    "GoogleError",
    "GooglePermissionError",
    "GoogleRequestError",
    "GoogleUnavailable",
    "ResyncRequired",
]


class GoogleError(source_errors.CalendarSourceError):
    """Base: ``subject`` is the room id (or ``"directory"`` for the resource list)."""


class ResyncRequired(GoogleError, source_errors.ResyncRequired):
    """The sync token is dead (410 Gone, ``fullSyncRequired``): list the window in full again."""


class GoogleAuthError(GoogleError):
    """401 again after a fresh token: the key, the delegation or the subject is wrong."""


class GooglePermissionError(GoogleError):
    """403 other than a rate limit: the scope is not delegated, the subject is not an admin, or
    the room's calendar is not shared with the subject. ``scope`` names what to grant."""

    def __init__(self, subject: str, message: str, scope: str) -> None:
        super().__init__(subject, message)
        self.scope = scope


class CalendarNotFound(GoogleError):
    """404 on a room's calendar: no such resource calendar (or the subject cannot see it)."""


class GoogleUnavailable(GoogleError):
    """Rate-limited, 5xx or unreachable after every retry; the poller tries again next round."""


class GoogleRequestError(GoogleError):
    """Any other refusal (a 4xx the agent did not expect, a body too large, malformed JSON)."""
