"""The Microsoft identity platform's part: client-credentials tokens, OpenID discovery, JWKS.

``POST /{tenant}/oauth2/v2.0/token`` takes ``grant_type=client_credentials``, ``client_id``,
``scope=https://graph.microsoft.com/.default`` and either ``client_secret`` or a
``client_assertion`` (RFC 7523 JWT signed with the app's registered certificate: header
``x5t#S256`` (PS256) or ``x5t`` (RS256); claims ``aud`` = the token endpoint, ``iss`` = ``sub``
= the client id, ``exp``, ``nbf``). Errors are the platform's ``{"error", "error_description":
"AADSTS...", "error_codes": [...]}``.

Two clocks: the access token's lifetime runs on the simulated clock (tests advance it past
expiry), while a client assertion is checked against real time, because the client signs it
with its own (real) clock: a pinned simulated date must not reject msal's assertions.
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

GRAPH_RESOURCE = "https://graph.microsoft.com"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CLOCK_SKEW_S = 300


class IdentityError(Exception):
    def __init__(self, status: int, error: str, code: int, description: str) -> None:
        super().__init__(f"{error}: AADSTS{code}: {description}")
        self.status = status
        self.error = error
        self.code = code
        self.description = description

    def body(self) -> dict[str, Any]:
        return {
            "error": self.error,
            "error_description": f"AADSTS{self.code}: {self.description}",
            "error_codes": [self.code],
            "timestamp": datetime.now().strftime("%Y-%m-%d %H:%M:%SZ"),
            "trace_id": str(uuid.uuid4()),
            "correlation_id": str(uuid.uuid4()),
        }


@dataclass
class AppRegistration:
    """One app: its secret and/or certificates (PEM), its application permissions."""

    client_id: str
    client_secret: str | None = None
    certificates: list[bytes] = field(default_factory=list)
    roles: tuple[str, ...] = ("Calendars.ReadWrite", "Place.Read.All")
    denied_mailboxes: set[str] = field(default_factory=set)  # an application access policy

    def thumbprints(self) -> dict[str, x509.Certificate]:
        """``x5t`` and ``x5t#S256`` values (base64url, no padding) -> certificate."""
        out: dict[str, x509.Certificate] = {}
        for pem in self.certificates:
            cert = x509.load_pem_x509_certificate(pem)
            der = cert.public_bytes(serialization.Encoding.DER)
            for digest in (hashlib.sha1(der).digest(), hashlib.sha256(der).digest()):
                out[base64.urlsafe_b64encode(digest).rstrip(b"=").decode()] = cert
        return out


@dataclass(frozen=True)
class TokenClaims:
    client_id: str
    roles: tuple[str, ...]
    expires: float


class Identity:
    """Issues and checks access tokens for one tenant (RS256, a key made at start)."""

    def __init__(
        self,
        tenant_id: str,
        domains: tuple[str, ...],
        apps: list[AppRegistration],
        now: Callable[[], datetime],
        token_lifetime_s: int = 3599,
        real_time: Callable[[], float] = time.time,
    ) -> None:
        self.tenant_id = tenant_id
        self.domains = tuple(d.lower() for d in domains)
        self.apps = {a.client_id: a for a in apps}
        self.now = now
        self.token_lifetime_s = token_lifetime_s
        self.real_time = real_time
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = uuid.uuid4().hex[:16]
        self.revoked_before = 0.0
        self.issued = 0

    def knows(self, tenant: str) -> bool:
        return tenant == self.tenant_id or tenant.lower() in self.domains

    def check_tenant(self, tenant: str) -> None:
        if not self.knows(tenant):
            raise IdentityError(
                400,
                "invalid_request",
                90002,
                f"Tenant '{tenant}' not found. Check to make "
                "sure you have the correct tenant ID and are signing into the correct cloud.",
            )

    def jwks(self) -> dict[str, Any]:
        key = jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        key.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        return {"keys": [key]}

    # ---- the token endpoint ------------------------------------------------------------------

    def token(self, tenant: str, form: dict[str, str], endpoint_urls: set[str]) -> dict[str, Any]:
        """The answer to a token request (raises ``IdentityError``)."""
        self.check_tenant(tenant)
        if form.get("grant_type") != "client_credentials":
            raise IdentityError(
                400,
                "unsupported_grant_type",
                70003,
                "The app requested an unsupported grant "
                f"type '{form.get('grant_type', '')}'. The simulator grants client_credentials.",
            )
        client_id = form.get("client_id", "")
        app = self.apps.get(client_id)
        if app is None:
            raise IdentityError(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' "
                f"was not found in the directory '{tenant}'.",
            )
        scope = form.get("scope", "")
        if scope.split() != [f"{GRAPH_RESOURCE}/.default"]:
            raise IdentityError(
                400,
                "invalid_scope",
                1002012,
                f"The provided value for scope {scope} is not "
                "valid. Client credential flows must have a scope value with /.default suffixed "
                "to the resource identifier (application ID URI).",
            )
        if "client_assertion" in form:
            if form.get("client_assertion_type") != ASSERTION_TYPE:
                raise IdentityError(
                    400, "invalid_request", 700023, "Invalid client_assertion_type."
                )
            self._check_assertion(app, form["client_assertion"], endpoint_urls)
        elif "client_secret" in form:
            if app.client_secret is None or form["client_secret"] != app.client_secret:
                raise IdentityError(
                    401,
                    "invalid_client",
                    7000215,
                    "Invalid client secret provided. Ensure the "
                    f"secret being sent in the request is the client secret value, not the "
                    f"client secret ID, for a secret added to app '{client_id}'.",
                )
        else:
            raise IdentityError(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following "
                "parameter: 'client_assertion' or 'client_secret'.",
            )
        return self._issue(app)

    def _check_assertion(self, app: AppRegistration, assertion: str, urls: set[str]) -> None:
        def bad(code: int, why: str) -> IdentityError:
            return IdentityError(401, "invalid_client", code, f"Client assertion failed: {why}")

        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError as exc:
            raise bad(50027, f"invalid JWT token ({exc}).") from None
        # msal sends the thumbprint base64url-encoded with its padding; RFC 7515 without.
        thumbprint = str(header.get("x5t#S256") or header.get("x5t") or "").rstrip("=")
        cert = app.thumbprints().get(thumbprint)
        if cert is None:
            raise bad(
                700027,
                f"the certificate with identifier '{thumbprint}' is not registered "
                f"on application '{app.client_id}'.",
            )
        alg = header.get("alg")
        if alg not in ("RS256", "PS256"):
            raise bad(5002738, f"unsupported signing algorithm '{alg}'.")
        try:
            claims = jwt.decode(
                assertion,
                cert.public_key(),  # type: ignore[arg-type]
                algorithms=[str(alg)],
                audience=sorted(urls),
                options={
                    "require": ["aud", "iss", "sub", "exp"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidAudienceError:
            raise bad(700212, f"the audience must be the token endpoint ({min(urls)}).") from None
        except jwt.InvalidSignatureError:
            raise bad(700027, "signature validation failed.") from None
        except jwt.PyJWTError as exc:
            raise bad(50027, f"invalid JWT token ({exc}).") from None
        if claims.get("iss") != app.client_id or claims.get("sub") != app.client_id:
            raise bad(700021, "iss and sub must both be the client id.")
        real = self.real_time()
        if float(claims["exp"]) < real - CLOCK_SKEW_S:
            raise bad(700024, "the assertion is not within its valid time range (expired).")
        if float(claims.get("nbf", 0)) > real + CLOCK_SKEW_S:
            raise bad(700024, "the assertion is not within its valid time range (nbf).")

    def _issue(self, app: AppRegistration) -> dict[str, Any]:
        now = self.now().timestamp()
        lifetime = self.token_lifetime_s
        claims = {
            "aud": GRAPH_RESOURCE,
            "iss": f"https://sts.windows.net/{self.tenant_id}/",
            "iat": int(now),
            "nbf": int(now),
            "exp": int(now) + lifetime,
            "appid": app.client_id,
            "azp": app.client_id,
            "idtyp": "app",
            "oid": str(uuid.uuid5(uuid.NAMESPACE_URL, "sp:" + app.client_id)),
            "roles": list(app.roles),
            "tid": self.tenant_id,
            "ver": "1.0",
            "uti": uuid.uuid4().hex,
        }
        token = jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid})
        self.issued += 1
        return {
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": token,
        }

    # ---- checking a token on a Graph request -------------------------------------------------

    def verify(self, authorization: str | None) -> TokenClaims:
        """The claims of a ``Bearer`` token, or ``ValueError`` saying why it is refused."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        if not token.strip() and scheme.lower() in ("", "bearer"):
            raise ValueError("Access token is empty.")
        if scheme.lower() != "bearer":
            raise ValueError("Access token validation failure. Invalid audience.")
        try:
            claims = jwt.decode(
                token.strip(),
                self._key.public_key(),
                algorithms=["RS256"],
                audience=GRAPH_RESOURCE,
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )
        except jwt.PyJWTError:
            raise ValueError("Access token validation failure.") from None
        now = self.now().timestamp()
        if float(claims["exp"]) <= now or float(claims["iat"]) < self.revoked_before:
            raise ValueError("Lifetime validation failed, the token is expired.")
        return TokenClaims(str(claims["appid"]), tuple(claims.get("roles", ())), claims["exp"])

    def expire_all(self) -> None:
        """Every token issued so far is refused from now on (as after a key rollover)."""
        self.revoked_before = self.now().timestamp() + 1

    def discovery(self, base: str, tenant: str) -> dict[str, Any]:
        """``/{tenant}/v2.0/.well-known/openid-configuration`` (what msal reads)."""
        t = self.tenant_id
        return {
            "token_endpoint": f"{base}/{t}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "private_key_jwt",
                "client_secret_basic",
            ],
            "jwks_uri": f"{base}/{t}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{base}/{t}/v2.0",
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": f"{base}/oidc/userinfo",
            "authorization_endpoint": f"{base}/{t}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/{t}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{base}/{t}/oauth2/v2.0/logout",
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "tid", "ver"],
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
            "rbac_url": "https://pas.windows.net",
        }
