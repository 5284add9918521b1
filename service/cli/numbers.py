"""``parley numbers sync`` and ``parley a2p draft|register|status``: a number's onboarding from the terminal.

Each command builds Parley with ``create_app`` (no workers, no HTTP listener: its cleanup contexts connect to
Redis, publish the files and open the Twilio clients) and calls the same code the API routes call
(``service/channels/twilio/numbers.py`` and ``registration.py``). Output is for people: one line per number,
or the JSON Twilio will receive. Exit status: 0 when all went well, 1 when something is left to fix (a number
Twilio refused, a campaign finding), 2 on a configuration problem.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import yaml
from aiohttp import web
from pydantic import BaseModel, ValidationError
from redis.exceptions import RedisError

from service.app import create_app
from service.app_state import RUNTIME
from service.channels.twilio.numbers import NUMBERS
from service.channels.twilio.registration import REGISTRATIONS, DraftRequest, RegistrationRequest
from service.errors import ConfigError, ParleyError
from service.settings import Settings
from service.validation import describe

EXIT_OK, EXIT_FIX, EXIT_CONFIG = 0, 1, 2
M = TypeVar("M", bound=BaseModel)


def run(settings: Settings, work: Callable[[web.Application], Awaitable[int]]) -> int:
    """Build Parley, run ``work`` with it, stop it; the exit status."""
    try:
        app = create_app(settings, workers=False)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    return asyncio.run(within(app, work))


async def within(app: web.Application, work: Callable[[web.Application], Awaitable[int]]) -> int:
    runner = web.AppRunner(app, access_log=None)
    try:
        try:
            await runner.setup()
        except RedisError as exc:
            print(f"cannot reach Redis: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        try:
            return await work(app)
        except ParleyError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FIX
    finally:
        await runner.cleanup()


async def sync(app: web.Application) -> int:
    """Point every number's Twilio webhook at Parley (files' and the API's); one line per number."""
    numbers, rt = app[NUMBERS], app[RUNTIME]
    status = EXIT_OK
    for number in sorted(await rt.catalog.numbers(), key=lambda n: n.phone_number):
        if not number.twilio_webhooks:
            print(f"{number.phone_number}: skipped (twilio_webhooks: false)")
            continue
        try:
            warnings = await numbers.connect(number)
        except ParleyError as exc:
            print(f"{number.phone_number}: failed: {exc}")
            status = EXIT_FIX
            continue
        for warning in warnings:
            print(f"{number.phone_number}: warning: {warning}")
        if not warnings:
            print(f"{number.phone_number}: texts go to {numbers.webhook_url()}")
        else:
            status = EXIT_FIX
    return status


def draft(wanted: DraftRequest) -> Callable[[web.Application], Awaitable[int]]:
    async def work(app: web.Application) -> int:
        answer = await app[REGISTRATIONS].draft(wanted)
        print(json.dumps(answer.campaign.model_dump(mode="json"), indent=2))
        for finding in answer.findings:
            print(f"fix: {finding.field}: {finding.problem} ({finding.fix})", file=sys.stderr)
        if not answer.findings:
            print("ok: nothing a reviewer is known to reject", file=sys.stderr)
        return EXIT_FIX if answer.findings else EXIT_OK
    return work


def register(wanted: RegistrationRequest) -> Callable[[web.Application], Awaitable[int]]:
    async def work(app: web.Application) -> int:
        registration = await app[REGISTRATIONS].create(wanted)
        print(json.dumps(registration.model_dump(mode="json"), indent=2))
        return EXIT_OK
    return work


def status(registration_id: str | None) -> Callable[[web.Application], Awaitable[int]]:
    async def work(app: web.Application) -> int:
        registrations = app[REGISTRATIONS]
        found = [await registrations.get(registration_id)] if registration_id else await registrations.all()
        for registration in found:
            reasons = "; ".join(registration.failure_reasons)
            print(f"{registration.registration_id}: {registration.status} ({registration.stage}; brand "
                  f"{registration.brand_status}, campaign {registration.campaign_status or '-'})"
                  + (f": {reasons}" if reasons else ""))
        return EXIT_OK
    return work


def read_request(path: Path, model: type[M]) -> M:
    """A YAML or JSON file as ``model``; ``SystemExit`` naming each wrong field."""
    try:
        data = yaml.safe_load(path.read_text())
        return model.model_validate(data)
    except OSError as exc:
        raise SystemExit(f"{path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SystemExit(f"{path}: not YAML: {exc}") from None
    except ValidationError as exc:
        raise SystemExit(f"{path}: " + "; ".join(describe(exc))) from None
