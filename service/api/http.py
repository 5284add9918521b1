"""The HTTP edge every route module uses: bearer auth, Retell's error envelope, reading bodies, answering.

Errors are Retell's ``{"status": "error", "message": ...}``. A ``ParleyError`` maps to its status
here, at the edge; handlers raise, they do not build error bodies. The Twilio webhooks, health checks and
metrics are open (no bearer key) and bounded in time instead: they wait on Redis only.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError
from redis.exceptions import RedisError

from service.app_state import API_KEYS, FILES
from service.errors import (
    Conflict,
    InvalidRequest,
    LimitReached,
    MalformedRequest,
    NotFound,
    ParleyError,
    SendError,
    StoreUnavailable,
)
from service.retell.requests import PageQuery
from service.validation import describe

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
B = TypeVar("B", bound=BaseModel)

# Routes that Twilio, load balancers and Prometheus call: no bearer key, no JSON envelope.
OPEN_PREFIXES = ("/twilio/", "/healthz", "/readyz", "/metrics", "/openapi.json")
# How long those may wait (on Redis: nothing else) before answering 503. Well under Twilio's 15 s.
WEBHOOK_TIMEOUT_S = 5.0

_STATUS: dict[type[ParleyError], int] = {
    MalformedRequest: 400, NotFound: 404, Conflict: 409, InvalidRequest: 422, LimitReached: 429, SendError: 502,
    StoreUnavailable: 503,
}


def json_response(data: object, status: int = 200) -> web.Response:
    return web.json_bytes_response(data, dumps=orjson.dumps, status=status)


def model_response(model: BaseModel | Sequence[BaseModel], status: int = 200) -> web.Response:
    """A pydantic object (or a list of them) as JSON, without the fields that are unset or None."""
    if not isinstance(model, BaseModel):
        return json_response([m.model_dump(mode="json", exclude_none=True) for m in model], status)
    return json_response(model.model_dump(mode="json", exclude_none=True), status)


def validated(model: type[B], data: object) -> B:
    """``data`` as ``model``, or ``InvalidRequest`` naming each field and what was expected."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest("; ".join(describe(exc))) from None


async def read_object(request: web.Request) -> dict[str, Any]:
    """The JSON body, which must be an object (400 otherwise); an empty body is ``{}``."""
    raw = await request.read()
    try:
        data = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise MalformedRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MalformedRequest(f"expected a JSON object, got {type(data).__name__}")
    return data


async def read_body(request: web.Request, model: type[B]) -> B:
    """The JSON body as ``model``: 400 when it is not a JSON object, 422 when a field is wrong."""
    return validated(model, await read_object(request))


def read_query(request: web.Request, model: type[B]) -> B:
    return validated(model, dict(request.query))


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
        try:
            async with asyncio.timeout(WEBHOOK_TIMEOUT_S):   # they wait on Redis only
                return await handler(request)
        except (RedisError, TimeoutError) as exc:
            # Twilio sees a quick 503 (and calls the number's fallback URL, or retries per #rc/#rp).
            log.warning("redis unavailable", extra={"path": request.path, "error": repr(exc)})
            return web.Response(status=503, text="storage unavailable; try again\n", content_type="text/plain")
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


def ensure_writable(request: web.Request, kind: str, object_id: str) -> None:
    path = request.app[FILES].declared_in(kind, object_id)
    if path is not None:
        raise Conflict(f"{kind} {object_id!r} is declared in {path}: edit the file (it is read-only here)")


def page_of_ids(ids: list[str], query: PageQuery) -> tuple[list[str], bool, str | None]:
    """A page of ids in id order, after the cursor (the last id of the previous page)."""
    ordered = sorted(ids, reverse=query.sort_order == "descending")
    if query.pagination_key:
        after = [i for i in ordered if (i < query.pagination_key if query.sort_order == "descending"
                                        else i > query.pagination_key)]
        ordered = after
    page = ordered[:query.limit]
    more = len(ordered) > query.limit
    return page, more, page[-1] if more and page else None
