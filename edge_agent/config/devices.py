"""The one per-device settings record: a ``[[devices]]`` entry with ``[defaults]`` merged in.

:func:`device_settings` builds a :class:`DeviceSettings` per device; the session takes it as it
is, and the xapi :class:`~edge_agent.xapi.endpoint.DeviceEndpoint` is derived from it
(:meth:`DeviceSettings.endpoint`). The defaults themselves live in
:class:`~edge_agent.config.models.DeviceDefaults` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import SecretStr

from edge_agent.config.models import AgentConfig, DeviceConfig
from edge_agent.config.secrets import Secrets

if TYPE_CHECKING:
    from edge_agent.xapi.endpoint import DeviceEndpoint


@dataclass(frozen=True, slots=True)
class DeviceSettings:
    """One device with ``[defaults]`` merged in: everything the agent needs to run it.

    Equal settings mean an unchanged device (a reload restarts only the devices whose settings
    changed; ``SecretStr`` compares by value, so a new password counts).
    """

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
    ghost_after_s: float = 600.0
    release_after_s: float = 0.0
    """0: never release a ghost booking."""
    occupancy_min_interval_s: float = 10.0

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
                ghost_after_s=pick("ghost_after_s"),
                release_after_s=pick("release_after_s"),
                occupancy_min_interval_s=pick("occupancy_min_interval_s"),
            )
        )
    return out
