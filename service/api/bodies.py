"""The API's JSON bodies: read within ``PARLEY_BODY_TIMEOUT_S``, parsed, and nested no deeper than
``MAX_JSON_DEPTH``.

The size is bounded by aiohttp (``client_max_size`` in ``create_app``: it counts the bytes read, chunked or
not). The time is bounded here, so a client that trickles its body gets a 408 and holds a handler for
``PARLEY_BODY_TIMEOUT_S`` at most. The depth is bounded because a body is stored, logged and sent to
webhooks as JSON again, and orjson writes at most 254 levels (it reads 1,024): a deeper body would fail
after it was accepted. 64 levels is far more than any Retell body needs.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from service.app_state import SETTINGS
from service.errors import InvalidRequest, MalformedRequest, RequestTimeout

MAX_JSON_DEPTH = 64
TOO_DEEP = f"the body nests objects and arrays more than {MAX_JSON_DEPTH} levels deep: at most {MAX_JSON_DEPTH}"


async def read_bytes(request: web.Request) -> bytes:
    """The whole body, or ``RequestTimeout`` when it has not arrived within ``PARLEY_BODY_TIMEOUT_S``."""
    timeout_s = request.app[SETTINGS].body_timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except TimeoutError:
        raise RequestTimeout(f"the body did not arrive within {timeout_s:g} s (PARLEY_BODY_TIMEOUT_S)") from None
    except web.RequestPayloadError as exc:   # a broken chunked encoding or compression
        raise MalformedRequest(f"the body could not be read: {exc}") from None


def parse_object(raw: bytes) -> dict[str, Any]:
    """``raw`` as a JSON object (400 when it is not one), at most ``MAX_JSON_DEPTH`` deep (422); empty is ``{}``
    (a body of only whitespace is not empty: it is not JSON either)."""
    try:
        data = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):   # orjson's own limit (1,024 levels): the same answer as ours
            raise InvalidRequest(TOO_DEEP) from None
        raise MalformedRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MalformedRequest(f"expected a JSON object, got {type(data).__name__}")
    if depth(data, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise InvalidRequest(TOO_DEEP)
    return data


def depth(value: object, limit: int) -> int:
    """How deep ``value`` nests (a scalar is 0, ``{}`` is 1), counted no further than ``limit + 1``. A loop with
    its own stack, not recursion: the value is the client's."""
    deepest = 0
    stack: list[tuple[dict[Any, Any] | list[Any], int]] = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        if level > limit:
            break
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return deepest
