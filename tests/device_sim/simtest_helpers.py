"""Helpers shared by the device_sim tests (a plain module, not a conftest: tests/ has no packages
named like the `device_sim` package, so this directory must not become one)."""

from __future__ import annotations

import base64
import ssl
from datetime import UTC, datetime
from typing import Any

import orjson

from device_sim.core import DeviceCore, DeviceSettings, Session
from device_sim.rpc import Outgoing

T0 = datetime(2026, 11, 23, 7, 30, tzinfo=UTC)  # a Monday; 08:30 in Oslo
# Where a fleet's simulated clock starts in these tests, never the wall clock: the same Monday,
# 07:00 in Oslo, before the generated office day (08:00-18:00) fills a room.
SIM_START = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)


def make_core(now: datetime = T0, **settings: Any) -> DeviceCore:
    return DeviceCore(DeviceSettings(**settings), now)


class Client:
    """A sans-I/O client of a DeviceCore: send requests, read what came back."""

    def __init__(self, core: DeviceCore, role: str = "Admin") -> None:
        self.core = core
        self.session: Session = core.open_session(role)
        self._id = 0

    def raw(self, text: str | bytes, now: datetime = T0) -> list[dict[str, Any]]:
        self.core.receive(self.session, text, now)
        return self.frames()

    def frames(self) -> list[dict[str, Any]]:
        return [f.message for f in self.session.take()]

    def call(self, method: str, now: datetime = T0, **params: Any) -> dict[str, Any]:
        """Send one request; return its reply (other frames stay in ``self.pending``)."""
        self._id += 1
        doc = {"jsonrpc": "2.0", "id": self._id, "method": method, "params": params}
        frames = self.raw(orjson.dumps(doc), now)
        replies = [f for f in frames if f.get("id") == self._id]
        assert len(replies) == 1, frames
        self.pending = [f for f in frames if f.get("id") != self._id]
        return replies[0]

    def result(self, method: str, now: datetime = T0, **params: Any) -> Any:
        reply = self.call(method, now, **params)
        assert "result" in reply, reply
        return reply["result"]

    def command(self, path: str, now: datetime = T0, **params: Any) -> Any:
        return self.result("xCommand/" + path.replace(" ", "/"), now, **params)

    def subscribe(self, query: list[str], now: datetime = T0, notify: bool = False) -> int:
        sub_id: int = self.result(
            "xFeedback/Subscribe", now, Query=query, NotifyCurrentValue=notify
        )["Id"]
        return sub_id


def events(frames: list[dict[str, Any]] | list[Outgoing]) -> list[tuple[str, dict[str, Any]]]:
    """(name, fields) of every Bookings event notification among ``frames``."""
    out = []
    for frame in frames:
        msg = frame.message if isinstance(frame, Outgoing) else frame
        if msg.get("method") != "xFeedback/Event":
            continue
        bookings = msg["params"].get("Event", {}).get("Bookings", {})
        for name, fields in bookings.items():
            out.append((name, fields))
    return out


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def subprotocol(user: str, password: str) -> str:
    token = base64.urlsafe_b64encode(f"{user}:{password}".encode()).decode().rstrip("=")
    return "auth-" + token


def insecure_ssl() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx
