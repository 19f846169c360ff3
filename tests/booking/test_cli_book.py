"""``edge-agent book`` and ``edge-agent release`` against a running agent (in the test's loop),
with the token from ``[api] token_env``."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from tests.booking.conftest import TOKEN
from tests.e2e.harness import SIM_START, eventually, of_type
from tests.ops.test_cli import acli


def _config(tmp_path: Path, port: int) -> str:
    path = tmp_path / "cli.toml"
    path.write_text(f'site = "test"\n[api]\nlisten = "127.0.0.1:{port}"\ntoken_env = "API_TOKEN"\n')
    return str(path)


async def test_book_and_release_through_the_running_agent(booked, receiver, tmp_path) -> None:
    fleet, running, _ = await booked()
    dev = fleet.devices[0]
    assert running.agent.api is not None
    cfg = _config(tmp_path, running.agent.api.port)
    env = {"API_TOKEN": TOKEN}
    start = (SIM_START + timedelta(hours=1)).isoformat()
    code, out, err = await acli(
        "book",
        dev.device_id,
        "--title",
        "From the CLI",
        "--minutes",
        "25",
        "--start",
        start,
        "--organizer-email",
        "kari@example.com",
        "--wait",
        "-c",
        cfg,
        env=env,
    )
    assert code == 0, out + err
    assert out.startswith("requested ") and "created booking" in out
    [made] = [b for b in dev.calendar.bookings() if b.title == "From the CLI"]
    assert made.organizer.email == "kari@example.com"
    assert (made.end - made.start) == timedelta(minutes=25)
    await eventually(lambda: running.agent.devices()[0]["window_size"] == 1)
    code, out, err = await acli("release", dev.device_id, made.id, "-c", cfg, env=env)
    assert code == 0 and "releasing booking" in out, out + err
    await eventually(lambda: of_type(receiver.events, "booking.deleted"))
    assert dev.calendar.bookings() == []


async def test_cli_errors_say_what_the_agent_answered(booked, tmp_path) -> None:
    fleet, running, _ = await booked()
    assert running.agent.api is not None
    cfg = _config(tmp_path, running.agent.api.port)
    dev = fleet.devices[0].device_id
    code, _, err = await acli(
        "book", dev, "--title", "T", "--minutes", "5", "-c", cfg, env={"API_TOKEN": "x" * 20}
    )
    assert code == 1 and "HTTP 401" in err and "token_env" in err
    code, _, err = await acli(
        "book", dev, "--title", "T", "--minutes", "2000", "-c", cfg, env={"API_TOKEN": TOKEN}
    )
    assert code == 1 and "HTTP 422" in err and "[field duration_min]" in err
    code, _, err = await acli("release", "no-such-room", "1", "-c", cfg, env={"API_TOKEN": TOKEN})
    assert code == 1 and "HTTP 404" in err
    code, _, err = await acli("book", dev, "--title", "T", "--minutes", "5", "-c", cfg, env={})
    assert code == 78 and "API_TOKEN" in err  # the named source is not set
    assert fleet.devices[0].calendar.bookings() == []


async def test_cli_book_without_an_agent_is_69(tmp_path) -> None:
    from tests.mosquitto import free_port

    cfg = _config(tmp_path, free_port())
    code, _, err = await acli(
        "book", "room", "--title", "T", "--minutes", "5", "-c", cfg, env={"API_TOKEN": TOKEN}
    )
    assert code == 69 and "did not answer" in err


async def test_status_sends_the_token_when_reads_need_it(booked, tmp_path) -> None:
    _, running, _ = await booked(
        extra={"api": {"token_env": "API_TOKEN", "read_requires_token": True}}
    )
    assert running.agent.api is not None
    port = running.agent.api.port
    path = tmp_path / "status.toml"
    path.write_text(
        f'site = "test"\n[api]\nlisten = "127.0.0.1:{port}"\ntoken_env = "API_TOKEN"\n'
        "read_requires_token = true\n"
    )
    code, out, err = await acli("status", "-c", str(path), env={"API_TOKEN": TOKEN})
    assert code == 0 and "READY" in out, out + err
    code, out, err = await acli("status", "--api", running.agent.api.url)
    assert code == 69 and "401" in err, out + err
