"""Calls to Twilio's REST API that set things up (numbers, Messaging Services, A2P registrations): one place
where the twilio client's errors become Parley's ``TwilioRefused``, with Twilio's code and a hint when the code
has an obvious fix. (Sends have their own translation in ``gateway.py``: they are retried, these are not.)"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

import aiohttp
import orjson
from twilio.base.exceptions import TwilioException

from service.errors import TwilioRefused

T = TypeVar("T")

AUTHENTICATE = 20003
NOT_FOUND = 20404
HINTS = {
    AUTHENTICATE: "Twilio refused the account's credentials: check TWILIO_AUTH_TOKEN (or the account's token in "
                  "PARLEY_TWILIO_ACCOUNTS)",
    21421: "the phone number is not valid: write it in E.164 (+15035550100)",
    21422: "the number is not for sale any more: search again, or name another phone_number",
}


async def call(what: str, request: Awaitable[T]) -> T:
    """``request``'s result, or ``TwilioRefused`` saying ``what`` failed and why."""
    try:
        return await request
    except TwilioException as exc:
        code, status, message = _parts(exc)
        hint = f" ({HINTS[code]})" if code in HINTS else ""
        http = 404 if status == 404 else 502 if status is None or status == 429 or status >= 500 else 422
        raise TwilioRefused(f"{what}: Twilio error {code}: {message}{hint}", code=code, http_status=http) from exc
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise TwilioRefused(f"{what}: Twilio did not answer ({exc!r})", http_status=502) from exc


def _parts(exc: TwilioException) -> tuple[int | None, int | None, str]:
    """Twilio's code, HTTP status and message. A list's page that fails raises a bare ``TwilioException("Unable to
    fetch page", response)``: those are read from the response it carries."""
    code, status = getattr(exc, "code", None), getattr(exc, "status", None)
    message = getattr(exc, "msg", None) or getattr(exc, "detail", None) or str(exc)
    response = exc.args[1] if len(exc.args) > 1 else None
    if status is None and response is not None and hasattr(response, "status_code"):
        status = response.status_code
        try:
            body: Any = orjson.loads(response.text or "{}")
        except orjson.JSONDecodeError:
            body = {}
        if isinstance(body, dict):
            code = body.get("code", code)
            message = str(body.get("message") or exc.args[0])
    return code, status, message
