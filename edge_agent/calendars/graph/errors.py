"""Typed Graph errors. Every message names the room (or the directory), what went wrong, and
what a person can do about it (STYLE.md rule 10)."""

from __future__ import annotations

from edge_agent.calendars import errors as source_errors

__all__ = [
    "GraphAuthError",
    "GraphError",
    "GraphPermissionError",
    "GraphRequestError",
    "GraphUnavailable",
    "MailboxNotFound",
    "ResyncRequired",
]


class GraphError(source_errors.CalendarSourceError):
    """Base: ``subject`` is the room id (or ``"directory"`` for places)."""


class ResyncRequired(GraphError, source_errors.ResyncRequired):
    """The delta link is dead (410 Gone, ``SyncStateNotFound``): list the window in full again."""


class GraphAuthError(GraphError):
    """401 again after a fresh token: the app's credentials or consent are wrong."""


class GraphPermissionError(GraphError):
    """403: the app lacks a permission (``permission`` names it) or a policy excludes the room."""

    def __init__(self, subject: str, message: str, permission: str) -> None:
        super().__init__(subject, message)
        self.permission = permission


class MailboxNotFound(GraphError):
    """404 on a room's calendar: the mailbox does not exist or has no calendar."""


class GraphUnavailable(GraphError):
    """Throttled, 5xx or unreachable after every retry; the poller tries again next round."""


class GraphRequestError(GraphError):
    """Any other refusal (a 4xx the agent did not expect, a body too large, malformed JSON)."""
