"""JSON-RPC 2.0 as a RoomOS device speaks it: error codes, replies, notifications (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
COMMAND_ERROR = 1
PERMISSION_DENIED = -31999
TOO_MANY_SUBSCRIPTIONS = -31998
NOT_READY = -31997

MESSAGES = {
    PARSE_ERROR: "Parse error",
    INVALID_REQUEST: "Invalid Request",
    METHOD_NOT_FOUND: "Method not found",
    INVALID_PARAMS: "Invalid params",
    INTERNAL_ERROR: "Internal error",
    COMMAND_ERROR: "Command returned an error.",
    PERMISSION_DENIED: "Permission denied",
    TOO_MANY_SUBSCRIPTIONS: "Too many subscriptions",
    NOT_READY: "Not ready",
}


class RpcError(Exception):
    """A JSON-RPC error to answer with."""

    def __init__(self, code: int, detail: str = "", data: dict[str, Any] | None = None) -> None:
        super().__init__(detail or MESSAGES.get(code, "Error"))
        self.code = code
        self.detail = detail
        self.data = data

    def to_error(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": MESSAGES.get(self.code, "Error")}
        if self.data is not None:
            error["data"] = self.data
        elif self.detail:
            error["data"] = {"Reason": self.detail}
        return error


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One frame for a connection: a reply to a request, or a notification."""

    message: dict[str, Any]
    reply: bool

    def encode(self) -> str:
        return orjson.dumps(self.message).decode()


def result_reply(request_id: Any, result: Any) -> Outgoing:
    return Outgoing({"jsonrpc": "2.0", "id": request_id, "result": result}, reply=True)


def error_reply(request_id: Any, error: RpcError) -> Outgoing:
    return Outgoing({"jsonrpc": "2.0", "id": request_id, "error": error.to_error()}, reply=True)


def notification(subscription_id: int, payload: dict[str, Any]) -> Outgoing:
    """``xFeedback/Event``: ``payload`` is nested from its root ("Event", "Status"...)."""
    params = {"Id": subscription_id, **payload}
    return Outgoing({"jsonrpc": "2.0", "method": "xFeedback/Event", "params": params}, reply=False)
