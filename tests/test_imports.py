"""What an agent loads: an agent without a calendar source does not import the token
libraries' HTTP stack (``requests``, ~3.4 MiB of RSS at start)."""

from __future__ import annotations

import subprocess
import sys


def test_the_agent_and_its_cli_do_not_import_requests() -> None:
    code = (
        "import sys, edge_agent.agent, edge_agent.ops.cli.main\n"
        "print(sorted(m for m in ('requests', 'msal', 'google.auth') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
