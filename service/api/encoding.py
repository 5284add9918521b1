"""Request text that is not UTF-8: refused at the edge, never a 500.

aiohttp keeps the bytes of a header value that is not UTF-8 as surrogates (``surrogateescape``), so the value
is a ``str`` that fails later, wherever Parley encodes it: comparing an API key, writing an
``Idempotency-Key`` to Redis, logging it. ``encoding_middleware`` runs before ``api_middleware``: an
``Authorization`` header that is not UTF-8 carries no key Parley knows, so it is a 401 (Retell's envelope);
any other text a handler cannot encode is the client's, so it is a 400.
"""

from __future__ import annotations

import logging

from aiohttp import web

from service.api.http import OPEN_PREFIXES, Handler, error

log = logging.getLogger(__name__)

NOT_TEXT = "a header, the query or the body is not valid UTF-8 text"


def is_text(value: str) -> bool:
    """True when ``value`` is text: no bytes that did not decode as UTF-8."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


@web.middleware
async def encoding_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """401 for an ``Authorization`` header that is not UTF-8 (on the API), 400 for any other such text."""
    is_open = request.path.startswith(OPEN_PREFIXES)
    if not is_open and not is_text(request.headers.get("Authorization", "")):
        return error(401, "missing or invalid API key: the Authorization header is not valid UTF-8; "
                          "send 'Authorization: Bearer <key>'")
    try:
        return await handler(request)
    except UnicodeError as exc:
        log.info("request text is not utf-8", extra={"path": request.path, "error": type(exc).__name__})
        if is_open:
            return web.Response(status=400, text=NOT_TEXT + "\n", content_type="text/plain")
        return error(400, NOT_TEXT)
