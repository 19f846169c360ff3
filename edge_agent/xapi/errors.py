"""Typed errors of the device link.

Two families: errors the device answered to one request (:class:`XapiError` subclasses with a
JSON-RPC ``code``), and connection-level errors (:class:`ConnectError` for a failed opening
handshake, :class:`ConnectionLost` / :class:`RequestTimeout` for a request that got no answer).
Messages name the device, say what went wrong and what to do next (STYLE.md rule 10).
"""

from __future__ import annotations

from typing import Any, ClassVar


class XapiError(Exception):
    """Base of every error raised by :mod:`edge_agent.xapi`.

    ``code`` is the JSON-RPC error code for errors the device answered, else ``None``.
    ``kind`` is the label used on the ``edge_agent_device_errors`` metric.
    """

    code: int | None = None
    kind: ClassVar[str] = "xapi"

    def __init__(
        self,
        message: str,
        *,
        device: str | None = None,
        code: int | None = None,
        data: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.device = device
        if code is not None:
            self.code = code
        self.data = data


# --- answered by the device (JSON-RPC error objects) ----------------------------------------


class ParseError(XapiError):
    code = -32700
    kind = "rpc"


class InvalidRequest(XapiError):
    code = -32600
    kind = "rpc"


class MethodNotFound(XapiError):
    code = -32601
    kind = "rpc"


class InvalidParams(XapiError):
    code = -32602
    kind = "rpc"


class InternalError(XapiError):
    code = -32603
    kind = "rpc"


class CommandError(XapiError):
    """The command ran and failed (code 1); ``cause`` is the device's ``data.Cause``."""

    code = 1
    kind = "command"

    def __init__(
        self,
        message: str,
        *,
        device: str | None = None,
        code: int | None = None,
        data: Any = None,
    ) -> None:
        super().__init__(message, device=device, code=code, data=data)
        cause = data.get("Cause") if isinstance(data, dict) else None
        self.cause: str | None = None if cause is None else str(cause)


class PermissionDenied(XapiError):
    code = -31999
    kind = "permission"


class TooManySubscriptions(XapiError):
    code = -31998
    kind = "subscriptions"


class NotReady(XapiError):
    """The device is still starting up (answered after a reboot); retry in a few seconds."""

    code = -31997
    kind = "not_ready"


ERROR_CODES: dict[int, type[XapiError]] = {
    cls.code: cls
    for cls in (
        ParseError,
        InvalidRequest,
        MethodNotFound,
        InvalidParams,
        InternalError,
        CommandError,
        PermissionDenied,
        TooManySubscriptions,
        NotReady,
    )
}


def error_for_code(
    code: int, message: str, *, device: str | None = None, data: Any = None
) -> XapiError:
    """The typed exception for a JSON-RPC error ``code`` (plain :class:`XapiError` if unknown)."""
    cls = ERROR_CODES.get(code, XapiError)
    return cls(message, device=device, code=code, data=data)


# --- the link ---------------------------------------------------------------------------------


class ConnectionLost(XapiError):
    """The link went down (or was not up) before the answer came; the request was not retried.

    A command in flight may or may not have run on the device: never replay a non-idempotent
    one (``Bookings Book``) on this error; re-list instead.
    """

    kind = "lost"


class NotConnected(ConnectionLost):
    """A request was made while the device is not connected."""

    kind = "not_connected"


class RequestTimeout(XapiError):
    """No answer inside the request timeout (the link may be fine; the device may be slow)."""

    kind = "timeout"


# --- the opening handshake --------------------------------------------------------------------


class ConnectError(XapiError):
    """The connection could not be opened. ``retry_after`` is a server hint in seconds."""

    kind = "connect"

    def __init__(
        self, message: str, *, device: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, device=device)
        self.retry_after = retry_after


class AuthenticationFailed(ConnectError):
    """HTTP 403: the device refused the credentials. Retried only slowly (account lock-out)."""

    kind = "auth"


class HttpsOnly(ConnectError):
    """HTTP 401 on ``ws://``: the device accepts HTTPS only."""

    kind = "https_only"


class DeviceRebooting(ConnectError):
    """HTTP 502: the device is rebooting."""

    kind = "rebooting"


class RateLimited(ConnectError):
    """HTTP 503: the device limits new connections."""

    kind = "rate_limited"


class TlsError(ConnectError):
    """The TLS handshake or the certificate verification failed."""

    kind = "tls"


class FingerprintMismatch(TlsError):
    """The certificate's SHA-256 fingerprint is not the pinned one."""

    kind = "fingerprint"

    def __init__(
        self, message: str, *, device: str | None = None, expected: str = "", actual: str = ""
    ) -> None:
        super().__init__(message, device=device)
        self.expected = expected
        self.actual = actual


class Unreachable(ConnectError):
    """No TCP connection: refused, timed out, or the name does not resolve."""

    kind = "unreachable"


class HandshakeFailed(ConnectError):
    """The WebSocket upgrade failed for another reason (unexpected HTTP status, bad reply)."""

    kind = "handshake"


__all__ = [
    "AuthenticationFailed",
    "CommandError",
    "ConnectError",
    "ConnectionLost",
    "DeviceRebooting",
    "ERROR_CODES",
    "FingerprintMismatch",
    "HandshakeFailed",
    "HttpsOnly",
    "InternalError",
    "InvalidParams",
    "InvalidRequest",
    "MethodNotFound",
    "NotConnected",
    "NotReady",
    "ParseError",
    "PermissionDenied",
    "RateLimited",
    "RequestTimeout",
    "TlsError",
    "TooManySubscriptions",
    "Unreachable",
    "XapiError",
    "error_for_code",
]
