"""Secrets: named by the config (an environment variable or a file), never written in it.

``resolve_secrets(cfg)`` reads them into :class:`Secrets`, whose values are
:class:`~pydantic.SecretStr` so no repr or log line shows them. A relative file name is taken
from ``$CREDENTIALS_DIRECTORY`` when set, so systemd's ``LoadCredential=`` works.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from pydantic import SecretStr

from edge_agent.config.load import ConfigError, Problem
from edge_agent.config.models import AgentConfig, _DeviceKeys
from edge_agent.ops.logs import register_secrets

log = structlog.get_logger(__name__)


MIN_API_TOKEN_LEN = 16
"""Shorter bearer tokens are refused: the local API may face the network."""


@dataclass(frozen=True)
class Secrets:
    """Secret values read from the environment or from files; ``SecretStr`` hides them in reprs."""

    device_passwords: dict[str, SecretStr] = field(default_factory=dict)
    webhook_secrets: list[SecretStr] = field(default_factory=list)
    """One or more ``whsec_...`` signing secrets (several during key rotation)."""
    mqtt_password: SecretStr | None = None
    api_tokens: list[SecretStr] = field(default_factory=list)
    """The local API's bearer tokens (``[api] token_env`` / ``token_file``; several: rotation)."""
    store_password: SecretStr | None = None
    """The PostgreSQL password (``[store] password_env`` / ``password_file``)."""

    def values(self) -> list[str]:
        """Every secret as plain text, for the log redactor (it masks them wherever they occur)."""
        out = [s.get_secret_value() for s in self.device_passwords.values()]
        out += [s.get_secret_value() for s in self.webhook_secrets]
        if self.mqtt_password is not None:
            out.append(self.mqtt_password.get_secret_value())
        out += [s.get_secret_value() for s in self.api_tokens]
        if self.store_password is not None:
            out.append(self.store_password.get_secret_value())
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
        except UnicodeDecodeError:
            problems.append(
                (f"{key}_file", f"{path} is not UTF-8 text; write the secret as one line of text")
            )
            return None
        if not value:
            hint = ""
            if cred_dir and path.parent == Path(cred_dir):
                # The unit's SetCredential= fallback: its LoadCredential= file is missing.
                hint = (
                    f" (systemd credential {path.name}: the file the unit loads it from, e.g. "
                    f"/etc/edge-agent/credentials/{path.name}, is missing or empty; create it "
                    "and restart)"
                )
            problems.append((f"{key}_file", f"{path} is empty{hint}"))
            return None
        _warn_if_others_may_read(path, f"{key}_file")
        return SecretStr(value)
    return None


def _warn_if_others_may_read(path: Path, key: str) -> None:
    """Any local user could read a secret in a file that is world-readable (or replace it if
    world-writable): say so, naming the file and the fix. A warning, not an error: the agent
    can still run, and refusing would break a site on an upgrade."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        log.warning(
            f"{path} is readable by every user on this machine; run `chmod 600 {path}` "
            "(or hand it over as a systemd credential)",
            key=key,
            path=str(path),
            mode=oct(stat.S_IMODE(mode)),
        )


def resolve_secrets(cfg: AgentConfig, env: Mapping[str, str] | None = None) -> Secrets:
    """Read every secret the config names; raise :class:`ConfigError` listing every one missing.

    The values are also registered with the log redactor
    (:func:`edge_agent.ops.logs.register_secrets`).
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
    store_password = _read_secret(
        "store.password",
        env_name=cfg.store.password_env,
        file_name=cfg.store.password_file,
        env=env,
        problems=problems,
    )
    api_tokens = _api_tokens(cfg, env, problems)
    if problems:
        raise ConfigError(problems)
    secrets = Secrets(
        passwords,
        webhook_secrets,
        mqtt_password,
        api_tokens=api_tokens,
        store_password=store_password,
    )
    # Every path that reads secrets (start, SIGHUP reload, check-config) hands them to the log
    # redactor here, so none can forget to.
    register_secrets(secrets.values())
    return secrets


def _api_tokens(
    cfg: AgentConfig, env: Mapping[str, str], problems: list[Problem]
) -> list[SecretStr]:
    secret = _read_secret(
        "api.token",
        env_name=cfg.api.token_env,
        file_name=cfg.api.token_file,
        env=env,
        problems=problems,
    )
    if secret is None:
        return []
    tokens = secret.get_secret_value().split()
    if any(len(t) < MIN_API_TOKEN_LEN for t in tokens):
        key = "api.token_env" if cfg.api.token_env else "api.token_file"
        # The message names the rule, never the value.
        problems.append(
            (
                key,
                f"each API token must be at least {MIN_API_TOKEN_LEN} characters (e.g. "
                "`openssl rand -hex 32`); separate several with spaces",
            )
        )
        return []
    return [SecretStr(t) for t in tokens]


def resolve_api_tokens(cfg: AgentConfig, env: Mapping[str, str] | None = None) -> list[str]:
    """The local API's bearer tokens alone (what the CLI sends; it needs no device password).

    Raises :class:`ConfigError` when ``[api]`` names a source that is unset or unreadable.
    The values are registered with the log redactor.
    """
    problems: list[Problem] = []
    tokens = _api_tokens(cfg, os.environ if env is None else env, problems)
    if problems:
        raise ConfigError(problems)
    values = [t.get_secret_value() for t in tokens]
    register_secrets(values)
    return values
