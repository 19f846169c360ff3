"""The garbage collector's settings for a long-running agent (issue 17: where the tail went).

With CPython's defaults (700, 10, 10) the agent under a flood ran a full (generation 2)
collection every ~5 s, each 47-146 ms on 2 shared cores with 300 devices, collecting almost
nothing: the events in flight (frames, envelopes, futures) live a few milliseconds, long enough
to survive the frequent young collections and count towards the full one. Every such pause
holds the whole loop, so it was the p99 of device -> receiver (MQTT: 39 ms against the lean
reference's 5.5 ms).

- ``gc.freeze()`` once the code is imported: the modules, classes and functions (~55,000
  objects) are never garbage, so no collection walks them again.
- A young generation of :data:`YOUNG` allocations instead of 700: by the time it is collected
  the pipeline's short-lived objects are gone (freed by reference counting), so few survive to
  the older generations and full collections become rare (one in the same 30 s flood). The
  cost in memory is bounded: at most :data:`YOUNG` tracked objects of cyclic garbage wait for
  the next young collection (a few MB).
"""

from __future__ import annotations

import gc

YOUNG = 20_000
"""Net allocations of tracked objects between young collections (CPython's default: 700)."""
MIDDLE = 20
"""Young collections per middle one (default 10); full ones follow CPython's own 25 % rule."""


def tune_gc() -> None:
    """Freeze what is loaded so far and set the thresholds above; call once, after imports."""
    gc.collect()  # nothing collectable is frozen
    gc.freeze()
    _, _, old = gc.get_threshold()
    gc.set_threshold(YOUNG, MIDDLE, old)
