"""The agent's side of a turn: the prompt, the history window, and the LLM tool loop.

It returns the reply text and the tool messages to record; it sends nothing (``conversations.sender`` does).
When the LLM fails after its client's retries, the reply is the agent's ``fallback_message``.

An ``agent_swap`` tool hands the chat to another agent version: from the next model call on (the rest of this
turn, and every later turn) the destination agent answers, with its prompt, tools, model and starting state, and
the chat records the swap (``Chat.swap_to``; its commit keeps it). One swap per model step.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp

from service.agent import tools, variables
from service.agent.llm import LLM, ToolCall
from service.agent.retrieval import KnowledgeUse, Retriever
from service.catalog.store import Agent, Catalog
from service.chats.model import Chat, Message, Role
from service.errors import LLMError, NotFound
from service.retell.models import AgentSwapTool, RetellLLM, State

log = logging.getLogger(__name__)

MAX_TOOL_ROUNDS = 5



class Medium(Protocol):
    """What the prompt says about the channel a chat is on (a ``conversations.channel.Channel`` is one)."""

    def instructions(self, max_segments: int) -> str:
        """The prompt's closing section on how to write for this channel."""
        ...


@dataclass(slots=True)
class Reply:
    text: str
    messages: list[Message] = field(default_factory=list)   # tool invocations and results, in order
    end_chat: bool = False
    failed: bool = False
    agent: Agent | None = None   # the agent that answered, when an agent_swap changed it


def chat_variables(agent: Agent, chat: Chat, now: datetime) -> dict[str, str]:
    """Agent defaults < the chat's variables < what its tools collected < system variables (Retell's layering).
    A multi-state agent's system variables include ``current_agent_state`` and ``previous_agent_state``."""
    conv = chat.conversation
    system = variables.system_variables(
        now=now, timezone=agent.config.timezone, chat_id=chat.chat_id,
        user_number=conv.user_number if conv else None, agent_number=conv.agent_number if conv else None,
        direction=chat.direction.value if chat.direction else None,
    )
    if agent.llm is not None and (state := agent.llm.state(chat.current_state)) is not None:
        system["current_agent_state"] = state.name
        if chat.previous_state is not None:
            system["previous_agent_state"] = chat.previous_state
    return variables.merge(agent.engine.default_dynamic_variables, chat.dynamic_variables, chat.collected_variables,
                           system)


def system_prompt(agent: Agent, llm: RetellLLM, values: dict[str, str], now: datetime, medium: Medium,
                  state: State | None = None) -> str:
    """The general prompt, then the current state's (a multi-state agent), then how to write for ``medium``."""
    prompt = variables.render(llm.general_prompt, values, now=now)
    if state is not None and state.state_prompt:
        prompt += "\n\n" + variables.render(state.state_prompt, values, now=now)
    return prompt + medium.instructions(agent.config.max_reply_segments)


def window(history: list[Message]) -> list[Message]:
    """Drop leading tool messages so the window never starts inside a tool exchange."""
    start = 0
    while start < len(history) and history[start].role not in (Role.USER, Role.AGENT, Role.INJECTED):
        start += 1
    return history[start:]


def _user_content(message: Message, images: bool) -> str | list[dict[str, Any]]:
    media = message.media or []
    if not media:
        return message.content
    if images:
        parts: list[dict[str, Any]] = [{"type": "text", "text": message.content or "(no text)"}]
        parts += [{"type": "image_url", "image_url": {"url": m["url"]}}
                  for m in media if m.get("content_type", "").startswith("image/")]
        others = [m["content_type"] for m in media if not m.get("content_type", "").startswith("image/")]
        if others:
            parts[0]["text"] += f"\n[The user also attached: {', '.join(others)}]"
        return parts
    kinds = ", ".join(m.get("content_type", "file") for m in media)
    return f"{message.content}\n[The user attached {len(media)} file(s): {kinds}]".strip()


def to_openai(history: list[Message], *, images: bool) -> list[dict[str, Any]]:
    """Stored messages as OpenAI chat messages (consecutive tool invocations become one assistant turn)."""
    out: list[dict[str, Any]] = []
    for m in history:
        if m.role is Role.USER:
            out.append({"role": "user", "content": _user_content(m, images)})
        elif m.role is Role.AGENT:
            out.append({"role": "assistant", "content": m.content})
        elif m.role is Role.INJECTED:
            out.append({"role": "system", "content": m.content})
        elif m.role is Role.TOOL_CALL_INVOCATION:
            call = {"id": m.tool_call_id, "type": "function",
                    "function": {"name": m.name, "arguments": m.arguments or "{}"}}
            if out and out[-1]["role"] == "assistant" and "tool_calls" in out[-1]:
                out[-1]["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif m.role is Role.TOOL_CALL_RESULT:
            out.append({"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content})
    return out   # a state_transition entry is the agent's own bookkeeping: the model does not see it


class Responder:
    """Runs the LLM tool loop for one turn."""

    def __init__(self, llm: LLM, http: aiohttp.ClientSession, media: Mapping[str, Medium], catalog: Catalog,
                 *, signing_key: str | None = None, retriever: Retriever | None = None) -> None:
        self._llm = llm
        self._retriever = retriever   # knowledge-base retrieval (service.agent.retrieval); None: none
        self._http = http
        self._catalog = catalog   # the destinations of agent swaps
        self._signing_key = signing_key   # the webhook key: signs custom-tool requests as Retell does
        self._media = media   # by channel name; an API chat is written as for SMS, the channel it tests

    async def _knowledge(self, llm: RetellLLM, chat: Chat, history: list[Message], now: datetime) -> str:
        """The prompt's knowledge section for this turn (its record kept on the chat), from the LLM's knowledge
        bases."""
        config = llm.kb_config
        use = KnowledgeUse.of(llm.knowledge_base_ids, config.top_k if config else None,
                              config.filter_score if config else None)
        if self._retriever is None or use is None:
            return ""
        section, entry = await self._retriever.context(use, history, _ms(now))
        if entry is not None:
            chat.retrieved(entry)
        return section

    async def respond(
        self, agent: Agent, chat: Chat, history: list[Message], *, now: datetime | None = None,
        sms: tools.SmsHook | None = None,
    ) -> Reply:
        """The agent's reply to ``history`` (which ends with the new user messages)."""
        now = now or datetime.now(UTC)
        medium = self._media[chat.channel]
        llm = agent.llm
        assert llm is not None, "conversation flows: to be run by service.agent.flow"
        state = llm.state(chat.current_state)
        if state is not None and chat.current_state not in (None, state.name):
            log.warning("the chat's state is not one of its agent's; starting over", extra={
                "chat_id": chat.chat_id, "state": chat.current_state})
        values = chat_variables(agent, chat, now)
        knowledge = await self._knowledge(llm, chat, history, now)
        prompt = system_prompt(agent, llm, values, now, medium, state) + knowledge
        messages: list[dict[str, Any]] = [{"role": "system", "content": prompt}]
        messages += to_openai(window(history), images=agent.config.model_accepts_images)
        reply = Reply(text="")
        available = tools.offered(llm, state)
        definitions = tools.definitions(available)
        def chat_payload() -> dict[str, Any]:   # built only if a custom tool is called
            return chat.to_response(history).model_dump(mode="json")

        for round_ in range(MAX_TOOL_ROUNDS + 1):
            try:
                completion = await self._llm.complete(
                    model=llm.primary_model, backup=llm.backup_model, names=agent.config.llm_models,
                    temperature=llm.temperature, messages=messages, tools=definitions,
                    allow_tools=round_ < MAX_TOOL_ROUNDS,
                )
            except LLMError as exc:
                log.warning("llm failed, sending the fallback", extra={"chat_id": chat.chat_id, "error": str(exc)})
                reply.text, reply.failed = agent.config.fallback_message, True
                return reply
            chat.add_tokens(completion.model, completion.prompt_tokens, completion.completion_tokens)
            if not completion.tool_calls:
                reply.text = completion.content.strip()
                return reply
            messages.append({"role": "assistant", "content": completion.content or None, "tool_calls": [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in completion.tool_calls]})
            moved = swapped = False
            for call in completion.tool_calls:
                result = await tools.run(available, call.name, call.arguments, http=self._http,
                                         chat=chat_payload, values=values, sms=sms, signing_key=self._signing_key)
                result, destination = await self._checked(chat, result, now, moved=moved, swapped=swapped)
                if destination is not None:
                    agent = reply.agent = destination
                    swapped = True
                    assert destination.llm is not None, "conversation flows: to be run by service.agent.flow"
                    llm = destination.llm
                reply.end_chat = reply.end_chat or result.end_chat
                if result.variables:   # the chat keeps them (its commit writes them) and later tools see them
                    chat.collected_variables.update(result.variables)
                    values = chat_variables(agent, chat, now)
                messages.append({"role": "tool", "tool_call_id": call.id, "content": result.content})
                if result.new_state is not None:
                    # Retell records a transition as its own entry, not as a tool call.
                    former = state.name if state is not None else None
                    chat.previous_state, chat.current_state = former, result.new_state
                    reply.messages.append(Message(Role.STATE_TRANSITION, former_state_name=former,
                                                  new_state_name=result.new_state, created_timestamp=_ms(now)))
                    moved = True
                    continue
                reply.messages += _tool_messages(call, result, available, now)
            if moved or swapped:   # the rest of the turn runs in the new state (or agent): its prompt and tools
                state = llm.state(chat.current_state)
                values = chat_variables(agent, chat, now)
                messages[0] = {"role": "system",
                               "content": system_prompt(agent, llm, values, now, medium, state) + knowledge}
                available = tools.offered(llm, state)
                definitions = tools.definitions(available)
            if reply.end_chat and completion.content.strip():
                reply.text = completion.content.strip()
                return reply
        return reply

    async def _checked(self, chat: Chat, result: tools.ToolOutcome, now: datetime, *, moved: bool,
                       swapped: bool) -> tuple[tools.ToolOutcome, Agent | None]:
        """A tool's outcome once the moves it asks for are made: at most one state move or agent swap per model
        step. With the agent a swap went to (None: no swap)."""
        if result.new_state is not None and (moved or swapped):
            return tools.ToolOutcome(f"Not moved: the agent already moved to {chat.current_state} in this step; "
                                     "move one state at a time.", False), None
        if result.swap is not None:
            return await self._swap(chat, result.swap, now, done=swapped)
        return result, None

    async def _swap(self, chat: Chat, tool: AgentSwapTool, now: datetime, *,
                    done: bool) -> tuple[tools.ToolOutcome, Agent | None]:
        """Hand ``chat`` to the swap's agent version: the result the model reads, and the agent (None: no swap)."""
        if done:
            return tools.ToolOutcome(f"Not swapped: the chat already went to agent {chat.agent_id} in this step.",
                                     False), None
        try:
            destination = await self._catalog.resolve(tool.agent_id, tool.agent_version)
        except NotFound as exc:
            log.warning("agent swap to a missing agent", extra={"chat_id": chat.chat_id, "error": str(exc)})
            return tools.ToolOutcome(f"Not swapped: {exc}. The chat stays with this agent.", False), None
        former = f"{chat.agent_id} version {chat.version}"
        chat.swap_to(destination.config.agent_id, destination.config.version, destination.engine.version,
                     tool.post_call_analysis_setting, _ms(now))
        log.info("agent swap", extra={"chat_id": chat.chat_id, "agent_id": chat.agent_id, "version": chat.version})
        return tools.ToolOutcome(f"Swapped from agent {former} to agent {chat.agent_id} version {chat.version}, "
                                 "which answers from now on.", True), destination


def _tool_messages(call: ToolCall, result: tools.ToolOutcome, available: list[tools.Offered],
                   now: datetime) -> list[Message]:
    """A tool call as Retell records it: the invocation (with the kind of tool) and its result."""
    return [Message(Role.TOOL_CALL_INVOCATION, tool_call_id=call.id, name=call.name,
                    type=tools.tool_type(available, call.name), arguments=call.arguments, created_timestamp=_ms(now)),
            Message(Role.TOOL_CALL_RESULT, content=result.content, tool_call_id=call.id,
                    successful=result.successful, created_timestamp=_ms(now))]


def _ms(now: datetime) -> int:
    return int(now.timestamp() * 1000)
