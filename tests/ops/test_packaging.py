"""Packaging: the Dockerfile and compose.yaml (read as the tools read them), the LICENSE, the
changelog, and shell completion run through real bash and zsh.

No container engine runs on the test machines, so the image is checked statically here; the
last test builds nothing but runs an image built beforehand (``EDGE_AGENT_TEST_IMAGE``, see
its docstring) as its own user against a real broker and simulated device.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_agent.ops.cli import build_parser
from edge_agent.ops.cli.completion import bash_script, completion_script

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "compose.yaml"
SECRET_WORDS = re.compile(r"passw|secret|token|api[_-]?key|private", re.IGNORECASE)


# --- the Dockerfile ----------------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` in order: comments dropped, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "a continuation line ends the Dockerfile"
    return out


def final_stage(steps: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (word, _) in enumerate(steps) if word == "FROM"]
    assert starts, "no FROM"
    return steps[starts[-1] :]


def test_dockerfile_runs_as_a_user_of_its_own() -> None:
    final = final_stage(instructions(DOCKERFILE.read_text()))
    users = [args for word, args in final if word == "USER"]
    assert users, "the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users
    # Nothing runs as root after the switch (a RUN after USER root would undo it).
    after = final[[w for w, _ in final].index("USER") :]
    assert all(word != "RUN" for word, _ in after)


def test_dockerfile_state_is_a_volume_and_secrets_come_from_files() -> None:
    final = final_stage(instructions(DOCKERFILE.read_text()))
    volumes = [json.loads(args) for word, args in final if word == "VOLUME"]
    assert ["/var/lib/edge-agent"] in volumes
    env = " ".join(args for word, args in final if word == "ENV")
    assert "STATE_DIRECTORY=/var/lib/edge-agent" in env
    assert "CREDENTIALS_DIRECTORY=/run/secrets" in env  # Compose and Swarm mount secrets there
    entry = [json.loads(args) for word, args in final if word == "ENTRYPOINT"]
    cmd = [json.loads(args) for word, args in final if word == "CMD"]
    assert entry == [["edge-agent"]] and cmd == [["run", "-c", "/etc/edge-agent/agent.toml"]]


def test_dockerfile_bakes_in_no_secret() -> None:
    steps = instructions(DOCKERFILE.read_text())
    for word, args in steps:
        if word in ("ENV", "ARG", "LABEL"):
            for name, _, value in (kv.partition("=") for kv in shlex.split(args)):
                assert not (SECRET_WORDS.search(name) and value), f"{word} {name} has a value"
        if word in ("COPY", "ADD"):
            assert not re.search(
                r"credential|\.pem\b|\.key\b|agent\.toml|\.db\b|\.env\b|config/", args
            ), args
    # What is copied is the source alone; the ignore file keeps the rest out of the context.
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert "**" in ignore  # everything is excluded unless named
    for kept in ("!pyproject.toml", "!edge_agent/", "!device_sim/", "!calendar_sim/"):
        assert kept in ignore
    for excluded in ("**/credentials/", "**/*.db", "**/*.pem", "**/*.key"):
        assert excluded in ignore


def test_dockerfile_healthcheck_asks_healthz() -> None:
    final = final_stage(instructions(DOCKERFILE.read_text()))
    checks = [args for word, args in final if word == "HEALTHCHECK"]
    assert len(checks) == 1
    check = checks[0]
    assert "--interval=" in check and "--timeout=" in check
    test = json.loads(check[check.index("CMD") + 3 :].strip())
    assert test[0] == "python3" and "EDGE_AGENT_HEALTHZ_URL" in test[2]
    env = " ".join(args for word, args in final if word == "ENV")
    assert "EDGE_AGENT_HEALTHZ_URL=http://127.0.0.1:9780/healthz" in env
    # The check itself is valid Python that fails (non-zero) when nothing answers.
    from tests.mosquitto import free_port

    proc = subprocess.run(
        [sys.executable, "-c", test[2]],
        env={**os.environ, "EDGE_AGENT_HEALTHZ_URL": f"http://127.0.0.1:{free_port()}/healthz"},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode != 0 and b"Connection refused" in proc.stderr


# --- compose.yaml --------------------------------------------------------------------------------


@pytest.fixture
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


def test_compose_runs_the_agent_beside_mosquitto(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"edge-agent", "mosquitto"}
    agent, broker = services["edge-agent"], services["mosquitto"]
    assert agent["build"] == "."
    assert broker["image"].startswith("eclipse-mosquitto:")
    assert "mosquitto" in agent["depends_on"]
    assert "ports" not in broker  # an unauthenticated broker stays on the project network
    # The unit's stop timeout: SIGTERM drains before the runtime kills.
    assert agent["stop_grace_period"] == "30s"


def test_compose_state_is_a_volume_and_secrets_files(compose: dict[str, Any]) -> None:
    agent = compose["services"]["edge-agent"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in agent["volumes"]}
    assert mounts["/var/lib/edge-agent"] in compose["volumes"]  # a named volume
    assert mounts["/etc/edge-agent/agent.toml"] == "./agent.toml"
    assert [v for v in agent["volumes"] if v.endswith("/etc/edge-agent/agent.toml:ro")]
    for name in agent["secrets"]:
        assert compose["secrets"][name]["file"] == f"./credentials/{name}"
    # Hardening the runtime offers, as the unit's sandbox does.
    assert agent["read_only"] is True and agent["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in agent["security_opt"]
    assert "privileged" not in agent and agent.get("user") in (None, "10001:10001")


def test_compose_bakes_in_no_secret(compose: dict[str, Any]) -> None:
    for service in compose["services"].values():
        env = service.get("environment") or {}
        items = env.items() if isinstance(env, dict) else (e.partition("=")[::2] for e in env)
        for name, value in items:
            assert not (SECRET_WORDS.search(name) and value), name


# --- LICENSE and CHANGELOG -----------------------------------------------------------------------


def test_license_is_the_apache_2_text_pyproject_declares() -> None:
    import tomllib

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"]
    assert declared == {"text": "Apache-2.0"}
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert len(re.findall(r"^\s*\d\. [A-Z]", text, re.MULTILINE)) == 9  # all nine sections


def test_changelog_follows_keep_a_changelog() -> None:
    import tomllib

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    text = (REPO / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## \[([^\]]+)\](?: - (\d{4}-\d{2}-\d{2}))?$", text, re.MULTILINE)
    assert headings[0] == ("Unreleased", "")
    assert (version, headings[1][1]) == headings[1] and headings[1][1]
    kinds = set(re.findall(r"^### (\w+)$", text, re.MULTILINE))
    assert kinds <= {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}
    for name, _ in headings:  # every version heading has its link at the bottom
        assert re.search(rf"^\[{re.escape(name)}\]: https://", text, re.MULTILINE), name
    assert (REPO / "docs" / "upgrading.md").exists() and "docs/upgrading.md" in text


# --- shell completion ----------------------------------------------------------------------------


def complete(shell: str, line: str, tmp_path: Path) -> list[str]:
    """What ``shell`` offers for the command line ``line`` (completing its last word)."""
    script = tmp_path / f"completion.{shell}"
    script.write_text(completion_script(build_parser(), shell))
    words = line.split(" ")
    array = " ".join(shlex.quote(w) for w in words)
    driver = (
        f"COMP_WORDS=({array}); COMP_CWORD={len(words) - 1}; COMP_LINE={shlex.quote(line)}; "
        f"COMP_POINT=${{#COMP_LINE}}; _edge_agent_complete; printf '%s\\n' \"${{COMPREPLY[@]}}\""
    )
    if shell == "bash":
        cmd = ["bash", "--norc", "--noprofile", "-c", f"source {script}; {driver}"]
    else:
        # zsh runs the bash function through bashcompinit, whose compgen -F calls it under
        # `emulate -L sh; setopt kshglob noshglob braceexpand` (0-based arrays): so here too.
        sh = "emulate -L sh; setopt kshglob noshglob braceexpand"
        init = "autoload -U compinit && compinit -u"
        cmd = ["zsh", "-f", "-c", f"{init}; source {script}; () {{ {sh}; {driver} }}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True, cwd=tmp_path)
    offered = [w for w in proc.stdout.splitlines() if w]
    if shell == "zsh":
        # zsh's compgen leaves the matching to compadd, which keeps what the word starts.
        offered = [w for w in offered if w.startswith(words[-1])]
    return offered


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_completes_real_command_lines(shell: str, tmp_path: Path) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    (tmp_path / "agent.toml").write_text("")
    assert set(complete(shell, "edge-agent ", tmp_path)) >= {
        "run",
        "check-config",
        "status",
        "outbox",
        "completion",
        "demo",
    }
    assert complete(shell, "edge-agent ch", tmp_path) == ["check-config"]
    assert complete(shell, "edge-agent outbox dead-letter re", tmp_path) == ["replay"]
    assert "--connect" in complete(shell, "edge-agent check-config --", tmp_path)
    assert complete(shell, "edge-agent run --log-level t", tmp_path) == ["trace"]
    assert complete(shell, "edge-agent run -c agent.t", tmp_path) == ["agent.toml"]
    assert complete(shell, "edge-agent completion ", tmp_path) == ["bash", "zsh"]
    purge = complete(shell, "edge-agent outbox dead-letter purge --", tmp_path)
    assert {"--all", "--id", "--sink", "--api", "--config"} <= set(purge)


def test_completion_follows_the_parser() -> None:
    """Generated: every subcommand and option of the parser is in the script."""
    script = bash_script(build_parser())
    for word in ("check-config", "dead-letter", "--connect", "--json", "--limit"):
        assert word in script
    with pytest.raises(ValueError, match="fish"):
        completion_script(build_parser(), "fish")


def test_completion_command_prints_the_script() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for shell in ("bash", "zsh"):
        proc = subprocess.run(
            [sys.executable, "-m", "edge_agent", "completion", shell],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=True,
        )
        assert "_edge_agent_complete" in proc.stdout
        assert proc.stdout.startswith("#compdef edge-agent") == (shell == "zsh")
    bad = subprocess.run(
        [sys.executable, "-m", "edge_agent", "completion", "fish"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2 and "invalid choice: 'fish'" in bad.stderr


# --- the built image, where one exists --------------------------------------------------------


@pytest.fixture
def image_root() -> Iterator[tuple[Path, dict[str, str]]]:
    """The file system of a container made from ``$EDGE_AGENT_TEST_IMAGE``, and its Env.

    Built beforehand (any engine will do). On the test machines Debian's podman and buildah
    install and build, but no registry is reachable for the ``BASE`` image and no container
    can be started (crun: "cgroups in hybrid mode not supported"), so there it takes a base
    made from Debian's packages and chroot isolation for the ``RUN`` steps::

        debootstrap --variant=minbase --include=python3,python3-venv bookworm /tmp/base
        cp /etc/ssl/certs/ca-certificates.crt /tmp/base/etc/ssl/certs/  # pip as the host
        tar -C /tmp/base -c . | podman import - localhost/bookworm-python
        podman build --isolation chroot --format docker \\
            --build-arg BASE=localhost/bookworm-python -t localhost/roomos-edge-agent:test .
        EDGE_AGENT_TEST_IMAGE=localhost/roomos-edge-agent:test pytest tests/ops/test_packaging.py

    (checked on this machine kind: ~1 min for the base, ~40 s for the build). The container is
    then run here with ``chroot`` as the image's user.
    """
    image = os.environ.get("EDGE_AGENT_TEST_IMAGE")
    podman = shutil.which("podman")
    if not image or podman is None or os.geteuid() != 0:
        pytest.skip(
            "no image to test: EDGE_AGENT_TEST_IMAGE is unset, or podman is missing, or not "
            "root. The Dockerfile's base cannot be pulled here (no registry) and no container "
            "can run (crun refuses the cgroups): build it from a debootstrap base with podman "
            "build --isolation chroot (this fixture's docstring), then set EDGE_AGENT_TEST_IMAGE"
        )
    cid = subprocess.run(
        [podman, "create", image], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    try:
        root = subprocess.run(
            [podman, "mount", cid], capture_output=True, text=True, check=True, timeout=60
        ).stdout.strip()
        inspect = subprocess.run(
            [podman, "image", "inspect", image, "--format", "{{json .Config}}"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        config = json.loads(inspect.stdout)
        env = dict(e.split("=", 1) for e in config["Env"])
        env["EDGE_AGENT_TEST_USER"] = config["User"]
        yield Path(root), env
    finally:
        subprocess.run([podman, "umount", cid], capture_output=True, timeout=60, check=False)
        subprocess.run([podman, "rm", "-f", cid], capture_output=True, timeout=60, check=False)


async def test_built_image_runs_the_agent_as_its_user(
    image_root: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    import asyncio

    from device_sim import DeviceFleet, SimConfig
    from edge_agent.forward.mqtt import broker_settings, read_retained
    from tests.mosquitto import Mosquitto, free_port

    root, env = image_root
    user = env.pop("EDGE_AGENT_TEST_USER")
    uid = int(user.split(":")[0])
    api_port = free_port()
    env["EDGE_AGENT_HEALTHZ_URL"] = f"http://127.0.0.1:{api_port}/healthz"
    sim = SimConfig(host="127.0.0.1", port=0, http=True, username="edge-agent", password="sim-pw")
    fleet = DeviceFleet(sim)
    await fleet.start()
    try:
        with Mosquitto(tmp_path) as broker:
            (root / "etc/edge-agent/agent.toml").write_text(
                f'site = "hq"\n[defaults]\npassword_file = "device-password"\n'
                f'[[devices]]\nid = "room-1"\nurl = "{fleet.devices[0].url}"\n'
                f'[mqtt]\nurl = "{broker.url}"\n[api]\nlisten = "127.0.0.1:{api_port}"\n'
            )
            secrets = root / "run/secrets"
            secrets.mkdir(parents=True, exist_ok=True)
            (secrets / "device-password").write_text("sim-pw")
            os.chown(secrets / "device-password", uid, uid)
            os.chmod(secrets / "device-password", 0o600)

            def in_image(*argv: str, **kw: Any) -> subprocess.Popen[bytes]:
                return subprocess.Popen(
                    ["chroot", f"--userspec={user}", str(root), "/usr/bin/env", "-i"]
                    + [f"{k}={v}" for k, v in env.items()]
                    + list(argv),
                    **kw,
                )

            log = tmp_path / "agent.log"
            with log.open("wb") as out:
                agent = in_image(
                    "edge-agent", "run", "-c", "/etc/edge-agent/agent.toml", stderr=out
                )
            try:
                # The image's own HEALTHCHECK command, until it passes.
                deadline = time.monotonic() + 60
                while True:
                    check = in_image(
                        "python3", "-c", _healthcheck_command(), stderr=subprocess.DEVNULL
                    )
                    if await asyncio.to_thread(check.wait, 30) == 0:
                        break
                    assert agent.poll() is None, agent.stderr.read() if agent.stderr else ""
                    assert time.monotonic() < deadline, "the HEALTHCHECK never passed"
                    await asyncio.sleep(0.2)
                settings = broker_settings(broker.url, client_id="late", protocol="3.1.1")
                deadline = time.monotonic() + 30
                while True:
                    seen = await read_retained(settings, "roomos-edge/hq/#", quiet_s=0.3)
                    if seen.get("roomos-edge/hq/devices/room-1/availability") == b"online":
                        break
                    assert time.monotonic() < deadline, f"{seen}\n{log.read_text()[-3000:]}"
                db = root / "var/lib/edge-agent/agent.db"
                assert db.exists() and db.stat().st_uid == uid  # the store, in the volume
            finally:
                agent.send_signal(signal.SIGTERM)
                code = await asyncio.to_thread(agent.wait, 30)
            assert code == 0, log.read_text()
    finally:
        await fleet.stop()


def _healthcheck_command() -> str:
    final = final_stage(instructions(DOCKERFILE.read_text()))
    check = next(args for word, args in final if word == "HEALTHCHECK")
    return str(json.loads(check[check.index("CMD") + 3 :].strip())[2])
