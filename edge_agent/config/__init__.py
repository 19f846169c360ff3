"""The agent's configuration: one TOML file, validated by pydantic, secrets kept out of it.

- :mod:`.models` -- the sections (``AgentConfig``, ``DeviceConfig``, ``[defaults]``, sinks, API).
- :mod:`.load` -- ``load_config`` / ``config_from_dict``: TOML reading, every problem collected
  by key path into :class:`ConfigError`, relative paths resolved, cross-section checks.
- :mod:`.secrets` -- ``resolve_secrets``: the passwords and signing secrets the config names.
- :mod:`.devices` -- ``device_settings``: one :class:`DeviceSettings` per device, defaults merged.
"""

from __future__ import annotations

from edge_agent.config.devices import DeviceSettings, device_settings
from edge_agent.config.load import EX_CONFIG, ConfigError, Problem, config_from_dict, load_config
from edge_agent.config.models import (
    DEFAULT_API_LISTEN,
    DEFAULT_STORE_NAME,
    AgentConfig,
    ApiConfig,
    DeviceConfig,
    DeviceDefaults,
    FleetConfig,
    GoogleConfig,
    LogConfig,
    MicrosoftConfig,
    MqttConfig,
    PositiveFloat,
    PositiveInt,
    RoomConfig,
    StoreConfig,
    WebhookConfig,
    parse_listen,
)
from edge_agent.config.secrets import Secrets, resolve_secrets

__all__ = [
    "DEFAULT_API_LISTEN",
    "DEFAULT_STORE_NAME",
    "EX_CONFIG",
    "AgentConfig",
    "ApiConfig",
    "ConfigError",
    "DeviceConfig",
    "DeviceDefaults",
    "DeviceSettings",
    "FleetConfig",
    "GoogleConfig",
    "LogConfig",
    "MicrosoftConfig",
    "MqttConfig",
    "PositiveFloat",
    "PositiveInt",
    "Problem",
    "RoomConfig",
    "Secrets",
    "StoreConfig",
    "WebhookConfig",
    "config_from_dict",
    "device_settings",
    "load_config",
    "parse_listen",
    "resolve_secrets",
]
