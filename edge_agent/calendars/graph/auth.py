"""Client-credentials tokens for Microsoft Graph, from msal, cached and renewed before expiry.

msal runs on ``requests``; it gets a :class:`~edge_agent.calendars.auth.PinnedCaSession` as its
``http_client``, so the configured ``ca_file`` wins over ``REQUESTS_CA_BUNDLE``.

msal blocks (it does the OpenID discovery in its constructor and the token POST in
``acquire_token_for_client``), so both run in a worker thread, each under a timeout. A token is
never logged; msal's errors are reduced to their ``error`` code and description, which carry no
secret.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msal
import requests
import structlog

from edge_agent.calendars.auth import RENEW_BEFORE_S, AuthError, TokenSource
from edge_agent.calendars.pinned import PinnedCaSession

__all__ = [
    "GRAPH_SCOPE",
    "AuthError",
    "CertificateCredential",
    "ClientCredentials",
    "PinnedCaSession",
    "TokenSource",
]

log = structlog.get_logger(__name__)

GRAPH_SCOPE = "https://graph.microsoft.com/.default"


@dataclass(frozen=True, slots=True)
class CertificateCredential:
    """An uploaded certificate: its SHA-1 thumbprint (hex, what Entra ID shows), the PEM private
    key and the PEM certificate.

    With the certificate, msal >= 1.35 computes its SHA-256 thumbprint and signs the client
    assertion PS256 with ``x5t#S256``, what the Microsoft identity platform specifies ("alg:
    Should be PS256 ... x5t#S256: Base64url-encoded SHA-256 thumbprint", certificate
    credentials). The SHA-1 ``thumbprint`` (RS256 + ``x5t``) is what msal calls "Deprecated
    because it uses SHA-1 thumbprint"; it is sent only to an older msal, or without a
    certificate.
    """

    thumbprint: str
    private_key_pem: str
    passphrase: str | None = None
    certificate_pem: str | None = None


class ClientCredentials:
    """:class:`TokenSource` for an app registration (``tenant_id``, ``client_id``) with a client
    secret or a certificate. Safe to share between tasks: one acquisition runs at a time."""

    def __init__(
        self,
        *,
        tenant_id: str,
        client_id: str,
        secret: str | None = None,
        certificate: CertificateCredential | None = None,
        authority_url: str = "https://login.microsoftonline.com",
        ca_file: str | None = None,
        scope: str = GRAPH_SCOPE,
        timeout_s: float = 30.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if (secret is None) == (certificate is None):
            raise ValueError("[microsoft] needs exactly one of a client secret or a certificate")
        self._tenant_id = tenant_id
        self._client_id = client_id
        self._credential: str | dict[str, str] = (
            secret if secret is not None else _cert_dict(certificate)  # type: ignore[arg-type]
        )
        self.authority = f"{authority_url.rstrip('/')}/{tenant_id}"
        self._ca_file = ca_file
        self._scope = scope
        self._timeout_s = timeout_s
        self._monotonic = monotonic
        self._app: msal.ConfidentialClientApplication | None = None
        self._token: str | None = None
        self._renew_at = 0.0
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:  # never the credential
        return f"ClientCredentials(authority={self.authority!r}, client_id={self._client_id!r})"

    async def token(self, *, renew: bool = False) -> str:
        """A cached token until ``RENEW_BEFORE_S`` before its expiry. Cancel-safe: a cancelled
        call leaves the cache as it was (the worker thread finishes on its own)."""
        async with self._lock:
            if not renew and self._token is not None and self._monotonic() < self._renew_at:
                return self._token
            try:
                async with asyncio.timeout(self._timeout_s):
                    result = await asyncio.to_thread(self._acquire)
            except TimeoutError as e:
                raise AuthError(
                    f"no answer from {self.authority} within {self._timeout_s:g}s; "
                    "check authority_url, the proxy and ca_file in [microsoft]"
                ) from e
            if "access_token" not in result:
                code = result.get("error", "unknown_error")
                desc = str(result.get("error_description", "")).split("\r\n")[0][:300]
                raise AuthError(
                    f"{self.authority} refused the client credentials of app {self._client_id}: "
                    f"{code}: {desc}; check tenant_id, client_id and the secret or certificate "
                    "in [microsoft]"
                )
            expires_in = float(result.get("expires_in", 3600))
            self._token = str(result["access_token"])
            self._renew_at = self._monotonic() + max(0.0, expires_in - RENEW_BEFORE_S)
            log.debug("graph token acquired", expires_in=expires_in, renewed=renew)
            return self._token

    # ------------------------------------------------------------------ worker thread

    def _acquire(self) -> dict[str, Any]:
        try:
            if self._app is None:
                self._app = msal.ConfidentialClientApplication(
                    self._client_id,
                    client_credential=self._credential,
                    authority=self.authority,
                    # The Microsoft instance-discovery call goes to login.microsoftonline.com
                    # whatever authority_url says: sovereign clouds and proxies must not need it.
                    instance_discovery=False,
                    http_client=PinnedCaSession(self._ca_file, self._timeout_s),
                    timeout=self._timeout_s,
                )
            # This class's cache (on the injected clock) decides when to renew; msal's own
            # cache would hand back the token being replaced, so it is emptied first.
            self._app.remove_tokens_for_client()
            result = self._app.acquire_token_for_client(scopes=[self._scope])
        except (requests.RequestException, ValueError) as e:
            # ValueError: msal's OpenID discovery failed (unknown tenant, a non-JSON answer).
            raise AuthError(
                f"cannot reach the identity platform at {self.authority}: {_brief(e)}; "
                "check authority_url, tenant_id and ca_file in [microsoft]"
            ) from e
        return dict(result) if isinstance(result, dict) else {"error": "no_result"}


def _msal_computes_sha256(version: str) -> bool:
    """msal 1.35.0 made ``thumbprint`` optional: with a ``public_certificate`` and no
    ``thumbprint`` it computes the SHA-256 one (PS256 + ``x5t#S256``)."""
    parts = version.split(".")
    try:
        return (int(parts[0]), int(parts[1])) >= (1, 35)
    except (IndexError, ValueError):
        return False


def _cert_dict(
    cert: CertificateCredential, msal_version: str = msal.__version__
) -> dict[str, str]:
    d = {"private_key": cert.private_key_pem}
    if cert.certificate_pem is not None:
        # Also sent as the x5c header (only Subject Name/Issuer apps use it).
        d["public_certificate"] = cert.certificate_pem
    if cert.certificate_pem is None or not _msal_computes_sha256(msal_version):
        d["thumbprint"] = cert.thumbprint  # SHA-1: RS256 + x5t, msal's legacy path
    if cert.passphrase:
        d["passphrase"] = cert.passphrase
    return d


def _brief(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e)[:300]}"
