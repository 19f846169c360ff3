"""Fleet tests run on a throwaway PostgreSQL cluster (tests/pg.py): one database per test."""

from __future__ import annotations

import pytest

from tests import pg


@pytest.fixture
def pg_url() -> str:
    return pg.cluster().new_database()


# The end-to-end fixtures: simulated devices with a test CA, a signature-checking receiver.
from tests.e2e.conftest import ca, ca_file, env, make_fleet, receiver  # noqa: F401
