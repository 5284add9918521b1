"""The HTTP edge every route module uses: bearer auth, Retell's error envelope, reading bodies, answering.

Errors are Retell's ``{"status": "error", "message": ...}``. A ``ParleyError`` maps to its status
here, at the edge; handlers raise, they do not build error bodies. The Twilio webhooks, health checks and
metrics are open (no bearer key) and bounded in time instead: they wait on Redis only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError
from redis.exceptions import RedisError

from service.api.auth import refusal
from service.api.bodies import parse_object, read_bytes
from service.app_state import FILES
from service.channels.twilio.form import WEBHOOK_TIMEOUT_S
from service.errors import (
    Conflict,
    InUse,
    InvalidRequest,
    LimitReached,
    MalformedRequest,
    McpUnavailable,
    NotFound,
    OutboundRefused,
    ParleyError,
    RequestTimeout,
    SendError,
    StoreUnavailable,
    TooLarge,
    TwilioRefused,
)
from service.retell.requests import PageQuery
from service.storage.outages import is_outage
from service.validation import describe

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
B = TypeVar("B", bound=BaseModel)
K = TypeVar("K", str, int)

# Routes that Twilio, load balancers and Prometheus call: no bearer key, no JSON envelope. (/metrics may ask
# for PARLEY_METRICS_TOKEN: service/api/health.py.)
OPEN_PREFIXES = ("/twilio/", "/healthz", "/readyz", "/metrics", "/openapi.json")
CONSOLE_PREFIX = "/console"   # the operator console: its own sign-in and session (service/console)
# How long those may wait (on Redis: nothing else) before answering 503: WEBHOOK_TIMEOUT_S, from when their
# body is in. The Twilio webhooks read their form first and then bound themselves (``twilio.form.webhook``);
# the others read no body and are bounded here.
SELF_BOUNDED_PREFIXES = ("/twilio/",)

_STATUS: dict[type[ParleyError], int] = {
    MalformedRequest: 400, NotFound: 404, RequestTimeout: 408, Conflict: 409, InUse: 400, InvalidRequest: 422,
    LimitReached: 429, TooLarge: 413, SendError: 502, McpUnavailable: 502, OutboundRefused: 422,
    StoreUnavailable: 503,
}


def status_of(exc: ParleyError) -> int:
    """The HTTP status a ``ParleyError`` is answered with (the console answers with the same)."""
    return next((code for kind, code in _STATUS.items() if isinstance(exc, kind)), 500)


def json_response(data: object, status: int = 200) -> web.Response:
    return web.json_bytes_response(data, dumps=orjson.dumps, status=status)


# Names what a request asked for that Parley accepted but does not do (nothing is ignored silently).
UNSUPPORTED_HEADER = "X-Parley-Unsupported"


def model_response(model: BaseModel | Sequence[BaseModel], status: int = 200) -> web.Response:
    """A pydantic object (or a list of them) as JSON, without the fields that are unset or None."""
    if not isinstance(model, BaseModel):
        return json_response([m.model_dump(mode="json", exclude_none=True) for m in model], status)
    return json_response(model.model_dump(mode="json", exclude_none=True), status)


def validated(model: type[B], data: object, *, strict: bool = True) -> B:
    """``data`` as ``model``, or ``InvalidRequest`` naming each field and what was expected. ``strict``: a JSON
    body's values have the types its schema says (no ``0`` for ``false``, no ``"5"`` for ``5``)."""
    try:
        return model.model_validate(data, strict=strict)
    except ValidationError as exc:
        raise InvalidRequest("; ".join(describe(exc, data=data))) from None


async def read_object(request: web.Request) -> dict[str, Any]:
    """The JSON body, which must be an object (400 otherwise) nested at most 64 levels (422); an empty body is
    ``{}``. A body that does not arrive within ``PARLEY_BODY_TIMEOUT_S`` is a 408 (``api.bodies``)."""
    return parse_object(await read_bytes(request))


async def read_body(request: web.Request, model: type[B]) -> B:
    """The JSON body as ``model``: 400 when it is not a JSON object, 422 when a field is wrong."""
    return validated(model, await read_object(request))


def read_query(request: web.Request, model: type[B]) -> B:
    return validated(model, dict(request.query), strict=False)   # a query's values are all strings


def error(status: int, message: str, **extra: object) -> web.Response:
    return json_response({"status": "error", "message": message, **extra}, status=status)


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer auth and Retell's error envelope for the API; open routes pass through untouched, and so does the
    console, which signs its operators in with a session cookie of its own (``service.console.sessions``)."""
    if request.path == CONSOLE_PREFIX or request.path.startswith(CONSOLE_PREFIX + "/"):
        return await handler(request)
    if request.path.startswith(OPEN_PREFIXES):
        return await _open(request, handler)
    refused = refusal(request)   # the key's role against the route's scope: 401 or 403
    if refused is not None:
        return error(*refused)
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error(exc.status, exc.reason if exc.text is None else exc.text.removeprefix(f"{exc.status}: "))
        if "Allow" in exc.headers:   # a 405 says which methods the path takes
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except TwilioRefused as exc:   # Twilio's own error code beside the message (``twilio_code``)
        return error(exc.http_status, str(exc), **({"twilio_code": exc.code} if exc.code is not None else {}))
    except ParleyError as exc:
        return error(status_of(exc), str(exc))
    except RedisError as exc:
        return error(*_redis_failed(request, exc))


async def _open(request: web.Request, handler: Handler) -> web.StreamResponse:
    """An open route: it waits on Redis only, for at most ``WEBHOOK_TIMEOUT_S`` once its body is in, and a Redis
    outage is a quick 503 in plain text (Twilio then calls the number's fallback URL, or retries per #rc/#rp)."""
    try:
        if request.path.startswith(SELF_BOUNDED_PREFIXES):
            return await handler(request)
        async with asyncio.timeout(WEBHOOK_TIMEOUT_S):
            return await handler(request)
    except (RedisError, TimeoutError) as exc:
        status, message = _redis_failed(request, exc if isinstance(exc, RedisError) else None)
        return web.Response(status=status, text=message + "\n", content_type="text/plain")


def _redis_failed(request: web.Request, exc: RedisError | None) -> tuple[int, str]:
    """The answer to a Redis error (``None``: Redis did not answer in time): 503 for an outage, 500, logged as an
    error naming it, for a command Redis refused (``storage.outages``)."""
    # Named with its message: redis-py's repr() of an error leaves the message out.
    what = "timed out" if exc is None else f"{type(exc).__name__}: {exc}"
    if exc is None or is_outage(exc):
        log.warning("redis unavailable", extra={"path": request.path, "error": what})
        return 503, "storage is unavailable; try again shortly"
    log.error("redis refused a command: a bug", extra={"path": request.path, "error": what}, exc_info=exc)
    return 500, f"internal error: storage refused the request ({type(exc).__name__}); it is logged"


def ensure_writable(request: web.Request, kind: str, object_id: str) -> None:
    path = request.app[FILES].declared_in(kind, object_id)
    if path is not None:
        raise Conflict(f"{kind} {object_id!r} is declared in {path}: edit the file (it is read-only here)")


def page_of_ids(ids: Sequence[K], query: PageQuery, cursor: Callable[[str], K]) -> tuple[list[K], bool, str | None]:
    """A page of ids in id order, after the cursor: the last id of the previous page, read by ``cursor`` (``str``
    for object ids; for version numbers a parser that refuses anything else with ``InvalidRequest``)."""
    ordered = sorted(ids, reverse=query.sort_order == "descending")
    if query.pagination_key:
        last = cursor(query.pagination_key)
        ordered = [i for i in ordered if (i < last if query.sort_order == "descending" else i > last)]
    page = ordered[:query.limit]
    more = len(ordered) > query.limit
    return page, more, str(page[-1]) if more and page else None
