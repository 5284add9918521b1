"""The resend loop: tries the messages that wait for Twilio again, when due, from any process.

``Resender.tick`` pops conversations whose waiting messages are due (``Outgoing.due``, leased, so one process
takes each), holds each conversation with ``ConversationQueue.hold`` as a turn does (so sends stay ordered
with turns; a conversation a turn holds is tried again a little later), and goes through its queue in order:

- the user opted out meanwhile, the number is gone, or the first message's time is up
  (``PARLEY_SEND_RETRY_FOR_S`` after it was written): it fails for good, with everything behind it;
- otherwise the head is sent through ``Sender.resend`` (window, daily limit and 21610 handled as for any send).
  Accepted: its SID and status are recorded by message id (``chats.delivery``) and the next one goes. Refused for
  now again: it is tried again after a backoff (``outgoing.retry_delay_ms``, at least Twilio's Retry-After, never
  after its deadline) and the run stops. Refused for good: it fails, with everything behind it.

A failure for good is reported to the business with a ``transcript_updated`` event for each chat concerned,
whatever its ``webhook_events`` say (a failed message is always reported, as ``Lifecycle.commit`` does), queued
in the same write that drops the messages and records why (``Outgoing.fail``).
"""

from __future__ import annotations

import asyncio
import logging

from service.address import Conversation
from service.chats.delivery import failed_state, sent_state
from service.clock import now_ms
from service.conversations.outgoing import Failure, Outgoing, Waiting, retry_delay_ms
from service.conversations.runtime import Runtime
from service.errors import Conflict
from service.retell.models import PhoneNumber
from service.storage.locks import Hold

log = logging.getLogger(__name__)

BATCH = 50               # conversations taken per tick
IDLE_POLL_MS = 5_000     # how often the loop looks for work other processes left, when this one set none due
HOLD_WAIT_S = 0.5        # how long to wait for a turn that holds the conversation before coming back later
OPTED_OUT = "not sent: the user opted out while it waited"
NUMBER_GONE = "not sent: the number is no longer one Parley sends from"
BEHIND_FAILED = "not sent: an earlier message of this conversation failed"


def time_up(retry_for_s: int, last_error: str | None) -> str:
    return f"not sent: Twilio did not take it within {retry_for_s} s (last: {last_error or 'no answer'})"


class Resender:
    """Sends what waits in the outgoing queues. One per process that runs workers (``create_app``)."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._outgoing: Outgoing = rt.outgoing
        self._idle_poll_at = 0  # pragma: no mutate (0 or 1: any clock reading is past both)

    async def tick(self) -> int:
        """Try every conversation whose waiting messages are due; how many were taken. Redis is asked when a
        due time this process set has come, or every IDLE_POLL_MS: an idle process costs Redis 16 ZRANGEs (one
        round trip) every 5 s, not every scheduler interval."""
        now = now_ms()
        if not self._outgoing.due_by(now) and now < self._idle_poll_at:
            return 0
        due = await self._outgoing.due.pop(now, batch=BATCH)
        # After finding work, look again at once (more may be due); after finding none, rest.
        self._idle_poll_at = now + IDLE_POLL_MS if not due else 0  # pragma: no mutate (else 1: as 0, see __init__)
        await asyncio.gather(*(self._run(Conversation.parse(member), leased) for member, _, leased in due))
        return len(due)

    async def _run(self, conv: Conversation, leased: int) -> None:
        try:
            async with self._rt.queue.hold(conv, within_s=HOLD_WAIT_S) as hold:
                await self._drain(hold)
                await self._outgoing.finish(conv, leased, now_ms())
        except Conflict:
            # A turn holds the conversation (it queues its own replies behind these): come back shortly.
            await self._outgoing.schedule(conv, now_ms() + self._rt.settings.send_retry_base_ms)
        except asyncio.CancelledError:
            # Shutting down: give the conversation back now rather than when the lease runs out. (A send cancelled
            # after Twilio took it is sent again: the same window as a turn killed before its commit.)
            await self._outgoing.schedule(conv, now_ms())
            raise
        except Exception:   # one conversation's trouble must not stop the others' sends; its lease brings it back
            log.exception("resending failed; will try again when the lease runs out", extra={"conv": conv.id})

    async def _drain(self, hold: Hold) -> None:
        """Send the conversation's waiting messages in order, until one has to wait again or none is left."""
        conv = hold.conv
        entries = await self._outgoing.entries(conv)
        if not entries:
            return
        number = await self._rt.catalog.get_number(conv.agent_number)
        retry_for_ms = self._rt.settings.send_retry_for_s * 1000
        for index, entry in enumerate(entries):
            rest = entries[index:]
            if number is None:
                await self._fail(hold, rest, NUMBER_GONE)
                return
            if await self._rt.optouts.is_opted_out(conv):
                await self._fail(hold, rest, OPTED_OUT)
                return
            deadline = entry.message.created_timestamp + retry_for_ms
            if now_ms() >= deadline:
                await self._fail(hold, rest, time_up(self._rt.settings.send_retry_for_s, entry.message.error))
                return
            if not await self._try(hold, number, entry, rest, deadline):
                return

    async def _try(self, hold: Hold, number: PhoneNumber, entry: Waiting, rest: list[Waiting], deadline: int) -> bool:
        """Send the head ``entry``; True when it went and the next one may follow."""
        message = entry.message
        deferred = await self._rt.sender.resend(hold.conv, number, message, entry.chat_id)
        if deferred is not None:   # refused for now: the message is still RETRYING
            delay = retry_delay_ms(entry.attempts + 1, self._rt.settings.send_retry_base_ms, deferred.retry_after_s)
            await self._outgoing.later(hold, entry, min(now_ms() + delay, deadline), message.error)
            return False
        if message.status == "failed":
            why = message.error or "not sent"  # pragma: no mutate (a failed send always says why: this is for the type)
            await self._fail(hold, rest, BEHIND_FAILED, first=(why, message.error_code))
            return False
        log.info("waiting message sent", extra={"conv": hold.conv.id, "message_sid": message.message_sid,
                                                "attempts": entry.attempts + 1})
        return await self._outgoing.settle(hold, entry, sent_state(str(message.message_sid), str(message.status)))

    async def _fail(self, hold: Hold, entries: list[Waiting], error: str,
                    first: tuple[str, int | None] | None = None) -> None:
        """``entries`` (the head and everything behind it) fail for good: ``first`` says why the head did (else
        ``error``), ``error`` why the others; each chat concerned gets a ``transcript_updated``."""
        failures = [Failure(entry, failed_state(*(first if first and not n else (error, None))))
                    for n, entry in enumerate(entries)]
        events: dict[str, list[str]] = {}
        for chat_id in dict.fromkeys(f.entry.chat_id for f in failures):
            event = await self._report(chat_id, {f.entry.message.message_id: f.state for f in failures})
            if event is not None:
                events[chat_id] = [event]
        if await self._outgoing.fail(hold, failures, events, now_ms()):
            log.warning("waiting messages failed for good", extra={
                "conv": hold.conv.id, "messages": len(failures), "error": first[0] if first else error})

    async def _report(self, chat_id: str, states: dict[str, str]) -> str | None:
        """The ``transcript_updated`` event (JSON) that reports the chat with ``states`` laid over its messages;
        None when the chat is gone or its agent has no webhook."""
        rt = self._rt
        chat = await rt.chats.get(chat_id)
        if chat is None:
            return None
        target = await rt.lifecycle.target_of(chat)
        if target is None:
            return None
        messages = await rt.delivery.apply(chat_id, await rt.chats.messages(chat_id), also=states)
        return rt.lifecycle.event(target, "transcript_updated", chat, messages).to_json()
