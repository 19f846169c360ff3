from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.calendars.google.googlefake import ADMIN, CLIENT_EMAIL, FakeGoogle


@dataclass(frozen=True)
class KeyPair:
    private_pem: str
    public_pem: bytes


def make_key_pair() -> KeyPair:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return KeyPair(private, public)


def write_key_file(path: Path, keys: KeyPair, token_uri: str) -> Path:
    """A service account JSON key as the Cloud console downloads it."""
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "rooms-project",
                "private_key_id": "0123456789abcdef0123456789abcdef01234567",
                "private_key": keys.private_pem,
                "client_email": CLIENT_EMAIL,
                "client_id": "109876543210987654321",
                "auth_uri": "https://accounts.google.com/o/oauth2/auth",
                "token_uri": token_uri,
                "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
                "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/x",
                "universe_domain": "googleapis.com",
            }
        )
    )
    return path


@pytest.fixture(scope="session")
def keys() -> KeyPair:
    return make_key_pair()


@pytest.fixture
async def gfake(ca: trustme.CA, keys: KeyPair) -> AsyncIterator[FakeGoogle]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    g = FakeGoogle(ctx, keys.public_pem)
    await g.start()
    yield g
    await g.stop()


@pytest.fixture
def key_file(tmp_path: Path, keys: KeyPair, gfake: FakeGoogle) -> Path:
    return write_key_file(tmp_path / "service-account.json", keys, gfake.token_uri)


__all__ = ["ADMIN", "KeyPair", "make_key_pair", "write_key_file"]
