"""The agent's configuration: one TOML file, validated by pydantic, secrets kept out of it.

``load_config(path)`` reads and validates the file and raises :class:`ConfigError` listing every
problem by key path (``devices[2].fingerprint: ...``); the CLI prints them and exits 78
(``EX_CONFIG``). Secrets never live in the TOML: a key names an environment variable
(``password_env``) or a file (``password_file``, relative to ``$CREDENTIALS_DIRECTORY`` when set, so
systemd's ``LoadCredential=`` works); ``resolve_secrets(cfg)`` reads them into :class:`Secrets`,
whose values are :class:`~pydantic.SecretStr` so no repr or log line shows them.
``device_settings(cfg, secrets)`` merges ``[defaults]`` into each ``[[devices]]`` entry.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from edge_agent.ops.logs import register_secrets

if TYPE_CHECKING:
    from edge_agent.xapi.endpoint import DeviceEndpoint

EX_CONFIG = 78
"""Exit status for an invalid configuration (sysexits.h ``EX_CONFIG``)."""

DEFAULT_API_LISTEN = "127.0.0.1:9780"
DEFAULT_STORE_NAME = "agent.db"

_SECRET_KEYS = frozenset({"password", "secret", "secrets", "token", "passphrase", "key_password"})
_NAME_RE = re.compile(r"^[a-z0-9_-]+$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HEX64_RE = re.compile(r"^[0-9a-fA-F]{64}$")
_NO_URL_CREDENTIALS = "credentials go in username / password_env or password_file, not in the URL"

Problem = tuple[str, str]


class ConfigError(Exception):
    """Every problem found in a configuration, each as ``(key path, message)``."""

    def __init__(self, problems: Iterable[Problem], *, source: str | None = None) -> None:
        self.problems: list[Problem] = list(problems)
        self.source = source
        super().__init__(self.format())

    def format(self) -> str:
        head = f"invalid configuration {self.source}" if self.source else "invalid configuration"
        return "\n".join([head + ":", *(f"  {key}: {msg}" for key, msg in self.problems)])

    def lines(self) -> list[str]:
        """``key: message`` lines, one per problem (what the CLI prints)."""
        return [f"{key}: {msg}" if key else msg for key, msg in self.problems]


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


def _check_env_name(v: str | None) -> str | None:
    if v is not None and not _ENV_NAME_RE.match(v):
        raise ValueError(f"{v!r} is not an environment variable name")
    return v


def _check_time_zone(v: str | None) -> str | None:
    if v is None:
        return v
    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {v!r}; use an IANA name such as 'Europe/Oslo'"
        ) from None
    return v


def _check_no_userinfo(netloc: str, message: str = _NO_URL_CREDENTIALS) -> None:
    # ``user:pass@`` in a URL would be used (websockets logs in with it) and shown wherever the
    # URL is: /v1/devices, status, logs. The message must not repeat the URL.
    if "@" in netloc:
        raise ValueError(message)


def _normalize_fingerprint(v: str | None) -> str | None:
    if v is None:
        return v
    hexstr = v.replace(":", "").replace(" ", "")
    if not _HEX64_RE.match(hexstr):
        raise ValueError(
            "expected the certificate's SHA-256 fingerprint: 64 hex digits, colons optional"
        )
    return hexstr.lower()


class StoreConfig(_Section):
    path: Path | None = None
    """SQLite file; ``None`` in the file means ``$STATE_DIRECTORY/agent.db`` or ``./edge-agent.db``
    (filled in by :func:`load_config`)."""
    outbox_max_events: PositiveInt = 1_000_000
    synchronous: Literal["normal", "full"] = "normal"

    @field_validator("synchronous", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v


class _DeviceKeys(_Section):
    """Keys that may be set in ``[defaults]`` and overridden per device."""

    username: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    auth: Literal["basic", "subprotocol"] | None = None
    ca_file: Path | None = None
    insecure: bool | None = None
    booking_timeout_s: Annotated[int, Field(ge=60, le=300)] | None = None
    request_grace_s: Annotated[float, Field(ge=0, le=600)] | None = None
    time_zone: str | None = None
    relist_interval_s: Annotated[float, Field(ge=10)] | None = None
    request_timeout_s: Annotated[float, Field(gt=0, le=300)] | None = None

    @field_validator("password_env")
    @classmethod
    def _env(cls, v: str | None) -> str | None:
        return _check_env_name(v)

    @field_validator("time_zone")
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        return _check_time_zone(v)

    @model_validator(mode="after")
    def _one_password_source(self) -> _DeviceKeys:
        if self.password_env is not None and self.password_file is not None:
            raise ValueError("set password_env or password_file, not both")
        return self


class DeviceDefaults(_DeviceKeys):
    username: str | None = "edge-agent"
    auth: Literal["basic", "subprotocol"] | None = "basic"
    insecure: bool | None = False
    booking_timeout_s: Annotated[int, Field(ge=60, le=300)] | None = 60
    request_grace_s: Annotated[float, Field(ge=0, le=600)] | None = 30.0
    time_zone: str | None = "UTC"
    relist_interval_s: Annotated[float, Field(ge=10)] | None = 300.0
    request_timeout_s: Annotated[float, Field(gt=0, le=300)] | None = 10.0


class DeviceConfig(_DeviceKeys):
    id: Annotated[str, Field(min_length=1, max_length=64)]
    host: str | None = None
    url: str | None = None
    fingerprint: str | None = None

    @field_validator("fingerprint")
    @classmethod
    def _fp(cls, v: str | None) -> str | None:
        return _normalize_fingerprint(v)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError("use lower-case letters, digits, '-' and '_' only")
        return v

    @field_validator("host")
    @classmethod
    def _host(cls, v: str | None) -> str | None:
        if v is not None and ("/" in v or not v):
            raise ValueError("a host name or IP address (with an optional :port), not a URL")
        if v is not None:
            _check_no_userinfo(v)
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        _check_no_userinfo(parts.netloc)
        if parts.scheme not in ("ws", "wss"):
            raise ValueError(
                "the device URL must start with wss:// (or ws:// when HTTP is allowed)"
            )
        if not parts.hostname:
            raise ValueError("the device URL has no host")
        return urlunsplit((parts.scheme, parts.netloc, parts.path or "/ws", parts.query, ""))

    @model_validator(mode="after")
    def _host_or_url(self) -> DeviceConfig:
        if (self.host is None) == (self.url is None):
            raise ValueError("set exactly one of host or url")
        return self

    @property
    def endpoint_url(self) -> str:
        """``wss://HOST/ws`` from ``host``, or ``url`` as given (path defaulting to ``/ws``)."""
        if self.url is not None:
            return self.url
        assert self.host is not None
        host = self.host
        try:
            if ipaddress.ip_address(host).version == 6:
                host = f"[{host}]"
        except ValueError:
            pass
        return f"wss://{host}/ws"


class WebhookConfig(_Section):
    url: str
    secret_env: str | None = None
    secret_file: str | None = None
    timeout_s: PositiveFloat = 10.0
    ttl_s: PositiveInt = 86_400
    max_in_flight: Annotated[int, Field(ge=1, le=256)] = 8
    batch_max: Annotated[int, Field(ge=1, le=1000)] = 1
    ca_file: Path | None = None

    @field_validator("secret_env")
    @classmethod
    def _env(cls, v: str | None) -> str | None:
        return _check_env_name(v)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        _check_no_userinfo(
            parts.netloc,
            "credentials go in secret_env or secret_file (the whsec_ signing secret), not in "
            "the URL",
        )
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected an http:// or https:// URL")
        return v

    @model_validator(mode="after")
    def _one_secret_source(self) -> WebhookConfig:
        if (self.secret_env is None) == (self.secret_file is None):
            raise ValueError(
                "set exactly one of secret_env or secret_file (the whsec_ signing secret)"
            )
        return self


class MqttConfig(_Section):
    url: str
    client_id: str | None = None
    """Default ``edge-agent-<site>``."""
    username: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive: Annotated[int, Field(ge=5, le=65535)] = 30
    base_topic: str | None = None
    """Default ``roomos-edge/<site>``."""
    protocol: Literal["3.1.1", "5"] = "5"
    ttl_s: PositiveInt = 86_400
    health_interval_s: PositiveFloat = 60.0

    @field_validator("password_env")
    @classmethod
    def _env(cls, v: str | None) -> str | None:
        return _check_env_name(v)

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol(cls, v: Any) -> Any:
        # TOML writers naturally type ``protocol = 5``; accept the number as well as the string.
        if isinstance(v, int | float) and not isinstance(v, bool):
            return {5: "5", 3.1: "3.1.1", 311: "3.1.1"}.get(v, str(v))
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        _check_no_userinfo(parts.netloc)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError("expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
        try:
            _ = parts.port
        except ValueError:
            raise ValueError("invalid port in the broker URL") from None
        return v

    @field_validator("base_topic")
    @classmethod
    def _topic(cls, v: str | None) -> str | None:
        if v is not None and (not v or any(c in v for c in "#+\0") or v.endswith("/")):
            raise ValueError("a topic prefix without wildcards (#, +) or a trailing '/'")
        return v

    @model_validator(mode="after")
    def _checks(self) -> MqttConfig:
        if self.password_env is not None and self.password_file is not None:
            raise ValueError("set password_env or password_file, not both")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("set both cert_file and key_file for a client certificate, or neither")
        return self

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    @property
    def hostname(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or (8883 if self.tls else 1883)


class ApiConfig(_Section):
    listen: str = DEFAULT_API_LISTEN

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        parse_listen(v)
        return v

    @property
    def host(self) -> str:
        return parse_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return parse_listen(self.listen)[1]


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error", "critical"] = "info"

    @field_validator("level", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v


class AgentConfig(_Section):
    site: Annotated[str, Field(min_length=1, max_length=64)]
    store: StoreConfig = StoreConfig()
    defaults: DeviceDefaults = DeviceDefaults()
    devices: list[DeviceConfig] = []
    webhook: WebhookConfig | None = None
    mqtt: MqttConfig | None = None
    api: ApiConfig = ApiConfig()
    log: LogConfig = LogConfig()

    @field_validator("site")
    @classmethod
    def _site(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError("use lower-case letters, digits, '-' and '_' only")
        return v

    @property
    def store_path(self) -> Path:
        assert self.store.path is not None, "load_config fills in the default store path"
        return self.store.path

    @property
    def mqtt_client_id(self) -> str:
        return (self.mqtt.client_id if self.mqtt else None) or f"edge-agent-{self.site}"

    @property
    def mqtt_base_topic(self) -> str:
        return (self.mqtt.base_topic if self.mqtt else None) or f"roomos-edge/{self.site}"

    def sink_names(self) -> list[str]:
        return [name for name in ("webhook", "mqtt") if getattr(self, name) is not None]


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:9780"`` / ``"[::1]:9780"`` / ``":9780"`` -> (host, port); port 0 is allowed."""
    host, sep, port_s = listen.rpartition(":")
    if not sep or not port_s.isdigit():
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:9780")
    port = int(port_s)
    if port > 65535:
        raise ValueError("port out of range")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "127.0.0.1", port


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_config(
    path: str | os.PathLike[str],
    *,
    require_sink: bool = False,
    env: Mapping[str, str] | None = None,
) -> AgentConfig:
    """Read and validate a TOML config; raise :class:`ConfigError` listing every problem.

    ``require_sink``: also demand a ``[webhook]`` or ``[mqtt]`` section (what ``run`` needs).
    Relative ``ca_file`` / ``cert_file`` / ``key_file`` paths are taken from the config file's
    directory; the store path defaults to ``$STATE_DIRECTORY/agent.db`` (systemd
    ``StateDirectory=``), else ``./edge-agent.db``.
    """
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([("", f"{p}: no such file")], source=str(p)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([("", f"{p}: cannot read: {exc}")], source=str(p)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([("", f"{p}: not valid TOML: {exc}")], source=str(p)) from None
    return config_from_dict(
        raw, base_dir=p.parent, require_sink=require_sink, env=env, source=str(p)
    )


def config_from_dict(
    raw: Mapping[str, Any],
    *,
    base_dir: Path | None = None,
    require_sink: bool = False,
    env: Mapping[str, str] | None = None,
    source: str | None = None,
) -> AgentConfig:
    """Validate an already-parsed config (the TOML document as a dict); see :func:`load_config`."""
    env = os.environ if env is None else env
    problems = list(_secret_keys(raw, ()))
    secret_paths = {key for key, _ in problems}
    cleaned = _without_secret_keys(raw)
    cfg: AgentConfig | None = None
    try:
        cfg = AgentConfig.model_validate(cleaned)
    except ValidationError as exc:
        problems.extend(p for p in _problems(exc) if p[0] not in secret_paths)
    problems.extend(_cross_checks(cleaned, require_sink=require_sink))
    if problems:
        raise ConfigError(problems, source=source)
    assert cfg is not None
    return _with_paths(cfg, base_dir, env)


def _secret_keys(node: Any, loc: tuple[str | int, ...]) -> Iterator[Problem]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            if isinstance(key, str) and key.lower() in _SECRET_KEYS:
                hint = "secret" if "secret" in key.lower() else "password"
                msg = (
                    f"secrets are not accepted in the config file; use {hint}_env (an "
                    f"environment variable) or {hint}_file (a file, e.g. a systemd credential)"
                )
                yield _key_path((*loc, key)), msg
            else:
                yield from _secret_keys(value, (*loc, key))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _secret_keys(item, (*loc, i))


def _without_secret_keys(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {
            k: _without_secret_keys(v)
            for k, v in node.items()
            if not (isinstance(k, str) and k.lower() in _SECRET_KEYS)
        }
    if isinstance(node, list):
        return [_without_secret_keys(v) for v in node]
    return node


def _key_path(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _section_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The model class that holds the last key of ``loc`` (for "did you mean" hints)."""
    model: type[BaseModel] = AgentConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field_info = model.model_fields.get(part)
        if field_info is None:
            return None
        ann = field_info.annotation
        nxt = None
        for cand in (ann, *getattr(ann, "__args__", ())):
            for inner in (cand, *getattr(cand, "__args__", ())):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    nxt = inner
        if nxt is None:
            return None
        model = nxt
    return model


def _problems(exc: ValidationError) -> Iterator[Problem]:
    for err in exc.errors():
        loc = tuple(
            p for p in err["loc"] if isinstance(p, int) or not str(p).startswith("function-")
        )
        msg = str(err["msg"])
        etype = err["type"]
        if etype == "extra_forbidden":
            model = _section_at(loc)
            known = sorted(model.model_fields) if model else []
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            msg = "unknown key" + (f" (did you mean {close[0]!r}?)" if close else "")
            if known:
                msg += f"; allowed: {', '.join(known)}"
        elif etype == "missing":
            msg = "required key is missing"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        yield _key_path(loc), msg


def _cross_checks(raw: Mapping[str, Any], *, require_sink: bool) -> Iterator[Problem]:
    # On the raw document, so these are reported even when pydantic found other problems.
    defaults = raw.get("defaults")
    defaults = defaults if isinstance(defaults, Mapping) else {}
    default_source = any(k in defaults for k in ("password_env", "password_file"))
    devices = raw.get("devices")
    seen: dict[str, int] = {}
    for i, dev in enumerate(devices if isinstance(devices, list) else []):
        if not isinstance(dev, Mapping):
            continue
        dev_id = dev.get("id")
        if isinstance(dev_id, str):
            if dev_id in seen:
                yield (
                    f"devices[{i}].id",
                    f"duplicate device id {dev_id!r} (also devices[{seen[dev_id]}])",
                )
            else:
                seen[dev_id] = i
        if not default_source and not any(k in dev for k in ("password_env", "password_file")):
            msg = "no device password source: set password_env or password_file here or in "
            yield f"devices[{i}]", msg + "[defaults]"
    if require_sink and raw.get("webhook") is None and raw.get("mqtt") is None:
        yield "", "no sink configured: add a [webhook] or an [mqtt] section (or both)"


def _with_paths(cfg: AgentConfig, base_dir: Path | None, env: Mapping[str, str]) -> AgentConfig:
    def rel(p: Path | None) -> Path | None:
        if p is None or base_dir is None:
            return p
        p = p.expanduser()
        return p if p.is_absolute() else base_dir / p

    def secret_file(name: str | None) -> str | None:
        # A relative secret file is a systemd credential name when $CREDENTIALS_DIRECTORY is
        # set (resolve_secrets joins them); otherwise it sits next to the config, like ca_file.
        if name is None or env.get("CREDENTIALS_DIRECTORY"):
            return name
        path = rel(Path(name))
        return str(path) if path is not None else name

    store_path = cfg.store.path
    if store_path is None:
        # systemd may list several state directories separated by ':'; ours is the first.
        state_dir = env.get("STATE_DIRECTORY", "").split(":")[0]
        store_path = Path(state_dir) / DEFAULT_STORE_NAME if state_dir else Path("edge-agent.db")
    else:
        store_path = rel(store_path)
    updates: dict[str, Any] = {
        "store": cfg.store.model_copy(update={"path": store_path}),
        "defaults": cfg.defaults.model_copy(
            update={
                "ca_file": rel(cfg.defaults.ca_file),
                "password_file": secret_file(cfg.defaults.password_file),
            }
        ),
        "devices": [
            d.model_copy(
                update={"ca_file": rel(d.ca_file), "password_file": secret_file(d.password_file)}
            )
            for d in cfg.devices
        ],
    }
    if cfg.webhook is not None:
        updates["webhook"] = cfg.webhook.model_copy(
            update={
                "ca_file": rel(cfg.webhook.ca_file),
                "secret_file": secret_file(cfg.webhook.secret_file),
            }
        )
    if cfg.mqtt is not None:
        paths = {k: rel(getattr(cfg.mqtt, k)) for k in ("ca_file", "cert_file", "key_file")}
        updates["mqtt"] = cfg.mqtt.model_copy(
            update={**paths, "password_file": secret_file(cfg.mqtt.password_file)}
        )
    return cfg.model_copy(update=updates)


# ---------------------------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Secrets:
    """Secret values read from the environment or from files; ``SecretStr`` hides them in reprs."""

    device_passwords: dict[str, SecretStr] = field(default_factory=dict)
    webhook_secrets: list[SecretStr] = field(default_factory=list)
    """One or more ``whsec_...`` signing secrets (several during key rotation)."""
    mqtt_password: SecretStr | None = None

    def values(self) -> list[str]:
        """Every secret as plain text, for the log redactor (it masks them wherever they occur)."""
        out = [s.get_secret_value() for s in self.device_passwords.values()]
        out += [s.get_secret_value() for s in self.webhook_secrets]
        if self.mqtt_password is not None:
            out.append(self.mqtt_password.get_secret_value())
        return [v for v in out if v]


def _read_secret(
    key: str,
    *,
    env_name: str | None,
    file_name: str | None,
    env: Mapping[str, str],
    problems: list[Problem],
) -> SecretStr | None:
    if env_name is not None:
        value = env.get(env_name)
        if value is None or value == "":
            problems.append(
                (f"{key}_env", f"environment variable {env_name} is not set or is empty")
            )
            return None
        return SecretStr(value)
    if file_name is not None:
        path = Path(file_name).expanduser()
        cred_dir = env.get("CREDENTIALS_DIRECTORY")
        if not path.is_absolute() and cred_dir:
            path = Path(cred_dir) / path
        try:
            value = path.read_text(encoding="utf-8").strip("\r\n")
        except OSError as exc:
            problems.append((f"{key}_file", f"cannot read {path}: {exc.strerror or exc}"))
            return None
        if not value:
            problems.append((f"{key}_file", f"{path} is empty"))
            return None
        return SecretStr(value)
    return None


def resolve_secrets(cfg: AgentConfig, env: Mapping[str, str] | None = None) -> Secrets:
    """Read every secret the config names; raise :class:`ConfigError` listing every one missing.

    The values are also registered with the log redactor (:func:`edge_agent.ops.logs.register_secrets`).
    """
    env = os.environ if env is None else env
    problems: list[Problem] = []
    passwords: dict[str, SecretStr] = {}
    for i, dev in enumerate(cfg.devices):
        src: _DeviceKeys = dev
        key = f"devices[{i}].password"
        if dev.password_env is None and dev.password_file is None:
            key, src = "defaults.password", cfg.defaults
        if key == "defaults.password" and any(p[0].startswith(key) for p in problems):
            continue  # reported once for [defaults], not once per device
        secret = _read_secret(
            key, env_name=src.password_env, file_name=src.password_file, env=env, problems=problems
        )
        if secret is not None:
            passwords[dev.id] = secret
    webhook_secrets: list[SecretStr] = []
    if cfg.webhook is not None:
        secret = _read_secret(
            "webhook.secret",
            env_name=cfg.webhook.secret_env,
            file_name=cfg.webhook.secret_file,
            env=env,
            problems=problems,
        )
        if secret is not None:
            # The sink's own parser (imported here: it pulls in httpx, which config users that
            # never send a webhook should not pay for at import).
            from edge_agent.forward.webhook import decode_secret

            tokens = secret.get_secret_value().split()
            key = "webhook.secret_env" if cfg.webhook.secret_env else "webhook.secret_file"
            msg = "the webhook secret must be one or more whsec_<base64> values separated by spaces"
            if not tokens:
                problems.append((key, msg))
            for n, token in enumerate(tokens, 1):
                try:
                    decode_secret(token)
                except ValueError as exc:
                    which = f"value {n} of {len(tokens)}: " if len(tokens) > 1 else ""
                    problems.append((key, f"{msg} ({which}{exc})"))
                    break
            webhook_secrets = [SecretStr(t) for t in tokens]
    mqtt_password = None
    if cfg.mqtt is not None:
        mqtt_password = _read_secret(
            "mqtt.password",
            env_name=cfg.mqtt.password_env,
            file_name=cfg.mqtt.password_file,
            env=env,
            problems=problems,
        )
    if problems:
        raise ConfigError(problems)
    secrets = Secrets(passwords, webhook_secrets, mqtt_password)
    # Every path that reads secrets (start, SIGHUP reload, check-config) hands them to the log
    # redactor here, so none can forget to.
    register_secrets(secrets.values())
    return secrets


# ---------------------------------------------------------------------------------------------
# Per-device settings
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceSettings:
    """One device with ``[defaults]`` merged in: everything the agent needs to run it."""

    id: str
    url: str
    username: str
    password: SecretStr
    auth: Literal["basic", "subprotocol"]
    ca_file: Path | None
    fingerprint: str | None
    """SHA-256 of the certificate (DER), 64 lower-case hex digits without colons."""
    insecure: bool
    booking_timeout_s: int
    """Fallback when the device's ``Bookings AdhocBooking BookingTimeout`` cannot be read."""
    request_grace_s: float
    time_zone: str
    """Fallback when the device's ``Configuration Time Zone`` cannot be read."""
    relist_interval_s: float
    request_timeout_s: float

    def endpoint(self) -> DeviceEndpoint:
        """The :class:`edge_agent.xapi.DeviceEndpoint` for this device."""
        from edge_agent.xapi.endpoint import DeviceEndpoint

        return DeviceEndpoint(
            device_id=self.id,
            url=self.url,
            username=self.username,
            password=self.password.get_secret_value(),
            auth=self.auth,
            ca_file=str(self.ca_file) if self.ca_file else None,
            fingerprint=self.fingerprint,
            insecure=self.insecure,
        )


def device_settings(cfg: AgentConfig, secrets: Secrets) -> list[DeviceSettings]:
    """Per-device settings, in config order, each key from the device else from ``[defaults]``."""
    d = cfg.defaults
    out: list[DeviceSettings] = []
    for dev in cfg.devices:

        def pick(name: str, dev: DeviceConfig = dev) -> Any:
            v = getattr(dev, name)
            return getattr(d, name) if v is None else v

        out.append(
            DeviceSettings(
                id=dev.id,
                url=dev.endpoint_url,
                username=pick("username"),
                password=secrets.device_passwords[dev.id],
                auth=pick("auth"),
                ca_file=pick("ca_file"),
                fingerprint=dev.fingerprint,
                insecure=pick("insecure"),
                booking_timeout_s=pick("booking_timeout_s"),
                request_grace_s=pick("request_grace_s"),
                time_zone=pick("time_zone"),
                relist_interval_s=pick("relist_interval_s"),
                request_timeout_s=pick("request_timeout_s"),
            )
        )
    return out
