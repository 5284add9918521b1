"""The REST API (Retell's paths and envelope): bearer auth, errors, health, and the chat routes.

Errors are Retell's ``{"status": "error", "message": ...}``. A ``ParleyError`` maps to its status
here, at the edge; handlers raise, they do not build error bodies.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web
from redis.exceptions import RedisError

from .appkeys import API_KEYS, READY, REDIS, RUNTIME
from .errors import Conflict, InvalidRequest, NotFound, ParleyError, StoreUnavailable

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Routes that Twilio, load balancers and Prometheus call: no bearer key, no JSON envelope.
OPEN_PREFIXES = ("/twilio/", "/healthz", "/readyz", "/metrics")

_STATUS: dict[type[ParleyError], int] = {
    NotFound: 404, Conflict: 409, InvalidRequest: 422, StoreUnavailable: 503,
}


def json_response(data: object, status: int = 200) -> web.Response:
    return web.json_bytes_response(data, dumps=orjson.dumps, status=status)


def error(status: int, message: str) -> web.Response:
    return json_response({"status": "error", "message": message}, status=status)


def _authorized(request: web.Request) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key:
        return False
    given = key.strip().encode()
    # Compare against every key, in constant time, without stopping at the first match.
    matches = [hmac.compare_digest(given, k.encode()) for k in request.app[API_KEYS]]
    return any(matches)


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer auth and Retell's error envelope for the API; open routes pass through untouched."""
    if request.path.startswith(OPEN_PREFIXES):
        return await handler(request)
    if not _authorized(request):
        return error(401, "missing or invalid API key: send 'Authorization: Bearer <PARLEY_API_KEY>'")
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error(exc.status, exc.reason if exc.text is None else exc.text.removeprefix(f"{exc.status}: "))
    except ParleyError as exc:
        status = next((code for kind, code in _STATUS.items() if isinstance(exc, kind)), 500)
        return error(status, str(exc))
    except RedisError as exc:
        log.warning("redis unavailable", extra={"path": request.path, "error": str(exc)})
        return error(503, "storage is unavailable; try again shortly")


async def get_chat(request: web.Request) -> web.Response:
    """``GET /get-chat/{chat_id}``: the chat in Retell's shape."""
    rt = request.app[RUNTIME]
    chat_id = request.match_info["chat_id"]
    chat = await rt.chats.get(chat_id)
    if chat is None:
        raise NotFound(f"chat {chat_id!r} not found")
    messages = await rt.chats.messages(chat_id)
    return json_response(chat.to_response(messages).model_dump(mode="json"))


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


def add_routes(app: web.Application) -> None:
    app.router.add_get("/get-chat/{chat_id}", get_chat)
