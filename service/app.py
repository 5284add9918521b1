"""``create_app(settings)``: the one composition root. Commands and tests both build Parley here.

Each resource is one cleanup context, started in order and stopped in reverse: Redis (or the embedded
Valkey) with the agents published into it, then the outside clients (Twilio, the LLM, an HTTP session for
tools) and the ``Runtime`` built on them, with the channels registered in ``service.channels``, then the
workers and the background loops (inactivity, events, analysis), which therefore stop first. The routes
are listed in ``api.routes``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sys
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from service.agent.llm import LLM
from service.api.http import api_middleware
from service.api.routes import routes
from service.app_state import API_KEYS, FILES, METRICS, READY, REDIS, RUNTIME, SETTINGS
from service.catalog import agent_files
from service.catalog.store import Catalog
from service.channels import CHANNELS
from service.channels.twilio.gateway import TwilioGateway
from service.conversations.inactivity import Inactivity
from service.conversations.runtime import Runtime
from service.conversations.worker import WorkerPool
from service.metrics import Metrics, middleware
from service.settings import Settings
from service.storage.connection import open_redis
from service.tasks import every, stop_task

log = logging.getLogger(__name__)

CLIENT_MAX_SIZE = 1024 * 1024


def create_app(
    settings: Settings | None = None, *, web_routes: bool = True, workers: bool = True
) -> web.Application:
    """Build Parley. ``web_routes=False`` serves only health checks (``parley worker``); ``workers=False``
    runs no turns (a web-only tier)."""
    settings = settings or Settings()
    files = agent_files.load(settings)  # fail fast, before anything starts
    for warning in files.warnings:
        log.warning(warning)
    metrics = Metrics()
    app = web.Application(middlewares=[middleware(metrics), api_middleware], client_max_size=CLIENT_MAX_SIZE)
    app[METRICS] = metrics
    app[SETTINGS] = settings
    app[READY] = {}
    app[API_KEYS] = [key.get_secret_value() for key in settings.api_keys] or ["key_" + secrets.token_hex(24)]
    app[FILES] = files

    async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
        async with open_redis(settings) as redis:
            app[REDIS] = redis
            await Catalog(redis).publish(files)
            app[READY]["agents_loaded"] = True
            yield

    app.cleanup_ctx.append(redis_ctx)
    app.cleanup_ctx.append(_clients_ctx)
    if workers:
        app.cleanup_ctx.append(_workers_ctx)
    if web_routes and not settings.api_keys:
        app.on_startup.append(_print_api_key)
    for route in routes(web_routes=web_routes):
        app.router.add_route(route.method, route.path, route.handler)
    return app


async def _print_api_key(app: web.Application) -> None:
    key = app[API_KEYS][0]
    print(f"PARLEY_API_KEY is not set; this run's API key is: {key}", file=sys.stderr, flush=True)


async def _clients_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    metrics = app[METRICS]
    gateway = TwilioGateway(settings, metrics)  # needs the running loop
    llm = LLM(settings, metrics)
    async with aiohttp.ClientSession() as http:
        app[RUNTIME] = Runtime.build(settings, app[REDIS], gateway=gateway, channels=CHANNELS, llm=llm, http=http,
                                     metrics=metrics, signing_key=app[API_KEYS][0])
        try:
            yield
        finally:
            await llm.close()
            await gateway.close()


async def _workers_ctx(app: web.Application) -> AsyncIterator[None]:
    rt = app[RUNTIME]
    pool = WorkerPool(rt)
    await rt.queue.ensure_groups()
    interval = rt.settings.scheduler_interval_ms / 1000
    loops = [
        asyncio.create_task(pool.run(), name="parley-workers"),
        asyncio.create_task(every(interval, Inactivity(rt).tick, "inactivity"), name="parley-inactivity"),
        asyncio.create_task(every(interval, rt.outbox.tick, "events"), name="parley-events"),
        asyncio.create_task(every(interval, rt.analyzer.tick, "analysis"), name="parley-analysis"),
    ]
    yield
    for task in reversed(loops):
        await stop_task(task)
    await pool.drain(rt.settings.drain_timeout_s)
