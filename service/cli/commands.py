"""The ``parley`` command (also ``python -m service``): serve, worker, check, chat. No logic lives here."""

from __future__ import annotations

import argparse
import asyncio
import gc

from pydantic import ValidationError

from service import logs
from service.app import create_app
from service.catalog import agent_files
from service.cli import serving, terminal_chat
from service.errors import ConfigError
from service.knowledge import folders
from service.settings import Settings


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        # A check across settings (PARLEY_API_KEY with PARLEY_API_KEYS) has no field: its message names them.
        lines = [f"  {'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors(include_url=False)]
        raise SystemExit("invalid settings:\n" + "\n".join(lines)) from None


def _run(settings: Settings, *, web_routes: bool, workers: bool = True) -> None:
    logs.configure(settings.log_level, twilio_level=settings.twilio_log_level)
    try:
        app = create_app(settings, web_routes=web_routes, workers=workers)
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None
    # What is loaded by now (modules, models, settings) lives as long as the process: keep it out of the
    # garbage collector's full passes, which otherwise walk it all and stall the event loop.
    gc.collect()
    gc.freeze()
    serving.run(app, settings, new_event_loop())   # web.run_app, with the connection bounds of Settings


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop where it is installed (Linux and macOS: it costs a turn less CPU than asyncio's
    own), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def serve(args: argparse.Namespace) -> None:
    _run(_settings(), web_routes=True, workers=not args.web_only)


def worker(_: argparse.Namespace) -> None:
    _run(_settings(), web_routes=False)


def check(args: argparse.Namespace) -> None:
    settings = _settings()
    try:
        catalog = agent_files.load(settings)
        knowledge = folders.load(settings)
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None
    for warning in catalog.warnings:
        print(f"warning: {warning}")
    for agent_id, kb_id in folders.unknown(knowledge, catalog.agents):
        print(f"warning: {catalog.declared_in('agent', agent_id)}: knowledge base {kb_id!r} is declared by no folder "
              f"in {settings.agents_dir / folders.FOLDER}: it is searched only if the API created it")
    for agent, fields in catalog.unsupported.items():
        print(f"unsupported: {agent}: " + "".join(f"\n  {line}" for line in fields))
    if args.strict and catalog.unsupported:
        raise SystemExit(f"--strict: {len(catalog.unsupported)} agent(s) hold fields Parley does not act on")
    print(f"ok: {len(catalog.agents)} agent(s), {len(catalog.numbers)} number(s), {len(knowledge.bases)} knowledge "
          f"base folder(s) in {settings.agents_dir}")


def chat(args: argparse.Namespace) -> None:
    raise SystemExit(terminal_chat.run(_settings(), args.agent_id, args.version))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="parley", description="Two-way SMS chat agents on Twilio.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="web + workers + scheduler")
    serve_parser.add_argument("--web-only", action="store_true",
                              help="the web tier alone: webhooks and API, no turns (run `parley worker` beside it)")
    serve_parser.set_defaults(func=serve)
    commands.add_parser("worker", help="workers + scheduler only (health checks on PARLEY_PORT)").set_defaults(
        func=worker)
    check_parser = commands.add_parser("check", help="validate settings and agent files; non-zero exit on a problem")
    check_parser.add_argument("--strict", action="store_true",
                              help="also fail when an agent holds fields Parley stores but does not act on")
    check_parser.set_defaults(func=check)
    talk = commands.add_parser("chat", help="talk to an agent in the terminal (an api_chat; no Twilio)")
    talk.add_argument("agent_id", metavar="AGENT_ID")
    talk.add_argument("--version", type=int, metavar="N", help="the agent version (default: the latest)")
    talk.set_defaults(func=chat)
    args = parser.parse_args(argv)
    args.func(args)
