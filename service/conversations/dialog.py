"""What every chat does, SMS or API: open with an agent version, answer the user, know its agent.

SMS turns (``turn.py``), outbound SMS chats and the API's ``api_chat`` routes all go through here, so a
chat behaves the same whichever way it is driven.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from service.address import SMS, Conversation
from service.agent import variables
from service.agent.reply import Reply, chat_variables
from service.agent.tools import SmsHook
from service.catalog.store import Agent
from service.chats.model import Chat, ChatType, Direction, Message
from service.clock import now_ms
from service.conversations.runtime import Runtime
from service.errors import NotFound
from service.retell.models import AgentVersion
from service.retell.unsupported import unsupported
from service.storage import keys
from service.validation import describe

log = logging.getLogger(__name__)


# What an agent_override may not change: which agent and engine it is.
_FIXED = {"agent": {"agent_id", "version", "response_engine", "retell_llm", "conversation_flow"},
          "retell_llm": {"llm_id", "version"}, "conversation_flow": {"conversation_flow_id", "version", "nodes"}}


def _engine_part(agent: Agent) -> str:
    return "retell_llm" if agent.llm is not None else "conversation_flow"


def with_override(agent: Agent, override: dict[str, Any] | None) -> Agent:
    """``agent`` with the chat_inbound webhook's ``agent_override`` laid over it: ``agent`` fields over the chat
    agent, ``retell_llm`` (or ``conversation_flow``) fields over its engine, validated as they are. ``ValueError``
    names what cannot be applied (another part, a fixed field, a value that does not validate)."""
    if not override:
        return agent
    engine_part = _engine_part(agent)
    others = sorted(set(override) - {"agent", engine_part})
    if others:
        raise ValueError(f"agent_override.{others[0]}: not supported (this agent's overrides are agent and "
                         f"{engine_part})")
    parts: dict[str, Any] = {}
    for part, current in (("agent", agent.config), (engine_part, agent.engine)):
        fields = override.get(part) or {}
        if not isinstance(fields, dict):
            raise ValueError(f"agent_override.{part}: expected an object")
        fixed = sorted(set(fields) & _FIXED[part])
        if fixed:
            raise ValueError(f"agent_override.{part}.{fixed[0]}: cannot be overridden")
        try:
            parts[part] = type(current).model_validate({**current.model_dump(exclude_unset=True), **fields})
        except ValidationError as exc:
            raise ValueError("; ".join(describe(exc, f"agent_override.{part}."))) from None
    return Agent.of(parts["agent"], parts[engine_part])


def override_unsupported(agent: Agent, overridden: Agent) -> list[str]:
    """What an ``agent_override`` set that Parley keeps without acting on (``retell.unsupported``), by path."""
    lines = []
    for part, before, after in (("agent", agent.config, overridden.config),
                                (_engine_part(agent), agent.engine, overridden.engine)):
        known = set(unsupported(before))
        lines += [f"agent_override.{part}.{line}" for line in unsupported(after) if line not in known]
    return lines


async def open_chat(
    rt: Runtime, *, agent_id: str, version: AgentVersion | None, chat_type: ChatType, conv: Conversation | None = None,
    direction: Direction | None = None, variables: dict[str, str] | None = None,
    metadata: dict[str, Any] | None = None, inbound_webhook_error: str | None = None, chat_id: str | None = None,
    agent_override: dict[str, Any] | None = None,
) -> tuple[Chat, Agent]:
    """Create a chat pinned to the agent version ``version`` names (None: the latest, as Retell defaults) and its
    LLM version; an SMS chat becomes the pair's ongoing one. ``chat_id``: one drawn already (told to the
    chat_inbound webhook); ``agent_override``: checked already (``with_override``), kept with the chat."""
    agent = with_override(await rt.catalog.resolve(agent_id, version), agent_override)
    from_number = to_number = None
    if conv is not None:
        inbound = direction is Direction.INBOUND
        from_number = conv.user_number if inbound else conv.agent_number
        to_number = conv.agent_number if inbound else conv.user_number
    chat_id = chat_id or keys.new_chat_id(conv.shard if conv is not None else None)   # in the conversation's partition
    chat = Chat(chat_id=chat_id, agent_id=agent.config.agent_id, version=agent.config.version,
                llm_version=agent.engine.version, chat_type=chat_type, start_timestamp=now_ms(), direction=direction,
                from_number=from_number, to_number=to_number, dynamic_variables=dict(variables or {}),
                metadata=dict(metadata or {}), inbound_webhook_error=inbound_webhook_error,
                channel=conv.channel if conv is not None else SMS, agent_override=agent_override or None)
    await rt.lifecycle.open(chat, agent.config)
    log.info("chat started", extra={"chat_id": chat.chat_id, "agent_id": chat.agent_id, "chat_type": chat_type.value})
    return chat, agent


async def agent_for(rt: Runtime, chat: Chat) -> Agent:
    """The agent version (and LLM version) the chat started with; the latest if those were deleted."""
    try:
        agent = await rt.catalog.resolve(chat.agent_id, chat.version, chat.llm_version)
    except NotFound:
        log.warning("chat's agent version is gone; using the latest", extra={"chat_id": chat.chat_id})
        agent = await rt.catalog.resolve(chat.agent_id)
    try:
        return with_override(agent, chat.agent_override)
    except ValueError as exc:   # it held when the chat opened; the agent changed under it since
        log.warning("chat's agent_override no longer applies", extra={"chat_id": chat.chat_id, "error": str(exc)})
        return agent


async def opening(rt: Runtime, chat: Chat, agent: Agent) -> Reply:
    """The chat's first agent message: ``begin_message`` rendered, the LLM's when it is null, none when ""."""
    begin = agent.engine.begin_message
    if begin is None:   # and a conversation flow's opening: its start node
        return await rt.responder.respond(agent, chat, [])
    values = chat_variables(agent, chat, datetime.now(UTC))
    return Reply(text=variables.render(begin, values, now=datetime.now(UTC)))


async def answer(
    rt: Runtime, chat: Chat, agent: Agent, new: list[Message], *, sms: SmsHook | None = None,
    history: list[Message] | None = None,
) -> Reply:
    """The agent's reply to ``new`` user messages, given the chat's history window (read here unless given)."""
    if history is None:
        history = await rt.chats.messages(chat.chat_id, last=rt.settings.history_window)
    return await rt.responder.respond(agent, chat, history + new, sms=sms)
