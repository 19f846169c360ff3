"""A Graph fake over real HTTPS (certificate made at start), its clock pinned and frozen."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from graphsim_helpers import GraphClient, make_config

from calendar_sim.graph import GraphSim


@pytest.fixture
async def sim() -> AsyncIterator[GraphSim]:
    async with GraphSim(make_config()) as running:
        yield running


@pytest.fixture
async def client(sim: GraphSim) -> AsyncIterator[GraphClient]:
    async with aiohttp.ClientSession() as session:
        c = GraphClient(sim, session)
        status, _ = await c.fetch_token()
        assert status == 200
        yield c
