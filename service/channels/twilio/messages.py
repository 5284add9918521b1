"""``POST /twilio/sms``: Twilio's inbound message webhook, for SMS and WhatsApp alike.

Verify the signature with the auth token of the account that owns ``To``, route to the number and the
channel (``whatsapp:+1...`` is WhatsApp; the number must list it in ``channels``), then hand the text to
``conversations.inbound`` (shared with the console's dev phone): carrier keywords, then drop a repeated
``MessageSid`` and append to the conversation's mailbox with a wake-up, in one script (``conversations.queue``),
and answer empty TwiML. Nothing here waits on the LLM or on Twilio: the answer takes milliseconds.
On a channel with a session window, the same write notes that the user wrote.
"""

from __future__ import annotations

import logging

from aiohttp import web
from multidict import MultiDictProxy

from service.address import Conversation, split_address
from service.app_state import RUNTIME
from service.channels.twilio.form import fail, twiml, verify, webhook
from service.conversations import inbound
from service.conversations.items import Media
from service.conversations.queue import Enqueued
from service.conversations.runtime import Runtime
from service.logs import redact
from service.retell.models import E164_RE, PhoneNumber

log = logging.getLogger(__name__)

MAX_MEDIA = 10


def _media(form: MultiDictProxy[str]) -> tuple[Media, ...]:
    try:
        count = min(int(form.get("NumMedia") or 0), MAX_MEDIA)
    except ValueError:
        count = 0
    return tuple(
        Media(url=form[f"MediaUrl{i}"], content_type=form.get(f"MediaContentType{i}", "application/octet-stream"))
        for i in range(count) if form.get(f"MediaUrl{i}")
    )


async def _route(
    request: web.Request, rt: Runtime, form: MultiDictProxy[str],
) -> tuple[Conversation, PhoneNumber] | web.Response:
    """Verify the signature and find the conversation the form is for: its number and channel, or the error
    to answer with (403 forged, 404 not a number or channel Parley answers on, 400 a malformed form)."""
    to, sender = form["To"], form["From"]   # twilio_sms checked both
    channel, agent_number = split_address(to)
    user_channel, user_number = split_address(sender)
    number = await rt.catalog.get_number(agent_number) if E164_RE.fullmatch(agent_number) else None
    if not await verify(request, rt, form, number):
        log.warning("twilio signature rejected", extra={"to": redact(to), "message_sid": form.get("MessageSid")})
        return fail(403, "invalid X-Twilio-Signature")
    if number is None:
        return fail(404, f"{agent_number} is not a number Parley answers on: add it to phone-numbers.yaml")
    if user_channel != channel:
        return fail(400, f"From {sender} and To {to} are on different channels: expected the same prefix on both")
    if channel not in number.channels or channel not in rt.channels:
        return fail(404, f"{agent_number} does not answer on {channel} (its channels: {', '.join(number.channels)}): "
                         "add it to the number's channels")
    return Conversation(agent_number, user_number, channel), number


@webhook
async def twilio_sms(request: web.Request, form: MultiDictProxy[str]) -> web.Response:
    rt = request.app[RUNTIME]
    sid = form.get("MessageSid") or form.get("SmsSid", "")
    if not form.get("To") or not form.get("From") or not sid:
        return fail(400, "missing To, From or MessageSid: expected Twilio's inbound message form")
    routed = await _route(request, rt, form)
    if isinstance(routed, web.Response):
        return routed
    conv, number = routed
    received = await inbound.receive(rt, conv, number, form.get("Body", ""), sid, media=_media(form),
                                     opt_out_type=form.get("OptOutType"))
    if received.queued is Enqueued.MAILBOX_FULL:
        return fail(503, "this conversation has too many unanswered messages; try again later")
    return twiml(received.reply)
