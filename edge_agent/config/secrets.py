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
    microsoft_client_secret: SecretStr | None = None
    """``[microsoft]`` client secret (absent when a certificate is configured)."""
    microsoft_private_key: SecretStr | None = None
    """``[microsoft] key_file``: the certificate's PEM private key."""
    google_private_key: SecretStr | None = None
    """``[google] service_account_file``'s ``private_key`` (read here to check the key and to
    register it with the log redactor; google-auth loads the file itself)."""

    def values(self) -> list[str]:
        """Every secret as plain text, for the log redactor (it masks them wherever they occur)."""
        out = [s.get_secret_value() for s in self.device_passwords.values()]
        out += [s.get_secret_value() for s in self.webhook_secrets]
        for extra in (self.mqtt_password, self.microsoft_client_secret, self.microsoft_private_key):
            if extra is not None:
                out.append(extra.get_secret_value())
        if self.google_private_key is not None:
            pem = self.google_private_key.get_secret_value()
            # The PEM whole, and each base64 line of it: a log line may carry it JSON-escaped
            # ("\\n" for each newline) or cut.
            out.append(pem)
            out += [line for line in pem.splitlines() if line and not line.startswith("-----")]
        out += [s.get_secret_value() for s in self.api_tokens]
        if self.store_password is not None:
            out.append(self.store_password.get_secret_value())
        return [v for v in out if v]


def read_secret(
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
        secret = read_secret(
            key, env_name=src.password_env, file_name=src.password_file, env=env, problems=problems
        )
        if secret is not None:
            passwords[dev.id] = secret
    webhook_secrets: list[SecretStr] = []
    if cfg.webhook is not None:
        secret = read_secret(
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
        mqtt_password = read_secret(
            "mqtt.password",
            env_name=cfg.mqtt.password_env,
            file_name=cfg.mqtt.password_file,
            env=env,
            problems=problems,
        )
    store_password = read_secret(
        "store.password",
        env_name=cfg.store.password_env,
        file_name=cfg.store.password_file,
        env=env,
        problems=problems,
    )
    ms_secret = ms_key = None
    if cfg.microsoft is not None:
        ms = cfg.microsoft
        ms_secret = read_secret(
            "microsoft.client_secret",
            env_name=ms.client_secret_env,
            file_name=ms.client_secret_file,
            env=env,
            problems=problems,
        )
        if ms.key_file is not None:
            ms_key = read_secret(
                "microsoft.key",
                env_name=None,
                file_name=str(ms.key_file),
                env=env,
                problems=problems,
            )
    google_key = None
    if cfg.google is not None:
        google_key = read_google_key(cfg.google.service_account_file, env, problems)
    api_tokens = _api_tokens(cfg, env, problems)
    if problems:
        raise ConfigError(problems)
    secrets = Secrets(
        passwords,
        webhook_secrets,
        mqtt_password,
        api_tokens=api_tokens,
        store_password=store_password,
        microsoft_client_secret=ms_secret,
        microsoft_private_key=ms_key,
        google_private_key=google_key,
    )
    # Every path that reads secrets (start, SIGHUP reload, check-config) hands them to the log
    # redactor here, so none can forget to.
    register_secrets(secrets.values())
    return secrets


def _api_tokens(
    cfg: AgentConfig, env: Mapping[str, str], problems: list[Problem]
) -> list[SecretStr]:
    secret = read_secret(
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


GOOGLE_KEY_FIELDS = ("type", "client_email", "private_key", "token_uri")


def google_key_path(name: str, env: Mapping[str, str]) -> Path | None:
    """``[google] service_account_file``: an absolute path as is, a relative name inside
    ``$CREDENTIALS_DIRECTORY`` (None when that is not set)."""
    path = Path(name).expanduser()
    if path.is_absolute():
        return path
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    return Path(cred_dir) / path if cred_dir else None


def read_google_key(name: str, env: Mapping[str, str], problems: list[Problem]) -> SecretStr | None:
    """The service account JSON key's ``private_key``, after checking the file is such a key.
    Problems name the file and the missing field, never any of its content."""
    import json

    key = "google.service_account_file"
    path = google_key_path(name, env)
    if path is None:
        problems.append(
            (
                key,
                f"{name!r} is relative, so it is read from $CREDENTIALS_DIRECTORY, which is not "
                "set; give an absolute path, or load the key with systemd LoadCredential=",
            )
        )
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        problems.append((key, f"cannot read {path}: {exc.strerror or exc}"))
        return None
    except UnicodeDecodeError:
        problems.append((key, f"{path} is not UTF-8 text; it must be the JSON key file"))
        return None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        # Only the position: the message of a JSON error may quote the text around it.
        where = f"line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else "its text"
        problems.append((key, f"{path} is not JSON (at {where}); download the JSON key again"))
        return None
    if not isinstance(doc, dict):
        problems.append((key, f"{path} is not a JSON object; download the JSON key again"))
        return None
    pem = doc.get("private_key")
    if isinstance(pem, str) and pem:
        register_secrets([pem])  # before anything else can log it
    missing = [f for f in GOOGLE_KEY_FIELDS if not isinstance(doc.get(f), str) or not doc.get(f)]
    if missing:
        problems.append(
            (
                key,
                f"{path} is not a service account JSON key (missing {', '.join(missing)}); "
                "create a JSON key for the service account in the Google Cloud console",
            )
        )
        return None
    if doc["type"] != "service_account":
        problems.append(
            (
                key,
                f"{path} is a {doc['type']!r} credential, not a service account key "
                '(type = "service_account")',
            )
        )
        return None
    _warn_if_others_may_read(path, key)
    return SecretStr(str(pem))
