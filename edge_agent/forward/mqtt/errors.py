"""Broker addresses and what goes wrong reaching a broker, as sentences for a person.

Every message names the broker, what failed and what to change in ``[mqtt]``; ``kind`` picks
the sink's retry policy (a person must fix ``auth``/``tls``/``config``: retry slowly).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from paho.mqtt.reasoncodes import ReasonCode

# CONNACK reason codes (MQTT 5 numbering; paho maps the 3.1.1 return codes 4 and 5 onto these).
# 0x86 bad user name or password, 0x87 not authorized, 0x8C bad authentication method.
_CONNACK_BAD_CREDENTIALS = {0x86, 0x87, 0x8C}
_CONNACK_BAD_CLIENT_ID = 0x85
# PUBACK failures that another try will not fix: not authorized, topic name invalid, packet too
# large, payload format invalid.
PUBACK_PERMANENT = frozenset({0x87, 0x90, 0x95, 0x99})

ErrorKind = Literal["auth", "tls", "config", "refused", "unreachable"]


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_broker_url(url: str) -> BrokerAddress:
    """``mqtt://host[:1883]`` or ``mqtts://host[:8883]`` -> :class:`BrokerAddress`."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"mqtt url {url!r}: the scheme must be mqtt:// or mqtts://")
    if not parts.hostname:
        raise ValueError(f"mqtt url {url!r}: no host")
    if parts.path not in ("", "/") or parts.query or parts.username or parts.password:
        raise ValueError(
            f"mqtt url {url!r}: only scheme://host:port (credentials go in username/password)"
        )
    tls = scheme == "mqtts"
    return BrokerAddress(parts.hostname, parts.port or (8883 if tls else 1883), tls)


class BrokerError(Exception):
    """A connection attempt failed. ``str()`` is for a person; ``kind`` picks the retry policy."""

    def __init__(self, message: str, kind: ErrorKind) -> None:
        super().__init__(message)
        self.kind = kind


def connack_error(
    reason: ReasonCode,
    addr: BrokerAddress,
    username: str | None,
    client_id: str,
    password_source: str | None = None,
) -> BrokerError:
    """The broker answered CONNECT with a failure reason code.

    ``password_source`` names where the password came from, as the config says it (e.g.
    ``"password_file /etc/roomos-edge/mqtt.password"``), so the hint points at what is set.
    """
    name = reason.getName().lower()
    if reason.value in _CONNACK_BAD_CREDENTIALS:
        if username is None:
            return BrokerError(
                f"mqtt: broker {addr} refused the connection without credentials ({name}); "
                "set [mqtt] username and password_env or password_file in the config",
                "auth",
            )
        where = password_source or "password_env or password_file"
        return BrokerError(
            f"mqtt: broker {addr} refused the credentials for user {username!r} ({name}); "
            f"check [mqtt] username and {where} in the config",
            "auth",
        )
    if reason.value == _CONNACK_BAD_CLIENT_ID:
        return BrokerError(
            f"mqtt: broker {addr} rejected client id {client_id!r} ({name}); "
            "set [mqtt] client_id to an id the broker accepts",
            "auth",
        )
    return BrokerError(f"mqtt: broker {addr} refused the connection ({name})", "refused")


def closed_before_connack(addr: BrokerAddress) -> BrokerError:
    """The broker dropped the connection without answering CONNECT."""
    hint = (
        " (over TLS: it may require a client certificate, [mqtt] cert_file and "
        "key_file, or refuse the one given)"
        if addr.tls
        else ""
    )
    return BrokerError(
        f"mqtt: broker {addr} closed the connection before answering CONNECT{hint}",
        "tls" if addr.tls else "refused",
    )


def socket_error(exc: OSError, addr: BrokerAddress) -> BrokerError:
    """TCP or TLS failed before MQTT started."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return BrokerError(
            f"mqtt: TLS to broker {addr} failed: the broker's certificate was not accepted "
            f"(certificate verify failed: {exc.verify_message}); check [mqtt] ca_file (the CA "
            f"that signed the broker's certificate) and that the certificate is issued for "
            f"{addr.host!r}",
            "tls",
        )
    if isinstance(exc, ssl.SSLError):
        return BrokerError(
            f"mqtt: TLS handshake with broker {addr} failed ({exc.reason or exc}); check that "
            "the port is a TLS listener and [mqtt] ca_file, cert_file and key_file",
            "tls",
        )
    if isinstance(exc, ConnectionRefusedError):
        detail = "connection refused; is the broker running, and is the port right?"
    elif isinstance(exc, TimeoutError):
        detail = "timed out"
    else:
        detail = exc.strerror or str(exc)
    return BrokerError(f"mqtt: cannot reach broker {addr} ({detail})", "unreachable")


def tls_files_error(
    exc: Exception, ca_file: str | None, cert_file: str | None, key_file: str | None
) -> BrokerError:
    """The configured CA bundle or client certificate cannot be loaded."""
    which = (
        f"ca_file {ca_file}"
        if cert_file is None
        else f"ca_file {ca_file} / cert_file {cert_file} / key_file {key_file}"
    )
    return BrokerError(
        f"mqtt: cannot load the TLS files ({which}): {exc}; check [mqtt] in the config", "config"
    )
