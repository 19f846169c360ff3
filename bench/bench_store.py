"""Store commit throughput with group commit: many devices committing at once.

Run: ``.venv/bin/python bench/bench_store.py [--seconds 3] [--devices 200]``. Prints, for 1, 10
and 100 events per change and for each ``synchronous`` mode, commits/s and event rows/s. Each
case runs for a fixed time and stops by itself; the database lives in a temp directory.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import structlog

from edge_agent.store import Change, Store


async def case(path: Path, per_change: int, devices: int, seconds: float, sync: str) -> None:
    store = await Store.open(path, synchronous=sync)  # type: ignore[arg-type]
    commits = 0
    stop = time.monotonic() + seconds
    body = {"title": "x" * 200}

    async def device(d: int) -> None:
        nonlocal commits
        n = 0
        while time.monotonic() < stop:
            events = [
                {
                    "type": "booking.created",
                    "data": {
                        "event_id": f"{path.name}-{d}-{n}-{k}",
                        "device_id": f"room-{d}",
                        **body,
                    },
                }
                for k in range(per_change)
            ]
            await store.commit(
                Change(f"room-{d}", window_upsert={f"b{n % 20}": body}, events=events)
            )
            commits += 1
            n += 1

    t0 = time.monotonic()
    await asyncio.gather(*(device(d) for d in range(devices)))
    dt = time.monotonic() - t0
    await store.close()
    print(
        f"synchronous={sync:6} events/change={per_change:3}  devices={devices}  "
        f"{commits / dt:8.0f} commits/s  {commits * per_change / dt:8.0f} events/s"
    )


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--devices", type=int, default=200)
    args = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    with tempfile.TemporaryDirectory() as tmp:
        for sync in ("normal", "full"):
            for per in (1, 10, 100):
                await case(Path(tmp) / f"s-{sync}-{per}.db", per, args.devices, args.seconds, sync)


if __name__ == "__main__":
    asyncio.run(main())
