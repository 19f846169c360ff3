"""Where a device is and how to trust and log in to it."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

_HEX64 = re.compile(r"[0-9a-f]{64}")


def normalize_fingerprint(value: str) -> str:
    """``"AB:CD:..."`` / ``"abcd..."`` -> 64 lower-case hex digits; ``ValueError`` otherwise."""
    fp = re.sub(r"[\s:]", "", value).lower()
    if not _HEX64.fullmatch(fp):
        raise ValueError(
            "a certificate fingerprint is the SHA-256 of the DER certificate: 64 hex digits, "
            f"colons optional (got {len(fp)} characters)"
        )
    return fp


def format_fingerprint(hex_digest: str) -> str:
    """64 hex digits -> ``"AB:CD:..."`` (how browsers and ``openssl x509 -fingerprint`` show it)."""
    return ":".join(hex_digest[i : i + 2] for i in range(0, len(hex_digest), 2)).upper()


@dataclass(frozen=True, slots=True)
class DeviceEndpoint:
    """One device: its address, credentials and how its certificate is trusted.

    Give ``url`` (``wss://HOST[:PORT]/ws`` or ``ws://...``) or ``host`` (then ``wss://HOST/ws``).
    Trust, in order: ``fingerprint`` (SHA-256 pin: the pin is the trust, host name not checked),
    ``insecure=True`` (no verification at all, logged as a warning at every connect), else the
    system CAs or ``ca_file`` with host name checking.
    """

    device_id: str
    url: str | None = None
    host: str | None = None
    username: str = ""
    password: str = field(default="", repr=False)
    auth: Literal["basic", "subprotocol"] = "basic"
    ca_file: str | None = None
    fingerprint: str | None = None
    insecure: bool = False

    def __post_init__(self) -> None:
        if (self.url is None) == (self.host is None):
            raise ValueError(f"{self.device_id}: give exactly one of url= or host=")
        scheme = urlsplit(self.ws_url).scheme
        if scheme not in ("ws", "wss"):
            raise ValueError(f"{self.device_id}: the URL must be wss:// or ws://, not {scheme}://")
        if self.auth not in ("basic", "subprotocol"):
            raise ValueError(f"{self.device_id}: auth is 'basic' or 'subprotocol'")
        if self.fingerprint is not None:
            object.__setattr__(self, "fingerprint", normalize_fingerprint(self.fingerprint))

    @property
    def ws_url(self) -> str:
        if self.url is not None:
            return self.url
        host = self.host or ""
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # a bare IPv6 literal
        return f"wss://{host}/ws"

    @property
    def secure(self) -> bool:
        return self.ws_url.startswith("wss:")

    def basic_authorization(self) -> str:
        """The ``Authorization`` header value (never log it)."""
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return f"Basic {token}"

    def auth_subprotocol(self) -> str:
        """``auth-<base64url(user:pass), no padding>``, as Cisco's jsxapi sends (never log it)."""
        token = base64.urlsafe_b64encode(f"{self.username}:{self.password}".encode())
        return "auth-" + token.decode().rstrip("=")
