"""The occupancy keys: defaults, per-device overrides, and what is refused."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import SecretStr

from edge_agent.config import ConfigError, config_from_dict, device_settings
from edge_agent.config.secrets import Secrets


def _raw(**device: Any) -> dict[str, Any]:
    return {
        "site": "hq",
        "defaults": {"username": "u", "password_env": "PW"},
        "devices": [
            {"id": "room-1", "host": "127.0.0.1", **device},
            {"id": "room-2", "host": "127.0.0.2"},
        ],
        "webhook": {"url": "http://127.0.0.1:1/hook", "secret_env": "WH"},
    }


def _settings(raw: dict[str, Any]) -> list[Any]:
    cfg = config_from_dict(raw, env={"PW": "x", "WH": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"})
    secrets = Secrets(device_passwords={d.id: SecretStr("x") for d in cfg.devices})
    return device_settings(cfg, secrets)


def test_defaults_and_per_device_override() -> None:
    one, two = _settings(_raw(ghost_after_s=1, release_after_s=900))
    assert (one.ghost_after_s, one.release_after_s) == (1, 900)
    assert (two.ghost_after_s, two.release_after_s, two.occupancy_min_interval_s) == (600, 0, 10)


@pytest.mark.parametrize(
    "key,value", [("ghost_after_s", 0.5), ("release_after_s", -1), ("occupancy_min_interval_s", -1)]
)
def test_out_of_range_is_refused(key: str, value: float) -> None:
    with pytest.raises(ConfigError) as exc:
        config_from_dict(_raw(**{key: value}), env={"PW": "x", "WH": "whsec_x"})
    assert key in str(exc.value) or any(key in str(p) for p in getattr(exc.value, "problems", []))
