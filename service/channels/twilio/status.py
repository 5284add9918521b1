"""``POST /twilio/status``: Twilio's delivery-status callbacks, signature-checked, applied in order of rank.

Twilio sends no callback for the status the create call returned, may send them out of order, and may add
parameters: the signature covers the whole form, and ``chats.delivery`` never lets a status move back. The
callback URL Parley gives Twilio names the message's chat (``?chat_id=``); the signature covers it too.
"""

from __future__ import annotations

import logging

from aiohttp import web

from service.address import Conversation, split_address
from service.app_state import RUNTIME
from service.channels.twilio.form import fail, read_form, verify
from service.channels.twilio.gateway import UNSUBSCRIBED
from service.clock import now_ms
from service.conversations.items import Item, ItemKind
from service.logs import redact

log = logging.getLogger(__name__)


async def twilio_status(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    form = await read_form(request)
    if isinstance(form, web.Response):
        return form
    sender, to = form.get("From", ""), form.get("To", "")
    channel, agent_number = split_address(sender)
    number = await rt.catalog.get_number(agent_number) if agent_number else None
    if not await verify(request, rt, form, number):
        return fail(403, "invalid X-Twilio-Signature")
    sid, status = form.get("MessageSid") or form.get("SmsSid") or "", form.get("MessageStatus", "")
    try:
        code = int(form["ErrorCode"]) if form.get("ErrorCode") else None
    except ValueError:
        code = None
    chat_id = request.query.get("chat_id")   # set in the StatusCallback URL Parley gave Twilio
    moved = await rt.delivery.record(chat_id, sid, status, code) if chat_id and sid else False
    log.info("sms status", extra={"message_sid": sid, "status": status, "error_code": code, "moved": moved,
                                  "to": redact(to)})
    if code == UNSUBSCRIBED and number is not None and to:
        conv = Conversation(agent_number, split_address(to)[1], channel)
        await rt.optouts.record(conv, source="status_21610")
        await rt.queue.put(conv, Item(ItemKind.OPT_OUT, received_ms=now_ms()), dedupe_id=f"status:{sid}")
    return web.Response(status=204)
