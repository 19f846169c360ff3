"""What the calendar sources' token code shares: the token Protocol, the error, and a requests
session that pins the CA.

msal (Graph) and google-auth (Google) both run on ``requests``, and ``requests`` lets the
``REQUESTS_CA_BUNDLE`` (or ``CURL_CA_BUNDLE``) environment variable replace a session's
``verify`` -- only a ``verify`` passed with each request wins over it. The configured ``ca_file``
must win (an on-prem proxy's CA, or the tests' fake authority), so both libraries get a
:class:`PinnedCaSession` that passes it on every call.
"""

from __future__ import annotations

from typing import Any, Protocol

import requests

__all__ = ["RENEW_BEFORE_S", "AuthError", "PinnedCaSession", "TokenSource"]

RENEW_BEFORE_S = 300.0  # renew five minutes before expiry: a token must not die mid-round


class TokenSource(Protocol):
    async def token(self, *, renew: bool = False) -> str:
        """A valid bearer token; ``renew`` forces a fresh one (after a 401)."""
        ...


class AuthError(Exception):
    """The token endpoint refused or could not be reached; the message says what to do."""


class PinnedCaSession(requests.Session):
    """A requests session whose every request verifies against ``ca_file`` (or the system
    store when None), whatever ``REQUESTS_CA_BUNDLE`` says, and times out after ``timeout_s``."""

    def __init__(self, ca_file: str | None, timeout_s: float) -> None:
        super().__init__()
        self._verify: str | bool = ca_file if ca_file else True
        self._timeout_s = timeout_s

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        kwargs["verify"] = self._verify
        kwargs.setdefault("timeout", self._timeout_s)
        m = method.decode() if isinstance(method, bytes) else method
        return super().request(m, url, *args, **kwargs)
