"""msal client credentials against a real HTTPS identity endpoint on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
import structlog
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from edge_agent.calendars.graph.auth import (
    AuthError,
    CertificateCredential,
    ClientCredentials,
    _cert_dict,
)
from tests.calendars.graphfake import FakeGraph


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def creds(fake: FakeGraph, ca_file: str | None, **kw: object) -> ClientCredentials:
    args: dict[str, object] = {
        "tenant_id": fake.tenant,
        "client_id": "app-1",
        "secret": "s3cret",
        "authority_url": fake.authority_url,
        "ca_file": ca_file,
        "timeout_s": 10.0,
    }
    args.update(kw)
    return ClientCredentials(**args)  # type: ignore[arg-type]


@pytest.fixture
def other_ca_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """REQUESTS_CA_BUNDLE pointing at a CA that did not sign the server's certificate."""
    path = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(path))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(path))
    return str(path)


async def test_ca_file_wins_over_requests_ca_bundle(
    fake: FakeGraph, ca_file: str, other_ca_bundle: str
) -> None:
    c = creds(fake, ca_file)
    token = await c.token()
    assert token in fake.valid_tokens
    token_posts = fake.of("/oauth2/v2.0/token")
    assert len(token_posts) == 1
    form = token_posts[0].form
    assert form["grant_type"] == "client_credentials"
    assert form["scope"] == "https://graph.microsoft.com/.default"
    assert form["client_id"] == "app-1"
    assert fake.of("/.well-known/openid-configuration")


async def test_without_ca_file_the_environment_bundle_applies_and_fails_clearly(
    fake: FakeGraph, other_ca_bundle: str
) -> None:
    # The contrast that shows the previous test means something: requests would obey the env.
    c = creds(fake, None)
    with pytest.raises(AuthError, match="cannot reach the identity platform"):
        await c.token()


async def test_token_cached_then_renewed_before_expiry(fake: FakeGraph, ca_file: str) -> None:
    clock = Clock()
    c = creds(fake, ca_file, monotonic=clock)
    t1 = await c.token()
    assert await c.token() == t1
    clock.t += 3599 - 300 - 1  # still more than five minutes left
    assert await c.token() == t1
    clock.t += 2
    t2 = await c.token()
    assert t2 != t1 and len(fake.of("/oauth2/v2.0/token")) == 2


async def test_forced_renewal_gets_a_new_token(fake: FakeGraph, ca_file: str) -> None:
    c = creds(fake, ca_file)
    t1 = await c.token()
    t2 = await c.token(renew=True)
    assert t1 != t2


async def test_refused_secret_names_the_fix_and_not_the_secret(
    fake: FakeGraph, ca_file: str
) -> None:
    c = creds(fake, ca_file, secret="wrong-secret-value")
    with pytest.raises(AuthError) as info:
        await c.token()
    msg = str(info.value)
    assert "invalid_client" in msg
    assert "AADSTS7000215" in msg and "[microsoft]" in msg
    assert "wrong-secret-value" not in msg and "wrong-secret-value" not in repr(c)


async def test_certificate_credential_sends_a_client_assertion(
    fake: FakeGraph, ca_file: str
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    cert = CertificateCredential(
        thumbprint="A1B2C3D4E5F60718293A4B5C6D7E8F9011223344", private_key_pem=pem
    )
    c = creds(fake, ca_file, secret=None, certificate=cert)
    assert await c.token() in fake.valid_tokens
    form = fake.of("/oauth2/v2.0/token")[0].form
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assert "client_secret" not in form


def _self_signed(key: rsa.RSAPrivateKey) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge-agent")])
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=3650))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )


async def test_certificate_assertion_is_ps256_with_the_sha256_thumbprint(
    fake: FakeGraph, ca_file: str
) -> None:
    # Entra ID certificate credentials: "alg: Should be PS256 ... x5t#S256".
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    cert_pem = _self_signed(key)
    cert = CertificateCredential(
        thumbprint="A1B2C3D4E5F60718293A4B5C6D7E8F9011223344",
        private_key_pem=pem,
        certificate_pem=cert_pem,
    )
    c = creds(fake, ca_file, secret=None, certificate=cert)
    assert await c.token() in fake.valid_tokens
    header = jwt.get_unverified_header(fake.of("/oauth2/v2.0/token")[0].form["client_assertion"])
    der = x509.load_pem_x509_certificate(cert_pem.encode()).public_bytes(
        serialization.Encoding.DER
    )
    want = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")
    assert header["alg"] == "PS256"
    assert header["x5t#S256"].rstrip("=") == want and "x5t" not in header


def test_older_msal_gets_the_sha1_thumbprint() -> None:
    cert = CertificateCredential("AB" * 20, "key", certificate_pem="cert")
    assert "thumbprint" not in _cert_dict(cert, "1.35.0")
    assert _cert_dict(cert, "1.34.2")["thumbprint"] == "AB" * 20  # thumbprint required there
    no_cert = CertificateCredential("AB" * 20, "key")
    assert _cert_dict(no_cert, "1.39.0") == {"private_key": "key", "thumbprint": "AB" * 20}


def test_exactly_one_credential() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        ClientCredentials(tenant_id="t", client_id="c")


async def test_secret_and_tokens_stay_out_of_the_logs(
    fake: FakeGraph, ca_file: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    c = creds(fake, ca_file)
    with structlog.testing.capture_logs() as captured:
        t1 = await c.token()
        t2 = await c.token(renew=True)
    text = repr(captured) + caplog.text
    assert captured  # the acquisitions were logged...
    for secret in ("s3cret", t1, t2):
        assert secret not in text  # ...without the secret or a token (msal's own loggers too)
