"""``[google]``, ``[[rooms]] source = "google"`` and ``calendar_source``: validation by key,
the service account key checked (never echoed) and registered with the redactor, exit 78."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from edge_agent.config import ConfigError, config_from_dict, resolve_secrets
from edge_agent.ops.logs import redact_text

BASE: dict[str, Any] = {
    "site": "hq",
    "webhook": {"url": "https://example.com/hook", "secret_env": "WH"},
}
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
GOOGLE = {"service_account_file": "/etc/edge-agent/sa.json", "subject": "admin@example.com"}
MS = {"tenant_id": "t", "client_id": "c", "client_secret_env": "GRAPH_SECRET"}


def problems(raw: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as exc:
        config_from_dict({**BASE, **raw}, env={})
    return dict(exc.value.problems)


def key_json(**drop_or_set: Any) -> dict[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    doc: dict[str, Any] = {
        "type": "service_account",
        "private_key_id": "abc",
        "private_key": pem,
        "client_email": "edge@p.iam.gserviceaccount.com",
        "client_id": "123",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    for k, v in drop_or_set.items():
        if v is None:
            doc.pop(k)
        else:
            doc[k] = v
    return doc


def test_defaults_and_google_as_the_only_source() -> None:
    cfg = config_from_dict(
        {
            **BASE,
            "google": GOOGLE,
            "devices": [{"id": "d", "host": "h", "password_env": "P", "calendar": "d@e.com"}],
            "rooms": [{"id": "r", "calendar": "r@e.com"}],
        },
        env={},
    )
    g = cfg.google
    assert g is not None
    assert (g.customer, g.directory_url, g.calendar_url) == (
        "my_customer",
        "https://admin.googleapis.com",
        "https://www.googleapis.com/calendar/v3",
    )
    assert (g.discover_rooms, g.poll_interval_s, g.horizon_days) == (True, 60.0, 7)
    # the one configured source is the default of every calendar
    assert cfg.devices[0].calendar_source == "google" and cfg.rooms[0].source == "google"


@pytest.mark.parametrize(
    ("raw", "key", "words"),
    [
        ({"google": {"subject": "a@b.com"}}, "google.service_account_file", "required"),
        ({"google": {**GOOGLE, "subject": "admin"}}, "google.subject", "mailbox"),
        ({"google": {**GOOGLE, "calendar_url": "http://x"}}, "google.calendar_url", "https"),
        ({"google": {**GOOGLE, "horizon_days": 0}}, "google.horizon_days", "greater"),
        ({"google": {**GOOGLE, "time_zone": "Mars/Base"}}, "google.time_zone", ""),
        ({"google": {**GOOGLE, "private_key": "x"}}, "google.private_key", ""),
        (
            {"rooms": [{"id": "r", "calendar": "r@e.com", "source": "google"}]},
            "rooms[0].source",
            "[google]",
        ),
        (
            {
                "google": GOOGLE,
                "microsoft": MS,
                "devices": [{"id": "d", "host": "h", "password_env": "P", "calendar": "d@e.com"}],
            },
            "devices[0].calendar_source",
            "both",
        ),
        (
            {"google": GOOGLE, "microsoft": MS, "rooms": [{"id": "r", "calendar": "r@e.com"}]},
            "rooms[0].source",
            "both",
        ),
        (
            {
                "microsoft": MS,
                "devices": [
                    {
                        "id": "d",
                        "host": "h",
                        "password_env": "P",
                        "calendar": "d@e.com",
                        "calendar_source": "google",
                    }
                ],
            },
            "devices[0].calendar",
            "[google]",
        ),
    ],
)
def test_bad_keys_are_named(raw: dict[str, Any], key: str, words: str) -> None:
    found = problems(raw)
    assert key in found, found
    assert words in found[key], found[key]


def test_both_sources_each_calendar_names_its_own() -> None:
    cfg = config_from_dict(
        {
            **BASE,
            "google": GOOGLE,
            "microsoft": MS,
            "devices": [
                {
                    "id": "d",
                    "host": "h",
                    "password_env": "P",
                    "calendar": "d@e.com",
                    "calendar_source": "google",
                }
            ],
            "rooms": [{"id": "r", "calendar": "r@c.com", "source": "microsoft"}],
        },
        env={},
    )
    from edge_agent.agent import google_rooms, graph_rooms

    assert [r.room_id for r in google_rooms(cfg)] == ["d"]
    assert [r.room_id for r in graph_rooms(cfg)] == ["r"]


def test_key_read_checked_and_registered_with_the_redactor(tmp_path: Path) -> None:
    doc = key_json()
    (tmp_path / "sa.json").write_text(json.dumps(doc))
    cfg = config_from_dict(
        {**BASE, "google": {**GOOGLE, "service_account_file": "sa.json"}}, env={}
    )
    # a relative name is a systemd credential
    secrets = resolve_secrets(cfg, env={"WH": WHSEC, "CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert secrets.google_private_key is not None
    pem = doc["private_key"]
    assert pem not in repr(secrets)
    assert pem not in redact_text(f"oops {pem}")
    body = pem.splitlines()[3]
    assert body not in redact_text(f"escaped {json.dumps(pem)}")
    with pytest.raises(ConfigError) as exc:
        resolve_secrets(cfg, env={"WH": WHSEC})
    assert "CREDENTIALS_DIRECTORY" in dict(exc.value.problems)["google.service_account_file"]


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "cannot read"),
        ("{not json", "is not JSON"),
        (json.dumps(key_json(private_key=None)), "missing private_key"),
        (json.dumps(key_json(type="authorized_user")), "not a service account key"),
    ],
)
def test_bad_key_file_is_named_never_echoed(tmp_path: Path, content: str | None, words: str):
    path = tmp_path / "sa.json"
    if content is not None:
        path.write_text(content)
    cfg = config_from_dict(
        {**BASE, "google": {**GOOGLE, "service_account_file": str(path)}}, env={}
    )
    with pytest.raises(ConfigError) as exc:
        resolve_secrets(cfg, env={"WH": WHSEC})
    msg = dict(exc.value.problems)["google.service_account_file"]
    assert words in msg and "PRIVATE KEY" not in msg


def test_cli_exits_78_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        'site = "hq"\n[webhook]\nurl = "https://example.com/h"\nsecret_env = "WH"\n'
        f'[google]\nservice_account_file = "{tmp_path / "missing.json"}"\n'
        'subject = "admin"\nhorizon_days = 0\n'
        '[[rooms]]\nid = "r"\ncalendar = "nope"\nsource = "google"\n'
    )
    for command in ("check-config", "run"):
        r = subprocess.run(
            [sys.executable, "-m", "edge_agent", command, "-c", str(cfg)],
            capture_output=True,
            check=False,
            text=True,
            timeout=60,
            env={"WH": WHSEC, "PATH": "/usr/bin"},
        )
        assert r.returncode == 78, r.stderr
        for key in ("google.subject", "google.horizon_days", "rooms[0].calendar"):
            assert key in r.stderr, (key, r.stderr)


def test_cli_exits_78_for_an_unreadable_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    (tmp_path / "sa.json").write_text(json.dumps(key_json(client_email=None)))
    cfg.write_text(
        'site = "hq"\n[webhook]\nurl = "https://example.com/h"\nsecret_env = "WH"\n'
        f'[google]\nservice_account_file = "{tmp_path / "sa.json"}"\n'
        'subject = "admin@example.com"\n'
    )
    r = subprocess.run(
        [sys.executable, "-m", "edge_agent", "run", "-c", str(cfg)],
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
        env={"WH": WHSEC, "PATH": "/usr/bin"},
    )
    assert r.returncode == 78, r.stderr
    assert "google.service_account_file" in r.stderr and "client_email" in r.stderr
    assert "PRIVATE KEY" not in r.stderr + r.stdout
