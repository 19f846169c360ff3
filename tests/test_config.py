from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from edge_agent.bookings.pending import DEFAULT_GRACE_S
from edge_agent.config import (
    AgentConfig,
    ConfigError,
    config_from_dict,
    device_settings,
    load_config,
    parse_listen,
    resolve_secrets,
)

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "config" / "agent.example.toml"
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
FP = ":".join(["AB:CD:EF:01:23:45:67:89"] * 4)

MINIMAL = """
site = "hq"
[defaults]
password_env = "DEV_PW"
[[devices]]
id = "room-4a"
host = "10.1.2.3"
[webhook]
url = "https://spaces.example.com/hooks/roomos"
secret_env = "WH_SECRET"
"""


def write(tmp_path: Path, text: str, name: str = "agent.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def problems(exc: pytest.ExceptionInfo[ConfigError]) -> dict[str, str]:
    return dict(exc.value.problems)


def test_example_config_validates_and_resolves() -> None:
    cfg = load_config(EXAMPLE, require_sink=True)
    env = {
        "EDGE_AGENT_DEVICE_PASSWORD": "pw",
        "EDGE_AGENT_WEBHOOK_SECRET": WHSEC,
        "EDGE_AGENT_MQTT_PASSWORD": "mq",
    }
    secrets = resolve_secrets(cfg, env)
    devices = device_settings(cfg, secrets)
    assert [d.id for d in devices] == ["room-4a", "board-5"]
    assert devices[0].url == "wss://10.1.2.3/ws"
    assert devices[0].fingerprint == FP.replace(":", "").lower()
    assert devices[1].url == "wss://10.1.2.4:8443/ws"
    assert devices[1].time_zone == "Europe/London" and devices[0].time_zone == "Europe/Oslo"
    assert devices[1].booking_timeout_s == 120 and devices[0].booking_timeout_s == 60
    assert devices[1].ca_file == EXAMPLE.parent / "device-ca.pem"  # relative to the config
    assert cfg.sink_names() == ["webhook", "mqtt"]
    assert cfg.mqtt_base_topic == "roomos-edge/hq"


def test_minimal_config_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL), env={})
    assert cfg.store_path == Path("edge-agent.db")
    assert cfg.store.synchronous == "normal" and cfg.store.outbox_max_events == 1_000_000
    assert cfg.api.listen == "127.0.0.1:9780" and cfg.log.level == "info"
    assert cfg.mqtt is None and cfg.mqtt_client_id == "edge-agent-hq"
    secrets = resolve_secrets(cfg, {"DEV_PW": "hunter2", "WH_SECRET": f"{WHSEC} {WHSEC}x"[:-1]})
    (dev,) = device_settings(cfg, secrets)
    assert dev.username == "edge-agent" and dev.auth == "basic" and not dev.insecure
    assert dev.password.get_secret_value() == "hunter2"
    assert (dev.request_grace_s, dev.relist_interval_s, dev.request_timeout_s) == (30, 300, 10)
    assert dev.request_grace_s == DEFAULT_GRACE_S  # one default, shared with the bookings logic
    assert dev.time_zone == "UTC"
    assert len(secrets.webhook_secrets) == 2


def test_device_settings_derive_the_endpoint_and_compare_by_value(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL), env={})
    env = {"DEV_PW": "hunter2", "WH_SECRET": WHSEC}
    (dev,) = device_settings(cfg, resolve_secrets(cfg, env))
    ep = dev.endpoint()
    assert (ep.device_id, ep.ws_url, ep.username, ep.password) == (
        dev.id,
        dev.url,
        "edge-agent",
        "hunter2",
    )
    # A reload restarts a device only when its settings differ; a new password is a difference.
    (same,) = device_settings(cfg, resolve_secrets(cfg, env))
    (other,) = device_settings(cfg, resolve_secrets(cfg, {**env, "DEV_PW": "changed"}))
    assert same == dev and other != dev


def test_store_path_defaults_to_state_directory(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL), env={"STATE_DIRECTORY": "/var/lib/edge-agent:/x"})
    assert cfg.store_path == Path("/var/lib/edge-agent/agent.db")


def test_secrets_never_in_repr(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    secrets = resolve_secrets(cfg, {"DEV_PW": "hunter2-pw", "WH_SECRET": WHSEC})
    text = repr(secrets) + repr(device_settings(cfg, secrets)) + str(secrets)
    assert "hunter2-pw" not in text and WHSEC not in text
    assert set(secrets.values()) == {"hunter2-pw", WHSEC}


def test_every_problem_listed_by_key(tmp_path: Path) -> None:
    text = """
site = "HQ"
[store]
synchronous = "sometimes"
bogus = 1
[defaults]
password_env = "DEV_PW"
time_zone = "Mars/Olympus"
booking_timeout_s = 30
[[devices]]
id = "room-4a"
host = "10.1.2.3"
[[devices]]
id = "room-4a"
url = "https://10.1.2.4/ws"
[[devices]]
id = "room-4c"
host = "10.1.2.5"
fingerprint = "AB:CD"
usrname = "x"
[[devices]]
id = "room-4d"
[api]
listen = "localhost"
"""
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text), require_sink=True)
    got = problems(exc)
    for key in (
        "site",
        "store.synchronous",
        "store.bogus",
        "defaults.time_zone",
        "defaults.booking_timeout_s",
        "devices[1].id",
        "devices[1].url",
        "devices[2].fingerprint",
        "devices[2].usrname",
        "devices[3]",
        "api.listen",
        "",
    ):
        assert key in got, (key, got)
    assert "did you mean 'username'" in got["devices[2].usrname"]
    assert "duplicate" in got["devices[1].id"]
    assert "exactly one of host or url" in got["devices[3]"]
    assert "[webhook]" in got[""]
    assert "devices[2].fingerprint: " in str(exc.value)


@pytest.mark.parametrize(
    ("snippet", "key", "hint"),
    [
        ('[api]\ntoken = "hunter2"', "api.token", "password_env"),
        (
            '[[devices]]\nid = "r"\nhost = "h"\npassword = "x"',
            "devices[1].password",
            "password_file",
        ),
        ('[mqtt]\nurl = "mqtt://b"\npassword = "x"', "mqtt.password", "password_env"),
    ],
)
def test_secret_in_toml_rejected(tmp_path: Path, snippet: str, key: str, hint: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, MINIMAL + snippet))
    got = problems(exc)
    assert key in got and hint in got[key]
    assert "hunter2" not in str(exc.value)


def test_defaults_password_in_toml_rejected(tmp_path: Path) -> None:
    text = MINIMAL.replace('password_env = "DEV_PW"', 'password = "hunter2"')
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text))
    got = problems(exc)
    assert "password_env" in got["defaults.password"]
    assert "hunter2" not in str(exc.value)


def test_webhook_secret_in_toml_rejected(tmp_path: Path) -> None:
    text = MINIMAL.replace('secret_env = "WH_SECRET"', f'secret = "{WHSEC}"')
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text))
    assert "secret_env" in problems(exc)["webhook.secret"]
    assert WHSEC not in str(exc.value)


def test_missing_env_var_and_unreadable_file_name_the_key(tmp_path: Path) -> None:
    text = MINIMAL + '[mqtt]\nurl = "mqtts://b"\npassword_file = "nope"\n'
    cfg = load_config(write(tmp_path, text))
    with pytest.raises(ConfigError) as exc:
        resolve_secrets(cfg, {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    got = problems(exc)
    assert "DEV_PW" in got["defaults.password_env"]
    assert "WH_SECRET" in got["webhook.secret_env"]
    assert str(tmp_path / "nope") in got["mqtt.password_file"]


def test_password_file_relative_to_credentials_directory(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "device-password").write_text("from-credential\n")
    (creds / "webhook-secret").write_text(WHSEC + "\n")
    text = MINIMAL.replace('password_env = "DEV_PW"', 'password_file = "device-password"')
    text = text.replace('secret_env = "WH_SECRET"', 'secret_file = "webhook-secret"')
    env = {"CREDENTIALS_DIRECTORY": str(creds)}  # what systemd sets with LoadCredential=
    cfg = load_config(write(tmp_path, text), env=env)
    secrets = resolve_secrets(cfg, env)
    assert secrets.device_passwords["room-4a"].get_secret_value() == "from-credential"
    assert [s.get_secret_value() for s in secrets.webhook_secrets] == [WHSEC]


def test_secret_file_next_to_the_config_without_credentials_directory(tmp_path: Path) -> None:
    (tmp_path / "device-password").write_text("next-to-config\n")
    text = MINIMAL.replace('password_env = "DEV_PW"', 'password_file = "device-password"')
    cfg = load_config(write(tmp_path, text), env={})
    secrets = resolve_secrets(cfg, {"WH_SECRET": WHSEC})
    assert secrets.device_passwords["room-4a"].get_secret_value() == "next-to-config"


def test_bad_webhook_secret_format(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    with pytest.raises(ConfigError) as exc:
        resolve_secrets(cfg, {"DEV_PW": "x", "WH_SECRET": "not-a-whsec"})
    assert "whsec_" in problems(exc)["webhook.secret_env"]
    assert "not-a-whsec" not in str(exc.value)


def test_device_overrides_and_urls() -> None:
    raw = {
        "site": "hq",
        "defaults": {"password_env": "A", "username": "admin", "auth": "subprotocol"},
        "devices": [
            {"id": "a", "host": "fe80::1"},
            {"id": "b", "host": "dev.example.com:8443", "password_env": "B", "insecure": True},
            {"id": "c", "url": "ws://10.0.0.9", "username": "other", "fingerprint": FP.lower()},
        ],
    }
    cfg = config_from_dict(raw)
    secrets = resolve_secrets(cfg, {"A": "pa", "B": "pb"})
    a, b, c = device_settings(cfg, secrets)
    assert a.url == "wss://[fe80::1]/ws" and a.auth == "subprotocol" and a.username == "admin"
    assert b.url == "wss://dev.example.com:8443/ws" and b.insecure
    assert b.password.get_secret_value() == "pb" and a.password.get_secret_value() == "pa"
    assert c.url == "ws://10.0.0.9/ws" and c.username == "other"
    assert c.fingerprint == FP.replace(":", "").lower()


def test_mqtt_section() -> None:
    raw = {"site": "hq", "mqtt": {"url": "mqtts://broker", "protocol": 5, "cert_file": "c.pem"}}
    with pytest.raises(ConfigError) as exc:
        config_from_dict(raw)
    assert "key_file" in problems(exc)["mqtt"]
    raw["mqtt"] = {"url": "mqtts://broker", "protocol": 5}
    cfg = config_from_dict(raw, require_sink=True)
    assert cfg.mqtt is not None and cfg.mqtt.protocol == "5" and cfg.mqtt.port == 8883
    assert cfg.mqtt_base_topic == "roomos-edge/hq"
    with pytest.raises(ConfigError) as exc:
        config_from_dict({"site": "hq", "mqtt": {"url": "http://b", "protocol": "4"}})
    assert {"mqtt.url", "mqtt.protocol"} <= set(problems(exc))


def test_unreadable_and_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "site = \n"))


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:9780") == ("127.0.0.1", 9780)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert parse_listen(":80") == ("127.0.0.1", 80)
    with pytest.raises(ValueError):
        parse_listen("9780x")


def test_model_is_frozen() -> None:
    cfg = AgentConfig(site="hq")
    with pytest.raises(ValidationError):
        cfg.site = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"devices": [{"id": "a", "url": "wss://admin:S3cret-pw@10.0.0.5/ws"}]}, "devices[0].url"),
        ({"devices": [{"id": "a", "url": "wss://admin@10.0.0.5/ws"}]}, "devices[0].url"),
        ({"devices": [{"id": "a", "host": "admin:S3cret-pw@10.0.0.5"}]}, "devices[0].host"),
        ({"mqtt": {"url": "mqtts://bridge:S3cret-pw@broker.example.com"}}, "mqtt.url"),
        (
            {"webhook": {"url": "https://u:S3cret-pw@hooks.example.com/x", "secret_env": "W"}},
            "webhook.url",
        ),
    ],
)
def test_credentials_in_urls_rejected(raw: dict[str, object], key: str) -> None:
    """websockets would log in with them, and /v1/devices and status show the URL in clear."""
    with pytest.raises(ConfigError) as exc:
        config_from_dict({"site": "hq", "defaults": {"password_env": "P"}, **raw})
    assert "not in the URL" in problems(exc)[key]
    assert "S3cret-pw" not in str(exc.value)


def test_device_and_broker_credentials_message() -> None:
    with pytest.raises(ConfigError) as exc:
        config_from_dict({"site": "hq", "mqtt": {"url": "mqtt://a:b@broker"}})
    assert problems(exc)["mqtt.url"] == (
        "credentials go in username / password_env or password_file, not in the URL"
    )


def test_webhook_secret_is_checked_by_the_sink_parser(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One parser for whsec_ secrets: what the config accepts is what the sink can use."""
    from edge_agent.forward import webhook

    seen: list[str] = []
    real = webhook.decode_secret

    def spy(secret: str) -> bytes:
        seen.append(secret)
        return real(secret)

    monkeypatch.setattr(webhook, "decode_secret", spy)
    cfg = load_config(write(tmp_path, MINIMAL))
    other = "whsec_" + "QUJD" * 8
    resolve_secrets(cfg, {"DEV_PW": "x", "WH_SECRET": f"{WHSEC} {other}"})
    assert seen == [WHSEC, other]


def test_no_device_endpoints_alias() -> None:
    import edge_agent.config

    assert not hasattr(edge_agent.config, "device_endpoints")
