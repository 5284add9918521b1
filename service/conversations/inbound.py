"""A user's text arriving, whatever brought it (Twilio's webhook, the console's dev phone): carrier keywords
first, then the conversation's mailbox (``ConversationQueue.put``: dedupe, mailbox, wake-up).

``HELP``/``INFO`` is answered at once with the number's ``help_message`` and stored nowhere; ``START`` from a
user who opted out clears the opt-out; ``STOP`` and its synonyms record the opt-out and become an ``OPT_OUT``
item; anything else is a ``TEXT`` item for the next turn.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from service.address import Conversation
from service.clock import now_ms
from service.conversations.items import Item, ItemKind, Media
from service.conversations.queue import Enqueued
from service.conversations.runtime import Runtime
from service.logs import redact
from service.retell.models import PhoneNumber
from service.sms import keywords
from service.sms.keywords import Keyword

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Received:
    """What became of a text: ``reply`` is an answer to give at once (HELP); ``queued`` what the mailbox did
    (None: nothing was queued)."""

    reply: str | None = None
    queued: Enqueued | None = None


async def receive(rt: Runtime, conv: Conversation, number: PhoneNumber, body: str, sid: str, *,
                  media: tuple[Media, ...] = (), opt_out_type: str | None = None) -> Received:
    session_ttl_s = rt.channels[conv.channel].session_window_s
    keyword = keywords.classify(body, opt_out_type)
    if keyword in (Keyword.HELP, Keyword.OPT_IN) and session_ttl_s:
        await rt.queue.note_session(conv, session_ttl_s)   # any message from the user opens the window
    if keyword is Keyword.HELP:
        # help_message "" leaves HELP to Twilio's own keyword replies (Advanced Opt-Out).
        if number.help_message == "" or await rt.optouts.is_opted_out(conv):
            return Received()
        return Received(reply=number.help_message or keywords.default_help(number.nickname))
    if keyword is Keyword.OPT_IN and await rt.optouts.clear(conv):
        log.info("opt-out cleared", extra={"conv": redact(conv.id), "message_sid": sid})
        return Received()
    if keyword is Keyword.OPT_OUT:
        await rt.optouts.record(conv)
        item = Item(ItemKind.OPT_OUT, received_ms=now_ms(), body=body, message_sid=sid)
    else:
        item = Item(ItemKind.TEXT, received_ms=now_ms(), body=body, message_sid=sid, media=media)
    result = await rt.queue.put(conv, item, dedupe_id=sid, session_ttl_s=session_ttl_s)
    log.info("sms received", extra={"conv": redact(conv.id), "message_sid": sid, "result": result.name.lower()})
    return Received(queued=result)
