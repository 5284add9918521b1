"""``POST /twilio/status``: Twilio's delivery-status callbacks, signature-checked, applied in order of rank.

Twilio sends no callback for the status the create call returned, may send them out of order, and may add
parameters: the signature covers the whole form, and ``chats.delivery`` never lets a status move back. The
callback URL Parley gives Twilio names the message's chat (``?chat_id=``); the signature covers it too.
"""

from __future__ import annotations

import logging

from aiohttp import web
from multidict import MultiDictProxy

from service.address import Conversation, split_address
from service.app_state import RUNTIME
from service.channels.twilio.form import fail, verify, webhook
from service.channels.twilio.gateway import UNSUBSCRIBED
from service.clock import now_ms
from service.conversations.items import Item, ItemKind
from service.logs import redact
from service.retell.models import E164_RE
from service.storage.keys import is_chat_id

log = logging.getLogger(__name__)


@webhook
async def twilio_status(request: web.Request, form: MultiDictProxy[str]) -> web.Response:
    rt = request.app[RUNTIME]
    sender, to = form.get("From", ""), form.get("To", "")
    channel, agent_number = split_address(sender)
    number = await rt.catalog.get_number(agent_number) if E164_RE.fullmatch(agent_number) else None
    if not await verify(request, rt, form, number):
        return fail(403, "invalid X-Twilio-Signature")
    sid, status = form.get("MessageSid") or form.get("SmsSid") or "", form.get("MessageStatus", "")
    try:
        code = int(form["ErrorCode"]) if form.get("ErrorCode") else None
    except ValueError:
        code = None
    chat_id = request.query.get("chat_id")   # set in the StatusCallback URL Parley gave Twilio
    if chat_id is not None and not is_chat_id(chat_id):   # names no chat: never part of a key
        log.warning("sms status for a malformed chat id", extra={"message_sid": sid, "chat_id": chat_id[:80]})
        chat_id = None
    moved = await rt.delivery.record(chat_id, sid, status, code) if chat_id and sid else False
    log.info("sms status", extra={"message_sid": sid, "status": status, "error_code": code, "moved": moved,
                                  "to": redact(to)})
    if code == UNSUBSCRIBED and number is not None and to:
        conv = Conversation(agent_number, split_address(to)[1], channel)
        await rt.optouts.record(conv, source="status_21610")
        await rt.queue.put(conv, Item(ItemKind.OPT_OUT, received_ms=now_ms()), dedupe_id=f"status:{sid}")
    return web.Response(status=204)
