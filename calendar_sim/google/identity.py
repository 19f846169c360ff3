"""Google's OAuth 2.0 token endpoint for service accounts (RFC 7523 JWT bearer grant).

The client posts ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`` and an
``assertion``: a JWT signed RS256 with the service account's private key (header ``kid`` =
``private_key_id``), claims ``iss`` = ``client_email``, ``scope`` (space separated), ``aud`` =
the key file's ``token_uri``, ``iat``/``exp`` at most an hour apart, and ``sub`` = the user
impersonated through domain-wide delegation. Delegation is granted per client id and scope
(the Admin console's "Domain-wide delegation" page); a scope not granted is 401
``unauthorized_client``. Like the Graph fake: the assertion is checked against real time (the
client signs with it), the access token's lifetime runs on the simulated clock.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
CALENDAR_SCOPES = (
    "https://www.googleapis.com/auth/calendar",
    "https://www.googleapis.com/auth/calendar.readonly",
    "https://www.googleapis.com/auth/calendar.events",
    "https://www.googleapis.com/auth/calendar.events.readonly",
)
CALENDAR_WRITE = (
    "https://www.googleapis.com/auth/calendar",
    "https://www.googleapis.com/auth/calendar.events",
)
DIRECTORY_SCOPES = (
    "https://www.googleapis.com/auth/admin.directory.resource.calendar",
    "https://www.googleapis.com/auth/admin.directory.resource.calendar.readonly",
)
MAX_TOKENS = 100_000
CLOCK_SKEW_S = 300


class OAuthError(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.status = status
        self.error = error
        self.description = description

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


@dataclass
class ServiceAccount:
    client_email: str
    client_id: str
    private_key_id: str
    key: rsa.RSAPrivateKey
    delegated_scopes: set[str] = field(default_factory=set)

    def key_file(self, token_uri: str, project: str = "graph-sim") -> dict[str, Any]:
        """The JSON key file Google issues (``type: service_account``)."""
        pem = self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        return {
            "type": "service_account",
            "project_id": project,
            "private_key_id": self.private_key_id,
            "private_key": pem,
            "client_email": self.client_email,
            "client_id": self.client_id,
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": "",
            "universe_domain": "googleapis.com",
        }


@dataclass(frozen=True)
class Grant:
    scopes: frozenset[str]
    subject: str | None
    expires: float


class GoogleIdentity:
    def __init__(
        self,
        account: ServiceAccount,
        admins: set[str],
        now: Callable[[], datetime],
        token_lifetime_s: int = 3599,
        real_time: Callable[[], float] = time.time,
    ) -> None:
        self.account = account
        self.admins = {a.lower() for a in admins}
        self.now = now
        self.token_lifetime_s = token_lifetime_s
        self.real_time = real_time
        self._grants: OrderedDict[str, Grant] = OrderedDict()
        self.issued = 0

    def token(self, form: dict[str, str], token_uri: str) -> dict[str, Any]:
        if form.get("grant_type") != JWT_GRANT:
            raise OAuthError(
                400, "unsupported_grant_type", f"Invalid grant_type: {form.get('grant_type', '')}"
            )
        assertion = form.get("assertion", "")
        acct = self.account
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(
                assertion,
                acct.key.public_key(),
                algorithms=["RS256"],
                # Google's docs: "this value is always https://oauth2.googleapis.com/token"
                # (google-auth sends just that, whatever the key's token_uri).
                audience=[token_uri, GOOGLE_TOKEN_AUDIENCE],
                options={
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                    "require": ["iss", "aud", "exp", "iat"],
                },
            )
        except jwt.InvalidAudienceError:
            raise OAuthError(
                400, "invalid_grant", f"Invalid JWT: aud must be {GOOGLE_TOKEN_AUDIENCE}"
            ) from None
        except jwt.PyJWTError:
            raise OAuthError(400, "invalid_grant", "Invalid JWT Signature.") from None
        if header.get("kid") not in (None, acct.private_key_id):
            raise OAuthError(400, "invalid_grant", "Invalid JWT Signature.")
        if claims["iss"] != acct.client_email:
            raise OAuthError(401, "invalid_client", "The OAuth client was not found.")
        iat, exp, real = float(claims["iat"]), float(claims["exp"]), self.real_time()
        if exp - iat > 3600 or exp < real - CLOCK_SKEW_S or iat > real + CLOCK_SKEW_S:
            raise OAuthError(
                400,
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 "
                "minutes) and in a reasonable timeframe. Check your iat and exp values in the "
                "JWT claim.",
            )
        scopes = frozenset(str(claims.get("scope", "")).split())
        if not scopes:
            raise OAuthError(400, "invalid_scope", "Empty or missing scope not allowed.")
        subject = claims.get("sub")
        delegated = str(subject).lower() in self.admins and scopes <= acct.delegated_scopes
        if subject is not None and not delegated:
            raise OAuthError(
                401,
                "unauthorized_client",
                "Client is unauthorized to retrieve access "
                "tokens using this method, or client not authorized for any of the scopes "
                "requested.",
            )
        token = "ya29.sim-" + secrets.token_urlsafe(32)
        expires = self.now().timestamp() + self.token_lifetime_s
        self._grants[token] = Grant(scopes, None if subject is None else str(subject), expires)
        while len(self._grants) > MAX_TOKENS:
            self._grants.popitem(last=False)
        self.issued += 1
        return {"access_token": token, "expires_in": self.token_lifetime_s, "token_type": "Bearer"}

    def verify(self, authorization: str | None, needed: tuple[str, ...]) -> Grant:
        """The grant behind a bearer token; ``PermissionError`` for a missing scope,
        ``ValueError`` for a token that is absent, unknown or expired."""
        scheme, _, token = (authorization or "").partition(" ")
        grant = self._grants.get(token.strip()) if scheme.lower() == "bearer" else None
        if grant is None or grant.expires <= self.now().timestamp():
            raise ValueError("Request had invalid authentication credentials.")
        if not any(s in grant.scopes for s in needed):
            raise PermissionError("Request had insufficient authentication scopes.")
        return grant

    def expire_all(self) -> None:
        self._grants.clear()
