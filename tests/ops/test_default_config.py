"""``-c`` is optional on every subcommand: ``$EDGE_AGENT_CONFIG``, else
``/etc/edge-agent/agent.toml``; ``edge-agent config example`` prints the shipped example."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from edge_agent.ops.cli.common import DEFAULT_CONFIG
from tests.ops.test_cli import ENV, EXAMPLE, REPO, cli, cli_env

PACKAGED = REPO / "edge_agent" / "config" / "agent.example.toml"

# Every subcommand that reads the config, with the arguments it needs besides -c.
NEEDS_CONFIG = [
    ("check-config",),
    ("run",),
    ("trust", "--all"),
    ("outbox", "dead-letter", "list"),
    ("outbox", "dead-letter", "replay"),
    ("outbox", "dead-letter", "purge", "--all"),
]


def test_the_packaged_example_is_the_repository_example() -> None:
    assert PACKAGED.read_bytes() == EXAMPLE.read_bytes(), (
        "edge_agent/config/agent.example.toml must be config/agent.example.toml (a symlink to "
        "it in the repository; a wheel carries its content)"
    )


def test_config_example_prints_the_annotated_example(tmp_path: Path) -> None:
    r = cli("config", "example")
    assert r.returncode == 0, r.stderr
    assert r.stdout == EXAMPLE.read_text()
    # ... and it is a config check-config accepts, as the README suggests using it.
    path = tmp_path / "agent.toml"
    path.write_text(r.stdout)
    assert tomllib.loads(r.stdout)["site"]
    assert cli("check-config", "-c", str(path), env=ENV).returncode == 0


@pytest.mark.parametrize("argv", NEEDS_CONFIG, ids=lambda a: " ".join(a))
def test_without_c_the_env_variable_names_the_config(tmp_path: Path, argv: tuple[str]) -> None:
    missing = tmp_path / "nowhere.toml"
    r = cli(*argv, env={"EDGE_AGENT_CONFIG": str(missing)})
    assert r.returncode == 78, r.stderr
    assert f"tried $EDGE_AGENT_CONFIG={missing}: no such file" in r.stderr
    assert "give -c FILE" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.skipif(DEFAULT_CONFIG.exists(), reason="this machine has a real agent config")
@pytest.mark.parametrize("argv", NEEDS_CONFIG, ids=lambda a: " ".join(a))
def test_without_c_or_env_the_default_path_is_tried(argv: tuple[str]) -> None:
    r = cli(*argv)
    assert r.returncode == 78, r.stderr
    assert f"tried {DEFAULT_CONFIG} ($EDGE_AGENT_CONFIG is not set): no such file" in r.stderr


def test_the_env_variable_is_used_and_c_wins(tmp_path: Path) -> None:
    good = tmp_path / "agent.toml"
    good.write_text(EXAMPLE.read_text())
    r = cli("check-config", env=ENV | {"EDGE_AGENT_CONFIG": str(good)})
    assert r.returncode == 0, r.stderr
    assert str(good) in r.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('site = "Not Valid"\n')
    r = cli("check-config", "-c", str(good), env=ENV | {"EDGE_AGENT_CONFIG": str(bad)})
    assert r.returncode == 0, r.stderr


def test_status_without_c_falls_back_to_the_api_default_when_no_config_exists(
    tmp_path: Path,
) -> None:
    # The env variable names a missing file: status does not need one and does not fail on it.
    r = cli(
        "status", "--timeout", "0.5",
        env={"EDGE_AGENT_CONFIG": str(tmp_path / "nowhere.toml"),
             "EDGE_AGENT_API": "http://127.0.0.1:1"},
    )  # fmt: skip
    assert r.returncode == 69, r.stderr
    assert "http://127.0.0.1:1" in r.stderr


def test_status_takes_the_api_url_from_the_default_config(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        EXAMPLE.read_text().replace('listen = "127.0.0.1:9780"', 'listen = "127.0.0.1:1"')
    )
    assert 'listen = "127.0.0.1:1"' in cfg.read_text()
    r = cli("status", "--timeout", "0.5", env=ENV | {"EDGE_AGENT_CONFIG": str(cfg)})
    assert r.returncode == 69, r.stderr
    assert "http://127.0.0.1:1" in r.stderr


def test_help_shows_the_default() -> None:
    r = cli("check-config", "--help")
    assert "$EDGE_AGENT_CONFIG" in r.stdout and str(DEFAULT_CONFIG) in r.stdout


@pytest.mark.slow
def test_the_wheel_carries_the_example(tmp_path: Path) -> None:
    """From a wheel there is no config/ directory: the example must be package data."""
    # Built from a copy: setuptools builds in the source tree and would leave build/ behind.
    src = tmp_path / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("edge_agent", "device_sim", "calendar_sim"):
        shutil.copytree(REPO / name, src / name, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    out = tmp_path / "dist"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
        capture_output=True, text=True, env=cli_env(), timeout=300, check=False,
    )  # fmt: skip
    # pip fetches the build backend (setuptools) from the configured index: none, no test.
    if r.returncode != 0 and any(
        s in r.stderr for s in ("No matching distribution", "Could not find a version")
    ):
        pytest.skip(f"no build backend available: {r.stderr.strip()[-200:]}")
    assert r.returncode == 0, r.stderr
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        assert z.read("edge_agent/config/agent.example.toml") == EXAMPLE.read_bytes()
