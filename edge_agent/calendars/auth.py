"""What the calendar sources' token code shares: the token Protocol and the error.

The requests session that pins the CA for msal and google-auth lives in
:mod:`edge_agent.calendars.pinned`, apart: only the token sources import ``requests``, so an
agent without a calendar source does not load it (~3.4 MiB) through the booking modules.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["RENEW_BEFORE_S", "AuthError", "TokenSource"]

RENEW_BEFORE_S = 300.0  # renew five minutes before expiry: a token must not die mid-round


class TokenSource(Protocol):
    async def token(self, *, renew: bool = False) -> str:
        """A valid bearer token; ``renew`` forces a fresh one (after a 401)."""
        ...


class AuthError(Exception):
    """The token endpoint refused or could not be reached; the message says what to do."""
