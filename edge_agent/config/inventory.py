"""The device inventory: ``[[devices]]`` in the config, a CSV named by ``devices_file``, and TOML
files named by ``include``, merged into one device list that remembers where each entry lives.

Sites with hundreds of rooms keep them in a spreadsheet (or export them from Control Hub), not
in hand-written TOML; an error about entry 187 of a merged list is useless to them, so every
entry carries its :class:`Origin` (file and line) and :func:`name_problems` rewrites
``devices[187]`` into ``rooms.csv:188: room-4a``. ``edge-agent trust`` writes pins back to the
same place (:mod:`edge_agent.config.pins`).

The CSV is read with a small RFC 4180 tokenizer rather than :mod:`csv` because trust needs each
field's exact span in the file to rewrite one cell and leave every other byte alone.
"""

from __future__ import annotations

import glob
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Problem = tuple[str, str]

CSV_COLUMNS = ("id", "host", "url", "fingerprint", "calendar", "time_zone", "username")
"""Columns of an inventory CSV (``host`` or ``url`` per row; empty cells take ``[defaults]``)."""

_SECRET_COLUMNS = frozenset({"password", "secret", "token", "passphrase"})

# Control Hub's exports (the Devices list and the Workspaces list) name their columns for
# people, and no published reference gives their exact header (none is in the docs we could
# check), so the mapping is a tolerant guess: a header cell is matched after column_key() folds
# case, spaces, punctuation and camelCase ("IP Address", "ip-address", "ipAddress" are one
# column), the spellings below are the Devices API / Workspaces API field names and their
# labels, and every other column of such an export is ignored, not an error. A room id is made
# from the workspace name (else the device name) the way DESIGN.md makes one from a mailbox:
# lower-cased, other characters as '-'.
_HUB_NAME_COLUMNS = (
    "workspace",
    "workspace_name",
    "workspace_display_name",
    "display_name",
    "device_name",
    "name",
)
_HUB_HOST_COLUMNS = ("ip_address", "ip", "ipaddress", "ip_addresses", "host", "hostname")
_HUB_CALENDAR_COLUMNS = ("calendar", "calendar_email", "calendar_id", "calendar_resource")
_HUB_COLUMNS = frozenset(
    {
        *_HUB_NAME_COLUMNS,
        *_HUB_HOST_COLUMNS,
        "mac",
        "mac_address",
        "serial",
        "serial_number",
        "product",
        "type",
        "status",
        "connection_status",
        "software",
        "software_version",
        "workspace_id",
        "workspaceid",
        "device_id",
        "tags",
        "capacity",
        "location",
        "sip_address",
        "calling",
    }
)

Kind = Literal["config", "csv", "include"]


@dataclass(frozen=True, slots=True)
class Origin:
    """Where one device entry was written."""

    kind: Kind
    file: Path
    line: int | None
    """1-based line of the CSV row or the ``[[devices]]`` header; None when it cannot be told."""
    label: str
    """The file as the person wrote it (``rooms.csv``, ``devices.d/floor4.toml``)."""
    index: int = 0
    """The entry's position within its own file (``[[devices]]`` index, or CSV data row)."""

    def where(self) -> str:
        return f"{self.label}:{self.line}" if self.line is not None else self.label


@dataclass(slots=True)
class Inventory:
    """The merged device list (raw entries, config order first) and where each came from."""

    devices: list[Any] = field(default_factory=list)
    """Raw entries (tables, unless the file is wrong: validation then says so)."""
    origins: list[Origin] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def add(self, entry: Any, origin: Origin) -> None:
        self.devices.append(entry)
        self.origins.append(origin)


# ---- reading -----------------------------------------------------------------------------------


def read_inventory(raw: Mapping[str, Any], *, config_file: Path, config_text: str) -> Inventory:
    """The devices of ``raw`` (the parsed main config) plus its ``devices_file`` and ``include``.

    Problems in the files (unreadable, unknown columns, a CSV syntax error) are collected, never
    raised: the loader reports them together with the validation of the entries.
    """
    inv = Inventory()
    base = config_file.parent
    main_devices = raw.get("devices")
    if isinstance(main_devices, list):
        lines = devices_header_lines(config_text, len(main_devices))
        for i, entry in enumerate(main_devices):
            origin = Origin("config", config_file, lines[i], config_file.name, i)
            inv.add(entry, origin)
    devices_file = raw.get("devices_file")
    if isinstance(devices_file, str) and devices_file:
        _read_csv_into(inv, base, devices_file)
    include = raw.get("include")
    if isinstance(include, list):
        for pattern in include:
            if isinstance(pattern, str) and pattern:
                for path, label in _expand(base, pattern, inv):
                    _read_toml_into(inv, path, label)
    return inv


def _expand(base: Path, pattern: str, inv: Inventory) -> Iterator[tuple[Path, str]]:
    full = Path(pattern).expanduser()
    full = full if full.is_absolute() else base / full
    if not glob.has_magic(pattern):
        if not full.is_file():
            inv.problems.append(("include", f"{pattern}: no such file"))
            return
        yield full, pattern
        return
    # A pattern that matches nothing is an empty devices.d/, not a mistake; sorted so the
    # device order (and therefore the logs) does not depend on the directory's order.
    for match in sorted(glob.glob(str(full))):
        p = Path(match)
        if p.is_file():
            yield p, _label(base, p)


def _label(base: Path, path: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


_DEVICES_HEADER = re.compile(r"^\s*\[\[\s*devices\s*\]\]\s*(#.*)?$")


def devices_header_lines(text: str, count: int) -> list[int | None]:
    """1-based lines of the ``[[devices]]`` headers; all None unless there is one per entry
    (an inline ``devices = [...]`` array has no headers to point at)."""
    found = [n for n, line in enumerate(text.splitlines(), 1) if _DEVICES_HEADER.match(line)]
    return list(found) if len(found) == count else [None] * count


def _read_toml_into(inv: Inventory, path: Path, label: str) -> None:
    try:
        text = path.read_text(encoding="utf-8")
        doc = tomllib.loads(text)
    except (OSError, UnicodeDecodeError) as exc:
        inv.problems.append((label, f"cannot read: {exc}"))
        return
    except tomllib.TOMLDecodeError as exc:
        inv.problems.append((label, f"not valid TOML: {exc}"))
        return
    others = sorted(k for k in doc if k != "devices")
    if others:
        inv.problems.append(
            (label, f"an included file holds [[devices]] entries only; found {', '.join(others)}")
        )
    devices = doc.get("devices", [])
    if not isinstance(devices, list):
        inv.problems.append((label, "devices must be [[devices]] tables"))
        return
    lines = devices_header_lines(text, len(devices))
    for i, entry in enumerate(devices):
        origin = Origin("include", path, lines[i], label, i)
        inv.add(entry, origin)


# ---- CSV ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CsvField:
    value: str
    start: int
    """Offset of the field's raw text (quotes included) in the decoded file."""
    end: int


@dataclass(frozen=True, slots=True)
class CsvRecord:
    line: int
    fields: list[CsvField]
    end: int
    """Offset just past the record's last field (before its line break)."""


class CsvSyntaxError(ValueError):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


@dataclass(frozen=True, slots=True)
class CsvText:
    """A decoded CSV file and how to write it back exactly as it was encoded."""

    text: str
    encoding: str
    bom: bytes
    delimiter: str

    @classmethod
    def read(cls, path: Path) -> CsvText:
        data = path.read_bytes()
        # Spreadsheets save UTF-8 with a BOM; Control Hub's exports have been UTF-16 with one.
        for bom, encoding in (
            (b"\xef\xbb\xbf", "utf-8"),
            (b"\xff\xfe", "utf-16-le"),
            (b"\xfe\xff", "utf-16-be"),
        ):
            if data.startswith(bom):
                text = data[len(bom) :].decode(encoding)
                break
        else:
            bom, encoding = b"", "utf-8"
            text = data.decode(encoding)
        first = text.split("\n", 1)[0]
        delimiter = max((",", "\t", ";"), key=first.count)
        return cls(text, encoding, bom, delimiter)

    def encode(self, text: str) -> bytes:
        return self.bom + text.encode(self.encoding)

    def records(self) -> Iterator[CsvRecord]:
        return csv_records(self.text, self.delimiter)


def csv_records(text: str, delimiter: str = ",") -> Iterator[CsvRecord]:
    """RFC 4180 records with each field's span; ``"..."`` quoting, ``""`` for a quote."""
    i, n, line = 0, len(text), 1
    breaks = (delimiter, "\r", "\n")
    while i < n:
        start_line = line
        fields: list[CsvField] = []
        while True:
            start = i
            if i < n and text[i] == '"':
                i += 1
                buf: list[str] = []
                while True:
                    if i >= n:
                        raise CsvSyntaxError(start_line, "a quoted field is not closed")
                    c = text[i]
                    if c == '"':
                        if i + 1 < n and text[i + 1] == '"':
                            buf.append('"')
                            i += 2
                            continue
                        i += 1
                        break
                    if c == "\n":
                        line += 1
                    buf.append(c)
                    i += 1
                while i < n and text[i] not in breaks:
                    buf.append(text[i])
                    i += 1
                value = "".join(buf)
            else:
                while i < n and text[i] not in breaks:
                    i += 1
                value = text[start:i]
            fields.append(CsvField(value, start, i))
            if i < n and text[i] == delimiter:
                i += 1
                continue
            end = i
            if i < n and text[i] == "\r":
                i += 1
            if i < n and text[i] == "\n":
                i += 1
            line += 1
            break
        yield CsvRecord(start_line, fields, end)


def column_key(header: str) -> str:
    """``"Time Zone"``, ``" time-zone "``, ``"timeZone"`` -> ``time_zone``: how a header cell
    is matched to a column (case, spaces, punctuation and camelCase folded)."""
    split = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", header.strip())
    return re.sub(r"[^a-z0-9]+", "_", split.lower()).strip("_")


def room_id_from_name(name: str) -> str:
    """A workspace name as a room id: lower-cased, other characters as '-' (DESIGN.md)."""
    slug = re.sub(r"[^a-z0-9_-]+", "-", name.strip().lower()).strip("-")
    return slug[:64]


@dataclass(frozen=True, slots=True)
class CsvLayout:
    """How the header of an inventory CSV maps to device keys."""

    header: CsvRecord
    columns: dict[str, int]
    """Device key -> field index (``fingerprint`` absent when the file has no such column)."""
    control_hub: bool
    name_column: int | None = None
    """Control Hub export: the column the room id is made from."""


def csv_layout(path_label: str, records: list[CsvRecord]) -> tuple[CsvLayout | None, list[Problem]]:
    """Recognise the header: our columns, or a Control Hub export. Problems name the file."""
    if not records:
        return None, [(path_label, "empty: the first line names the columns (id, host, ...)")]
    header = records[0]
    keys = [column_key(f.value) for f in header.fields]
    where = f"{path_label}:{header.line}"
    problems: list[Problem] = []
    # An export: no id column, and a column only an export has (a bare "name" or "host"
    # alone is one of our files with a typo, reported as such below).
    if "id" not in keys and any(k in _HUB_COLUMNS - {"name", "host", "hostname"} for k in keys):
        return _hub_layout(where, header, keys)
    columns: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key in _SECRET_COLUMNS:
            msg = (
                f"column {header.fields[i].value!r}: secrets are not accepted in the inventory; "
                "set password_env or password_file in [defaults]"
            )
            problems.append((where, msg))
        elif key not in CSV_COLUMNS:
            import difflib  # an error path only

            close = difflib.get_close_matches(key, CSV_COLUMNS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            msg = f"unknown column {header.fields[i].value!r}{hint}; "
            problems.append((where, msg + f"allowed: {', '.join(CSV_COLUMNS)}"))
        elif key in columns:
            problems.append((where, f"column {key!r} appears twice"))
        else:
            columns[key] = i
    if "id" not in columns:
        problems.append((where, "no id column: the first line names the columns (id, host, ...)"))
    if "host" not in columns and "url" not in columns:
        problems.append((where, "no host or url column"))
    return CsvLayout(header, columns, control_hub=False), problems


def _hub_layout(
    where: str, header: CsvRecord, keys: list[str]
) -> tuple[CsvLayout | None, list[Problem]]:
    name_col = next((keys.index(k) for k in _HUB_NAME_COLUMNS if k in keys), None)
    host_col = next((keys.index(k) for k in _HUB_HOST_COLUMNS if k in keys), None)
    missing = []
    if name_col is None:
        missing.append("a workspace or device name (Workspace, Display Name)")
    if host_col is None:
        missing.append("the device's address (IP Address)")
    if missing:
        return None, [
            (
                where,
                "looks like a Control Hub export but lacks "
                + " and ".join(missing)
                + "; found: "
                + ", ".join(f.value for f in header.fields),
            )
        ]
    assert host_col is not None
    columns = {"host": host_col}
    for key in ("fingerprint", "username", "time_zone"):
        if key in keys:
            columns[key] = keys.index(key)
    calendar_col = next((keys.index(k) for k in _HUB_CALENDAR_COLUMNS if k in keys), None)
    if calendar_col is not None:
        columns["calendar"] = calendar_col
    # Every other column of the export (MAC, serial, capacity, whatever a later export adds)
    # is ignored: the file is the admin's, as Control Hub wrote it.
    return CsvLayout(header, columns, control_hub=True, name_column=name_col), []


def _read_csv_into(inv: Inventory, base: Path, name: str) -> None:
    path = Path(name).expanduser()
    path = path if path.is_absolute() else base / path
    try:
        csv_text = CsvText.read(path)
        records = [r for r in csv_text.records() if not blank_or_comment(r)]
    except FileNotFoundError:
        inv.problems.append(("devices_file", f"{name}: no such file"))
        return
    except (OSError, UnicodeDecodeError) as exc:
        inv.problems.append(("devices_file", f"{name}: cannot read: {exc}"))
        return
    except CsvSyntaxError as exc:
        inv.problems.append((f"{name}:{exc.line}", str(exc)))
        return
    layout, problems = csv_layout(name, records)
    inv.problems.extend(problems)
    if layout is None:
        return
    for index, record in enumerate(records[1:]):
        origin = Origin("csv", path, record.line, name, index)
        width = len(layout.header.fields)
        if len(record.fields) > width:
            msg = f"{len(record.fields)} cells but the header names {width} columns"
            inv.problems.append((origin.where(), msg + " (a stray delimiter?)"))
            continue
        inv.add(csv_entry(layout, record), origin)


def blank_or_comment(record: CsvRecord) -> bool:
    first = record.fields[0].value.strip() if record.fields else ""
    return first.startswith("#") or all(not f.value.strip() for f in record.fields)


def csv_entry(layout: CsvLayout, record: CsvRecord) -> dict[str, Any]:
    """One row as a ``[[devices]]`` entry; empty cells are left out (``[defaults]`` apply)."""

    def cell(i: int | None) -> str:
        if i is None or i >= len(record.fields):
            return ""
        return record.fields[i].value.strip()

    entry: dict[str, Any] = {}
    if layout.control_hub:
        name = cell(layout.name_column)
        if name:
            entry["id"] = room_id_from_name(name)
    for key, i in layout.columns.items():
        value = cell(i)
        if not value:
            continue
        if key == "host" and "://" in value:
            key = "url"  # a URL in the host column: the admin meant the url key
        entry[key] = value
    return entry


# ---- naming problems ---------------------------------------------------------------------------

_DEVICE_REF = re.compile(r"devices\[(\d+)\]")


def name_problems(problems: Iterable[Problem], inv: Inventory) -> list[Problem]:
    """Rewrite ``devices[N]`` (an index into the merged list) to the room id, file and line.

    An entry of the main config keeps its key (``devices[2].fingerprint``: the index is right
    for that file) and gains ``(room-4a, agent.toml:14)``; an entry of the CSV or an included
    file is keyed ``rooms.csv:12: room-4a.fingerprint``.
    """
    out: list[Problem] = []
    for key, msg in problems:
        m = _DEVICE_REF.match(key)
        if m is None or int(m.group(1)) >= len(inv.origins):
            out.append((key, _DEVICE_REF.sub(lambda r: _ref(r, inv), msg)))
            continue
        i = int(m.group(1))
        origin = inv.origins[i]
        rest = key[m.end() :]
        msg = _DEVICE_REF.sub(lambda r: _ref(r, inv), msg)
        room = _room_of(inv.devices[i])
        if origin.kind == "config":
            key = f"devices[{origin.index}]{rest}"
            out.append((key, f"{msg} ({room}, {origin.where()})"))
        else:
            out.append((f"{origin.where()}: {room}{rest}", msg))
    return out


def _room_of(entry: Any) -> str:
    dev_id = entry.get("id") if isinstance(entry, Mapping) else None
    return dev_id if isinstance(dev_id, str) and dev_id else "entry without an id"


def _ref(m: re.Match[str], inv: Inventory) -> str:
    i = int(m.group(1))
    if i >= len(inv.origins):
        return m.group(0)
    origin = inv.origins[i]
    room = _room_of(inv.devices[i])
    if origin.kind == "config":
        return f"devices[{origin.index}] ({room}, {origin.where()})"
    return f"{room} at {origin.where()}"
