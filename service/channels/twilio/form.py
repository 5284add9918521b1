"""What both Twilio webhooks share: reading Twilio's form, checking its signature, and answering."""

from __future__ import annotations

from aiohttp import web
from multidict import MultiDict, MultiDictProxy
from twilio.twiml.messaging_response import MessagingResponse

from service.channels.twilio.signature import is_valid
from service.conversations.runtime import Runtime
from service.retell.models import PhoneNumber

MAX_BODY_BYTES = 64 * 1024
EMPTY_TWIML = str(MessagingResponse()).encode()
TWIML = "text/xml"


def twiml(text: str | None = None) -> web.Response:
    """Empty TwiML (nothing to say now: the reply comes from a worker), or a ``<Message>`` with ``text``."""
    if text is None:
        return web.Response(body=EMPTY_TWIML, content_type=TWIML)
    response = MessagingResponse()
    response.message(text)
    return web.Response(text=str(response), content_type=TWIML)


def fail(status: int, message: str) -> web.Response:
    """A plain-text error: Twilio's debugger shows it."""
    return web.Response(status=status, text=message + "\n", content_type="text/plain")


async def read_form(request: web.Request) -> MultiDictProxy[str] | web.Response:
    """Twilio's form, or the error response to answer with."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return fail(413, f"body too large: at most {MAX_BODY_BYTES} bytes")
    if request.content_type != "application/x-www-form-urlencoded":
        return fail(400, f"expected an application/x-www-form-urlencoded body, got {request.content_type!r}")
    try:
        form = await request.post()
    except ValueError as exc:
        return fail(400, f"malformed form body: {exc}")
    return MultiDictProxy(MultiDict((k, v) for k, v in form.items() if isinstance(v, str)))


async def verify(request: web.Request, rt: Runtime, form: MultiDictProxy[str], number: PhoneNumber | None) -> bool:
    """True when the request is signed with the auth token of the Twilio account that owns ``number`` (or,
    for a number Parley does not know, of the account the form names, so the 404 that follows is honest)."""
    tokens = rt.settings.twilio_tokens()
    account = (number.twilio_account_sid if number else None) or rt.settings.twilio_account_sid
    if number is None and form.get("AccountSid") in tokens:
        account = form["AccountSid"]
    token = tokens.get(account) if account else None
    if token is None:
        return False
    return is_valid(request, form, token=token.get_secret_value(), public_url=rt.settings.public_url)
