"""STYLE rule 11, held by a scan: the agent reads no private attribute of aiohttp's objects (the
bound port comes from the public ``AppRunner.addresses``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from edge_agent.ops.api import LocalApi

PACKAGE = Path(__file__).resolve().parents[2] / "edge_agent"
# Private attributes of aiohttp objects the code once read (``site._server`` for the port).
AIOHTTP_PRIVATE = {"_server", "_sites", "_runner"}


def _foreign_private_reads(tree: ast.AST) -> list[tuple[int, str]]:
    """``x._server`` where ``x`` is not ``self`` (our own attributes may be private)."""
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in AIOHTTP_PRIVATE
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        ):
            found.append((node.lineno, ast.unparse(node)))
    return found


def test_the_scan_finds_what_it_looks_for() -> None:
    assert _foreign_private_reads(ast.parse("port = site._server.sockets[0]")) == [
        (1, "site._server")
    ]
    assert _foreign_private_reads(ast.parse("self._runner = runner")) == []


@pytest.mark.parametrize(
    "path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_no_private_aiohttp_attribute_is_read(path: Path) -> None:
    assert _foreign_private_reads(ast.parse(path.read_text(), str(path))) == []


async def test_the_api_reports_the_port_it_was_given_for_port_0() -> None:
    import httpx

    class _Nothing:
        pass

    async with LocalApi(_Nothing(), "127.0.0.1:0") as api:  # type: ignore[arg-type]
        assert api.port != 0 and api.url == f"http://127.0.0.1:{api.port}"
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{api.url}/healthz")).status_code == 200


def _unnamed_tasks(tree: ast.AST) -> list[int]:
    """Lines of ``create_task(...)`` / ``ensure_future(...)`` without ``name=`` (STYLE rule 3:
    a task in a dump or py-spy must say what it is)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("create_task", "ensure_future") and not any(
                k.arg == "name" for k in node.keywords
            ):
                lines.append(node.lineno)
    return lines


def test_the_task_scan_finds_an_unnamed_task() -> None:
    assert _unnamed_tasks(ast.parse("t = asyncio.create_task(f())")) == [1]
    assert _unnamed_tasks(ast.parse("t = tg.create_task(f(), name='x')")) == []


@pytest.mark.parametrize(
    "path", sorted((PACKAGE / "ops").rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_every_task_of_the_ops_package_is_named(path: Path) -> None:
    # ops/ only: edge_agent/xapi/client.py has three unnamed ones of its own (review #10).
    assert _unnamed_tasks(ast.parse(path.read_text(), str(path))) == []
