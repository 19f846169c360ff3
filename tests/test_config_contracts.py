"""Config validation held to the documented contracts (README "Configuration", DESIGN.md "Fleet
mode"): no password anywhere in the store URL, finite numbers in range, ports 1-65535, a
notification URL without a query, ``[fleet]`` only with ``[store] url``, a sane member id; and
the example config documents every key."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import pytest
from pydantic import BaseModel

from edge_agent.config import AgentConfig, ConfigError, config_from_dict, load_config

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "config" / "agent.example.toml"
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BASE: dict[str, Any] = {
    "site": "hq",
    "webhook": {"url": "http://127.0.0.1:9/hook", "secret_env": "WH"},
}
PG = "postgresql://edge@db.example:5432/edge"
MICROSOFT = {"tenant_id": "t", "client_id": "c", "client_secret_env": "GRAPH"}
GOOGLE = {"service_account_file": "key.json", "subject": "admin@example.com"}


def refused(raw: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as exc:
        config_from_dict({**BASE, **raw}, env={})
    return dict(exc.value.problems)


# -- #1: a password in the PostgreSQL URL ------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"{PG}?password=s3cret-pw",
        f"{PG}?sslmode=require&sslpassword=s3cret-pw",
        f"{PG}?passfile=/home/edge/s3cret-pw",
        f"{PG}?PassWord=s3cret-pw",  # libpq keywords are lower-case; refuse any spelling
        f"{PG}?%70assword=s3cret-pw",  # percent-encoded key
        "postgresql://edge:s3cret-pw@db.example:5432/edge",
        "postgresql://edge:@db.example:5432/edge",  # an empty password is still one
    ],
)
def test_a_password_anywhere_in_the_store_url_is_refused_without_echoing_it(url: str) -> None:
    problems = refused({"store": {"url": url}})
    assert set(problems) == {"store.url"}
    assert "password_env or password_file" in problems["store.url"]
    assert "s3cret-pw" not in problems["store.url"]


def test_other_libpq_query_parameters_are_fine() -> None:
    cfg = config_from_dict(
        {**BASE, "store": {"url": f"{PG}?application_name=x&connect_timeout=5"}}, env={}
    )
    assert cfg.store.postgres


def test_the_store_guard_is_shared() -> None:
    from edge_agent.config.models import postgres_url_secret

    assert postgres_url_secret(PG) is None
    message = postgres_url_secret(f"{PG}?sslpassword=zz-secret")
    assert message is not None and "sslpassword" in message and "zz-secret" not in message


# -- #11: ranges ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), 1e12])
@pytest.mark.parametrize(("section", "body"), [("microsoft", MICROSOFT), ("google", GOOGLE)])
def test_refresh_rooms_s_is_finite_and_at_most_a_week(
    section: str, body: dict[str, Any], value: float
) -> None:
    problems = refused({section: {**body, "refresh_rooms_s": value}})
    assert f"{section}.refresh_rooms_s" in problems


def _float_keys() -> list[tuple[str, ...]]:
    """Every float key of every section, as a path of the raw document."""
    out: list[tuple[str, ...]] = []

    def flat(ann: Any) -> list[Any]:
        # ``X | None``, ``Annotated[float, Field(...)] | None``: the plain types inside.
        if get_origin(ann) is Annotated:
            return flat(get_args(ann)[0])
        if get_origin(ann) in (Union, UnionType):
            return [t for arg in get_args(ann) for t in flat(arg)]
        return [ann]

    def walk(model: type[BaseModel], path: tuple[str, ...]) -> None:
        for name, info in model.model_fields.items():
            # Lists of sections ([[devices]], [[rooms]]) are not walked: their float keys are
            # [defaults]' keys.
            types = flat(info.annotation)
            if float in types:
                out.append((*path, name))
            for t in types:
                if isinstance(t, type) and issubclass(t, BaseModel) and not path:
                    walk(t, (name,))

    walk(AgentConfig, ())
    return out


FLOAT_KEYS = _float_keys()


def test_the_float_keys_are_found() -> None:
    # The walk below must cover the keys it is about, or the next test proves nothing.
    assert ("microsoft", "refresh_rooms_s") in FLOAT_KEYS
    assert ("fleet", "lease_s") in FLOAT_KEYS and ("webhook", "timeout_s") in FLOAT_KEYS
    assert ("defaults", "ghost_after_s") in FLOAT_KEYS


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
@pytest.mark.parametrize("key", FLOAT_KEYS, ids=".".join)
def test_no_float_key_takes_inf_or_nan(key: tuple[str, ...], value: float) -> None:
    section, name = key
    sections: dict[str, dict[str, Any]] = {
        "store": {"url": PG},
        "fleet": {},
        "webhook": dict(BASE["webhook"]),
        "mqtt": {"url": "mqtt://127.0.0.1"},
        "microsoft": dict(MICROSOFT),
        "google": dict(GOOGLE),
        "defaults": {},
    }
    raw: dict[str, Any] = {section: {**sections[section], name: value}}
    if section == "fleet":
        raw["store"] = {"url": PG}
    problems = refused(raw)
    assert f"{section}.{name}" in problems, problems


@pytest.mark.parametrize("url", ["mqtt://broker:0", "mqtts://broker:0", "mqtt://broker:65536"])
def test_an_mqtt_port_outside_1_to_65535_is_refused(url: str) -> None:
    problems = refused({"mqtt": {"url": url}})
    assert "1 to 65535" in problems["mqtt.url"]


@pytest.mark.parametrize(
    "url",
    ["https://agent.example.com/?a=1", "https://agent.example.com/#x", "https://a.example.com?"],
)
@pytest.mark.parametrize(("section", "body"), [("microsoft", MICROSOFT), ("google", GOOGLE)])
def test_a_notification_url_with_a_query_or_fragment_is_refused(
    section: str, body: dict[str, Any], url: str
) -> None:
    problems = refused({section: {**body, "notification_url": url}})
    assert "no query string or fragment" in problems[f"{section}.notification_url"]


def test_a_plain_notification_url_is_fine() -> None:
    raw = {**BASE, "microsoft": {**MICROSOFT, "notification_url": "https://a.example.com/edge/"}}
    cfg = config_from_dict(raw, env={})
    assert cfg.microsoft is not None
    assert cfg.microsoft.notification_url == "https://a.example.com/edge"


@pytest.mark.parametrize("fleet", [{}, {"member_id": "edge-1"}, {"lease_s": 30}])
def test_a_fleet_section_without_a_store_url_is_refused(fleet: dict[str, Any]) -> None:
    problems = refused({"fleet": fleet})
    assert "[store] url" in problems["fleet"]


def test_a_fleet_section_with_a_sqlite_path_is_refused_too(tmp_path: Path) -> None:
    problems = refused({"store": {"path": str(tmp_path / "a.db")}, "fleet": {"lease_s": 30}})
    assert "fleet" in problems


@pytest.mark.parametrize(
    "member_id", ["a/b", "a b", "edge\t1", "edge\x001", "-edge", ".edge", "ed\nge", "é"]
)
def test_a_member_id_outside_host_name_characters_is_refused(member_id: str) -> None:
    problems = refused({"store": {"url": PG}, "fleet": {"member_id": member_id}})
    assert "fleet.member_id" in problems


@pytest.mark.parametrize(
    "member_id", ["edge-1", "edge_1", "host.example.com", "EDGE1", "_x", "a" * 128]
)
def test_host_names_and_underscores_make_member_ids(member_id: str) -> None:
    cfg = config_from_dict({**BASE, "store": {"url": PG}, "fleet": {"member_id": member_id}})
    assert cfg.fleet.member_id == member_id


def test_relative_store_files_are_taken_from_the_config_directory(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        'site = "hq"\n[webhook]\nurl = "http://127.0.0.1:9/h"\nsecret_env = "WH"\n'
        f'[store]\nurl = "{PG}"\nca_file = "db-ca.pem"\npassword_file = "store-pw"\n'
    )
    cfg = load_config(path, env={})
    assert cfg.store.ca_file == tmp_path / "db-ca.pem"
    assert cfg.store.password_file == str(tmp_path / "store-pw")
    # Under systemd a relative password file is a credential name, as for every *_file.
    cfg = load_config(path, env={"CREDENTIALS_DIRECTORY": "/run/credentials/x"})
    assert cfg.store.password_file == "store-pw"


# -- #9: the example documents every key ---------------------------------------------------------

_SECTIONS = {
    "store": "store",
    "defaults": "defaults",
    "devices": "[devices]",
    "webhook": "webhook",
    "mqtt": "mqtt",
    "api": "api",
    "log": "log",
    "fleet": "fleet",
    "microsoft": "microsoft",
    "google": "google",
    "rooms": "[rooms]",
}


def _example_keys() -> dict[str, set[str]]:
    """``section -> keys`` written in the example, set or commented out (``# key = ...``)."""
    keys: dict[str, set[str]] = {"": set()}
    section = ""
    for line in EXAMPLE.read_text().splitlines():
        bare = line.lstrip("# ").rstrip()
        header = re.fullmatch(r"\[\[?([a-z_]+)\]\]?", bare)
        if header and (line.startswith("[") or line.startswith("# [")):
            section = header.group(1)
            keys.setdefault(section, set())
            continue
        key = re.match(r"([a-z_]+) = ", bare)
        if key and (line.startswith(key.group(1)) or line.startswith("# " + key.group(1))):
            keys[section].add(key.group(1))
    return keys


def test_the_example_config_names_every_key_of_every_section() -> None:
    written = _example_keys()
    missing: list[str] = []
    for name, info in AgentConfig.model_fields.items():
        ann = info.annotation
        model = next(
            (
                a
                for a in (ann, *getattr(ann, "__args__", ()))
                for a in (a, *getattr(a, "__args__", ()))
                if isinstance(a, type) and issubclass(a, BaseModel)
            ),
            None,
        )
        if model is None:
            if name not in written[""]:
                missing.append(name)
            continue
        section = name
        missing += [
            f"{section}.{key}"
            for key in model.model_fields
            if key not in written.get(section, set())
            # [[devices]] inherits every [defaults] key; the example shows the override idea.
            and not (section == "devices" and key in written["defaults"])
        ]
    assert missing == []


def test_the_fleet_block_of_the_example_is_valid_once_uncommented(tmp_path: Path) -> None:
    """The commented fleet keys are real keys with valid values (a copy-paste works)."""
    text = EXAMPLE.read_text()
    for key in ("url", "password_env", "sslmode", "ca_file", "member_id", "lease_s"):
        text = re.sub(rf"^# ({key} = )", r"\1", text, count=1, flags=re.MULTILINE)
    text = text.replace("# [fleet]\n", "[fleet]\n", 1)
    # The uncommented [store] keys follow [store]'s own keys, above the commented [fleet].
    raw = tomllib.loads(text)
    assert raw["fleet"] == {"member_id": "edge-1", "lease_s": 15}
    assert raw["store"]["url"].startswith("postgresql://")
    raw.pop("microsoft", None), raw.pop("google", None)
    cfg = config_from_dict(raw, base_dir=tmp_path, env={})
    assert cfg.store.postgres and cfg.store.sslmode == "verify-full"
    assert cfg.fleet.lease_s == 15.0


async def test_the_store_itself_refuses_a_password_in_its_url() -> None:
    """The store's own guard (not only the config check) uses the same rule: a query-string
    password is refused before any connection is tried, and the message never repeats it."""
    from edge_agent.store.base import StoreError
    from edge_agent.store.postgres import PostgresStore, read_only

    url = "postgresql://edge@127.0.0.1:1/edge?sslpassword=s3cret"
    with pytest.raises(ValueError) as refused:
        await PostgresStore.open(url, sinks=("webhook",))
    assert "s3cret" not in str(refused.value)
    with pytest.raises(StoreError) as refused_ro:
        async with read_only(url):
            pass
    assert "s3cret" not in str(refused_ro.value)
