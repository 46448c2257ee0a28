"""``celeray demo|up|status|down|keys|ray-head``: the local stack under supervisor.

The stack itself is :mod:`celeray.stack`; these commands start it, show it and stop it.
``ray-head`` is what supervisor's ``ray-head`` program runs (:mod:`celeray.ray_head`).
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from celeray.cli_summary import print_summary
from celeray.runstate import RunStore
from celeray.settings import Settings

__all__ = ["add_parsers", "reading_hints"]

console = Console()
err = Console(stderr=True)

EXIT_FAILED = 1  # as celeray.cli's


def _print_stack(settings: Settings, info: Any) -> None:
    from celeray import credentials

    table = Table(title=f"celeray stack in {info.home}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("API", f"{info.api_url}/api/v1  (Authorization: Bearer <token>)")
    table.add_row("API token", credentials.api_token(settings))
    table.add_row("Flower", f"{info.flower_url}  user {settings.flower_user}, password "
                  f"{credentials.flower_password(settings)}")
    table.add_row("Ray", info.ray_address)
    table.add_row("Redis", f"started under supervisor ({info.redis_server})"
                  if info.redis_supervised else "the one already running")
    table.add_row("logs", str(info.logs))
    console.print(table)


def _print_backlogs(settings: Settings) -> None:
    """Each pipeline's backlog as its newest listing left it (nothing if unknown)."""
    from celeray.backlog import backlog_of
    from celeray.cli_triage import backlog_line
    from celeray.pipelines import load_pipelines

    try:
        store = RunStore.from_settings(settings)
        for name in load_pipelines(settings.pipelines, **settings.pipeline_rules()):
            found = backlog_of(store, name)
            if found is not None:
                console.print(backlog_line(name, found), highlight=False)
    except Exception as exc:  # status must show what it can: the stack may be half up
        err.print(f"backlog unknown: {type(exc).__name__}: {exc}", highlight=False)


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    """Start the whole stack under supervisord and wait until it is healthy."""
    from celeray import stack

    with console.status("starting the stack (Ray head, workers, beat, Flower, API)..."):
        info = stack.up(settings)
    _print_stack(settings, info)
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    """Show each supervised program, the API's health answer and each pipeline's backlog."""
    from celeray import stack

    states, code, body = stack.status(settings)
    if not states:
        console.print(f"no stack is running for {settings.home.resolve()}")
        return EXIT_FAILED
    table = Table("program", "state")
    for name, state in sorted(states.items()):
        table.add_row(name, state)
    console.print(table)
    console.print(f"health: {code or 'no answer'}")
    console.print_json(json.dumps(body))
    _print_backlogs(settings)
    return 0 if code == 200 else EXIT_FAILED


def cmd_down(args: argparse.Namespace, settings: Settings) -> int:
    """Stop the stack gracefully; workers finish or hand back their tasks."""
    from celeray import stack

    with console.status("stopping the stack..."):
        stopped = stack.down(settings)
    console.print("stopped" if stopped else f"no stack was running for {settings.home.resolve()}")
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """Demo workspace, stack up, a run through the HTTP API, and where everything is."""
    from celeray import credentials
    from celeray.demo import run_demo

    workdir = Path(args.dir).resolve()
    doc = run_demo(settings, workdir, console)
    if doc.get("state") != "SUCCESS":
        err.print(f"[red]the demo run failed[/red]: {doc.get('error')}", highlight=False)
        return EXIT_FAILED
    print_summary(doc["result"])
    lake = workdir / "lake" / "flights"
    # soft_wrap: paths, passwords, tokens and SQL are never cut by a narrow terminal or a pipe
    say = functools.partial(console.print, soft_wrap=True, highlight=False, markup=False)
    say(f"A Delta table (zstd Parquet) is in {lake}; read it with")
    for line in reading_hints(str(lake), (doc.get("result") or {}).get("delta_version")):
        say(f"  {line}")
    say(f"Flower:    http://127.0.0.1:{settings.flower_port}  user {settings.flower_user}, "
        f"password {credentials.flower_password(settings)}")
    say(f"API:       http://127.0.0.1:{settings.api_port}/api/v1  token "
        f"{credentials.api_token(settings)}")
    exe = _command()
    say("The stack stays up. From this folder:")
    say(f"  export CELERAY_PIPELINES={workdir / 'pipelines.toml'}")
    say(f"  {exe} status;  {exe} runs flights;  {exe} down")
    return 0


def reading_hints(table: str, version: int | None) -> list[str]:
    """How to read the Delta table at ``table`` (a local path) with each reader, and how
    to read it as it was before the run's last batch (time travel)."""
    hints = [
        f'deltalake: DeltaTable("{table}").to_pandas()',
        f'Polars:    polars.read_delta("{table}")',
        f"DuckDB:    INSTALL delta; LOAD delta; SELECT count(*) FROM delta_scan('{table}');",
    ]
    if version:
        hints.append(f'before the last batch: polars.read_delta("{table}", version={version - 1})')
    return hints


def _command() -> str:
    """How the user calls this command: ``celeray`` when that is it on PATH, else its path."""
    this = Path(sys.argv[0]).resolve()
    found = shutil.which("celeray")
    return "celeray" if found and Path(found).resolve() == this else str(this)


def cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    """Make the key pair that signs task messages, where the settings say, if missing."""
    from celeray import credentials, signing

    key, cert = credentials.signing_keys(settings)
    signing.check(signing.key_material(settings))
    console.print(f"signing key:  {key} (private: senders and workers only, never Flower)")
    console.print(f"certificate:  {cert} (public: every worker trusts it)")
    return 0


def cmd_ray_head(args: argparse.Namespace, settings: Settings) -> int:
    """``ray start --head --block`` with the given options, ending when its raylet dies.

    See :mod:`celeray.ray_head`; supervisor's ``ray-head`` program runs this.
    """
    from celeray.ray_head import run_head

    return run_head(list(args.ray_args))


def add_parsers(sub: Any) -> None:
    """Add ``demo``, ``up``, ``status``, ``down``, ``keys`` and ``ray-head``."""
    d = sub.add_parser("demo", help="lay out a demo, start the stack, run it over HTTP")
    d.add_argument("--dir", default="celeray-demo", help="demo workspace (default ./celeray-demo)")
    d.set_defaults(func=cmd_demo)
    for name, func, text in (
        ("up", cmd_up, "start the whole stack under supervisor"),
        ("status", cmd_status, "show the stack's programs and health"),
        ("down", cmd_down, "stop the stack"),
        ("keys", cmd_keys, "make the key pair that signs task messages, if missing"),
    ):
        sub.add_parser(name, help=text).set_defaults(func=func)
    h = sub.add_parser(
        "ray-head", help="ray start --head --block OPTIONS; exits when its raylet dies",
        description="Every option is passed on to `ray start --head --block`.",
    )
    h.set_defaults(func=cmd_ray_head, ray_args=[])
