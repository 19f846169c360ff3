"""Service-account tokens against the HTTPS fake: the JWT grant checked claim by claim and by
signature, caching, the pinned CA, $CREDENTIALS_DIRECTORY, and refusals that name the fix."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trustme

from edge_agent.calendars.auth import AuthError
from edge_agent.calendars.google.auth import SCOPES, ServiceAccountTokens, resolve_key_path
from tests.calendars.google.conftest import ADMIN, KeyPair, make_key_pair, write_key_file
from tests.calendars.google.googlefake import AUDIENCE, CLIENT_EMAIL, FakeGoogle, Reply


class Monotonic:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def tokens(key_file: Path, ca_file: str, **kw: object) -> ServiceAccountTokens:
    return ServiceAccountTokens(
        service_account_file=str(key_file),
        subject=ADMIN,
        ca_file=ca_file,
        **kw,  # type: ignore[arg-type]
    )


async def test_jwt_grant_claims_and_signature(
    gfake: FakeGoogle, key_file: Path, ca_file: str
) -> None:
    tok = await tokens(key_file, ca_file).token()
    assert tok in gfake.valid_tokens
    [claims] = gfake.grants  # the fake verified the RS256 signature with the public key
    assert claims["iss"] == CLIENT_EMAIL
    assert claims["sub"] == ADMIN
    assert claims["aud"] == AUDIENCE
    assert set(claims["scope"].split()) == set(SCOPES)
    assert claims["exp"] > claims["iat"]
    [post] = gfake.of("/token")
    assert post.form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"


async def test_cached_until_near_expiry_and_renewed_on_demand(
    gfake: FakeGoogle, key_file: Path, ca_file: str
) -> None:
    clock = Monotonic()
    src = tokens(key_file, ca_file, monotonic=clock)
    first = await src.token()
    assert await src.token() == first and gfake.issued == 1
    clock.t += 3599 - 300 - 5  # still outside the five-minute renewal margin
    assert await src.token() == first and gfake.issued == 1
    clock.t += 10  # inside it
    second = await src.token()
    assert second != first and gfake.issued == 2
    third = await src.token(renew=True)  # after a 401
    assert third not in (first, second) and gfake.issued == 3


async def test_a_key_the_service_account_does_not_own_is_refused(
    gfake: FakeGoogle, tmp_path: Path, ca_file: str
) -> None:
    forged = write_key_file(tmp_path / "other.json", make_key_pair(), gfake.token_uri)
    with pytest.raises(AuthError, match="invalid_grant") as info:
        await tokens(forged, ca_file).token()
    assert gfake.grants == [] and "check [google] subject" in str(info.value)


async def test_missing_delegation_names_the_admin_console(
    gfake: FakeGoogle, key_file: Path, ca_file: str
) -> None:
    src = ServiceAccountTokens(
        service_account_file=str(key_file), subject="someone@example.com", ca_file=ca_file
    )
    with pytest.raises(AuthError, match="unauthorized_client") as info:
        await src.token()
    assert "API controls > Domain-wide delegation" in str(info.value)
    assert "calendar.readonly" in str(info.value)


async def test_ca_file_wins_over_requests_ca_bundle(
    gfake: FakeGoogle,
    key_file: Path,
    ca_file: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stranger = tmp_path / "stranger-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(stranger))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(stranger))
    assert await tokens(key_file, ca_file).token() in gfake.valid_tokens


async def test_without_ca_file_the_fake_authority_is_not_trusted(
    gfake: FakeGoogle, key_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stranger = tmp_path / "stranger-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    with pytest.raises(AuthError, match="cannot reach Google's token endpoint"):
        await tokens(key_file, str(stranger)).token()
    assert gfake.grants == []


async def test_relative_key_is_read_from_credentials_directory(
    gfake: FakeGoogle, key_file: Path, ca_file: str
) -> None:
    env = {"CREDENTIALS_DIRECTORY": str(key_file.parent)}
    src = ServiceAccountTokens(
        service_account_file=key_file.name, subject=ADMIN, ca_file=ca_file, environ=env
    )
    assert src.key_path == key_file
    assert await src.token() in gfake.valid_tokens


def test_relative_key_without_credentials_directory_is_a_clear_error() -> None:
    with pytest.raises(AuthError, match="CREDENTIALS_DIRECTORY"):
        resolve_key_path("google-key.json", {})
    assert resolve_key_path("/etc/edge-agent/key.json", {}) == Path("/etc/edge-agent/key.json")


async def test_missing_and_malformed_keys_are_clear_and_echo_no_key(
    tmp_path: Path, ca_file: str, keys: KeyPair
) -> None:
    with pytest.raises(AuthError, match="cannot read the service account key"):
        await tokens(tmp_path / "absent.json", ca_file).token()
    doc = json.loads(
        write_key_file(tmp_path / "k.json", keys, "https://127.0.0.1:1/token").read_text()
    )
    body = keys.private_pem.splitlines()
    doc["private_key"] = "\n".join([body[0], *body[1:4], body[-1]])  # truncated key
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(AuthError, match="not a usable service account JSON key") as info:
        await tokens(bad, ca_file).token()
    assert not any(line in str(info.value) for line in body[1:4])
    del doc["client_email"]
    bad.write_text(json.dumps(doc))
    with pytest.raises(AuthError, match="not a usable"):
        await tokens(bad, ca_file).token()


async def test_a_refusal_is_not_cached_and_a_503_is_retried(
    gfake: FakeGoogle, key_file: Path, ca_file: str
) -> None:
    gfake.script("/token", Reply(400, {"error": "invalid_request", "error_description": "x"}))
    src = tokens(key_file, ca_file)
    with pytest.raises(AuthError, match="invalid_request"):
        await src.token()
    assert await src.token() in gfake.valid_tokens
    gfake.script("/token", Reply(503, {"error": "backend_error"}))  # google-auth retries it
    assert await src.token(renew=True) in gfake.valid_tokens
    assert len(gfake.of("/token")) == 4


def test_repr_shows_no_key(key_file: Path, keys: KeyPair) -> None:
    src = ServiceAccountTokens(service_account_file=str(key_file), subject=ADMIN)
    assert "PRIVATE" not in repr(src) and ADMIN in repr(src)


def test_subject_must_be_an_address(key_file: Path) -> None:
    with pytest.raises(ValueError, match="subject"):
        ServiceAccountTokens(service_account_file=str(key_file), subject="admin")


async def test_token_lifetime_is_read_on_the_injected_wall_clock(
    gfake: FakeGoogle, key_file: Path, ca_file: str
) -> None:
    # google-auth stamps expiry = now + expires_in; a wall clock past it leaves no lifetime,
    # so every call renews: the lifetime came from the injected clock, not datetime.now().
    late = datetime(2100, 1, 1, tzinfo=UTC)
    src = tokens(key_file, ca_file, monotonic=Monotonic(), wall=lambda: late)
    first = await src.token()
    assert await src.token() != first and gfake.issued == 2
