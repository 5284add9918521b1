"""Agent swaps (Retell's ``agent_swap`` tool, and a conversation flow's ``agent_swap`` node): the chat goes on with
another agent version, its engine and its starting place; the chat records the swap (``Chat.swap_to``; its commit
keeps it)."""

from __future__ import annotations

import logging
from datetime import datetime

from service.agent.reply import ms
from service.agent.tools import ToolOutcome
from service.catalog.store import Agent, Catalog
from service.chats.model import Chat
from service.errors import NotFound

log = logging.getLogger(__name__)


async def swap(catalog: Catalog, chat: Chat, agent_id: str, agent_version: int | None, setting: str,
               now: datetime, *, done: bool = False) -> tuple[ToolOutcome, Agent | None]:
    """Hand ``chat`` to ``agent_id`` at ``agent_version`` (None: its latest): the result the model reads, and the
    agent (None: no swap). ``done``: the chat swapped already in this step, and does not again."""
    if done:
        return ToolOutcome(f"Not swapped: the chat already went to agent {chat.agent_id} in this step.", False), None
    try:
        destination = await catalog.resolve(agent_id, agent_version)
    except NotFound as exc:
        log.warning("agent swap to a missing agent", extra={"chat_id": chat.chat_id, "error": str(exc)})
        return ToolOutcome(f"Not swapped: {exc}. The chat stays with this agent.", False), None
    former = f"{chat.agent_id} version {chat.version}"
    chat.swap_to(destination.config.agent_id, destination.config.version, destination.engine.version, setting,
                 ms(now))
    log.info("agent swap", extra={"chat_id": chat.chat_id, "agent_id": chat.agent_id, "version": chat.version})
    return ToolOutcome(f"Swapped from agent {former} to agent {chat.agent_id} version {chat.version}, "
                       "which answers from now on.", True), destination
