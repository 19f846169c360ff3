"""The local API's protection over real HTTP on 127.0.0.1: one test per refusal, that the
state-changing route did nothing, and the config rules (token required off loopback, exit 78)."""

from __future__ import annotations

import ssl
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from edge_agent.config import ConfigError, config_from_dict, resolve_secrets
from edge_agent.ops.api import DeviceStatus, LocalApi, SinkStatus, StoreView
from edge_agent.ops.api_guard import MAX_BODY_BYTES, ApiGuard, server_ssl_context
from edge_agent.ops.logs import redact_text
from edge_agent.store import Change, Store

NEW = "new-token-0123456789abcdef"
OLD = "old-token-fedcba9876543210"


@dataclass
class FakeAgent:
    store: StoreView | None
    device_list: list[DeviceStatus] = field(default_factory=list)
    sink_list: list[SinkStatus] = field(default_factory=list)

    def devices(self) -> Sequence[DeviceStatus]:
        return self.device_list

    def sinks(self) -> Sequence[SinkStatus]:
        return self.sink_list


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "agent.db", sinks=("webhook",))
    await s.commit(
        Change(
            "room-4a",
            events=[
                {"type": "booking.created", "data": {"event_id": str(uuid.uuid4())}}
                for _ in range(2)
            ],
        )
    )
    outbox = await s.read_outbox("webhook", [("room-4a", 0, 10)])
    await s.dead_letter("webhook", outbox, reason="rejected: HTTP 400")
    await s.flush()
    yield s
    await s.close()


def _api(store: Store, **guard: Any) -> LocalApi:
    return LocalApi(FakeAgent(store), "127.0.0.1:0", guard=ApiGuard("127.0.0.1:0", **guard))


@pytest.fixture
async def api(store: Store) -> AsyncIterator[LocalApi]:
    async with _api(store, tokens=[NEW, OLD]) as local:
        yield local


@pytest.fixture
async def http(api: LocalApi) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api.url, timeout=5) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def purge(http: httpx.AsyncClient, **kw: Any) -> httpx.Response:
    kw.setdefault("json", {"all": True})
    return await http.post("/v1/dead-letters/purge", **kw)


async def untouched(store: Store) -> bool:
    return len(await store.dead_letters()) == 2


# -- the bearer token ------------------------------------------------------------------------


async def test_no_token_is_401_with_the_bearer_challenge(http, store) -> None:
    r = await purge(http)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="edge-agent"'
    assert "no token" in r.json()["error"] and "token_env" in r.json()["error"]
    r = await http.post("/v1/dead-letters/replay", json={})
    assert r.status_code == 401
    assert await untouched(store)


@pytest.mark.parametrize(
    "authorization",
    [f"Bearer {NEW}x", f"Bearer {NEW[:-1]}", "Bearer", f"Basic {NEW}", NEW, f"Bearer {NEW} {OLD}"],
)
async def test_wrong_token_is_401_invalid_token(http, store, authorization) -> None:
    r = await purge(http, headers={"Authorization": authorization})
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="edge-agent", error="invalid_token"'
    assert NEW not in r.text and OLD not in r.text
    assert await untouched(store)


async def test_both_tokens_of_a_rotation_are_accepted(http, store) -> None:
    r = await http.post("/v1/dead-letters/replay", json={"ids": [1]}, headers=bearer(OLD))
    assert r.status_code == 200 and r.json() == {"replayed": 1}
    r = await purge(http, headers=bearer(NEW))
    assert r.status_code == 200 and r.json() == {"purged": 1}
    r = await purge(http, headers={"Authorization": f"bearer {NEW}"})  # the scheme is case-blind
    assert r.status_code == 200


async def test_no_token_configured_refuses_every_change(store) -> None:
    async with _api(store) as api, httpx.AsyncClient(base_url=api.url) as http:
        r = await purge(http, headers=bearer(NEW))
        assert r.status_code == 401
        assert (await http.get("/v1/dead-letters")).status_code == 200
    assert await untouched(store)


async def test_reads_are_open_on_loopback_unless_configured(http, store) -> None:
    for path in ("/healthz", "/v1/devices", "/v1/dead-letters", "/metrics"):
        assert (await http.get(path)).status_code == 200, path
    async with (
        _api(store, tokens=[NEW], read_requires_token=True) as api,
        httpx.AsyncClient(base_url=api.url) as strict,
    ):
        r = await strict.get("/v1/dead-letters")
        assert r.status_code == 401 and "WWW-Authenticate" in r.headers
        assert (await strict.get("/v1/dead-letters", headers=bearer(NEW))).status_code == 200


async def test_reads_need_the_token_when_not_listening_on_loopback(store) -> None:
    # The guard of an API on 0.0.0.0 (served here on 127.0.0.1: tests stay on loopback).
    guard = ApiGuard("0.0.0.0:9780", [NEW], allowed_hosts=["127.0.0.1"])
    assert guard.read_requires_token
    async with (
        LocalApi(FakeAgent(store), "127.0.0.1:0", guard=guard) as api,
        httpx.AsyncClient(base_url=api.url) as http,
    ):
        assert (await http.get("/v1/devices")).status_code == 401
        assert (await http.get("/v1/devices", headers=bearer(NEW))).status_code == 200


# -- Host and Origin -------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["evil.example", "evil.example:9780", "127.0.0.1.evil.example"])
async def test_foreign_host_is_421(http, store, host) -> None:
    """DNS rebinding: the attacker's name resolves to 127.0.0.1; the browser sends that name."""
    r = await purge(http, headers={**bearer(NEW), "Host": host})
    assert r.status_code == 421 and "allowed_hosts" in r.json()["error"]
    assert (await http.get("/v1/dead-letters", headers={"Host": host})).status_code == 421
    assert await untouched(store)


async def test_allowed_hosts_are_accepted(store) -> None:
    async with (
        _api(store, tokens=[NEW], allowed_hosts=["agent.example"]) as api,
        httpx.AsyncClient(base_url=api.url) as http,
    ):
        r = await http.get("/v1/devices", headers={"Host": f"agent.example:{api.port}"})
        assert r.status_code == 200
        r = await http.get("/v1/devices", headers={"Host": "other.example"})
        assert r.status_code == 421


@pytest.mark.parametrize(
    "origin",
    ["http://evil.example", "null", "https://127.0.0.1:{port}", "http://127.0.0.1.evil.example"],
)
async def test_foreign_origin_is_403(api, http, store, origin) -> None:
    r = await purge(http, headers={**bearer(NEW), "Origin": origin.format(port=api.port)})
    assert r.status_code == 403 and "Origin" in r.json()["error"]
    assert (
        await http.get("/v1/devices", headers={"Origin": "http://evil.example"})
    ).status_code == 403
    assert await untouched(store)


async def test_own_origin_is_accepted_but_not_a_cross_site_fetch(api, http, store) -> None:
    own = {"Origin": f"http://127.0.0.1:{api.port}"}
    assert (await http.get("/v1/devices", headers=own)).status_code == 200
    r = await http.get("/v1/devices", headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403
    r = await purge(http, headers={**bearer(NEW), **own})
    assert r.status_code == 200


async def test_self_authenticating_routes_skip_the_token_not_the_host(store) -> None:
    guard = ApiGuard("127.0.0.1:0", [NEW], self_authenticating=["/v1/notifications/"])
    local = LocalApi(FakeAgent(store), "127.0.0.1:0", guard=guard)
    async with local as api, httpx.AsyncClient(base_url=api.url) as http:
        r = await http.post("/v1/notifications/microsoft", content=b"x")
        assert r.status_code == 404  # past the guard: no such route in this test
        r = await http.post("/v1/notifications/microsoft", headers={"Host": "evil.example"})
        assert r.status_code == 421
        assert (await purge(http)).status_code == 401
    assert await untouched(store)


# -- the body --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
async def test_wrong_content_type_is_415(http, store, content_type) -> None:
    r = await http.post(
        "/v1/dead-letters/purge",
        content=b'{"all": true}',
        headers={**bearer(NEW), "Content-Type": content_type},
    )
    assert r.status_code == 415
    assert await untouched(store)


async def test_oversized_body_is_413(http, store) -> None:
    big = b'{"ids": [' + b"1," * MAX_BODY_BYTES + b"1]}"
    headers = {**bearer(NEW), "Content-Type": "application/json"}
    r = await http.post("/v1/dead-letters/purge", content=big, headers=headers)
    assert r.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: aiohttp's bound applies
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192]

    r = await http.post("/v1/dead-letters/purge", content=chunks(), headers=headers)
    assert r.status_code == 413
    assert await untouched(store)


async def test_no_cors_preflight_is_granted(http) -> None:
    r = await http.options(
        "/v1/dead-letters/purge",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert r.status_code == 403
    assert not [h for h in r.headers if h.lower().startswith("access-control-")]


async def test_browser_form_post_cross_site_does_nothing(http, store) -> None:
    """What a page on evil.example can make a browser send to 127.0.0.1 without a preflight."""
    r = await http.post(
        "/v1/dead-letters/purge",
        content=b"all=true",
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Origin": "http://evil.example",
            "Sec-Fetch-Site": "cross-site",
            "Sec-Fetch-Mode": "navigate",
        },
    )
    assert r.status_code == 403
    assert await untouched(store)


# -- TLS -------------------------------------------------------------------------------------


async def test_tls_on_the_api(store, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "api.pem", tmp_path / "api.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    guard = ApiGuard("127.0.0.1:0", [NEW], tls=True)
    tls = server_ssl_context(cert_file, key_file)
    async with LocalApi(FakeAgent(store), "127.0.0.1:0", guard=guard, ssl_context=tls) as api:
        assert api.url.startswith("https://")
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
        async with httpx.AsyncClient(base_url=api.url, verify=client_ctx) as http:
            assert (await http.get("/healthz")).status_code == 200
            r = await purge(http, headers={**bearer(NEW), "Origin": api.url})
            assert r.status_code == 200
            r = await purge(http, headers={**bearer(NEW), "Origin": f"http://127.0.0.1:{api.port}"})
            assert r.status_code == 403  # the http:// origin is another origin


# -- configuration ---------------------------------------------------------------------------


def _cfg(api: dict[str, Any]) -> Any:
    return config_from_dict(
        {
            "site": "hq",
            "webhook": {"url": "https://example.invalid/h", "secret_env": "WEBHOOK_SECRET"},
            "api": api,
        },
        env={},
    )


def test_non_loopback_listen_without_a_token_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as exc:
        _cfg({"listen": "0.0.0.0:9780"})
    assert "api.token_env" in "\n".join(exc.value.lines())
    cfg = _cfg({"listen": "0.0.0.0:9780", "token_env": "API_TOKEN"})
    assert not cfg.api.loopback
    assert _cfg({"listen": "[::1]:9780"}).api.loopback


@pytest.mark.parametrize(
    ("api", "words"),
    [
        ({"token_env": "A", "token_file": "/x"}, "not both"),
        ({"cert_file": "/x.pem"}, "cert_file and key_file"),
        ({"token_env": "not a name"}, "environment variable"),
        ({"allowed_hosts": ["http://x.example"]}, "without scheme"),
        ({"allowed_hosts": ["x.example:80"]}, "without scheme or port"),
    ],
)
def test_api_config_checks(api: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError) as exc:
        _cfg(api)
    assert words in "\n".join(exc.value.lines())


def test_tokens_are_read_split_checked_and_redacted(tmp_path: Path) -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    cfg = _cfg({"token_env": "API_TOKEN"})
    secrets = resolve_secrets(cfg, env={"WEBHOOK_SECRET": secret, "API_TOKEN": f" {NEW}  {OLD} "})
    assert [t.get_secret_value() for t in secrets.api_tokens] == [NEW, OLD]
    assert NEW not in repr(secrets)
    assert NEW not in redact_text(f"token {NEW} and {OLD}") and OLD not in redact_text(OLD)
    with pytest.raises(ConfigError) as exc:
        resolve_secrets(cfg, env={"WEBHOOK_SECRET": secret, "API_TOKEN": "short"})
    lines = "\n".join(exc.value.lines())
    assert "at least 16" in lines and "short" not in lines.replace("shorter", "")
    with pytest.raises(ConfigError):
        resolve_secrets(cfg, env={"WEBHOOK_SECRET": secret})
    token_file = tmp_path / "token"
    token_file.write_text(NEW + "\n")
    cfg = _cfg({"token_file": str(token_file)})
    secrets = resolve_secrets(cfg, env={"WEBHOOK_SECRET": secret})
    assert [t.get_secret_value() for t in secrets.api_tokens] == [NEW]


def test_run_refuses_a_non_loopback_listen_without_a_token(tmp_path: Path) -> None:
    from tests.ops.test_cli import cli

    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        'site = "hq"\n[webhook]\nurl = "https://example.invalid/h"\n'
        'secret_env = "EDGE_AGENT_WEBHOOK_SECRET"\n[api]\nlisten = "0.0.0.0:0"\n'
    )
    for command in ("run", "check-config"):
        r = cli(command, "-c", str(cfg), env={"EDGE_AGENT_WEBHOOK_SECRET": "x"})
        assert r.returncode == 78, r.stderr
        assert "api.token_env" in r.stderr
