"""The local API's protection: who may call it, from which page, with what body.

An aiohttp middleware (:meth:`ApiGuard.middleware`) that runs before every route, in this order,
each refusal answering at once with a JSON ``{"error": ...}``:

1. **Host** (every method): the ``Host`` header must name the listen address, a loopback name
   when the API listens on loopback, or an ``[api] allowed_hosts`` entry; else **421 Misdirected
   Request**. DNS rebinding points an attacker's name at 127.0.0.1: the browser then sends the
   attacker's name as ``Host``, never ours.
2. **Origin** (every method): a browser names the page that made the request; any ``Origin``
   other than this API's own (``null`` included), or ``Sec-Fetch-Site: cross-site|same-site``,
   is refused with **403**. No CORS header is ever sent, so no preflight is ever granted.
3. **Bearer token**: every state-changing request (any method but GET, HEAD, OPTIONS) needs
   ``Authorization: Bearer <token>``; read requests too when ``read_requires_token`` or when the
   API does not listen on loopback. Missing or wrong: **401** with
   ``WWW-Authenticate: Bearer realm="edge-agent"``. Each configured token (several during a
   rotation) is compared with :func:`hmac.compare_digest`, all of them every time.
4. **Body** of a state-changing request: ``Content-Type: application/json`` only (**415**; a
   bodiless DELETE needs none), at most :data:`MAX_BODY_BYTES` (**413**, from the declared length
   and, for chunked bodies, from aiohttp's ``client_max_size``).

A cross-site HTML form can only send ``application/x-www-form-urlencoded``, ``multipart/form-data``
or ``text/plain``, carries a foreign ``Origin`` and no ``Authorization``: it fails three ways.
"""

from __future__ import annotations

import hmac
import ipaddress
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path

import structlog
from aiohttp import web

from edge_agent import jsoncodec
from edge_agent.config import ApiConfig, parse_listen

log = structlog.get_logger(__name__)

__all__ = ["MAX_BODY_BYTES", "REALM", "ApiGuard", "server_ssl_context"]

MAX_BODY_BYTES = 128 * 1024
"""The largest request body taken (a dead-letter replay of 10,000 ids fits)."""
REALM = "edge-agent"
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _refusal(status: int, error: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=jsoncodec.dumpb({"error": error}),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The host part of a ``Host`` header (port and IPv6 brackets removed), lower-cased."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    if header.count(":") == 1:
        return header.split(":", 1)[0]
    return header


class ApiGuard:
    """The protection rules for one API (see the module docstring).

    Args:
        listen: ``[api] listen``.
        tokens: the accepted bearer tokens (empty: every state-changing request is refused).
        read_requires_token: read routes need a token on loopback too.
        allowed_hosts: extra ``Host`` names (lower-case, no port).
        tls: the API is served over HTTPS (the accepted ``Origin`` scheme).
        self_authenticating: path prefixes whose routes check their callers themselves (the
            Graph change notifications: ``clientState``, validation tokens as ``text/plain``):
            no bearer token or JSON rule there; the Host and Origin rules still hold.
    """

    def __init__(
        self,
        listen: str,
        tokens: Sequence[str] = (),
        *,
        read_requires_token: bool = False,
        allowed_hosts: Iterable[str] = (),
        tls: bool = False,
        self_authenticating: Iterable[str] = (),
    ) -> None:
        host, _ = parse_listen(listen)
        self.loopback = _is_loopback(host)
        self._tokens = tuple(t.encode() for t in tokens if t)
        self.read_requires_token = read_requires_token or not self.loopback
        names = {h.strip("[]").lower() for h in allowed_hosts}
        if host not in ("0.0.0.0", "::"):
            names.add(host.lower())
        if self.loopback:
            names.update(_LOOPBACK_NAMES)
        self.hosts = frozenset(names)
        self._scheme = "https" if tls else "http"
        self._self_authenticating = tuple(self_authenticating)

    @classmethod
    def from_config(cls, api: ApiConfig, tokens: Sequence[str]) -> ApiGuard:
        return cls(
            api.listen,
            tokens,
            read_requires_token=api.read_requires_token,
            allowed_hosts=api.allowed_hosts,
            tls=api.cert_file is not None,
        )

    # -- the checks ----------------------------------------------------------------------------

    def token_ok(self, authorization: str | None) -> bool:
        """Whether ``Authorization`` carries one of the tokens (constant time per token)."""
        if not authorization:
            return False
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return False
        given = value.strip().encode()
        ok = False
        for token in self._tokens:
            # No early exit: how long the check takes says nothing about which token matched.
            ok |= hmac.compare_digest(given, token)
        return ok

    def _origin_ok(self, origin: str, host: str) -> bool:
        scheme, sep, rest = origin.partition("://")
        if not sep or scheme.lower() != self._scheme:
            return False
        return host_name(rest) == host_name(host) and host_name(rest) in self.hosts

    def refusal(self, request: web.Request) -> web.Response | None:
        """The answer refusing ``request``, or ``None`` when it may go on to its route."""
        host = request.headers.get("Host", "")
        if host_name(host) not in self.hosts:
            return _refusal(
                421,
                f"Host {host!r} is not this API's address; add the name to [api] allowed_hosts "
                "if clients reach the agent by it",
            )
        origin = request.headers.get("Origin")
        if origin is not None and not self._origin_ok(origin, host):
            return _refusal(403, f"cross-origin requests are refused (Origin {origin!r})")
        if request.headers.get("Sec-Fetch-Site", "").lower() in ("cross-site", "same-site"):
            return _refusal(403, "cross-site requests are refused (Sec-Fetch-Site)")
        if self._self_authenticating and request.path.startswith(self._self_authenticating):
            return None
        changes_state = request.method not in _READ_METHODS
        if changes_state or self.read_requires_token:
            authorization = request.headers.get("Authorization")
            if not self.token_ok(authorization):
                challenge = f'Bearer realm="{REALM}"'
                if authorization:
                    challenge += ', error="invalid_token"'
                what = "a wrong token" if authorization else "no token"
                return _refusal(
                    401,
                    f"this route needs Authorization: Bearer <token> ([api] token_env or "
                    f"token_file); the request had {what}",
                    {"WWW-Authenticate": challenge},
                )
        if changes_state:
            length = request.content_length
            has_body = (length or 0) > 0 or "Transfer-Encoding" in request.headers
            if (has_body or request.method == "POST") and request.content_type != (
                "application/json"
            ):
                return _refusal(415, "send a JSON body (Content-Type: application/json)")
            if length is not None and length > MAX_BODY_BYTES:
                return _refusal(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
        return None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        refused = self.refusal(request)
        if refused is not None:
            log.info(
                "local API request refused",
                method=request.method,
                path=request.path,
                status=refused.status,
                peer=request.remote,
            )
            return refused
        return await handler(request)


def server_ssl_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """The API's TLS context (``[api] cert_file`` / ``key_file``); TLS 1.2 at least."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_file), str(key_file))
    return ctx
