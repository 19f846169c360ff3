"""RoomOS edge agent: buffers Cisco device bookings locally and forwards them to the cloud."""

import sys as _sys

__version__ = "0.1.0"

# httpx's package imports its command line client (click, pygments' lexer table and rich)
# whenever click can be imported: ~3 MiB of RSS for the life of an agent that never runs it, on
# any host where click and pygments happen to be installed (Debian's python3-click and
# python3-pygments, a venv with pytest). None in sys.modules makes that import fail, which httpx
# handles (its own `httpx` console script then asks for httpx[cli]; the agent does not use it).
_sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
