"""The ``parley`` command (also ``python -m service``): serve, worker, check, chat, numbers, a2p, console-user.
No logic lives here. Each command imports what it runs when it runs: ``parley serve``'s supervisor, which runs
none of the app, stays small (about 45 MB, not 100)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import getpass
import json
import logging
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service import logs
from service.cli import supervisor
from service.errors import ConfigError
from service.settings import Settings
from service.validation import describe

MAX_PROCESSES = 1_024   # as PARLEY_PROCESSES allows


def _processes(text: str) -> int:
    if not text.isdigit() or int(text) > MAX_PROCESSES:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of processes from 0 (the web one and one per "
                                         f"core) to {MAX_PROCESSES}")
    return int(text)


log = logging.getLogger(__name__)


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        # A check across settings (PARLEY_API_KEY with PARLEY_API_KEYS) has no field: its message names them.
        lines = [f"  {'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors(include_url=False)]
        raise SystemExit("invalid settings:\n" + "\n".join(lines)) from None


def _run(settings: Settings, *, web_routes: bool, workers: bool = True, supervisor_pid: int | None = None,
         heartbeat: int | None = None) -> None:
    """One process: the app, served until a signal. A child of ``parley serve``'s supervisor dies with it, tells
    it that its event loop runs (``heartbeat``: the pipe to write to), and a worker child leaves the port to the
    web child."""
    from service.app import create_app
    from service.cli import serving

    if supervisor_pid is not None:
        supervisor.die_with_parent(supervisor_pid)
    logs.configure(settings.log_level, twilio_level=settings.twilio_log_level, process=settings.process_name)
    log.info("process starting", extra={"web": web_routes, "workers": workers})
    try:
        app = create_app(settings, web_routes=web_routes, workers=workers)
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None
    # What is loaded by now (modules, models, settings) lives as long as the process: keep it out of the
    # garbage collector's full passes, which otherwise walk it all and stall the event loop.
    gc.collect()
    gc.freeze()
    listen = web_routes or supervisor_pid is None
    loop = new_event_loop()
    if heartbeat is not None:
        loop.create_task(supervisor.beat(heartbeat), name="parley-heartbeat")
    serving.run(app, settings, loop, listen=listen)   # web.run_app, with the bounds of Settings


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop where it is installed (Linux and macOS: it costs a turn less CPU than asyncio's
    own), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def serve(args: argparse.Namespace) -> None:
    settings = _settings()
    if args.web_only:
        _run(settings, web_routes=True, workers=False, supervisor_pid=args.supervised, heartbeat=args.heartbeat)
        return
    processes = (settings.processes if args.processes is None else args.processes) or supervisor.default_processes()
    if processes == 1:
        _run(settings, web_routes=True)
    else:
        raise SystemExit(supervisor.run(settings, processes))


def worker(args: argparse.Namespace) -> None:
    if args.supervised is not None:
        supervisor.yield_to_web()
    _run(_settings(), web_routes=False, supervisor_pid=args.supervised, heartbeat=args.heartbeat)


def check(args: argparse.Namespace) -> None:
    from service.catalog import agent_files
    from service.knowledge import folders

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
    from service.cli import terminal_chat

    raise SystemExit(terminal_chat.run(_settings(), args.agent_id, args.version))


def console_user(args: argparse.Namespace) -> None:
    """Print a PARLEY_CONSOLE_USERS entry for a named operator, with the password (asked for, or read from stdin
    when it is not a terminal) hashed; the password itself is shown and stored nowhere."""
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            raise SystemExit("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < 12:
        raise SystemExit("a console password needs at least 12 characters")
    from service.console import users

    entry = {args.name: {"role": args.role, "password": users.hash_password(password)}}
    print(json.dumps(entry))


def numbers_sync(_: argparse.Namespace) -> None:
    from service.cli import numbers

    raise SystemExit(numbers.run(_settings(), numbers.sync))


def a2p_draft(args: argparse.Namespace) -> None:
    from service.channels.twilio.registration import DraftRequest
    from service.cli import numbers

    try:
        wanted = DraftRequest(phone_numbers=args.numbers, brand_name=args.brand, website=args.website,
                              opt_in=args.opt_in)
    except ValidationError as exc:
        raise SystemExit("; ".join(describe(exc))) from None
    raise SystemExit(numbers.run(_settings(), numbers.draft(wanted)))


def a2p_register(args: argparse.Namespace) -> None:
    from service.channels.twilio.registration import RegistrationRequest
    from service.cli import numbers

    wanted = numbers.read_request(args.file, RegistrationRequest)
    raise SystemExit(numbers.run(_settings(), numbers.register(wanted)))


def a2p_status(args: argparse.Namespace) -> None:
    from service.cli import numbers

    raise SystemExit(numbers.run(_settings(), numbers.status(args.registration_id)))


def _onboarding(commands: Any) -> None:
    number = commands.add_parser("numbers", help="Twilio numbers").add_subparsers(dest="action", required=True)
    number.add_parser("sync", help="point every number's Twilio SMS webhook at PARLEY_PUBLIC_URL").set_defaults(
        func=numbers_sync)
    a2p = commands.add_parser("a2p", help="A2P 10DLC registration").add_subparsers(dest="action", required=True)
    drafting = a2p.add_parser("draft", help="draft a campaign from the numbers' agents and check it (sends nothing)")
    drafting.add_argument("numbers", nargs="+", metavar="NUMBER")
    drafting.add_argument("--brand", required=True, help="the business's legal name")
    drafting.add_argument("--website")
    drafting.add_argument("--opt-in", help="where and how users agree to receive texts")
    drafting.set_defaults(func=a2p_draft)
    registering = a2p.add_parser("register", help="register the brand and campaign a YAML or JSON file describes")
    registering.add_argument("file", type=Path, metavar="FILE")
    registering.set_defaults(func=a2p_register)
    watching = a2p.add_parser("status", help="registrations and their status (Twilio's reasons when failed)")
    watching.add_argument("registration_id", nargs="?", metavar="REGISTRATION_ID")
    watching.set_defaults(func=a2p_status)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="parley", description="Two-way SMS chat agents on Twilio.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="web + workers + scheduler, on every core")
    layout = serve_parser.add_mutually_exclusive_group()
    layout.add_argument("--processes", type=_processes, metavar="N",
                        help="processes to run: 0, a worker per core and the web one; 1, one process; from 2, one web "
                             "process and N-1 worker processes under a supervisor (default: PARLEY_PROCESSES, else 0)")
    layout.add_argument("--web-only", action="store_true",
                        help="the web tier alone: webhooks and API, no turns (run `parley worker` beside it)")
    worker_parser = commands.add_parser("worker", help="workers + scheduler only (health checks on PARLEY_PORT)")
    for process_parser in (serve_parser, worker_parser):   # a child of serve's supervisor: the supervisor's pid
        process_parser.add_argument("--supervised", type=int, metavar="PID", help=argparse.SUPPRESS)
        process_parser.add_argument("--heartbeat", type=int, metavar="FD", help=argparse.SUPPRESS)
    serve_parser.set_defaults(func=serve)
    worker_parser.set_defaults(func=worker)
    check_parser = commands.add_parser("check", help="validate settings and agent files; non-zero exit on a problem")
    check_parser.add_argument("--strict", action="store_true",
                              help="also fail when an agent holds fields Parley stores but does not act on")
    check_parser.set_defaults(func=check)
    talk = commands.add_parser("chat", help="talk to an agent in the terminal (an api_chat; no Twilio)")
    talk.add_argument("agent_id", metavar="AGENT_ID")
    talk.add_argument("--version", type=int, metavar="N", help="the agent version (default: the latest)")
    talk.set_defaults(func=chat)
    _onboarding(commands)
    user = commands.add_parser("console-user", help="print a PARLEY_CONSOLE_USERS entry (a named console operator)")
    user.add_argument("name", metavar="NAME")
    user.add_argument("--role", choices=("read", "write", "admin"), default="read",
                      help="what the operator may do (as an API key's role; default read)")
    user.set_defaults(func=console_user)
    args = parser.parse_args(argv)
    args.func(args)
