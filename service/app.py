"""``create_app(settings)``: the one composition root. Commands and tests both build Parley here.

Each resource is one cleanup context, started in order and stopped in reverse: Redis (or the embedded
Valkey) with the agents published into it, then the outside clients (Twilio, the LLM, and the outbound
policy's HTTP session for tools, events and chat_inbound) and the ``Runtime`` built on them, with the
channels registered in ``service.channels``, then the workers and the background loops (inactivity,
events, analysis, resends, A2P registrations, knowledge-base ingestion), which therefore stop first. The routes
are listed in ``api.routes``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator

from aiohttp import web
from redis.exceptions import RedisError

from service.agent.llm import LLM
from service.api.encoding import encoding_middleware
from service.api.http import api_middleware
from service.api.routes import routes
from service.app_state import (
    API_KEYS,
    FILES,
    KNOWLEDGE_FILES,
    METRICS,
    READY,
    REDIS,
    ROUTE_SCOPES,
    RUNTIME,
    SETTINGS,
    SIGNING_KEY,
)
from service.catalog import agent_files
from service.catalog.store import Catalog
from service.channels import CHANNELS
from service.channels.dev import DevGateway
from service.channels.twilio.gateway import TwilioGateway
from service.channels.twilio.numbers import NUMBERS, TwilioNumbers
from service.channels.twilio.registration import REGISTRATIONS, Registrations
from service.console import routes as console
from service.conversations.inactivity import Inactivity
from service.conversations.resend import Resender
from service.conversations.runtime import Runtime
from service.conversations.worker import WorkerPool
from service.knowledge import folders
from service.knowledge.embeddings import Embedder
from service.metrics import Metrics, middleware
from service.outbound import OutboundPolicy
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
    knowledge_files = folders.load(settings)
    for agent_id, kb_id in folders.unknown(knowledge_files, files.agents):
        log.warning("agent names a knowledge base no folder declares: it is searched only if the API created it",
                    extra={"agent": agent_id, "knowledge_base_id": kb_id})
    for warning in files.warnings:
        log.warning(warning)
    for agent, fields in files.unsupported.items():   # one line per agent; `parley check` lists them
        log.warning("agent holds fields Parley stores but does not act on", extra={"agent": agent, "fields": fields})
    metrics = Metrics(gauges_cache_ms=settings.metrics_cache_ms)
    app = web.Application(middlewares=[middleware(metrics), encoding_middleware, api_middleware],
                          client_max_size=CLIENT_MAX_SIZE)
    app[METRICS] = metrics
    app[SETTINGS] = settings
    app[READY] = {}
    app[API_KEYS], app[SIGNING_KEY] = settings.key_roles(split=not (web_routes and workers))
    app[FILES] = files
    app[KNOWLEDGE_FILES] = knowledge_files

    async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
        async with open_redis(settings) as redis:
            app[REDIS] = redis
            await Catalog(redis).publish(files)
            app[READY]["agents_loaded"] = True
            yield

    app.cleanup_ctx.append(redis_ctx)
    app.cleanup_ctx.append(_tally_ctx)
    app.cleanup_ctx.append(_clients_ctx)
    if workers:
        app.cleanup_ctx.append(_workers_ctx)
    if web_routes and not settings.api_key_roles():
        app.on_startup.append(_print_api_key)
    served = routes(web_routes=web_routes)
    for route in served:
        app.router.add_route(route.method, route.path, route.handler)
    app[ROUTE_SCOPES] = {(route.method, route.path): route.scope for route in served if not route.public}
    if web_routes:
        console.setup(app)   # /console: the operator console (service/console), with its own sign-in
    return app


async def _tally_ctx(app: web.Application) -> AsyncIterator[None]:
    """Add the console overview's counters to Redis every few seconds, and once more when stopping."""
    tally, redis = app[METRICS].tally, app[REDIS]

    async def flush() -> int:
        await tally.flush(redis)
        return 0

    task = asyncio.create_task(every(tally.FLUSH_S, flush, "overview counters"), name="parley-tally")
    yield
    await stop_task(task)
    try:
        await tally.flush(redis)
    except RedisError as exc:
        log.warning("the overview's last counts were not saved", extra={"error": str(exc)})


async def _print_api_key(app: web.Application) -> None:
    key = app[SIGNING_KEY]   # the one key made up for this run: admin, and it signs
    print(f"PARLEY_API_KEY is not set (nor PARLEY_API_KEYS): an admin key that also signs events was made up for "
          f"this run; this run's API key is: {key}", file=sys.stderr, flush=True)


async def _clients_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    metrics = app[METRICS]
    twilio = TwilioGateway(settings, metrics)  # needs the running loop
    gateway = DevGateway(twilio)   # the console's dev phone texts go nowhere (service/channels/dev.py)
    llm = LLM(settings, metrics)
    embedder = Embedder(settings, metrics)
    # Every request made on a user's behalf (tools, events, chat_inbound) goes through the outbound policy.
    outbound = OutboundPolicy.from_settings(settings)
    try:   # the clients are closed whatever happens, a Runtime that fails to build included
        async with outbound.session() as http:
            app[RUNTIME] = Runtime.build(settings, app[REDIS], gateway=gateway, channels=CHANNELS, llm=llm,
                                         http=http, outbound=outbound, metrics=metrics,
                                         signing_key=app[SIGNING_KEY], embedder=embedder)
            app[NUMBERS] = TwilioNumbers(twilio, app[RUNTIME])   # Twilio's own API (numbers, A2P)
            app[REGISTRATIONS] = Registrations(app[NUMBERS], app[RUNTIME])
            # Knowledge-base folders are published once the Runtime can schedule their ingestion.
            await folders.publish(app[RUNTIME].knowledge, app[KNOWLEDGE_FILES])
            yield
            await app[RUNTIME].daily.give_back()   # the segments taken and not sent: others may send them
    finally:
        await embedder.close()
        await llm.close()
        await twilio.close()


async def _workers_ctx(app: web.Application) -> AsyncIterator[None]:
    rt = app[RUNTIME]
    pool = WorkerPool(rt)
    await rt.queue.ensure_groups()
    await rt.ingestion.recover()
    interval = rt.settings.scheduler_interval_ms / 1000
    loops = [
        asyncio.create_task(pool.run(), name="parley-workers"),
        asyncio.create_task(every(interval, Inactivity(rt).tick, "inactivity"), name="parley-inactivity"),
        asyncio.create_task(every(interval, rt.outbox.tick, "events"), name="parley-events"),
        asyncio.create_task(every(interval, rt.analyzer.tick, "analysis"), name="parley-analysis"),
        asyncio.create_task(every(interval, Resender(rt).tick, "resends"), name="parley-resends"),
        asyncio.create_task(every(rt.settings.a2p_poll_s, app[REGISTRATIONS].tick, "a2p"), name="parley-a2p"),
        asyncio.create_task(every(interval, rt.ingestion.tick, "knowledge"), name="parley-knowledge"),
    ]
    yield
    for task in reversed(loops):
        await stop_task(task)
    await pool.drain(rt.settings.drain_timeout_s)
