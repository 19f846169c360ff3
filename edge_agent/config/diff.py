"""What a reload changed outside the device list, by config key.

The device list (``devices``, ``devices_file``, ``include`` and the ``[defaults]`` merged into
each device) is diffed per device by the agent (:func:`edge_agent.agent.devices_by_id`); this
module names every other key that changed, so the agent can apply those it can change live
(:data:`LIVE_KEYS`) and say which need a restart. Key names only: values never reach a log.
"""

from __future__ import annotations

from typing import Any

from edge_agent.config.models import AgentConfig
from edge_agent.config.secrets import Secrets

DEVICE_KEYS = frozenset({"devices", "devices_file", "include", "defaults"})
"""Keys the per-device diff covers."""

LIVE_KEYS = frozenset({"log.level", "mqtt.username", "mqtt.password_env", "mqtt.password_file"})
"""Keys a reload applies without a restart: the log level, and the MQTT credentials (the sink
reconnects with them at once). A part that learns to apply another key on reload adds it here."""

MQTT_PASSWORD = "mqtt password"
WEBHOOK_SECRET = "webhook secret"
API_TOKENS = "api tokens"


def changed_keys(old: AgentConfig, new: AgentConfig) -> list[str]:
    """Dotted keys outside the device list whose value differs (a section added or removed
    is its name alone: ``webhook``), in a stable order."""
    return _diff(
        old.model_dump(mode="json", exclude=set(DEVICE_KEYS)),
        new.model_dump(mode="json", exclude=set(DEVICE_KEYS)),
        "",
    )


def changed_secrets(old: Secrets, new: Secrets) -> list[str]:
    """Secrets outside the devices whose value changed (a file rewritten, an env var set anew):
    :data:`WEBHOOK_SECRET`, :data:`MQTT_PASSWORD`, :data:`API_TOKENS`. ``SecretStr`` compares
    by value."""
    out = []
    if old.webhook_secrets != new.webhook_secrets:
        out.append(WEBHOOK_SECRET)
    if old.mqtt_password != new.mqtt_password:
        out.append(MQTT_PASSWORD)
    if old.api_tokens != new.api_tokens:
        out.append(API_TOKENS)
    return out


def _diff(a: Any, b: Any, key: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(a.keys() | b.keys()):
            out += _diff(a.get(k), b.get(k), f"{key}.{k}" if key else k)
        return out
    return [] if a == b else [key]
