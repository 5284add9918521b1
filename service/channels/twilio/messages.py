"""``POST /twilio/sms``: Twilio's inbound message webhook (DESIGN.md section 3, steps 1 to 5).

Verify the signature with the auth token of the account that owns ``To``, route to the number, drop a
repeated ``MessageSid``, handle carrier keywords, then append to the mailbox with a wake-up and answer
empty TwiML. Nothing here waits on the LLM or on Twilio: the answer takes milliseconds.
"""

from __future__ import annotations

import logging

from aiohttp import web
from multidict import MultiDict, MultiDictProxy
from twilio.twiml.messaging_response import MessagingResponse

from service.app_state import RUNTIME
from service.channels.twilio.signature import is_valid
from service.clock import now_ms
from service.conversations.queue import Enqueued, Item, ItemKind, Media
from service.conversations.runtime import Runtime
from service.logs import redact
from service.retell.models import E164_RE, PhoneNumber
from service.sms import keywords
from service.sms.keywords import Keyword
from service.storage.keys import Conversation

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
MAX_MEDIA = 10
EMPTY_TWIML = str(MessagingResponse()).encode()
TWIML = "text/xml"


def twiml(text: str | None = None) -> web.Response:
    if text is None:
        return web.Response(body=EMPTY_TWIML, content_type=TWIML)
    response = MessagingResponse()
    response.message(text)
    return web.Response(text=str(response), content_type=TWIML)


def fail(status: int, message: str) -> web.Response:
    """A plain-text error: Twilio's debugger shows it."""
    return web.Response(status=status, text=message + "\n", content_type="text/plain")


async def read_form(request: web.Request) -> MultiDictProxy[str] | web.Response:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return fail(413, f"body too large: at most {MAX_BODY_BYTES} bytes")
    if request.content_type != "application/x-www-form-urlencoded":
        return fail(400, f"expected an application/x-www-form-urlencoded body, got {request.content_type!r}")
    try:
        form = await request.post()
    except ValueError as exc:
        return fail(400, f"malformed form body: {exc}")
    return MultiDictProxy(MultiDict((k, v) for k, v in form.items() if isinstance(v, str)))


def _media(form: MultiDictProxy[str]) -> tuple[Media, ...]:
    try:
        count = min(int(form.get("NumMedia", "0") or 0), MAX_MEDIA)
    except ValueError:
        count = 0
    return tuple(
        Media(url=form[f"MediaUrl{i}"], content_type=form.get(f"MediaContentType{i}", "application/octet-stream"))
        for i in range(count) if form.get(f"MediaUrl{i}")
    )


async def verify(request: web.Request, rt: Runtime, form: MultiDictProxy[str], number: PhoneNumber | None) -> bool:
    tokens = rt.settings.twilio_tokens()
    account = (number.twilio_account_sid if number else None) or rt.settings.twilio_account_sid
    if number is None and form.get("AccountSid") in tokens:
        account = form["AccountSid"]
    token = tokens.get(account) if account else None
    if token is None:
        return False
    return is_valid(request, form, token=token.get_secret_value(), public_url=rt.settings.public_url)


async def twilio_sms(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    form = await read_form(request)
    if isinstance(form, web.Response):
        return form
    to, sender, sid = form.get("To", ""), form.get("From", ""), form.get("MessageSid") or form.get("SmsSid", "")
    if not to or not sender or not sid:
        return fail(400, "missing To, From or MessageSid: expected Twilio's inbound message form")
    number = await rt.catalog.get_number(to) if E164_RE.fullmatch(to) else None
    if not await verify(request, rt, form, number):
        log.warning("twilio signature rejected", extra={"to": redact(to), "message_sid": sid})
        return fail(403, "invalid X-Twilio-Signature")
    if number is None:
        return fail(404, f"{to} is not a number Parley answers on: add it to phone-numbers.yaml")
    conv = Conversation(agent_number=to, user_number=sender)
    body = form.get("Body", "")
    keyword = keywords.classify(body, form.get("OptOutType"))
    if keyword is Keyword.HELP:
        # help_message "" leaves HELP to Twilio's own keyword replies (Advanced Opt-Out).
        if number.help_message == "" or await rt.optouts.is_opted_out(conv):
            return twiml()
        return twiml(number.help_message or keywords.default_help(number.nickname))
    if keyword is Keyword.OPT_IN and await rt.optouts.clear(conv):
        log.info("opt-out cleared", extra={"conv": redact(conv.id), "message_sid": sid})
        return twiml()
    if keyword is Keyword.OPT_OUT:
        await rt.optouts.record(conv)
        item = Item(ItemKind.OPT_OUT, received_ms=now_ms(), body=body, message_sid=sid)
        result = await rt.mailbox.put(conv, item, dedupe_id=sid)
    else:
        item = Item(ItemKind.TEXT, received_ms=now_ms(), body=body, message_sid=sid, media=_media(form))
        result = await rt.mailbox.put(conv, item, dedupe_id=sid)
    log.info("sms received", extra={"conv": redact(conv.id), "message_sid": sid, "result": result.name.lower()})
    if result is Enqueued.MAILBOX_FULL:
        return fail(503, "this conversation has too many unanswered messages; try again later")
    return twiml()
