"""The device's xAPI over WebSocket: a sans-I/O JSON-RPC protocol and an asyncio client.

One concern per module: ``protocol`` (JSON-RPC, sans-I/O), ``connect`` (TCP, TLS, pin,
upgrade, handshake errors), ``liveness`` and ``reconnect`` (pure deadline / delay machines),
``lean`` (every memory trim on websockets' internals), ``budget`` (the bound on notifications
the process holds, shared by a loop's links), ``client`` (the asyncio shell).
Imports nothing from the rest of the agent except the shared helpers (jsoncodec, backoff,
clock): the agent exports :attr:`XapiClient.counters` as metrics.
"""

from __future__ import annotations

from .client import LinkCounters, XapiClient
from .endpoint import DeviceEndpoint
from .errors import (
    AuthenticationFailed,
    CommandError,
    ConnectError,
    ConnectionLost,
    DeviceRebooting,
    FingerprintMismatch,
    HandshakeFailed,
    HttpsOnly,
    InternalError,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    NotConnected,
    NotReady,
    ParseError,
    PermissionDenied,
    RateLimited,
    RequestTimeout,
    TlsError,
    TooManySubscriptions,
    Unreachable,
    XapiError,
)
from .protocol import XapiProtocol

__all__ = [
    "AuthenticationFailed",
    "CommandError",
    "ConnectError",
    "ConnectionLost",
    "DeviceEndpoint",
    "DeviceRebooting",
    "FingerprintMismatch",
    "HandshakeFailed",
    "HttpsOnly",
    "InternalError",
    "InvalidParams",
    "InvalidRequest",
    "LinkCounters",
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
    "XapiClient",
    "XapiError",
    "XapiProtocol",
]
