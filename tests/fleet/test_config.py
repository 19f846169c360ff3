"""The fleet's configuration keys: [store] url and its password, [fleet] member_id / lease_s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import ConfigError, config_from_dict, resolve_secrets

BASE: dict[str, Any] = {
    "site": "hq",
    "webhook": {"url": "http://127.0.0.1:9/hook", "secret_env": "WH"},
}
ENV = {"WH": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "PG_PW": "s3cret-pw"}


def load(store: dict[str, Any] | None = None, fleet: dict[str, Any] | None = None) -> Any:
    raw = dict(BASE)
    if store is not None:
        raw["store"] = store
    if fleet is not None:
        raw["fleet"] = fleet
    return config_from_dict(raw, env=ENV)


def problems(exc: ConfigError) -> str:
    return "\n".join(exc.lines())


def test_a_postgresql_url_with_its_password_from_the_environment() -> None:
    cfg = load({"url": "postgresql://edge@db.example:5432/edge", "password_env": "PG_PW"})
    assert cfg.store.postgres and cfg.store.sslmode is None
    assert resolve_secrets(cfg, env=ENV).store_password.get_secret_value() == "s3cret-pw"
    assert cfg.fleet.member_id is None and cfg.fleet.lease_s == 15.0


def test_a_password_in_the_url_is_refused_naming_the_key_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as exc:
        load({"url": "postgresql://edge:hunter2@db:5432/edge"})
    text = problems(exc.value)
    assert "store.url" in text and "password_env" in text
    assert "hunter2" not in text


def test_the_password_from_a_file(tmp_path: Path) -> None:
    f = tmp_path / "pg.pw"
    f.write_text("from-file\n")
    cfg = load({"url": "postgresql://edge@db/edge", "password_file": str(f)})
    assert resolve_secrets(cfg, env=ENV).store_password.get_secret_value() == "from-file"


def test_a_missing_password_variable_is_named() -> None:
    cfg = load({"url": "postgresql://edge@db/edge", "password_env": "NOPE"})
    with pytest.raises(ConfigError, match="store.password_env"):
        resolve_secrets(cfg, env=ENV)


@pytest.mark.parametrize(
    ("store", "fragment"),
    [
        ({"url": "mysql://edge@db/edge"}, "postgresql://"),
        ({"url": "postgresql://edge@db"}, "host and database"),
        ({"sslmode": "require"}, "need [store] url"),
        ({"url": "postgresql://e@db/x", "sslmode": "sometimes"}, "sslmode"),
        ({"url": "postgresql://e@db/x", "password_env": "A", "password_file": "b"}, "not both"),
    ],
)
def test_bad_store_keys_are_clear_errors(store: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load(store)
    assert fragment in problems(exc.value)


@pytest.mark.parametrize("lease_s", [1.9, 0, -1])
def test_a_lease_under_two_seconds_is_refused(lease_s: float) -> None:
    with pytest.raises(ConfigError, match="fleet.lease_s"):
        load({"url": "postgresql://e@db/x"}, {"lease_s": lease_s})


def test_lease_and_member_id() -> None:
    cfg = load({"url": "postgresql://e@db/x"}, {"lease_s": 2, "member_id": "edge-1"})
    assert cfg.fleet.lease_s == 2.0 and cfg.fleet.member_id == "edge-1"


def test_calendar_sources_load_in_fleet_mode() -> None:
    """Issue 16: the members split the calendar rooms by lease, so [microsoft] and [google]
    with [store] url is a valid configuration (it was refused before the partitioning)."""
    raw = {
        **BASE,
        "store": {"url": "postgresql://e@db/x", "password_env": "PG_PW"},
        "fleet": {"member_id": "edge-1"},
        "microsoft": {"tenant_id": "t", "client_id": "c", "client_secret_env": "GRAPH"},
        "google": {"service_account_file": "/etc/edge-agent/sa.json", "subject": "a@example.com"},
        "rooms": [
            {"id": "boardroom", "calendar": "boardroom@contoso.com", "source": "microsoft"},
            {"id": "atrium", "calendar": "atrium@example.com", "source": "google"},
        ],
    }
    cfg = config_from_dict(raw, env=ENV)
    assert cfg.store.postgres and cfg.microsoft is not None and cfg.google is not None
    assert {r.id for r in cfg.rooms} == {"boardroom", "atrium"}
