from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme

from .fakedevice import FakeDevice


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def server_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("127.0.0.1", "localhost")


@pytest.fixture(scope="session")
def server_ssl(server_cert: trustme.LeafCert) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_cert.configure_cert(ctx)
    return ctx


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def cert_files(server_cert: trustme.LeafCert, tmp_path: Path) -> tuple[str, str]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    server_cert.private_key_and_cert_chain_pem.write_to_path(str(cert))
    server_cert.private_key_pem.write_to_path(str(key))
    return str(cert), str(key)


@pytest.fixture
async def tls_device(server_ssl: ssl.SSLContext) -> AsyncIterator[FakeDevice]:
    dev = FakeDevice(ssl_context=server_ssl)
    await dev.start()
    yield dev
    await dev.stop()


@pytest.fixture
async def plain_device() -> AsyncIterator[FakeDevice]:
    dev = FakeDevice()
    await dev.start()
    yield dev
    await dev.stop()
