from __future__ import annotations

import random
from collections.abc import Callable

import pytest


@pytest.fixture
def entropy() -> Callable[[int], bytes]:
    rng = random.Random(1)
    return lambda n: rng.randbytes(n)
