"""The configuration's sections as pydantic models: types, ranges and per-key checks.

Every section forbids unknown keys and is frozen. What needs the whole document (duplicate device
ids, a password source per device, a sink for ``run``) is checked in :mod:`.load`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import SplitResult, parse_qsl, urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edge_agent.bookings.pending import BOOKING_TIMEOUT_DEFAULT_S, DEFAULT_GRACE_S

DEFAULT_API_LISTEN = "127.0.0.1:9780"
DEFAULT_STORE_NAME = "agent.db"
SYSTEM_STORE_PATH = Path("/var/lib/edge-agent") / DEFAULT_STORE_NAME
"""The shipped unit's store (``StateDirectory=edge-agent``)."""
LOCAL_STORE_PATH = Path("edge-agent.db")

_NAME_RE = re.compile(r"^[a-z0-9_-]+$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HEX64_RE = re.compile(r"^[0-9a-fA-F]{64}$")
_NO_URL_CREDENTIALS = "credentials go in username / password_env or password_file, not in the URL"
_MEMBER_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
"""What a host name allows (the default member id is the host name), plus ``_``: no ``/``,
spaces or control characters (it names the member in logs, /v1/fleet and the lease rows)."""
POSTGRES_SECRET_PARAMS = frozenset({"password", "sslpassword", "passfile"})
"""libpq connection parameters that carry a password or point at one: libpq honours them in a
URL's query string (``?password=...``), so they are refused there like ``user:pass@``."""


class _Section(BaseModel):
    # allow_inf_nan=False: TOML has ``inf`` and ``nan``, and no float key means either (an
    # interval of ``inf`` never fires, ``nan`` compares false with every bound).
    model_config = ConfigDict(
        extra="forbid", frozen=True, str_strip_whitespace=True, allow_inf_nan=False
    )


# Every number has a finite, sensible range: a value that passes check-config must not break
# ``run`` (``timeout_s = inf`` never times out; ``health_interval_s = 1e-9`` published 27,846
# messages in 12 s).
PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
TtlSeconds = Annotated[int, Field(ge=1, le=31_536_000)]  # up to a year
"""How long an undelivered event is kept for a sink."""
GraceSeconds = Annotated[float, Field(ge=0, le=600, allow_inf_nan=False)]
RelistSeconds = Annotated[float, Field(ge=10, le=86_400, allow_inf_nan=False)]
RequestSeconds = Annotated[float, Field(ge=0.1, le=300, allow_inf_nan=False)]
GhostSeconds = Annotated[float, Field(ge=1, le=86_400, allow_inf_nan=False)]
ReleaseSeconds = Annotated[float, Field(ge=0, le=86_400, allow_inf_nan=False)]  # 0: never
OccupancyIntervalSeconds = Annotated[float, Field(ge=0, le=3_600, allow_inf_nan=False)]
RefreshRoomsSeconds = Annotated[float, Field(ge=60, le=604_800, allow_inf_nan=False)]  # a week


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


def _is_ip(v: str) -> bool:
    try:
        ipaddress.ip_address(v)
    except ValueError:
        return False
    return True


def postgres_url_secret(url: str) -> str | None:
    """Why a PostgreSQL URL must be refused for carrying a password (``user:pass@`` or a
    ``password`` / ``sslpassword`` / ``passfile`` query parameter), or ``None``. The message
    never repeats the URL. Shared by the config check and the store's own guard."""
    parts = urlsplit(url)
    where = "[store] password_env or password_file"
    try:
        password = parts.password
    except ValueError:
        password = None
    if password is not None:
        return f"no password in the URL (user:password@): put it in {where}"
    keys = {key.strip().lower() for key, _ in parse_qsl(parts.query, keep_blank_values=True)}
    found = sorted(keys & POSTGRES_SECRET_PARAMS)
    if found:
        return (
            f"no {', '.join(found)} in the URL's query string (libpq would use it, and the URL "
            f"is shown in logs and /v1/fleet): put the password in {where}"
        )
    return None


def _check_port(parts: SplitResult, what: str) -> None:
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{what} must be a number from 1 to 65535") from None
    if port == 0:
        raise ValueError(f"{what} must be a number from 1 to 65535")


def _normalize_fingerprint(v: str | None) -> str | None:
    if v is None:
        return v
    hexstr = v.replace(":", "").replace(" ", "")
    if not _HEX64_RE.match(hexstr):
        raise ValueError(
            "expected the certificate's SHA-256 fingerprint: 64 hex digits, colons optional"
        )
    return hexstr.lower()


def default_store_path(env: Mapping[str, str], system_path: Path = SYSTEM_STORE_PATH) -> Path:
    """``store.path`` when the config sets none, the same for the agent and the CLI:
    ``$STATE_DIRECTORY/agent.db`` (the agent under systemd), else ``system_path`` when it exists
    (the CLI on the agent's host, where ``$STATE_DIRECTORY`` is not set: the unit's store),
    else ``./edge-agent.db`` (an agent run by hand)."""
    # systemd may list several state directories separated by ':'; ours is the first.
    state_dir = env.get("STATE_DIRECTORY", "").split(":")[0]
    if state_dir:
        return Path(state_dir) / DEFAULT_STORE_NAME
    if system_path.exists():
        return system_path
    return LOCAL_STORE_PATH


def store_default_tried(env: Mapping[str, str], system_path: Path = SYSTEM_STORE_PATH) -> str:
    """What :func:`default_store_path` looked at, for a message about a store not found."""
    state_dir = env.get("STATE_DIRECTORY", "").split(":")[0]
    if state_dir:
        return f"store.path is not set; $STATE_DIRECTORY is {state_dir}"
    return (
        f"store.path is not set, $STATE_DIRECTORY is not set, {system_path} "
        f"{'exists' if system_path.exists() else 'does not exist'}; so ./{LOCAL_STORE_PATH} in "
        "the working directory"
    )


class StoreConfig(_Section):
    path: Path | None = None
    """SQLite file; ``None`` in the file means :func:`default_store_path` (filled in by
    :func:`load_config`)."""
    outbox_max_events: Annotated[int, Field(ge=1, le=100_000_000)] = 1_000_000
    synchronous: Literal["normal", "full"] = "normal"

    @field_validator("synchronous", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    # -- fleet mode: PostgreSQL instead of the SQLite file (DESIGN.md "Fleet mode") -----------
    url: str | None = None
    """``postgresql://user@host:5432/db``: the store lives in PostgreSQL and the agent runs as a
    fleet member. No password in it: ``password_env`` / ``password_file``."""
    password_env: str | None = None
    password_file: str | None = None
    sslmode: Literal["disable", "prefer", "require", "verify-ca", "verify-full"] | None = None
    ca_file: Path | None = None

    _check_password_env = field_validator("password_env")(_check_env_name)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError("expected postgresql://user@host:5432/db")
        # The URL is shown in logs and /v1/fleet; the message must not repeat it.
        secret = postgres_url_secret(v)
        if secret is not None:
            raise ValueError(secret)
        if not parts.hostname or not parts.path.strip("/"):
            raise ValueError("expected postgresql://user@host:5432/db (host and database)")
        return v

    @model_validator(mode="after")
    def _postgres_keys(self) -> StoreConfig:
        pg_only = [
            k
            for k in ("password_env", "password_file", "sslmode", "ca_file")
            if getattr(self, k) is not None
        ]
        if self.url is None and pg_only:
            raise ValueError(f"{', '.join(pg_only)} need [store] url (a postgresql:// URL)")
        if self.password_env is not None and self.password_file is not None:
            raise ValueError("give password_env or password_file, not both")
        return self

    @property
    def postgres(self) -> bool:
        return self.url is not None


class FleetConfig(_Section):
    """Fleet membership (only with ``[store] url``): who this member is, how long a lease lasts."""

    member_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    """Default: the host name."""
    lease_s: Annotated[float, Field(ge=2.0, le=3600.0)] = 15.0

    @field_validator("member_id")
    @classmethod
    def _member_id(cls, v: str | None) -> str | None:
        if v is not None and not _MEMBER_ID_RE.fullmatch(v):
            raise ValueError(
                "use letters, digits, '-', '_' and '.' only (a host name, say), starting with "
                "a letter, digit or '_'"
            )
        return v


class _DeviceKeys(_Section):
    """Keys that may be set in ``[defaults]`` and overridden per device."""

    username: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    auth: Literal["basic", "subprotocol"] | None = None
    ca_file: Path | None = None
    insecure: bool | None = None
    booking_timeout_s: Annotated[int, Field(ge=60, le=300)] | None = None
    request_grace_s: GraceSeconds | None = None
    time_zone: str | None = None
    relist_interval_s: RelistSeconds | None = None
    request_timeout_s: RequestSeconds | None = None
    ghost_after_s: GhostSeconds | None = None
    release_after_s: ReleaseSeconds | None = None
    occupancy_min_interval_s: OccupancyIntervalSeconds | None = None

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
    booking_timeout_s: Annotated[int, Field(ge=60, le=300)] | None = BOOKING_TIMEOUT_DEFAULT_S
    request_grace_s: GraceSeconds | None = DEFAULT_GRACE_S
    time_zone: str | None = "UTC"
    relist_interval_s: RelistSeconds | None = 300.0
    request_timeout_s: RequestSeconds | None = 10.0
    ghost_after_s: GhostSeconds | None = 600.0
    release_after_s: ReleaseSeconds | None = 0.0
    occupancy_min_interval_s: OccupancyIntervalSeconds | None = 10.0


class DeviceConfig(_DeviceKeys):
    id: Annotated[str, Field(min_length=1, max_length=64)]
    host: str | None = None
    url: str | None = None
    fingerprint: str | None = None
    calendar: str | None = None
    """The room mailbox whose calendar this device's room takes its window from (a linked room,
    DESIGN.md "Rooms and calendar sources"): ``room-4a@contoso.com``."""
    calendar_source: Literal["microsoft", "google"] | None = None
    """Which calendar source holds ``calendar``; default the one configured ([microsoft] or
    [google]); required when both are."""

    @field_validator("calendar")
    @classmethod
    def _calendar(cls, v: str | None) -> str | None:
        return _check_mailbox(v)

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
            if not _is_ip(v):  # a bare IPv6 address is all colons, no port
                _check_port(urlsplit("//" + v), "the port in host")
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
        _check_port(parts, "the port in the device URL")
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
    timeout_s: Annotated[float, Field(ge=0.1, le=300, allow_inf_nan=False)] = 10.0
    ttl_s: TtlSeconds = 86_400
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
        _check_port(parts, "the port in the webhook URL")
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
    ttl_s: TtlSeconds = 86_400
    health_interval_s: Annotated[float, Field(ge=1, le=3600, allow_inf_nan=False)] = 60.0
    discovery: bool = False
    """Home Assistant MQTT discovery: per room ``booked``, ``next booking``, ``people count``."""
    discovery_prefix: str = "homeassistant"

    @field_validator("discovery_prefix")
    @classmethod
    def _discovery_prefix(cls, v: str) -> str:
        if not v.strip("/") or any(c in v for c in "+#\0"):
            raise ValueError("a discovery prefix is one or more MQTT topic levels, without + or #")
        return v.strip("/")

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
        _check_port(parts, "the port in the broker URL")
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
    show_private: bool = False
    """Show private bookings' title and organizer on the status page and in ``/v1``."""
    token_env: str | None = None
    """Environment variable holding the bearer token(s), space-separated (rotation)."""
    token_file: str | None = None
    """File holding the bearer token(s), space-separated (relative: ``$CREDENTIALS_DIRECTORY``)."""
    read_requires_token: bool = False
    """Read routes need the token on loopback too (always when ``listen`` is not loopback)."""
    allowed_hosts: list[Annotated[str, Field(min_length=1, max_length=253)]] = []
    """``Host`` names accepted besides the listen address (and loopback names on loopback)."""
    cert_file: Path | None = None
    key_file: Path | None = None

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        parse_listen(v)
        return v

    @field_validator("token_env")
    @classmethod
    def _token_env(cls, v: str | None) -> str | None:
        return _check_env_name(v)

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        for name in v:
            if any(c in name for c in "/@ ") or name.count(":") == 1:
                raise ValueError(f"{name!r}: a host name or IP address, without scheme or port")
        return [name.strip("[]").lower() for name in v]

    @model_validator(mode="after")
    def _api_checks(self) -> ApiConfig:
        if self.token_env is not None and self.token_file is not None:
            raise ValueError("set token_env or token_file, not both")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError(
                "set both cert_file and key_file to serve the API over TLS, or neither"
            )
        if not self.loopback and self.token_env is None and self.token_file is None:
            raise ValueError(
                f"listen = {self.listen!r} is not a loopback address: set api.token_env (or "
                "api.token_file) to the bearer token(s) every client must send, or listen on "
                "127.0.0.1"
            )
        return self

    @property
    def loopback(self) -> bool:
        """Whether ``listen`` binds a loopback address only (``localhost`` counts)."""
        # parse_listen's rule, inline: the default ApiConfig() is built before it is defined.
        host = self.listen.rpartition(":")[0].strip("[]") or "127.0.0.1"
        if host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    @property
    def host(self) -> str:
        return parse_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return parse_listen(self.listen)[1]


class LogConfig(_Section):
    level: Literal["trace", "debug", "info", "warning", "error", "critical"] = "info"

    @field_validator("level", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v


def _check_mailbox(v: str | None) -> str | None:
    if v is None:
        return v
    local, at, domain = v.partition("@")
    if not at or not local or "." not in domain or any(c.isspace() for c in v):
        raise ValueError(f"{v!r} is not a mailbox address such as 'room-4a@contoso.com'")
    return v


def _check_https_url(v: str) -> str:
    parts = urlsplit(v)
    _check_no_userinfo(parts.netloc, "credentials go in client_secret_env / client_secret_file")
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError("expected an https:// URL")
    return v.rstrip("/")


def _check_notification_url(v: str) -> str:
    # The agent appends /v1/notifications/<source> to it: a query string or a fragment would
    # end up before that path, or be dropped by the provider.
    checked = _check_https_url(v)
    parts = urlsplit(v)
    if parts.query or parts.fragment or v.rstrip().endswith(("?", "#")):
        raise ValueError(
            "no query string or fragment: the public https base URL only (the agent appends "
            "/v1/notifications/...)"
        )
    return checked


class MicrosoftConfig(_Section):
    """``[microsoft]``: Microsoft 365 (Graph) as a calendar source (DESIGN.md "Rooms and
    calendar sources"). Client credentials: a secret (``client_secret_env`` /
    ``client_secret_file``) or a certificate (``certificate_file`` + ``key_file``)."""

    tenant_id: Annotated[str, Field(min_length=1)]
    client_id: Annotated[str, Field(min_length=1)]
    client_secret_env: str | None = None
    client_secret_file: str | None = None
    certificate_file: Path | None = None
    key_file: Path | None = None
    authority_url: str = "https://login.microsoftonline.com"
    graph_url: str = "https://graph.microsoft.com/v1.0"
    ca_file: Path | None = None
    discover_rooms: bool = True
    refresh_rooms_s: RefreshRoomsSeconds = 86_400.0
    poll_interval_s: Annotated[float, Field(ge=1, le=86_400)] = 60.0
    horizon_days: Annotated[int, Field(ge=1, le=366)] = 7
    notification_url: str | None = None
    time_zone: str | None = None
    """Zone of discovered rooms' windows (default ``[defaults] time_zone``)."""

    @field_validator("client_secret_env")
    @classmethod
    def _env(cls, v: str | None) -> str | None:
        return _check_env_name(v)

    @field_validator("authority_url", "graph_url")
    @classmethod
    def _https(cls, v: str) -> str:
        return _check_https_url(v)

    @field_validator("notification_url")
    @classmethod
    def _notify(cls, v: str | None) -> str | None:
        return None if v is None else _check_notification_url(v)

    @field_validator("time_zone")
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        return _check_time_zone(v)

    @model_validator(mode="after")
    def _one_credential(self) -> MicrosoftConfig:
        secret = [k for k in ("client_secret_env", "client_secret_file") if getattr(self, k)]
        cert = self.certificate_file is not None or self.key_file is not None
        if len(secret) > 1:
            raise ValueError("set client_secret_env or client_secret_file, not both")
        if secret and cert:
            raise ValueError(
                "set a client secret (client_secret_env / client_secret_file) or a certificate "
                "(certificate_file + key_file), not both"
            )
        if not secret and not cert:
            raise ValueError(
                "no client credential: set client_secret_env or client_secret_file, or "
                "certificate_file + key_file"
            )
        if cert and (self.certificate_file is None or self.key_file is None):
            raise ValueError("set both certificate_file and key_file for a certificate")
        return self


class GoogleConfig(_Section):
    """``[google]``: Google Workspace (Calendar + Admin SDK Directory) as a calendar source
    (DESIGN.md "Rooms and calendar sources"). A service account JSON key with domain-wide
    delegation, impersonating ``subject``."""

    service_account_file: Annotated[str, Field(min_length=1)]
    """The JSON key; a relative name is read from ``$CREDENTIALS_DIRECTORY``."""
    subject: Annotated[str, Field(min_length=3)]
    """The admin the service account impersonates (``admin@example.com``)."""
    customer: Annotated[str, Field(min_length=1)] = "my_customer"
    directory_url: str = "https://admin.googleapis.com"
    calendar_url: str = "https://www.googleapis.com/calendar/v3"
    ca_file: Path | None = None
    discover_rooms: bool = True
    refresh_rooms_s: RefreshRoomsSeconds = 86_400.0
    poll_interval_s: Annotated[float, Field(ge=1, le=86_400)] = 60.0
    horizon_days: Annotated[int, Field(ge=1, le=366)] = 7
    notification_url: str | None = None
    time_zone: str | None = None
    """Zone of discovered rooms' windows (default ``[defaults] time_zone``)."""

    @field_validator("subject")
    @classmethod
    def _subject(cls, v: str) -> str:
        checked = _check_mailbox(v)
        assert checked is not None
        return checked

    @field_validator("directory_url", "calendar_url")
    @classmethod
    def _https(cls, v: str) -> str:
        return _check_https_url(v)

    @field_validator("notification_url")
    @classmethod
    def _notify(cls, v: str | None) -> str | None:
        return None if v is None else _check_notification_url(v)

    @field_validator("time_zone")
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        return _check_time_zone(v)


class RoomConfig(_Section):
    """``[[rooms]]``: a calendar-only room listed by hand (or one the directory does not list)."""

    id: Annotated[str, Field(min_length=1, max_length=64)]
    calendar: str
    source: Literal["microsoft", "google"] = "microsoft"
    time_zone: str | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError("use lower-case letters, digits, '-' and '_' only")
        return v

    @field_validator("calendar")
    @classmethod
    def _calendar(cls, v: str) -> str:
        checked = _check_mailbox(v)
        assert checked is not None
        return checked

    @field_validator("time_zone")
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        return _check_time_zone(v)


class AgentConfig(_Section):
    site: Annotated[str, Field(min_length=1, max_length=64)]
    store: StoreConfig = StoreConfig()
    defaults: DeviceDefaults = DeviceDefaults()
    devices: list[DeviceConfig] = []
    """Every device: the ``[[devices]]`` here, then ``devices_file``, then ``include`` (merged by
    :mod:`edge_agent.config.inventory`)."""
    devices_file: Path | None = None
    """An inventory CSV (columns id, host or url, fingerprint, calendar, time_zone, username),
    relative to this file; or a Control Hub device export."""
    include: list[str] = []
    """TOML files of ``[[devices]]`` entries, globs relative to this file (``devices.d/*.toml``)."""
    webhook: WebhookConfig | None = None
    mqtt: MqttConfig | None = None
    api: ApiConfig = ApiConfig()
    log: LogConfig = LogConfig()
    fleet: FleetConfig = FleetConfig()
    microsoft: MicrosoftConfig | None = None
    google: GoogleConfig | None = None
    rooms: list[RoomConfig] = []

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
        raise ValueError("port out of range (0 to 65535)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = host or "127.0.0.1"
    # An address to bind, not a name to resolve: a name that does not resolve (or resolves
    # elsewhere later) passed check-config and then failed every start.
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(
                f"{host!r} is not an IP address; listen on an address of this machine, "
                "e.g. 127.0.0.1:9780, [::1]:9780 or localhost:9780"
            ) from None
    return host, port
