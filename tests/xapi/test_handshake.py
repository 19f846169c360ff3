"""Opening the link: TLS trust modes, pinning before credentials, typed handshake errors."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
import time
from typing import Any

import pytest
import structlog
import trustme

from edge_agent.xapi import DeviceEndpoint, XapiClient, errors

from .fakedevice import FakeDevice, serve_raw_tcp


def fingerprint_of(cert: trustme.LeafCert) -> str:
    der = ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())
    return hashlib.sha256(der).hexdigest()


def client_for(url: str, **ep: Any) -> XapiClient:
    ep.setdefault("username", "admin")
    ep.setdefault("password", "secret")
    return XapiClient(
        DeviceEndpoint("room-4a", url=url, **ep), open_timeout=2.0, request_timeout=2.0
    )


async def test_pinned_fingerprint_connects(
    tls_device: FakeDevice, server_cert: trustme.LeafCert
) -> None:
    fp = ":".join(f"{b:02X}" for b in bytes.fromhex(fingerprint_of(server_cert)))
    client = client_for(tls_device.url, fingerprint=fp)
    await client.check_connection()
    assert tls_device.authorization_seen()


@pytest.mark.parametrize("auth", ["basic", "subprotocol"])
async def test_wrong_fingerprint_never_sends_credentials(tls_device: FakeDevice, auth: str) -> None:
    client = client_for(tls_device.url, fingerprint="00" * 32, auth=auth)
    with pytest.raises(errors.FingerprintMismatch) as info:
        await client.check_connection()
    exc = info.value
    assert exc.expected == "00" * 32 and len(exc.actual) == 64
    assert "room-4a" in str(exc) and "00:00" in str(exc) and exc.actual[:2].upper() in str(exc)
    await asyncio.sleep(0.05)
    assert tls_device.seen_headers == []  # not even an upgrade request, let alone credentials
    assert not tls_device.authorization_seen()


async def test_ca_file_verifies(tls_device: FakeDevice, ca_file: str) -> None:
    await client_for(tls_device.url, ca_file=ca_file).check_connection()


async def test_other_ca_fails_without_credentials(tls_device: FakeDevice, tmp_path: Any) -> None:
    other = tmp_path / "other.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    with pytest.raises(errors.TlsError) as info:
        await client_for(tls_device.url, ca_file=str(other)).check_connection()
    assert not isinstance(info.value, errors.FingerprintMismatch)
    assert "certificate" in str(info.value) and "room-4a" in str(info.value)
    assert not tls_device.authorization_seen()


async def test_system_cas_reject_self_made_cert(tls_device: FakeDevice) -> None:
    with pytest.raises(errors.TlsError):
        await client_for(tls_device.url).check_connection()


async def test_insecure_connects_and_warns_every_time(tls_device: FakeDevice) -> None:
    client = client_for(tls_device.url, insecure=True)
    with structlog.testing.capture_logs() as logs:
        await client.check_connection()
        await client.check_connection()
    warnings = [e for e in logs if e["log_level"] == "warning" and "insecure" in e["event"]]
    assert len(warnings) == 2 and all(e["device"] == "room-4a" for e in warnings)


async def test_bad_credentials_403(tls_device: FakeDevice, ca_file: str) -> None:
    client = client_for(tls_device.url, ca_file=ca_file, password="wrong")
    with pytest.raises(errors.AuthenticationFailed) as info:
        await client.check_connection()
    assert "403" in str(info.value) and "lock" in str(info.value)
    assert "wrong" not in str(info.value)


async def test_auth_failure_backs_off_long(tls_device: FakeDevice, ca_file: str) -> None:
    client = XapiClient(
        DeviceEndpoint(
            "room-4a", url=tls_device.url, ca_file=ca_file, username="admin", password="wrong"
        ),
        open_timeout=2.0,
    )
    task = asyncio.create_task(client.run())
    for _ in range(200):
        if client.last_exception is not None:
            break
        await asyncio.sleep(0.01)
    assert isinstance(client.last_exception, errors.AuthenticationFailed)
    assert client.counters.errors == {"auth": 1} and client.counters.connects == 0
    await asyncio.sleep(0.1)
    assert len(tls_device.seen_headers) == 1  # not hammered: next try in >= 10 min
    await client.close()
    await asyncio.wait_for(task, 1)


@pytest.mark.parametrize(
    ("status", "cls"),
    [(502, errors.DeviceRebooting), (503, errors.RateLimited), (500, errors.HandshakeFailed)],
)
async def test_status_codes_typed(
    tls_device: FakeDevice, ca_file: str, status: int, cls: type[errors.ConnectError]
) -> None:
    tls_device.status = status
    with pytest.raises(cls) as info:
        await client_for(tls_device.url, ca_file=ca_file).check_connection()
    assert str(status) in str(info.value)


async def test_401_on_ws_means_https_only(plain_device: FakeDevice) -> None:
    plain_device.status = 401
    with pytest.raises(errors.HttpsOnly) as info:
        await client_for(plain_device.url).check_connection()
    assert "wss://" in str(info.value)


async def test_refused_port_is_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(errors.Unreachable) as info:
        await client_for(f"wss://127.0.0.1:{port}/ws", insecure=True).check_connection()
    assert "refused" in str(info.value)


async def test_dns_failure_is_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    # The name does not resolve. The failure is the resolver's own answer, made here: a real
    # lookup of a .invalid name would still send a query to whatever nameserver the machine
    # has, and tests stay on 127.0.0.0/8.
    loop = asyncio.get_running_loop()
    looked_up: list[str] = []

    async def no_such_name(host: str, *args: Any, **kwargs: Any) -> Any:
        looked_up.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(loop, "getaddrinfo", no_such_name)
    with pytest.raises(errors.Unreachable) as info:
        await client_for("wss://room-4a.invalid/ws").check_connection()
    assert "resolve" in str(info.value)
    assert looked_up == ["room-4a.invalid"]


async def test_silent_server_times_out() -> None:
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accept TCP, never answer the TLS hello

    server, port = await serve_raw_tcp(mute)
    client = XapiClient(
        DeviceEndpoint("room-4a", url=f"wss://127.0.0.1:{port}/ws", insecure=True),
        open_timeout=0.2,
    )
    # The open timeout, not the test's own, ended it: the error names the 0.2 s bound.
    with pytest.raises(errors.Unreachable) as info:
        await client.check_connection()
    assert "within 0.2 s" in str(info.value)
    server.close()
