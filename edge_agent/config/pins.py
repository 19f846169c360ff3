"""Writing certificate pins back where each device is listed, changing nothing else.

An admin's inventory is theirs: comments, column order, quoting, line endings and the encoding
of a spreadsheet export must survive ``edge-agent trust``. So the edit is textual: the CSV cell
(by its span, :func:`~edge_agent.config.inventory.csv_records`) or the TOML line holding the
fingerprint, then the result is parsed again and compared with what was meant; a file that
cannot be edited that safely is left alone and the admin told what to add by hand. (A TOML
round-trip library would do the same for TOML at the cost of a dependency; a line edit suffices
for ``key = "value"`` lines and is verified.)
"""

from __future__ import annotations

import os
import re
import tempfile
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge_agent.config.inventory import (
    CsvText,
    blank_or_comment,
    csv_entry,
    csv_layout,
    csv_records,
    devices_header_lines,
)


class PinWriteError(Exception):
    """The pins could not be placed safely; the file is unchanged."""


def write_csv_pins(path: Path, pins: Mapping[int, str]) -> None:
    """Set the fingerprint cell of the rows starting at the given lines (``{line: hex}``).

    A file without a fingerprint column gets one, appended to the header and to every row.
    """
    src = CsvText.read(path)
    records = [r for r in src.records() if not blank_or_comment(r)]
    layout, problems = csv_layout(path.name, records)
    if layout is None or problems:
        raise PinWriteError(f"{path}: " + "; ".join(m for _, m in problems))
    by_line = {r.line: r for r in records[1:]}
    unknown = sorted(set(pins) - set(by_line))
    if unknown:
        raise PinWriteError(f"{path}: no row starts at line {unknown[0]}")
    width = len(layout.header.fields)
    d = src.delimiter
    edits: list[tuple[int, int, str]] = []  # (start, end, replacement)
    col = layout.columns.get("fingerprint")
    if col is None:
        edits.append((layout.header.end, layout.header.end, f"{d}fingerprint"))
        for r in records[1:]:
            pad = d * max(0, width - len(r.fields))
            edits.append((r.end, r.end, f"{pad}{d}{pins.get(r.line, '')}"))
    else:
        for line, fp in pins.items():
            r = by_line[line]
            if col < len(r.fields):
                f = r.fields[col]
                edits.append((f.start, f.end, fp))
            else:
                edits.append((r.end, r.end, d * (col - len(r.fields) + 1) + fp))
    text = src.text
    for start, end, new in sorted(edits, reverse=True):
        text = text[:start] + new + text[end:]
    _check_csv(path, src.text, text, d, pins)
    _replace(path, src.encode(text))


def _check_csv(path: Path, old: str, new: str, d: str, pins: Mapping[int, str]) -> None:
    def rows(text: str) -> list[Any]:
        recs = [r for r in csv_records(text, d) if not blank_or_comment(r)]
        layout, _ = csv_layout(path.name, recs)
        assert layout is not None
        return [(r.line, csv_entry(layout, r)) for r in recs[1:]]

    before, after = rows(old), rows(new)
    expected = [
        (line, {**e, "fingerprint": pins[line]} if line in pins else e) for line, e in before
    ]
    if after != expected:
        raise PinWriteError(f"{path}: the edited file would not read back as intended")


_TABLE_HEADER = re.compile(r"^\s*\[")
_ID_LINE = re.compile(r"^(\s*)id\s*=")
_FP_LINE = re.compile(r"""^(\s*fingerprint\s*=\s*)("[^"\\]*"|'[^']*')(\s*(#.*)?)$""")


def write_toml_pins(path: Path, pins: Mapping[int, str]) -> None:
    """Set ``fingerprint`` in the ``[[devices]]`` tables at the given indices (``{index: hex}``)."""
    text = path.read_text(encoding="utf-8")
    doc = tomllib.loads(text)
    devices = doc.get("devices")
    if not isinstance(devices, list):
        raise PinWriteError(f"{path}: no [[devices]] tables")
    headers = devices_header_lines(text, len(devices))
    eol = "\r\n" if "\r\n" in text else "\n"
    lines = text.splitlines(keepends=True)
    # From the last entry up, so earlier line numbers stay valid while lines are inserted.
    for index in sorted(pins, reverse=True):
        header = headers[index] if index < len(headers) else None
        if header is None:
            raise PinWriteError(f"{path}: cannot find the [[devices]] table of entry {index}")
        start = header  # 0-based index of the first line after the header
        end = start
        while end < len(lines) and not _TABLE_HEADER.match(lines[end]):
            end += 1
        fp = pins[index]
        for n in range(start, end):
            m = _FP_LINE.match(lines[n].rstrip("\r\n"))
            if m:
                ending = lines[n][len(lines[n].rstrip("\r\n")) :]
                lines[n] = f'{m.group(1)}"{fp}"{m.group(3)}{ending}'
                break
        else:
            id_line = next((n for n in range(start, end) if _ID_LINE.match(lines[n])), None)
            at = start if id_line is None else id_line + 1
            m_id = _ID_LINE.match(lines[id_line]) if id_line is not None else None
            indent = m_id.group(1) if m_id else ""
            if at > 0 and not lines[at - 1].endswith(("\n", "\r")):
                lines[at - 1] += eol
            lines.insert(at, f'{indent}fingerprint = "{fp}"{eol}')
    new = "".join(lines)
    expected = dict(doc)
    expected["devices"] = [
        {**d, "fingerprint": pins[i]} if i in pins else d for i, d in enumerate(devices)
    ]
    try:
        ok = tomllib.loads(new) == expected
    except tomllib.TOMLDecodeError:
        ok = False
    if not ok:
        raise PinWriteError(f"{path}: the edited file would not read back as intended")
    _replace(path, new.encode("utf-8"))


def _replace(path: Path, data: bytes) -> None:
    """Write ``data`` over ``path`` atomically, keeping its permissions."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
