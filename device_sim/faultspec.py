"""``--fault`` specs: ``KIND[:key=value,...]``, applied to a running fleet.

Kinds and their keys (all optional): ``drop``; ``silent:duration=S``;
``reboot:down=S,not_ready=S``; ``rate_limit:duration=S``; ``duplicate:duration=S,count=N``;
``malformed:every=N,kind=K,count=N`` (K: invalid_json, not_jsonrpc, unknown_subscription,
binary); ``slow:ms=N,duration=S``. Common keys: ``device=K`` (default: every device),
``after=S`` (wait S real seconds first), ``repeat=S`` (again every S seconds).
Example: ``--fault malformed:every=10 --fault reboot:device=3,after=20,down=5,not_ready=5``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .fleet import DeviceFleet
    from .server import Device

KINDS = ("drop", "silent", "reboot", "rate_limit", "duplicate", "malformed", "slow")


def parse_fault_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"slow:ms=200,device=1"`` -> ``("slow", {"ms": "200", "device": "1"})``."""
    kind, _, rest = spec.strip().partition(":")
    kind = kind.replace("-", "_")
    if kind not in KINDS:
        raise ValueError(f"unknown fault {kind!r} in {spec!r} (one of {', '.join(KINDS)})")
    args: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"fault argument {item!r} in {spec!r} is not key=value")
        args[key.strip().replace("-", "_")] = value.strip()
    return kind, args


def inject(device: Device, kind: str, args: dict[str, Any]) -> Any:
    """Apply one fault to ``device`` with keyword values as strings or numbers."""
    f = device.faults

    def num(key: str, default: float | None) -> float | None:
        return float(args[key]) if key in args else default

    if kind == "drop":
        return f.drop()
    if kind == "silent":
        return f.silent(num("duration", 10.0) or 0.0)
    if kind == "reboot":
        return f.reboot(num("down", 5.0) or 0.0, num("not_ready", 5.0) or 0.0)
    if kind == "rate_limit":
        return f.rate_limit(num("duration", 10.0) or 0.0)
    if kind == "duplicate":
        count = num("count", None)
        return f.duplicate(num("duration", None), None if count is None else int(count))
    if kind == "malformed":
        every = num("every", None)
        return f.malformed(
            args.get("kind") or None,
            int(num("count", 1) or 1),
            None if every is None else int(every),
        )
    if kind == "slow":
        return f.slow(num("ms", 500.0) or 0.0, num("duration", None))
    raise ValueError(f"unknown fault {kind!r}")


def apply_fault_spec(fleet: DeviceFleet, spec: str) -> None:
    """Parse ``spec`` and apply it to the fleet (now, or later with ``after``/``repeat``)."""
    kind, args = parse_fault_spec(spec)
    target = args.pop("device", "all")
    devices = fleet.devices if target == "all" else [fleet.devices[int(target)]]
    after = float(args.pop("after", 0))
    repeat = float(args.pop("repeat", 0))
    if after <= 0 and repeat <= 0:
        for device in devices:
            inject(device, kind, args)
        return

    async def later() -> None:
        await asyncio.sleep(after)
        while True:
            for device in devices:
                inject(device, kind, args)
            if repeat <= 0:
                return
            await asyncio.sleep(repeat)

    fleet.spawn(later(), f"device-sim.fault[{spec}]")
