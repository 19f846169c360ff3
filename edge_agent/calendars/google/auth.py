"""Service-account tokens for Google, by the JWT grant with domain-wide delegation.

google-auth signs the grant (``iss`` = the service account, ``sub`` = the admin it impersonates,
``scope``, ``aud`` = the key file's ``token_uri``) and POSTs it to ``token_uri``; its requests
transport gets a :class:`~edge_agent.calendars.auth.PinnedCaSession`, so the configured
``ca_file`` wins over ``REQUESTS_CA_BUNDLE``. Loading the key file and the POST block, so both
run in a worker thread under a timeout.

The private key stays inside google-auth's signer: this module never reads, logs or copies it,
and its error messages carry google-auth's ``error`` code and description (the token endpoint's
words), never the key file's content. A relative ``service_account_file`` is read from
``$CREDENTIALS_DIRECTORY`` (systemd ``LoadCredential=``), so the key need not sit beside the
config.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import google.auth.exceptions
import structlog
from google.auth.transport.requests import Request
from google.oauth2 import service_account

from edge_agent.calendars.auth import RENEW_BEFORE_S, AuthError
from edge_agent.calendars.pinned import PinnedCaSession

__all__ = [
    "CALENDAR_SCOPE",
    "CALENDAR_WRITE_SCOPE",
    "DELEGATION_HINT",
    "DELEGATION_PAGE",
    "DIRECTORY_SCOPE",
    "SCOPES",
    "ServiceAccountTokens",
    "delegation_hint",
    "delegation_scopes",
    "resolve_key_path",
]

log = structlog.get_logger(__name__)

CALENDAR_SCOPE = "https://www.googleapis.com/auth/calendar.readonly"
DIRECTORY_SCOPE = "https://www.googleapis.com/auth/admin.directory.resource.calendar.readonly"
SCOPES = (CALENDAR_SCOPE, DIRECTORY_SCOPE)
"""What the poller's token asks for (reading rooms and their events)."""
CALENDAR_WRITE_SCOPE = "https://www.googleapis.com/auth/calendar"
"""What booking's token asks for, on its own token (events.insert and events.delete)."""
DELEGATION_PAGE = "Security > Access and data control > API controls > Domain-wide delegation"
"""Where the Google Admin console grants domain-wide delegation (admin.google.com)."""


def delegation_scopes(booking: bool) -> tuple[str, ...]:
    """The scopes the client ID must be delegated for what the agent will ask. Each token
    asks for its scopes by name and Google grants only scopes listed for the client ID, so the
    write scope does not stand in for ``calendar.readonly``: with booking, all three."""
    return (*SCOPES, CALENDAR_WRITE_SCOPE) if booking else SCOPES


def delegation_hint(booking: bool = False) -> str:
    """The Admin console step, naming every scope :func:`delegation_scopes` lists."""
    scopes = delegation_scopes(booking)
    which = "the three scopes (the last for booking)" if booking else "both scopes"
    return (
        f"in the Google Admin console ({DELEGATION_PAGE}) give the service account's client ID "
        f"{which}: {','.join(scopes)}"
    )


DELEGATION_HINT = delegation_hint(False)


def resolve_key_path(name: str, environ: Mapping[str, str] | None = None) -> Path:
    """An absolute ``name`` as is; a relative one inside ``$CREDENTIALS_DIRECTORY``.

    Raises AuthError when the name is relative and the variable is not set.
    """
    path = Path(name)
    if path.is_absolute():
        return path
    env = os.environ if environ is None else environ
    directory = env.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise AuthError(
            f"[google] service_account_file {name!r} is relative, so it is read from "
            "$CREDENTIALS_DIRECTORY, which is not set; give an absolute path, or load the key "
            "with systemd LoadCredential="
        )
    return Path(directory) / path


class ServiceAccountTokens:
    """:class:`~edge_agent.calendars.auth.TokenSource` for a service account acting as
    ``subject``. Safe to share between tasks: one refresh runs at a time."""

    def __init__(
        self,
        *,
        service_account_file: str,
        subject: str,
        scopes: Sequence[str] = SCOPES,
        ca_file: str | None = None,
        token_uri: str | None = None,
        timeout_s: float = 30.0,
        environ: Mapping[str, str] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if not subject or "@" not in subject:
            raise ValueError(
                f"[google] subject {subject!r} must be the e-mail address of the admin the "
                "service account impersonates"
            )
        self.key_path = resolve_key_path(service_account_file, environ)
        self.subject = subject
        self._scopes = list(scopes)
        self._ca_file = ca_file
        self._token_uri = token_uri  # None: the key file's token_uri
        self._timeout_s = timeout_s
        self._monotonic = monotonic
        # The wall clock google-auth stamps a token's expiry with (now + expires_in); the
        # agent's clock in production, pinned in tests.
        self._wall = wall
        self._credentials: service_account.Credentials | None = None
        self._token: str | None = None
        self._renew_at = 0.0
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:  # never the key
        return f"ServiceAccountTokens(key_path={str(self.key_path)!r}, subject={self.subject!r})"

    async def token(self, *, renew: bool = False) -> str:
        """A cached token until ``RENEW_BEFORE_S`` before its expiry. Cancel-safe: a cancelled
        call leaves the cache as it was (the worker thread finishes on its own)."""
        async with self._lock:
            if not renew and self._token is not None and self._monotonic() < self._renew_at:
                return self._token
            asked_at = self._monotonic()
            try:
                async with asyncio.timeout(self._timeout_s):
                    token, lifetime = await asyncio.to_thread(self._refresh)
            except TimeoutError as e:
                raise AuthError(
                    f"no answer from Google's token endpoint within {self._timeout_s:g}s; "
                    "check the key file's token_uri, the proxy and ca_file in [google]"
                ) from e
            self._token = token
            self._renew_at = asked_at + max(0.0, lifetime - RENEW_BEFORE_S)
            log.debug("google token acquired", expires_in=round(lifetime), renewed=renew)
            return token

    async def check_key(self) -> None:
        """Load and parse the key file (``check-config``); raises AuthError naming the file,
        never its content."""
        if self._credentials is None:
            async with asyncio.timeout(self._timeout_s):
                self._credentials = await asyncio.to_thread(self._load)

    # ------------------------------------------------------------------ worker thread

    def _load(self) -> service_account.Credentials:
        where = str(self.key_path)
        try:
            load = service_account.Credentials.from_service_account_file
            creds = load(  # type: ignore[no-untyped-call]
                where, scopes=self._scopes, subject=self.subject
            )
        except OSError as e:
            raise AuthError(
                f"cannot read the service account key {where}: {e.strerror or type(e).__name__}; "
                "check [google] service_account_file and the file's permissions"
            ) from None
        except (ValueError, KeyError, google.auth.exceptions.GoogleAuthError) as e:
            # Not str(e): a parse error of the key must not echo any of it.
            what = f"missing field {e}" if isinstance(e, KeyError) else type(e).__name__
            raise AuthError(
                f"{where} is not a usable service account JSON key ({what}); download a new "
                "JSON key for the service account in the Google Cloud console"
            ) from None
        if self._token_uri is not None:
            creds = creds.with_token_uri(self._token_uri)
        assert isinstance(creds, service_account.Credentials)
        return creds

    def _refresh(self) -> tuple[str, float]:
        if self._credentials is None:
            self._credentials = self._load()
        creds = self._credentials
        request = Request(session=PinnedCaSession(self._ca_file, self._timeout_s))
        try:
            creds.refresh(request)  # type: ignore[no-untyped-call]
        except google.auth.exceptions.RefreshError as e:
            detail = _refusal(e)
            hint = (
                DELEGATION_HINT
                if "unauthorized_client" in detail or "access_denied" in detail
                else f"check [google] subject ({self.subject}) and the service account key"
            )
            raise AuthError(
                f"Google refused the service account's token grant for {self.subject}: "
                f"{detail}; {hint}"
            ) from None
        except google.auth.exceptions.TransportError as e:
            raise AuthError(
                f"cannot reach Google's token endpoint: {_brief(e)}; check the key file's "
                "token_uri, the proxy and ca_file in [google]"
            ) from None
        if not creds.token:
            raise AuthError("Google's token endpoint answered without an access_token")
        lifetime = 3600.0
        if creds.expiry is not None:  # google-auth's expiry: naive UTC, now + expires_in
            now = self._wall().astimezone(UTC).replace(tzinfo=None)
            lifetime = max(0.0, (creds.expiry - now).total_seconds())
        return str(creds.token), lifetime


def _refusal(e: Exception) -> str:
    # RefreshError(message, response_body): the token endpoint's error and description.
    first = e.args[0] if e.args else type(e).__name__
    return str(first).split("\n")[0][:300]


def _brief(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e)[:300]}"
