"""One turn of a conversation, run by the worker that holds its lock.

A turn takes the head of the mailbox: the user's texts that arrived together (one LLM call answers
them all), or one control item (STOP ended the chat; a silence deadline passed). It ends with one
commit, made under the worker's hold (``storage.locks.Hold``); a crash before it leaves the mailbox untouched,
so the next worker runs the turn again. The only window for a duplicate reply is between Twilio
accepting the reply and that commit. Texts from a user who opted out are dropped here, unanswered.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from service.address import SMS, Conversation, split_address
from service.agent.tools import SmsHook
from service.catalog.store import Agent, pick_agent
from service.chats.model import Chat, ChatType, Direction, EndReason, Message, Role, TurnResult
from service.clock import now_ms
from service.conversations import dialog
from service.conversations.items import Item, ItemKind
from service.conversations.queue import Reads
from service.conversations.runtime import Runtime
from service.errors import InvalidRequest, NotFound
from service.retell.models import E164_RE, ChatAgent, PhoneNumber
from service.sms.limits import check_destination
from service.storage import keys
from service.storage.locks import Hold, Release
from service.webhooks import chat_inbound

log = logging.getLogger(__name__)

DEFAULT_FALLBACK: str = ChatAgent.model_fields["fallback_message"].default
KNOWN_CHATS = 20_000   # conversations whose chat a process remembers (``Turns.take``); about 150 bytes each


@dataclass(frozen=True, slots=True)
class Context:
    """What a turn needs to know about its conversation, read together with its mailbox (``Turns.load``)."""

    number: PhoneNumber | None
    chat: Chat | None          # the ongoing chat
    history: list[Message]     # the chat's last ``history_window`` messages
    opted_out: bool


def _answering_agent(ctx: Context) -> str | None:
    """The agent that answers the next turn: the chat's, or the number's first inbound agent for a new chat."""
    number, chat = ctx.number, ctx.chat
    if chat is not None:
        return chat.agent_id
    return number.inbound_sms_agents[0].agent_id if number and number.inbound_sms_agents else None


class Turns:
    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        # The ongoing chat of conversations this process ran turns of, most recent last: the next turn reads
        # that chat in the round trip that takes the lock (``take``), and only reads it again in a second one
        # when the conversation has gone on to another chat since.
        self._chat_ids: OrderedDict[str, str] = OrderedDict()

    async def take(self, conv: Conversation, token: str) -> tuple[list[Item], Context] | None:
        """Take the conversation's lock with ``token`` and ``load``, in the same round trip when this process
        knows the conversation's chat; None (having read for nothing) when another worker holds the lock."""
        guess = self._chat_ids.get(conv.id)
        taken = await self._rt.queue.take(conv, token, with_keys=self._context_keys(conv), also=self._reads(guess))
        return (taken.items, await self._context(conv, taken.values, guess, taken.also)) if taken.taken else None

    async def load(self, conv: Conversation) -> tuple[list[Item], Context]:
        """The mailbox and the context of its next turn, in one round trip (two when the chat changed)."""
        guess = self._chat_ids.get(conv.id)
        read = await self._rt.queue.peek(conv, with_keys=self._context_keys(conv), also=self._reads(guess))
        return read.items, await self._context(conv, read.values, guess, read.also)

    @staticmethod
    def _context_keys(conv: Conversation) -> list[str]:
        return [keys.current_chat(conv), keys.optout(conv)]

    def _reads(self, chat_id: str | None) -> Reads:
        return () if chat_id is None else self._rt.chats.history_reads(chat_id, self._rt.settings.history_window)

    async def _context(self, conv: Conversation, values: list[str | None], guess: str | None, read: list[Any],
                       ) -> Context:
        chat_id, opted_out = values
        chat: Chat | None
        history: list[Message]
        if chat_id is None:
            chat, history = None, []
        elif chat_id == guess:
            chat, history = self._rt.chats.ongoing_from(*read)
        else:
            chat, history = await self._rt.chats.ongoing_with_history(chat_id, self._rt.settings.history_window)
        self.remember(conv, chat.chat_id if chat is not None else None)
        number = await self._rt.catalog.get_number(conv.agent_number)
        return Context(number, chat, history, opted_out is not None)

    def remember(self, conv: Conversation, chat_id: str | None) -> None:
        """``chat_id`` is ``conv``'s ongoing chat now (None: it has none)."""
        if chat_id is None:
            self._chat_ids.pop(conv.id, None)
            return
        self._chat_ids[conv.id] = chat_id
        self._chat_ids.move_to_end(conv.id)
        if len(self._chat_ids) > KNOWN_CHATS:
            self._chat_ids.popitem(last=False)

    async def fallback(self, hold: Hold, batch: list[Item], ctx: Context) -> Release:
        """After a turn failed for good: answer its texts with the agent's ``fallback_message`` (recorded in the
        ongoing chat, reported to the business), so none is dropped unanswered. A control item that kept
        failing (STOP's chat end, a silence deadline) is consumed: the opt-out itself was recorded at the
        webhook, and a timer fires again when re-armed."""
        conv, chat = hold.conv, ctx.chat
        consumed = TurnResult(consumed=len(batch))
        if batch[0].kind is not ItemKind.TEXT or ctx.number is None or ctx.opted_out:
            log.error("control item failed for good; consumed", extra={"conv": conv.id, "kind": batch[0].kind})
            return await self._rt.lifecycle.commit(None, conv, consumed, hold=hold)
        text = await self._fallback_text(ctx)
        sent = await self._rt.sender.send_text(conv, ctx.number, text, exact=True,
                                               chat_id=chat.chat_id if chat else None)
        log.error("turn failed for good; answered with the fallback message",
                  extra={"conv": conv.id, "texts": len(batch), "sent": len(sent)})
        if chat is None:
            return await self._rt.lifecycle.commit(None, conv, consumed, hold=hold)
        result = TurnResult(messages=[self._user_message(i) for i in batch] + sent, consumed=len(batch))
        return await self._rt.lifecycle.commit(chat, conv, result, always_report=True, hold=hold)

    async def _fallback_text(self, ctx: Context) -> str:
        """The fallback message of the agent that answers (the chat's, else the number's first inbound agent),
        or the default one when that agent cannot be read."""
        agent_id = _answering_agent(ctx)
        try:
            if agent_id is not None:
                return (await self._rt.catalog.agents.get(agent_id)).fallback_message
        except NotFound:
            pass
        return DEFAULT_FALLBACK

    async def burst_window_ms(self, ctx: Context) -> int:
        """The burst window of the agent that will answer (the number's first inbound agent for a new chat)."""
        agent_id, chat = _answering_agent(ctx), ctx.chat
        if agent_id is None:
            return 0
        try:
            return (await self._rt.catalog.agents.get(agent_id, chat.version if chat else None)).burst_window_ms
        except NotFound:
            return 0

    async def run(self, hold: Hold, batch: list[Item], ctx: Context) -> Release:
        """Act on ``batch`` (from ``items.next_batch``) and commit under ``hold``; what the commit did with the
        conversation's lock."""
        conv = hold.conv
        consumed = TurnResult(consumed=len(batch))
        kind = batch[0].kind
        if ctx.number is None:
            log.warning("number no longer configured; dropping", extra={"conv": conv.id, "items": len(batch)})
            return await self._rt.lifecycle.commit(None, conv, consumed, hold=hold)
        if kind is ItemKind.OPT_OUT:
            return await self._opt_out(hold, ctx, batch[0])
        if kind is ItemKind.INACTIVITY:
            return await self._inactivity(hold, ctx.number, ctx, batch[0])
        if ctx.opted_out:
            log.info("texts from a user who opted out; not answered", extra={"conv": conv.id, "texts": len(batch)})
            return await self._rt.lifecycle.commit(None, conv, consumed, hold=hold)
        return await self._texts(hold, ctx.number, ctx, batch)

    async def _open_inbound_chat(
        self, conv: Conversation, number: PhoneNumber, batch: list[Item],
    ) -> tuple[Chat, Agent] | None:
        """A new chat for the pair: the number's bound agent, unless its chat_inbound webhook decides otherwise.
        None when nobody answers (no agent, or the webhook rejected the text)."""
        choice = pick_agent(number.inbound_sms_agents)
        agent_id, version = (choice.agent_id, choice.agent_version) if choice else (None, None)
        decision = chat_inbound.Decision()
        chat_id = keys.new_chat_id(conv.shard)   # the webhook is told the id the chat will have
        if number.inbound_sms_webhook_url:
            decision = await chat_inbound.ask(
                self._rt.http, number.inbound_sms_webhook_url, signing_key=self._rt.signing_key,
                attempts=self._rt.settings.inbound_webhook_attempts, payload={
                    "chat_id": chat_id, "agent_id": agent_id, "agent_version": version,
                    "from_number": conv.user_number,
                    "to_number": conv.agent_number, "message": "\n".join(i.body for i in batch),
                    "message_sid": batch[0].message_sid,
                    **({"channel": conv.channel} if conv.channel != SMS else {})})
            if decision.reject:
                await self._rt.chats.reject(conv, [self._user_message(i) for i in batch])
                log.info("chat_inbound webhook rejected the text", extra={"conv": conv.id})
                return None
            if decision.agent_id:
                try:
                    await self._rt.catalog.agents.find(decision.agent_id, decision.agent_version)
                    agent_id, version = decision.agent_id, decision.agent_version
                except NotFound as exc:
                    decision.error = f"chat_inbound webhook named an unknown agent or version: {exc}"
        if agent_id is None:
            log.warning("no agent answers on the number; not answering",
                        extra={"conv": conv.id, "error": decision.error})
            return None
        override = decision.agent_override
        if override:
            try:   # checked against the agent it lays over; one that does not apply is reported, not half-used
                base = await self._rt.catalog.resolve(agent_id, version)
                ignored = dialog.override_unsupported(base, dialog.with_override(base, override))
                if ignored:   # applied, but some of it Parley keeps without acting on: said, not silent
                    decision.error = "chat_inbound webhook answer: applied, but " + "; ".join(ignored)
            except ValueError as exc:
                decision.error, override = f"chat_inbound webhook answer: {exc}; the agent answers as it is", None
        chat, agent = await dialog.open_chat(
            self._rt, agent_id=agent_id, version=version, chat_type=ChatType.SMS, conv=conv,
            direction=Direction.INBOUND, variables=decision.dynamic_variables, metadata=decision.metadata,
            inbound_webhook_error=decision.error, chat_id=chat_id, agent_override=override)
        return chat, agent

    @staticmethod
    def _user_message(item: Item) -> Message:
        return Message(Role.USER, content=item.body, message_sid=item.message_sid, created_timestamp=item.received_ms,
                       media=[{"url": m.url, "content_type": m.content_type} for m in item.media] or None)

    async def _texts(self, hold: Hold, number: PhoneNumber, ctx: Context, batch: list[Item]) -> Release:
        conv, chat = hold.conv, ctx.chat
        if chat is None:
            opened = await self._open_inbound_chat(conv, number, batch)
            if opened is None:
                return await self._rt.lifecycle.commit(None, conv, TurnResult(consumed=len(batch)), hold=hold)
            chat, agent = opened
            self.remember(conv, chat.chat_id)
        else:
            agent = await dialog.agent_for(self._rt, chat)
        user = [self._user_message(item) for item in batch]
        if chat.agent_paused:
            # A human has the chat: keep the texts, tell the business (transcript_updated), no LLM.
            released = await self._rt.lifecycle.commit(chat, conv, TurnResult(messages=user, consumed=len(batch)),
                                                       always_report=True, hold=hold)
            log.info("texts stored for a human", extra={"chat_id": chat.chat_id, "texts": len(batch)})
            return released
        by_tool: list[Message] = []
        hook = self._sms_hook(conv, number, chat.chat_id, by_tool)
        reply = await dialog.answer(self._rt, chat, agent, user, sms=hook, history=ctx.history)
        agent = reply.agent or agent   # an agent_swap: the destination answered, and its settings hold from now on
        sent = []
        if reply.text:
            sent = await self._rt.sender.send_text(conv, number, reply.text, chat_id=chat.chat_id,
                                                   max_segments=agent.config.max_reply_segments)
        result = TurnResult(messages=user + reply.messages + by_tool + sent, consumed=len(batch),
                            deadline_ms=now_ms() + agent.config.end_chat_after_silence_ms)
        if reply.end_chat:
            result.end, result.end_timestamp = EndReason.AGENT_ENDED, now_ms()
        released = await self._rt.lifecycle.commit(chat, conv, result, agent=agent.config, hold=hold)
        log.info("turn done", extra={"chat_id": chat.chat_id, "texts": len(batch), "parts": len(sent),
                                     "ended": reply.end_chat, "llm_failed": reply.failed})
        return released

    def _sms_hook(self, conv: Conversation, number: PhoneNumber, chat_id: str, record: list[Message]) -> SmsHook:
        """The send_sms tool's way out: to the chat's user (recorded in the chat, on the chat's channel), or to
        another number (by SMS unless written ``whatsapp:+1...``; checked like any text Parley starts)."""
        async def send(to: str | None, text: str) -> str | None:
            target = conv
            if to and to != conv.user_number:
                channel, user = split_address(to)
                target = Conversation(conv.agent_number, user, channel)
            if not E164_RE.fullmatch(target.user_number):
                return f"{target.user_number!r} is not an E.164 number"
            if target != conv:
                if target.channel not in number.channels:
                    return f"{number.phone_number} does not send on {target.channel}"
                try:
                    check_destination(number, target.user_number)
                except InvalidRequest as exc:
                    return str(exc)
            if await self._rt.optouts.is_opted_out(target):
                return "the recipient opted out of texts from this number"
            sent = await self._rt.sender.send_text(target, number, text, exact=True,
                                                   chat_id=chat_id if target == conv else None)
            if target == conv:
                record.extend(sent)
            failed = next((m for m in sent if m.status == "failed"), None)
            return failed.error if failed else None
        return send

    async def _opt_out(self, hold: Hold, ctx: Context, item: Item) -> Release:
        chat = ctx.chat
        result = TurnResult(consumed=1)
        if chat is not None:
            if item.body:   # a STOP text (an opt-out from a status callback has none)
                result.messages = [Message(Role.USER, content=item.body, message_sid=item.message_sid,
                                           created_timestamp=item.received_ms)]
            result.end, result.end_timestamp = EndReason.USER_OPTED_OUT, now_ms()
            log.info("chat ended: user opted out", extra={"chat_id": chat.chat_id})
        return await self._rt.lifecycle.commit(chat, hold.conv, result, hold=hold)

    async def _inactivity(self, hold: Hold, number: PhoneNumber, ctx: Context, item: Item) -> Release:
        conv, chat = hold.conv, ctx.chat
        if chat is None or chat.chat_id != item.chat_id or await self._rearmed(chat, item):
            return await self._rt.lifecycle.commit(None, conv, TurnResult(consumed=1), hold=hold)
        agent = (await dialog.agent_for(self._rt, chat)).config
        result = TurnResult(consumed=1, end=EndReason.INACTIVITY)
        if agent.auto_close_message:
            result.messages = await self._rt.sender.send_text(
                conv, number, agent.auto_close_message, max_segments=agent.max_reply_segments, chat_id=chat.chat_id)
        result.end_timestamp = now_ms()
        released = await self._rt.lifecycle.commit(chat, conv, result, hold=hold)
        log.info("chat ended: inactivity", extra={"chat_id": chat.chat_id})
        return released

    async def _rearmed(self, chat: Chat, item: Item) -> bool:
        """True if a turn re-armed the chat's timer after this deadline fired (the user wrote meanwhile)."""
        deadline = await self._rt.chats.deadline(chat.chat_id)
        return deadline is not None and deadline != item.timer_score
