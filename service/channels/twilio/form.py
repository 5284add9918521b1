"""What both Twilio webhooks share: reading Twilio's form, checking its signature, and answering.

The webhooks are open (no bearer key), so their bodies are bounded here whatever the headers say: at most
``MAX_BODY_BYTES`` are read from the stream, chunked or not, and the body must arrive within
``PARLEY_BODY_TIMEOUT_S``. Only then does the webhook's deadline on Redis start (``webhook``): a slow client
is a 408, never a 503 that blames Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl

from aiohttp import StreamReader, web
from multidict import MultiDict, MultiDictProxy
from pydantic import BaseModel, ConfigDict, Field
from twilio.twiml.messaging_response import MessagingResponse

from service.app_state import RUNTIME
from service.channels.twilio.signature import is_valid
from service.conversations.runtime import Runtime
from service.retell.models import PhoneNumber

MAX_BODY_BYTES = 64 * 1024
MAX_FIELDS = 1_000          # Twilio sends a few dozen (more with media)
FORM = "application/x-www-form-urlencoded"
# How long a webhook may wait on Redis (it waits on nothing else) before answering 503: well under Twilio's 15 s.
WEBHOOK_TIMEOUT_S = 5.0
EMPTY_TWIML = str(MessagingResponse()).encode()
TWIML = "text/xml"
DEFAULT_CHARSET = "utf-8"  # pragma: no mutate (codec names ignore case: "UTF-8" is the same codec)


class InboundForm(BaseModel):
    """What ``/twilio/sms`` reads of Twilio's inbound message form, for ``/openapi.json`` (Twilio sends more
    fields, and signs them all). ``SmsSid`` may stand for ``MessageSid``."""

    model_config = ConfigDict(extra="allow")

    MessageSid: str = Field(min_length=1)
    From: str = Field(min_length=1, description="The user: +1..., or whatsapp:+1...")
    To: str = Field(min_length=1, description="Parley's number, on the same channel as From")
    AccountSid: str | None = None
    Body: str = ""
    NumMedia: str | None = None
    OptOutType: str | None = None


class StatusForm(BaseModel):
    """What ``/twilio/status`` reads of Twilio's status callback form, for ``/openapi.json``."""

    model_config = ConfigDict(extra="allow")

    MessageSid: str | None = None
    MessageStatus: str | None = None
    From: str | None = None
    To: str | None = None
    ErrorCode: str | None = None
    AccountSid: str | None = None


def twiml(text: str | None = None) -> web.Response:
    """Empty TwiML (nothing to say now: the reply comes from a worker), or a ``<Message>`` with ``text``."""
    if text is None:
        return web.Response(body=EMPTY_TWIML, content_type=TWIML)
    response = MessagingResponse()
    response.message(text)
    return web.Response(text=str(response), content_type=TWIML)


def fail(status: int, message: str) -> web.Response:
    """A plain-text error: Twilio's debugger shows it."""
    return web.Response(status=status, text=message + "\n")   # text/plain, aiohttp's default for text


async def read_form(request: web.Request, *, timeout_s: float) -> MultiDictProxy[str] | web.Response:
    """Twilio's form, or the error response to answer with: 413 over ``MAX_BODY_BYTES`` (at most one byte more
    is read), 408 when it has not arrived within ``timeout_s``, 400 when it is not a form."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return fail(413, f"body too large: at most {MAX_BODY_BYTES} bytes")
    if request.content_type != FORM:
        return fail(400, f"expected an {FORM} body, got {request.content_type!r}")
    # A body that came whole with the head (Twilio's always does) has nothing to wait for: no timer for it.
    bound = contextlib.nullcontext() if request.content.is_eof() else asyncio.timeout(timeout_s)
    try:
        async with bound:
            raw = await _read_at_most(request.content, MAX_BODY_BYTES + 1)
    except TimeoutError:
        return fail(408, f"the body did not arrive within {timeout_s:g} s")
    except web.RequestPayloadError as exc:   # a broken chunked encoding or compression
        return fail(400, f"malformed body: {exc}")
    if len(raw) > MAX_BODY_BYTES:   # a chunked body (or a Content-Length that lied) said nothing up front
        return fail(413, f"body too large: at most {MAX_BODY_BYTES} bytes")
    charset = request.charset or DEFAULT_CHARSET
    try:
        pairs = parse_qsl(raw.decode(charset).rstrip(), keep_blank_values=True, encoding=charset, errors="strict",
                          max_num_fields=MAX_FIELDS)
    except (LookupError, ValueError) as exc:   # an unknown charset, bytes it does not decode, too many fields
        return fail(400, f"malformed form body: {exc}")
    return MultiDictProxy(MultiDict(pairs))


async def _read_at_most(stream: StreamReader, limit: int) -> bytes:
    """The first ``limit`` bytes of ``stream`` (all of it when it is shorter): never more."""
    body = bytearray()
    while len(body) < limit:  # pragma: no mutate (<=: the extra read(0) answers b"" and ends the loop)
        chunk = await stream.read(limit - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)


FormHandler = Callable[[web.Request, MultiDictProxy[str]], Awaitable[web.Response]]


def webhook(handle: FormHandler) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A Twilio webhook: its form first (``read_form``, bounded by ``PARLEY_BODY_TIMEOUT_S``), then ``handle``,
    which waits on Redis only, for at most ``WEBHOOK_TIMEOUT_S``. The ``TimeoutError`` or ``RedisError`` that
    escapes it is answered 503 by ``api.http``: Twilio retries, or calls the number's fallback URL."""
    @functools.wraps(handle)
    async def run(request: web.Request) -> web.Response:
        form = await read_form(request, timeout_s=request.app[RUNTIME].settings.body_timeout_s)
        if isinstance(form, web.Response):
            return form
        async with asyncio.timeout(WEBHOOK_TIMEOUT_S):
            return await handle(request, form)
    return run


async def verify(request: web.Request, rt: Runtime, form: MultiDictProxy[str], number: PhoneNumber | None) -> bool:
    """True when the request is signed with the auth token of the Twilio account that owns ``number`` (or,
    for a number Parley does not know, of the account the form names, so the 404 that follows is honest)."""
    tokens = rt.settings.twilio_tokens()
    account = (number.twilio_account_sid if number else None) or rt.settings.twilio_account_sid
    if number is None and form.get("AccountSid") in tokens:
        account = form["AccountSid"]
    if not account or (token := tokens.get(account)) is None:
        return False
    return is_valid(request, form, token=token.get_secret_value(), public_url=rt.settings.public_url)
