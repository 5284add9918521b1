"""A chat's lifecycle, with its events: opening a chat, committing a turn, ending it (see docs/architecture.md).

Every chat is opened and every turn is committed here, so ``chat_started``, ``transcript_updated`` and
``chat_ended`` are queued in the same transaction as the change they report, whichever way the chat
ended (the agent's end tool, the API, STOP, silence), and an ended chat is always queued for analysis.
Events go to the agent's ``webhook_url``, else ``PARLEY_WEBHOOK_URL``, filtered by ``webhook_events``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import orjson

from service.address import DEV, Conversation
from service.catalog.store import Catalog
from service.chats.cost import estimate
from service.chats.model import Chat, ChatStatus, EndReason, Message, Role, TurnResult, new_id
from service.chats.store import Chats, Commit
from service.errors import NotFound
from service.metrics import Tally
from service.retell.models import DEFAULT_EVENTS, ChatAgent
from service.settings import Settings
from service.storage.locks import Hold, Release
from service.webhooks.events import Event


def count(tally: Tally, chat: Chat, result: TurnResult, cost_cents: float) -> None:
    """A turn in the console overview's counters: texts in and out and segments by number, the cost the turn
    added (millicents), the reply latency (from the turn's last text in to its first text out), opt-outs and
    sends that failed."""
    number = chat.agent_number or "-"
    texts_in = [m for m in result.messages if m.role is Role.USER]
    sent = [m for m in result.messages if m.role is Role.AGENT and m.status is not None]   # SMS, WhatsApp
    delivered = [m for m in sent if m.status != "failed"]
    tally.add(f"in:{number}", len(texts_in))
    tally.add(f"out:{number}", len(delivered))
    tally.add(f"seg:{number}", sum(m.billed_segments() for m in delivered))
    tally.add(f"cost:{number}", round(cost_cents * 1000))
    tally.add("twilio_errors", len(sent) - len(delivered))
    if texts_in and delivered:
        tally.latency(max(0, delivered[0].created_timestamp - texts_in[-1].created_timestamp))
    if result.end is EndReason.USER_OPTED_OUT:
        tally.add("optouts")


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    kinds: tuple[str, ...]
    timeout_ms: int


def event_body(kind: str, chat: dict[str, Any]) -> str:
    """Retell's envelope: ``{"event": ..., "chat": {...}}``."""
    return orjson.dumps({"event": kind, "chat": chat}).decode()


class Lifecycle:
    def __init__(self, settings: Settings, chats: Chats, catalog: Catalog, tally: Tally | None = None) -> None:
        self._settings = settings
        self._chats = chats
        self._catalog = catalog
        self._tally = tally

    def target(self, agent: ChatAgent) -> Target | None:
        """Where this agent's events go, and which ones; None when nowhere."""
        url = agent.webhook_url or self._settings.webhook_url
        if not url:
            return None
        kinds = tuple(agent.webhook_events) if agent.webhook_events is not None else DEFAULT_EVENTS
        return Target(url=url, kinds=kinds, timeout_ms=agent.webhook_timeout_ms)

    async def target_of(self, chat: Chat) -> Target | None:
        """Where the chat's events go: its agent's target, or the first agent's once it swapped agents (Retell
        keeps the first agent's webhook for the whole conversation)."""
        try:
            return self.target(await self._catalog.agents.get(*chat.original_agent))
        except NotFound:
            return None

    @staticmethod
    def event(target: Target, kind: str, chat: Chat, messages: list[Message], **extra: Any) -> Event:
        payload = chat.to_response(messages).model_dump(mode="json", exclude_none=True)
        payload.update(extra)
        return Event(event_id=new_id("evt_"), chat_id=chat.chat_id, kind=kind, url=target.url,
                     body=event_body(kind, payload), timeout_ms=target.timeout_ms)

    def price(self, chat: Chat) -> None:
        """Set the chat's ``chat_cost`` estimate from what it used so far (``chats.cost``)."""
        chat.cost = estimate(chat, self._settings)

    async def open(self, chat: Chat, agent: ChatAgent) -> None:
        """Store a new chat and queue ``chat_started``."""
        target = self.target(agent)
        events = [self.event(target, "chat_started", chat, [])] if target and "chat_started" in target.kinds else []
        await self._chats.create(chat, events=events)

    async def commit(
        self, chat: Chat | None, conv: Conversation | None, result: TurnResult, *, always_report: bool = False,
        agent: ChatAgent | None = None, hold: Hold | None = None,
    ) -> Release:
        """Commit a turn; queue ``transcript_updated`` / ``chat_ended`` and the analysis of an ended chat.
        Without a chat (a turn that opened none), only the mailbox is trimmed. ``always_report`` sends
        ``transcript_updated`` even when the agent's ``webhook_events`` leave it out (texts a human must see).
        ``agent``: the chat's agent version, when the caller has it (saves looking it up). ``hold``: the
        worker's hold on the conversation, which fences the write (see ``Chats.commit``, which answers)."""
        if chat is None:
            return await self._chats.commit(Commit(None, conv, result), hold=hold)
        chat.sms_segments += sum(m.billed_segments() for m in result.messages if m.role is not Role.USER)
        cost_before = (chat.cost or {}).get("combined_cost", 0.0)
        self.price(chat)
        added_cost = (chat.cost or {}).get("combined_cost", 0.0) - cost_before
        events: list[Event] = []
        target = self.target(agent) if agent is not None and not chat.swaps else await self.target_of(chat)
        # A text that could not be sent is always reported, whatever webhook_events says.
        always_report = always_report or any(m.status == "failed" for m in result.messages)
        wants_transcript = target is not None and bool(result.messages) and (
            always_report or "transcript_updated" in target.kinds)
        wants_end = target is not None and result.end is not None and "chat_ended" in target.kinds
        if target is not None and (wants_transcript or wants_end):
            messages = await self._chats.messages(chat.chat_id) + result.messages
            after = chat
            if result.end is not None:
                after = replace(chat, chat_status=ChatStatus.ENDED, end_timestamp=result.end_timestamp,
                                disconnection_reason=result.end.value)
            if wants_transcript:
                events.append(self.event(target, "transcript_updated", after, messages))
            if wants_end:
                events.append(self.event(target, "chat_ended", after, messages))
        release = await self._chats.commit(Commit(chat, conv, result, events, analyze=result.end is not None),
                                           hold=hold)
        # Counted once written (a fenced commit that lost its lock wrote nothing, and the turn runs again).
        if self._tally is not None and chat.channel != DEV and release is not Release.LOST:   # not dev tests
            count(self._tally, chat, result, added_cost)
        return release
