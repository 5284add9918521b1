"""Operations routes: ``/healthz``, ``/readyz`` and ``/metrics``, open to load balancers and Prometheus.

They need no API key. ``/metrics`` needs ``PARLEY_METRICS_TOKEN`` as a bearer token when that is set, since
what it tells (traffic, queue depth, error rates) is not for everyone; its Redis reads are cached
(``Metrics.scrape``) either way.
"""

from __future__ import annotations

import hmac

from aiohttp import web
from redis.exceptions import RedisError

from service.api.openapi import Route
from service.app_state import METRICS, READY, REDIS, SETTINGS
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
    """``GET /metrics``: Prometheus' text format; 401 without the bearer token when ``PARLEY_METRICS_TOKEN`` is set."""
    token = request.app[SETTINGS].metrics_token
    if token is not None and not _bears(request, token.get_secret_value()):
        return web.Response(status=401, text="send 'Authorization: Bearer <PARLEY_METRICS_TOKEN>'\n",
                            content_type="text/plain", headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
    return exposition(await request.app[METRICS].scrape(request.app[REDIS]))


def _bears(request: web.Request, token: str) -> bool:
    """The request's bearer token is ``token`` (compared in constant time)."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


ROUTES = [
    Route("GET", "/healthz", healthz, "The process is up", public=True, tag="operations"),
    Route("GET", "/readyz", readyz, "Redis answers and the agents are loaded", public=True, tag="operations"),
    Route("GET", "/metrics", metrics_text, "Prometheus metrics (a bearer token when PARLEY_METRICS_TOKEN is set)",
          public=True, tag="operations"),
]
