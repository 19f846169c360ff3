"""``edge-agent``: run the agent, check a config, run the demo, show status, manage dead letters.

Exit codes: 0 ok; 1 a check failed / not ready / nothing done; 2 usage; 69 (EX_UNAVAILABLE) the
local API is unreachable; 78 (EX_CONFIG) the configuration is invalid or a secret is missing;
130 interrupted. One module per subcommand (:mod:`.run`, :mod:`.check_config`, :mod:`.status`,
:mod:`.dead_letter`, :mod:`.demo`), the parser in :mod:`.main`. The modules of the running agent
(agent, xapi, store, forward, demo) are imported inside the subcommands, so ``check-config`` and
friends start fast.
"""

from __future__ import annotations

from edge_agent.ops.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
