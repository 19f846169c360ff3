"""Reading a configuration: TOML -> validated :class:`~.models.AgentConfig`, every problem
collected by key path, relative paths resolved, cross-section checks.

``load_config(path)`` raises :class:`ConfigError` listing every problem
(``devices[2].fingerprint: ...``); the CLI prints them and exits 78 (``EX_CONFIG``). Keys that
would hold a secret are refused here: secrets are named, never written (see :mod:`.secrets`).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ValidationError

from edge_agent.config.inventory import Inventory, name_problems, read_inventory
from edge_agent.config.models import AgentConfig, default_store_path

EX_CONFIG = 78
"""Exit status for an invalid configuration (sysexits.h ``EX_CONFIG``)."""

_SECRET_KEYS = frozenset(
    {"password", "secret", "secrets", "token", "passphrase", "key_password", "client_secret"}
)

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
    ``StateDirectory=``), else ``/var/lib/edge-agent/agent.db`` when it exists, else
    ``./edge-agent.db`` (:func:`~edge_agent.config.models.default_store_path`).
    """
    return load_config_and_inventory(path, require_sink=require_sink, env=env)[0]


def load_config_and_inventory(
    path: str | os.PathLike[str],
    *,
    require_sink: bool = False,
    env: Mapping[str, str] | None = None,
) -> tuple[AgentConfig, Inventory]:
    """:func:`load_config`, and where each device entry was written (``edge-agent trust``
    writes pins back there). The device list is the config's ``[[devices]]``, then its
    ``devices_file``, then its ``include`` files; problems name the room, the file and the line.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
        raw = tomllib.loads(text)
    except FileNotFoundError:
        raise ConfigError([("", f"{p}: no such file")], source=str(p)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([("", f"{p}: cannot read: {exc}")], source=str(p)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([("", f"{p}: not valid TOML: {exc}")], source=str(p)) from None
    inv = read_inventory(raw, config_file=p, config_text=text)
    merged = {**raw, "devices": inv.devices} if inv.devices or "devices" in raw else raw
    try:
        cfg = config_from_dict(
            merged, base_dir=p.parent, require_sink=require_sink, env=env, source=str(p)
        )
    except ConfigError as exc:
        problems = [*inv.problems, *name_problems(exc.problems, inv)]
        raise ConfigError(problems, source=str(p)) from None
    if inv.problems:
        raise ConfigError(inv.problems, source=str(p))
    return cfg, inv


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
    problems.extend(_fleet_checks(cleaned))
    if cfg is not None:
        problems.extend(_same_device_twice(cfg))
    if problems:
        raise ConfigError(problems, source=source)
    assert cfg is not None
    return _with_paths(cfg, base_dir, env)


_DEFAULT_PORTS = {"ws": 80, "wss": 443}


def _same_device_twice(cfg: AgentConfig) -> Iterator[Problem]:
    """Two entries reaching the same device (the same URL, or a ``host`` and a ``url`` that
    come to the same endpoint) would run two sessions on it: every event delivered twice."""
    seen: dict[tuple[str, str, int, str], int] = {}
    for i, dev in enumerate(cfg.devices):
        parts = urlsplit(dev.endpoint_url)
        host = (parts.hostname or "").lower().rstrip(".")
        key = (parts.scheme, host, parts.port or _DEFAULT_PORTS[parts.scheme], parts.path)
        if key in seen:
            j = seen[key]
            yield (
                f"devices[{i}].{'url' if dev.url is not None else 'host'}",
                f"the same device as devices[{j}] ({cfg.devices[j].id}, {dev.endpoint_url}): "
                "two sessions on one device deliver every event twice; keep one entry",
            )
        else:
            seen[key] = i


def _secret_keys(node: Any, loc: tuple[str | int, ...]) -> Iterator[Problem]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            if isinstance(key, str) and key.lower() in _SECRET_KEYS:
                hint = "secret" if "secret" in key.lower() else "password"
                if key.lower() == "client_secret":
                    hint = "client_secret"
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
            import difflib  # an error path only

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
    yield from _room_checks(raw)
    # Fleet mode ([store] url) takes [microsoft] and [google] too: the members split the
    # calendar rooms between them by lease, as they split the devices (edge_agent.fleet).
    if require_sink and raw.get("webhook") is None and raw.get("mqtt") is None:
        yield "", "no sink configured: add a [webhook] or an [mqtt] section (or both)"


def _fleet_checks(raw: Mapping[str, Any]) -> Iterator[Problem]:
    """``[fleet]`` means a fleet member, and only a PostgreSQL store is shared by members: with
    the SQLite file its keys would be ignored while the operator believes the agent is in one."""
    store = raw.get("store")
    url = store.get("url") if isinstance(store, Mapping) else None
    if "fleet" in raw and not url:
        yield (
            "fleet",
            "[fleet] needs [store] url (a postgresql:// URL every member shares); without it "
            "the agent runs alone on its SQLite file: remove [fleet], or set [store] url",
        )


def _room_checks(raw: Mapping[str, Any]) -> Iterator[Problem]:
    """Rooms and calendar links (DESIGN.md "Rooms and calendar sources"): one id per room, one
    room per mailbox, and a configured source behind every calendar."""
    sources = {name for name in ("microsoft", "google") if isinstance(raw.get(name), Mapping)}
    # One source configured: it is the default; both: each calendar names its own.
    default = next(iter(sources)) if len(sources) == 1 else None
    ids: dict[str, str] = {}
    mailboxes: dict[str, str] = {}
    devices = raw.get("devices")
    for i, dev in enumerate(devices if isinstance(devices, list) else []):
        if isinstance(dev, Mapping) and isinstance(dev.get("id"), str):
            ids.setdefault(dev["id"], f"devices[{i}]")
        if not isinstance(dev, Mapping) or not isinstance(dev.get("calendar"), str):
            continue
        src = dev.get("calendar_source") or default or "microsoft"
        if len(sources) > 1 and not dev.get("calendar_source"):
            yield (
                f"devices[{i}].calendar_source",
                "both [microsoft] and [google] are configured: name the source of this "
                'calendar (calendar_source = "microsoft" or "google")',
            )
        elif src not in sources:
            yield (
                f"devices[{i}].calendar",
                f"the device is linked to a calendar but no [{src}] section is configured",
            )
        mail = dev["calendar"].strip().lower()
        if mail in mailboxes:
            yield f"devices[{i}].calendar", f"mailbox already used by {mailboxes[mail]}"
        else:
            mailboxes[mail] = f"devices[{i}]"
    rooms = raw.get("rooms")
    for i, room in enumerate(rooms if isinstance(rooms, list) else []):
        if not isinstance(room, Mapping):
            continue
        rid = room.get("id")
        if isinstance(rid, str):
            if rid in ids:
                yield f"rooms[{i}].id", f"room id {rid!r} is already used by {ids[rid]}"
            else:
                ids[rid] = f"rooms[{i}]"
        src = room.get("source") or default or "microsoft"
        if len(sources) > 1 and not room.get("source"):
            yield (
                f"rooms[{i}].source",
                "both [microsoft] and [google] are configured: name the source of this room "
                '(source = "microsoft" or "google")',
            )
        elif isinstance(src, str) and src not in sources:
            yield f"rooms[{i}].source", f"calendar source {src!r} has no [{src}] section"
        mail = room.get("calendar")
        if isinstance(mail, str):
            key = mail.strip().lower()
            if key in mailboxes:
                yield f"rooms[{i}].calendar", f"mailbox already used by {mailboxes[key]}"
            else:
                mailboxes[key] = f"rooms[{i}]"


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
        store_path = default_store_path(env)
    else:
        store_path = rel(store_path)
    updates: dict[str, Any] = {
        "store": cfg.store.model_copy(
            update={
                "path": store_path,
                "ca_file": rel(cfg.store.ca_file),
                "password_file": secret_file(cfg.store.password_file),
            }
        ),
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
    if cfg.microsoft is not None:
        ms_paths = {
            k: rel(getattr(cfg.microsoft, k)) for k in ("ca_file", "certificate_file", "key_file")
        }
        updates["microsoft"] = cfg.microsoft.model_copy(
            update={**ms_paths, "client_secret_file": secret_file(cfg.microsoft.client_secret_file)}
        )
    if cfg.google is not None:
        updates["google"] = cfg.google.model_copy(update={"ca_file": rel(cfg.google.ca_file)})
        if cfg.microsoft is None:
            # [google] alone: it is the source of every calendar that names none.
            updates["devices"] = [
                d.model_copy(update={"calendar_source": "google"})
                if d.calendar is not None and d.calendar_source is None
                else d
                for d in updates["devices"]
            ]
            updates["rooms"] = [
                r if "source" in r.model_fields_set else r.model_copy(update={"source": "google"})
                for r in cfg.rooms
            ]
    return cfg.model_copy(update=updates)
