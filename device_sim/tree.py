"""xAPI paths: parsing, lookup, wildcard queries and subscription matching (pure functions).

A path is a tuple of components, as in ``("Status", "Bookings", "Availability")``. Cisco's
clients send paths as JSON arrays; people type them as "Status Bookings Availability" or
"Status/Bookings/Availability", so all three are accepted. The device matches components
case-insensitively. In a query ``*`` matches one component and ``**`` any number (also zero).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

Path = tuple[str, ...]


def parse_path(value: object) -> Path:
    """Turn a JSON-RPC ``Path``/``Query`` argument into a path; ``ValueError`` when invalid."""
    if isinstance(value, str):
        parts = [p for p in value.replace("/", " ").split() if p]
    elif isinstance(value, list | tuple):
        parts = []
        for item in value:
            if isinstance(item, bool) or not isinstance(item, str | int):
                raise ValueError(f"path component {item!r} is not a string")
            parts.append(str(item).strip())
        if any(not p for p in parts):
            raise ValueError("empty path component")
    else:
        raise ValueError("path must be a list of components or a string")
    if not parts:
        raise ValueError("empty path")
    return tuple(parts)


def _child(node: Mapping[str, Any], name: str) -> tuple[str, Any] | None:
    if name in node:
        return name, node[name]
    low = name.lower()
    for key, value in node.items():
        if key.lower() == low:
            return key, value
    return None


def lookup(tree: Mapping[str, Any], path: Path) -> Any:
    """The value or subtree at ``path`` (no wildcards); ``KeyError`` when absent."""
    node: Any = tree
    for part in path:
        if not isinstance(node, Mapping):
            raise KeyError(part)
        found = _child(node, part)
        if found is None:
            raise KeyError(part)
        node = found[1]
    return node


def canonical(tree: Mapping[str, Any], path: Path) -> Path:
    """``path`` spelled as in the tree ("status bookings" -> ("Status", "Bookings"))."""
    node: Any = tree
    out: list[str] = []
    for part in path:
        found = _child(node, part) if isinstance(node, Mapping) else None
        if found is None:
            raise KeyError(part)
        out.append(found[0])
        node = found[1]
    return tuple(out)


def has_wildcard(path: Path) -> bool:
    return any(p in ("*", "**") for p in path)


def glob_match(pattern: Path, path: Path) -> bool:
    """Whether the whole of ``path`` matches ``pattern`` (``*`` one, ``**`` any number)."""
    if not pattern:
        return not path
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(glob_match(rest, path[i:]) for i in range(len(path) + 1))
    if not path:
        return False
    if head == "*" or head.lower() == path[0].lower():
        return glob_match(rest, path[1:])
    return False


def covers(pattern: Path, path: Path) -> bool:
    """Whether a subscription to ``pattern`` receives a change at ``path``.

    True when the pattern matches ``path`` or one of its ancestors (subscribing to
    ``Event Bookings`` gets ``Event Bookings Start``), or when ``path`` is an ancestor of what
    the pattern names (a subscription to ``Event Bookings Start Id`` still gets the event).
    """
    if glob_match(pattern + ("**",), path):
        return True
    return len(pattern) > len(path) and glob_match(pattern[: len(path)], path)


def nest(path: Path, value: Any) -> dict[str, Any]:
    """``("A", "B"), 1`` -> ``{"A": {"B": 1}}``."""
    out: Any = value
    for part in reversed(path):
        out = {part: out}
    assert isinstance(out, dict)
    return out


def merge_into(target: dict[str, Any], path: Path, value: Any) -> None:
    """Set ``value`` at ``path`` inside ``target``, creating the intermediate objects."""
    node = target
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value


def leaves(tree: Mapping[str, Any], prefix: Path = ()) -> Iterator[tuple[Path, Any]]:
    """Every (path, leaf value) under ``tree``."""
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def query(tree: Mapping[str, Any], pattern: Path) -> dict[str, Any] | None:
    """The parts of ``tree`` that ``pattern`` selects, nested from the root; None if nothing.

    A pattern naming a subtree selects the whole subtree.
    """
    out: dict[str, Any] = {}
    for path, value in leaves(tree):
        if covers_leaf(pattern, path):
            merge_into(out, path, value)
    return out or None


def covers_leaf(pattern: Path, path: Path) -> bool:
    return glob_match(pattern + ("**",), path)
