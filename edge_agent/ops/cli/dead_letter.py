"""``edge-agent outbox dead-letter list|replay|purge``.

``list`` reads the database (fine beside a running agent); ``replay`` and ``purge`` write it
directly when no agent runs, else through the running agent's local API (the store is locked).
In fleet mode (``[store] url``) ``list`` reads the PostgreSQL store read-only and ``replay`` /
``purge`` always go through a member's local API.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

from edge_agent.config import AgentConfig
from edge_agent.config.models import LOCAL_STORE_PATH, store_default_tried
from edge_agent.ops.cli.common import (
    EX_FAIL,
    EX_OK,
    EX_UNAVAILABLE,
    EX_USAGE,
    Exit,
    api_headers,
    api_verify,
    config_api_url,
    err,
    load_config_or_exit,
    print_table,
    setup_logging,
)


def cmd_dead_letter(args: argparse.Namespace) -> int:
    setup_logging(args)
    cfg = load_config_or_exit(args.config, require_sink=True)
    setup_logging(args, cfg)
    if args.sink is not None and args.sink not in cfg.sink_names():
        err(
            f"edge-agent: --sink {args.sink}: not a configured sink ({', '.join(cfg.sink_names())})"
        )
        return EX_USAGE
    if args.dl_command == "purge" and not (args.ids or args.sink or args.all):
        err("edge-agent: purge needs --id ID, --sink NAME or --all")
        return EX_USAGE
    if cfg.store.url is not None:
        # Fleet mode: the members share one PostgreSQL. list reads it read-only; replay and
        # purge go through a member's local API (the members number the shared outbox).
        if args.dl_command == "list":
            return _dead_letter_list(args, cfg)
        return _dead_letter_change(args, cfg)
    if not cfg.store_path.exists():
        tried = (
            f"; {store_default_tried(os.environ)}" if cfg.store_path == LOCAL_STORE_PATH else ""
        )
        err(
            f"edge-agent: no store at {cfg.store_path} (has the agent run with this config?)"
            f"{tried}"
        )
        return EX_FAIL
    if args.dl_command == "list":
        return _dead_letter_list(args, cfg)
    return _dead_letter_change(args, cfg)


def _dead_letter_list(args: argparse.Namespace, cfg: AgentConfig) -> int:
    from edge_agent.store import StoreError, read_dead_letters

    # A read-only connection: WAL lets it read beside the running agent's writer (PostgreSQL:
    # a read-only transaction beside every member).
    try:
        if cfg.store.url is not None:
            from edge_agent.ops.cli import pgstore

            rows = asyncio.run(pgstore.dead_letters(cfg, limit=args.limit, sink=args.sink))
        else:
            rows = read_dead_letters(cfg.store_path, limit=args.limit, sink=args.sink)
    except StoreError as exc:
        err(f"edge-agent: {exc}")
        return EX_FAIL
    if args.ids:
        rows = [r for r in rows if r["id"] in set(args.ids)]
    if args.json:
        from edge_agent import jsoncodec

        for row in rows:
            print(jsoncodec.dumps(row))
        return EX_OK
    from datetime import UTC, datetime

    from edge_agent.clock import utc_iso

    print_table(
        ["ID", "SINK", "DEVICE", "TYPE", "ATTEMPTS", "DEAD AT", "REASON"],
        [
            [
                r["id"],
                r["sink"],
                r["device_id"],
                r["type"],
                r["attempts"],
                utc_iso(datetime.fromtimestamp(r["dead_at"], UTC)) if r.get("dead_at") else None,
                r["reason"],
            ]
            for r in rows
        ],
    )
    print(f"{len(rows)} dead letter(s)" + (" shown" if len(rows) == args.limit else ""))
    return EX_OK


def _dead_letter_change(args: argparse.Namespace, cfg: AgentConfig) -> int:
    """replay / purge: only the store's owner may write the database (it numbers the outbox).

    With no agent running this command opens the store itself (taking its lock); while the
    agent runs, the store is locked and the change goes through the agent's local API.
    """
    from edge_agent.store import StoreError, StoreLocked

    ids: list[int] | None = list(args.ids) if args.ids else None
    try:
        if cfg.store.url is not None:
            from edge_agent.store.postgres import describe

            raise _FleetStore(
                f"the fleet's store at {describe(cfg.store.url)} is written by its members only"
            )
        n = asyncio.run(_dead_letter_direct(args, cfg, ids))
        where = ""
    except (StoreLocked, _FleetStore) as locked:
        url = str(args.api).rstrip("/") if args.api else config_api_url(cfg)
        headers = api_headers(args.config, cfg, required=True)
        n = _dead_letter_via_api(args, url, ids, locked, headers, api_verify(cfg))
        where = f" through the running agent ({url})"
    except StoreError as exc:
        err(f"edge-agent: {exc}")
        return EX_FAIL
    if args.dl_command == "replay":
        print(f"replayed {n} dead letter(s) into the outbox{where}")
    else:
        print(f"purged {n} dead letter(s){where}")
    return _matched_all(args, n)


class _FleetStore(Exception):
    """Fleet mode: the change goes through a member's local API."""


def _matched_all(args: argparse.Namespace, n: int) -> int:
    """EX_FAIL when a selection (``--id``, ``--sink``) matched less than it named: a script that
    replays ``--id 999`` must learn that nothing was replayed."""
    wanted = len(set(args.ids)) if args.ids else None
    if wanted is not None and n < wanted:
        err(
            f"edge-agent: {n} of {wanted} dead letter id(s) matched"
            + (f" with --sink {args.sink}" if args.sink else "")
            + "; `edge-agent outbox dead-letter list` shows the ids there are"
        )
        return EX_FAIL
    if wanted is None and args.sink and n == 0:
        err(f"edge-agent: no dead letter of sink {args.sink} matched")
        return EX_FAIL
    return EX_OK


async def _dead_letter_direct(
    args: argparse.Namespace, cfg: AgentConfig, ids: list[int] | None
) -> int:
    from edge_agent.store import Store

    store = await Store.open(
        cfg.store_path,
        sinks=cfg.sink_names(),
        outbox_max_events=cfg.store.outbox_max_events,
        synchronous=cfg.store.synchronous,
    )
    try:
        if args.dl_command == "replay":
            return await store.replay_dead_letters(ids, sink=args.sink)
        return await store.purge_dead_letters(ids, sink=args.sink)
    finally:
        await store.close()


def _dead_letter_via_api(
    args: argparse.Namespace,
    url: str,
    ids: list[int] | None,
    locked: Exception,
    headers: dict[str, str],
    verify: str | bool = True,
) -> int:
    import httpx

    body: dict[str, Any] = {"ids": ids, "sink": args.sink}
    if args.dl_command == "purge":
        body["all"] = bool(args.all)
    route = f"/v1/dead-letters/{args.dl_command}"
    try:
        with httpx.Client(base_url=url, timeout=args.timeout, verify=verify) as http:
            resp = http.post(route, json=body, headers=headers)
    except httpx.HTTPError as exc:
        err(
            f"edge-agent: {locked}",
            f"  and its local API at {url} did not answer ({type(exc).__name__}: {exc});",
            "  give the agent's API with --api URL (or fix [api] listen in the config), or stop "
            "the agent and run this again",
        )
        raise Exit(EX_UNAVAILABLE) from None
    try:
        answer: Any = resp.json()
    except ValueError:
        answer = {}
    if resp.status_code != 200 or not isinstance(answer, dict):
        error = answer.get("error") if isinstance(answer, dict) else None
        hint = " (an agent older than this command? restart it)" if resp.status_code == 404 else ""
        if resp.status_code == 401:
            hint = " (set [api] token_env or token_file to the agent's token)"
        err(
            f"edge-agent: {url}{route} answered HTTP {resp.status_code}: {error or resp.text}"
            + hint
        )
        raise Exit(EX_FAIL)
    return int(answer["replayed" if args.dl_command == "replay" else "purged"])
