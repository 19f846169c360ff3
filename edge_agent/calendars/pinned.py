"""A requests session that pins the CA, for the token libraries.

msal (Graph) and google-auth (Google) both run on ``requests``, and ``requests`` lets the
``REQUESTS_CA_BUNDLE`` (or ``CURL_CA_BUNDLE``) environment variable replace a session's
``verify`` -- only a ``verify`` passed with each request wins over it. The configured ``ca_file``
must win (an on-prem proxy's CA, or the tests' fake authority), so both libraries get a
:class:`PinnedCaSession` that passes it on every call. Its own module: only the token sources
import it, so ``requests`` is loaded only by an agent that has a calendar source.
"""

from __future__ import annotations

from typing import Any

import requests

__all__ = ["PinnedCaSession"]


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
