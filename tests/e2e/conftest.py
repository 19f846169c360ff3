from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from device_sim import DeviceFleet, SimConfig
from tests.e2e.harness import ENV, PASSWORD, SECRET, SIM_START
from tests.receivers import WebhookReceiver


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def env() -> dict[str, str]:
    return {**ENV, "SIM_PASSWORD": PASSWORD}


@pytest.fixture
async def make_fleet(
    ca: trustme.CA, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[DeviceFleet]]]:
    """Start simulated devices serving a certificate from the test's CA, at ``SIM_START``."""
    fleets: list[DeviceFleet] = []
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = tmp_path / "dev-cert.pem", tmp_path / "dev-key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))

    async def make(**options: Any) -> DeviceFleet:
        options.setdefault("start", SIM_START)  # never the wall clock
        cfg = SimConfig(
            host="127.0.0.1",
            port=0,
            password=PASSWORD,
            cert_file=str(cert_file),
            key_file=str(key_file),
            **options,
        )
        fleet = DeviceFleet(cfg)
        await fleet.start()
        fleets.append(fleet)
        return fleet

    yield make
    for f in fleets:
        await f.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    r = WebhookReceiver(SECRET)
    await r.start()
    yield r
    await r.stop()
