"""Operations routes: ``/healthz``, ``/readyz`` and ``/metrics``, open to load balancers and Prometheus."""

from __future__ import annotations

from aiohttp import web
from redis.exceptions import RedisError

from service.api.openapi import Route
from service.app_state import METRICS, READY, REDIS
from service.metrics import exposition


async def healthz(request: web.Request) -> web.Response:
    """The process is up."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready to take traffic: Redis answers and the agents are loaded."""
    checks = {"agents_loaded": request.app[READY].get("agents_loaded", False)}
    try:
        checks["redis"] = bool(await request.app[REDIS].ping())
    except RedisError:
        checks["redis"] = False
    status = 200 if all(checks.values()) else 503
    return web.json_response({"status": "ok" if status == 200 else "unavailable", **checks}, status=status)


async def metrics_text(request: web.Request) -> web.Response:
    """``GET /metrics``: Prometheus' text format."""
    return exposition(await request.app[METRICS].scrape(request.app[REDIS]))


ROUTES = [
    Route("GET", "/healthz", healthz, "The process is up", public=True, tag="operations"),
    Route("GET", "/readyz", readyz, "Redis answers and the agents are loaded", public=True, tag="operations"),
    Route("GET", "/metrics", metrics_text, "Prometheus metrics", public=True, tag="operations"),
]
