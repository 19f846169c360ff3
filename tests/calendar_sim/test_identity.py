"""The token endpoint and OpenID discovery, driven by the real msal library."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import msal
import requests
from graphsim_helpers import SCOPE, GraphClient, make_config

from calendar_sim.graph import GraphSim
from device_sim.tls import make_self_signed


def _msal_app_sync(
    sim: GraphSim, credential: Any, ca_file: str
) -> msal.ConfidentialClientApplication:
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE must not override the CA file given
    session.verify = ca_file
    return msal.ConfidentialClientApplication(
        sim.config.client_id,
        client_credential=credential,
        authority=f"{sim.authority_url}/{sim.config.tenant_id}",
        http_client=session,
        # msal would otherwise ask login.microsoftonline.com whether 127.0.0.1 is an authority
        instance_discovery=False,
    )


async def _msal_app(
    sim: GraphSim, credential: Any, ca_file: str
) -> msal.ConfidentialClientApplication:
    # msal is synchronous and reads OpenID discovery when built: keep it off the loop that
    # serves the fake.
    return await asyncio.to_thread(_msal_app_sync, sim, credential, ca_file)


async def _acquire(app: msal.ConfidentialClientApplication) -> dict[str, Any]:
    result: dict[str, Any] = await asyncio.to_thread(app.acquire_token_for_client, [SCOPE])
    return result


async def test_msal_with_a_secret_gets_a_token_graph_accepts(
    sim: GraphSim, client: GraphClient, tmp_path: Any
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(sim.cert_pem)
    result = await _acquire(await _msal_app(sim, sim.config.client_secret, str(ca)))
    assert result.get("token_type") == "Bearer", result
    assert result["expires_in"] == sim.config.token_lifetime_s
    client.token = result["access_token"]
    status, _, body = await client.get("/places/microsoft.graph.room")
    assert status == 200 and len(body["value"]) == 3


async def test_msal_with_a_wrong_secret_is_refused(sim: GraphSim, tmp_path: Any) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(sim.cert_pem)
    result = await _acquire(await _msal_app(sim, "not-the-secret", str(ca)))
    assert result["error"] == "invalid_client"
    assert "AADSTS7000215" in result["error_description"]
    assert "access_token" not in result


async def test_msal_with_a_certificate_signs_an_assertion_the_fake_verifies(tmp_path: Any) -> None:
    cert_pem, key_pem = make_self_signed(["graph-client"], common_name="edge-agent")
    other_cert, other_key = make_self_signed(["intruder"], common_name="intruder")
    async with GraphSim(make_config(client_secret=None, client_certificates=[cert_pem])) as sim:
        ca = tmp_path / "ca.pem"
        ca.write_bytes(sim.cert_pem)
        # PS256 with x5t#S256 (msal computes it from the public certificate)
        good = {"private_key": key_pem.decode(), "public_certificate": cert_pem.decode()}
        result = await _acquire(await _msal_app(sim, good, str(ca)))
        assert result.get("access_token"), result
        # RS256 with the SHA-1 thumbprint given by hand (msal's older way)
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes

        sha1 = x509.load_pem_x509_certificate(cert_pem).fingerprint(hashes.SHA1()).hex()
        result = await _acquire(
            await _msal_app(sim, {"private_key": key_pem.decode(), "thumbprint": sha1}, str(ca))
        )
        assert result.get("access_token"), result
        # A certificate the app never registered
        bad = {"private_key": other_key.decode(), "public_certificate": other_cert.decode()}
        result = await _acquire(await _msal_app(sim, bad, str(ca)))
        assert result["error"] == "invalid_client" and "AADSTS700027" in result["error_description"]
        # The registered certificate's thumbprint, signed by another key
        forged = {"private_key": other_key.decode(), "thumbprint": sha1}
        result = await _acquire(await _msal_app(sim, forged, str(ca)))
        assert result["error"] == "invalid_client", result


async def test_unknown_tenant_fails_discovery(sim: GraphSim, tmp_path: Any) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(sim.cert_pem)
    session = requests.Session()
    session.trust_env = False
    session.verify = str(ca)
    try:
        await asyncio.to_thread(
            msal.ConfidentialClientApplication,
            sim.config.client_id,
            client_credential="x",
            http_client=session,
            authority=f"{sim.authority_url}/no-such-tenant",
            instance_discovery=False,
        )
    except ValueError as exc:
        # msal wraps the platform's answer (400, AADSTS90002) in its own message
        assert "AADSTS90002" in str(exc.__context__), exc
    else:
        raise AssertionError("discovery of an unknown tenant succeeded")


async def test_bad_scope_and_grant(client: GraphClient) -> None:
    status, body = await client.fetch_token(scope="Calendars.Read")
    assert status == 400 and body["error"] == "invalid_scope"
    status, body = await client.fetch_token(grant_type="password")
    assert status == 400 and body["error"] == "unsupported_grant_type"
    status, body = await client.fetch_token(client_id="someone-else")
    assert status == 400 and body["error"] == "unauthorized_client"


async def test_tokens_expire_on_the_simulated_clock(sim: GraphSim, client: GraphClient) -> None:
    status, _, _ = await client.get("/places/microsoft.graph.room")
    assert status == 200
    sim.clock.advance(sim.config.token_lifetime_s + 1)
    status, headers, body = await client.get("/places/microsoft.graph.room")
    assert status == 401
    assert body["error"]["code"] == "InvalidAuthenticationToken"
    assert "WWW-Authenticate" in headers
    await client.fetch_token()
    status, _, _ = await client.get("/places/microsoft.graph.room")
    assert status == 200


async def test_revoked_and_missing_tokens(sim: GraphSim, client: GraphClient) -> None:
    sim.expire_tokens()
    status, _, body = await client.get("/places/microsoft.graph.room")
    assert status == 401 and body["error"]["code"] == "InvalidAuthenticationToken"
    client.token = ""
    status, _, body = await client.get("/places/microsoft.graph.room")
    assert status == 401 and body["error"]["message"] == "Access token is empty."


async def test_missing_permission_is_403_naming_it() -> None:
    async with (
        GraphSim(make_config(roles=("Calendars.Read",))) as sim,
        aiohttp.ClientSession() as session,
    ):
        c = GraphClient(sim, session)
        await c.fetch_token()
        status, _, body = await c.get("/places/microsoft.graph.room")
        assert status == 403 and "Place.Read.All" in body["error"]["message"]
        status, _, body = await c.request(
            "POST", "/users/room-1@contoso.com/events", json={"subject": "x"}
        )
        assert status == 403 and "Calendars.ReadWrite" in body["error"]["message"]


async def test_an_application_access_policy_blocks_one_mailbox(
    sim: GraphSim, client: GraphClient
) -> None:
    sim.app_registration.denied_mailboxes.add("room-2@contoso.com")
    window = "calendarView?startDateTime=2026-11-23T00:00:00Z&endDateTime=2026-11-24T00:00:00Z"
    status, _, body = await client.get(f"/users/room-2@contoso.com/{window}")
    assert status == 403 and "AccessPolicy" in body["error"]["message"]
    status, _, _ = await client.get(f"/users/room-1@contoso.com/{window}")
    assert status == 200
