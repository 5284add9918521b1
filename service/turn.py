"""One turn of a conversation, run by the worker that holds its lock (DESIGN.md section 3, step 6).

A turn takes the head of the mailbox: the user's texts that arrived together (one LLM call answers
them all), or one control item (STOP ended the chat; a silence deadline passed). It ends with one
commit; a crash before it leaves the mailbox untouched, so the next worker runs the turn again. The
only window for a duplicate reply is between Twilio accepting the reply and that commit.
"""

from __future__ import annotations

import logging

from . import dialog, keys
from .catalog import Agent, pick_agent
from .chats import Chat, ChatType, Direction, EndReason, Message, Role, TurnResult
from .keys import Conversation
from .mailbox import Item, ItemKind, now_ms
from .retell import PhoneNumber
from .runtime import Runtime

log = logging.getLogger(__name__)

MAX_TEXTS_PER_TURN = 20


def next_batch(items: list[Item]) -> list[Item]:
    """The head of the mailbox that forms the next turn: a run of texts, or one control item."""
    if not items:
        return []
    if items[0].kind is not ItemKind.TEXT:
        return items[:1]
    batch = []
    for item in items[:MAX_TEXTS_PER_TURN]:
        if item.kind is not ItemKind.TEXT:
            break
        batch.append(item)
    return batch


class Turns:
    def __init__(self, rt: Runtime) -> None:
        self._rt = rt

    async def run(self, conv: Conversation, batch: list[Item]) -> None:
        """Act on ``batch`` (from ``next_batch``) and commit."""
        number = await self._rt.catalog.get_number(conv.agent_number)
        consumed = TurnResult(consumed=len(batch))
        if number is None:
            log.warning("number no longer configured; dropping", extra={"conv": conv.tag, "items": len(batch)})
            await self._rt.chats.commit(None, conv, consumed)
            return
        kind = batch[0].kind
        if kind is ItemKind.OPT_OUT:
            await self._opt_out(conv, batch[0])
        elif kind is ItemKind.INACTIVITY:
            await self._inactivity(conv, number, batch[0])
        else:
            await self._texts(conv, number, batch)

    async def _open_inbound_chat(self, conv: Conversation, number: PhoneNumber) -> tuple[Chat, Agent] | None:
        choice = pick_agent(number.inbound_sms_agents)
        if choice is None:
            return None
        return await dialog.open_chat(self._rt, agent_id=choice.agent_id, version=choice.agent_version,
                                      chat_type=ChatType.SMS, conv=conv, direction=Direction.INBOUND)

    async def _texts(self, conv: Conversation, number: PhoneNumber, batch: list[Item]) -> None:
        chats = self._rt.chats
        chat = await chats.ongoing(conv)
        if chat is None:
            opened = await self._open_inbound_chat(conv, number)
            if opened is None:
                log.warning("no inbound_sms_agents on the number; not answering", extra={"conv": conv.tag})
                await chats.commit(None, conv, TurnResult(consumed=len(batch)))
                return
            chat, agent = opened
        else:
            agent = await dialog.agent_for(self._rt, chat)
        user = [Message(Role.USER, content=item.body, message_sid=item.message_sid, created_timestamp=item.received_ms,
                        media=[{"url": m.url, "content_type": m.content_type} for m in item.media] or None)
                for item in batch]
        reply = await dialog.answer(self._rt, chat, agent, user)
        sent = []
        if reply.text:
            sent = await self._rt.sender.send_text(conv, number, reply.text,
                                                   max_segments=agent.config.max_reply_segments)
        result = TurnResult(messages=user + reply.messages + sent, consumed=len(batch),
                            deadline_ms=now_ms() + agent.config.end_chat_after_silence_ms)
        if reply.end_chat:
            result.end, result.end_timestamp = EndReason.AGENT_ENDED, now_ms()
        await chats.commit(chat, conv, result)
        log.info("turn done", extra={"chat_id": chat.chat_id, "texts": len(batch), "parts": len(sent),
                                     "ended": reply.end_chat, "llm_failed": reply.failed})

    async def _opt_out(self, conv: Conversation, item: Item) -> None:
        chat = await self._rt.chats.ongoing(conv)
        result = TurnResult(consumed=1)
        if chat is not None:
            result.messages = [Message(Role.USER, content=item.body, message_sid=item.message_sid,
                                       created_timestamp=item.received_ms)]
            result.end, result.end_timestamp = EndReason.USER_OPTED_OUT, now_ms()
            log.info("chat ended: user opted out", extra={"chat_id": chat.chat_id})
        await self._rt.chats.commit(chat, conv, result)

    async def _inactivity(self, conv: Conversation, number: PhoneNumber, item: Item) -> None:
        chat = await self._rt.chats.ongoing(conv)
        if chat is None or chat.chat_id != item.chat_id or await self._rearmed(chat, item):
            await self._rt.chats.commit(None, conv, TurnResult(consumed=1))
            return
        agent = (await dialog.agent_for(self._rt, chat)).config
        result = TurnResult(consumed=1, end=EndReason.INACTIVITY)
        if agent.auto_close_message:
            result.messages = await self._rt.sender.send_text(
                conv, number, agent.auto_close_message, max_segments=agent.max_reply_segments)
        result.end_timestamp = now_ms()
        await self._rt.chats.commit(chat, conv, result)
        log.info("chat ended: inactivity", extra={"chat_id": chat.chat_id})

    async def _rearmed(self, chat: Chat, item: Item) -> bool:
        """True if a turn re-armed the chat's timer after this deadline fired (the user wrote meanwhile)."""
        score = await self._rt.redis.zscore(keys.INACTIVITY_TIMERS, chat.chat_id)
        return score is not None and int(score) != item.timer_score
