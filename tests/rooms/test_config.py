"""``[microsoft]``, ``[[rooms]]`` and ``[[devices]] calendar``: validation by key, exit 78."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import ConfigError, config_from_dict, resolve_secrets
from edge_agent.ops.logs import redact_text

BASE: dict[str, Any] = {
    "site": "hq",
    "webhook": {"url": "https://example.com/hook", "secret_env": "WH"},
}
MS = {"tenant_id": "t", "client_id": "c", "client_secret_env": "GRAPH_SECRET"}
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def problems(raw: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as exc:
        config_from_dict({**BASE, **raw}, env={})
    return dict(exc.value.problems)


def test_defaults_and_rooms() -> None:
    cfg = config_from_dict(
        {
            **BASE,
            "microsoft": MS,
            "rooms": [{"id": "boardroom", "calendar": "Boardroom@contoso.com"}],
            "devices": [
                {
                    "id": "room-4a",
                    "host": "10.0.0.1",
                    "password_env": "P",
                    "calendar": "room-4a@contoso.com",
                }
            ],
        },
        env={},
    )
    ms = cfg.microsoft
    assert ms is not None
    assert ms.authority_url == "https://login.microsoftonline.com"
    assert ms.graph_url == "https://graph.microsoft.com/v1.0"
    assert (ms.discover_rooms, ms.refresh_rooms_s, ms.poll_interval_s, ms.horizon_days) == (
        True,
        86400.0,
        60.0,
        7,
    )
    assert ms.notification_url is None
    assert cfg.rooms[0].source == "microsoft" and cfg.devices[0].calendar == "room-4a@contoso.com"


@pytest.mark.parametrize(
    ("raw", "key", "words"),
    [
        (
            {"microsoft": {"client_id": "c", "client_secret_env": "S"}},
            "microsoft.tenant_id",
            "required",
        ),
        ({"microsoft": {"tenant_id": "t", "client_id": "c"}}, "microsoft", "no client credential"),
        ({"microsoft": {**MS, "client_secret_file": "f"}}, "microsoft", "not both"),
        (
            {"microsoft": {**MS, "certificate_file": "c.pem", "key_file": "k.pem"}},
            "microsoft",
            "not both",
        ),
        (
            {"microsoft": {"tenant_id": "t", "client_id": "c", "certificate_file": "c.pem"}},
            "microsoft",
            "both certificate_file and key_file",
        ),
        ({"microsoft": {**MS, "graph_url": "http://graph.local"}}, "microsoft.graph_url", "https"),
        ({"microsoft": {**MS, "horizon_days": 0}}, "microsoft.horizon_days", ""),
        ({"microsoft": {**MS, "poll_interval_s": 0}}, "microsoft.poll_interval_s", ""),
        ({"microsoft": {**MS, "time_zone": "Mars/Base"}}, "microsoft.time_zone", "time zone"),
        ({"microsoft": {**MS, "discover": True}}, "microsoft.discover", "discover_rooms"),
        ({"microsoft": {**MS, "client_secret": "x"}}, "microsoft.client_secret", "not accepted"),
        ({"rooms": [{"id": "r", "calendar": "r@contoso.com"}]}, "rooms[0].source", "[microsoft]"),
        (
            {"microsoft": MS, "rooms": [{"id": "Bad Id", "calendar": "r@contoso.com"}]},
            "rooms[0].id",
            "",
        ),
        (
            {"microsoft": MS, "rooms": [{"id": "r", "calendar": "not-a-mailbox"}]},
            "rooms[0].calendar",
            "mailbox",
        ),
        (
            {"microsoft": MS, "rooms": [{"id": "r", "calendar": "r@c.com", "source": "exchange"}]},
            "rooms[0].source",
            "",
        ),
        (
            {
                "microsoft": MS,
                "rooms": [{"id": "r", "calendar": "a@c.com"}, {"id": "r", "calendar": "b@c.com"}],
            },
            "rooms[1].id",
            "already used",
        ),
        (
            {
                "microsoft": MS,
                "rooms": [{"id": "a", "calendar": "x@c.com"}, {"id": "b", "calendar": "X@c.com"}],
            },
            "rooms[1].calendar",
            "already used",
        ),
        (
            {"devices": [{"id": "d", "host": "h", "password_env": "P", "calendar": "d@c.com"}]},
            "devices[0].calendar",
            "[microsoft]",
        ),
        (
            {
                "microsoft": MS,
                "devices": [{"id": "d", "host": "h", "password_env": "P", "calendar": "d@c.com"}],
                "rooms": [{"id": "d", "calendar": "e@c.com"}],
            },
            "rooms[0].id",
            "devices[0]",
        ),
    ],
)
def test_bad_keys_are_named(raw: dict[str, Any], key: str, words: str) -> None:
    found = problems(raw)
    assert key in found, found
    assert words in found[key], found[key]


def test_secret_resolved_and_registered_with_the_redactor(tmp_path: Path) -> None:
    cfg = config_from_dict({**BASE, "microsoft": MS}, env={})
    secrets = resolve_secrets(cfg, env={"WH": WHSEC, "GRAPH_SECRET": "very-secret-value-1"})
    assert secrets.microsoft_client_secret is not None
    assert "very-secret-value-1" not in repr(secrets)
    assert "very-secret-value-1" not in redact_text("client said very-secret-value-1")
    with pytest.raises(ConfigError) as exc:
        resolve_secrets(cfg, env={"WH": WHSEC})
    assert "microsoft.client_secret_env" in dict(exc.value.problems)


def test_certificate_key_file_is_read_as_a_secret(tmp_path: Path) -> None:
    (tmp_path / "k.pem").write_text("-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----\n")
    raw = {
        **BASE,
        "microsoft": {
            "tenant_id": "t",
            "client_id": "c",
            "certificate_file": "c.pem",
            "key_file": "k.pem",
        },
    }
    cfg = config_from_dict(raw, env={}, base_dir=tmp_path)
    assert cfg.microsoft is not None and cfg.microsoft.key_file == tmp_path / "k.pem"
    secrets = resolve_secrets(cfg, env={"WH": WHSEC})
    assert secrets.microsoft_private_key is not None
    (tmp_path / "k.pem").unlink()
    with pytest.raises(ConfigError) as exc:
        resolve_secrets(cfg, env={"WH": WHSEC})
    assert "microsoft.key_file" in dict(exc.value.problems)


def test_cli_exits_78_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        'site = "hq"\n[webhook]\nurl = "https://example.com/h"\nsecret_env = "WH"\n'
        '[microsoft]\ntenant_id = "t"\nclient_id = "c"\nclient_secret = "hunter2"\n'
        "horizon_days = 0\n"
        '[[rooms]]\nid = "r"\ncalendar = "nope"\n'
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
        for key in ("microsoft.client_secret", "microsoft.horizon_days", "rooms[0].calendar"):
            assert key in r.stderr, (key, r.stderr)
        assert "hunter2" not in r.stderr + r.stdout


def test_a_csv_calendar_link_without_a_source_names_the_row(tmp_path: Path) -> None:
    from edge_agent.config.load import load_config_and_inventory

    (tmp_path / "rooms.csv").write_text("id,host,calendar\nroom-4a,10.0.4.1,room-4a@contoso.com\n")
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        'site = "hq"\ndevices_file = "rooms.csv"\n[defaults]\npassword_env = "P"\n'
        '[webhook]\nurl = "https://example.com/h"\nsecret_env = "WH"\n'
    )
    with pytest.raises(ConfigError) as exc:
        load_config_and_inventory(cfg)
    text = exc.value.format()
    assert "rooms.csv:2" in text and "calendar" in text and "[microsoft]" in text
