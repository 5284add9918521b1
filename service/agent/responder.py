"""The agent's side of a turn: the prompt, the history window, and the LLM tool loop.

It returns the reply text and the tool messages to record; it sends nothing (``conversations.sender`` does).
When the LLM fails after its client's retries, the reply is the agent's ``fallback_message``. A conversation-flow
agent's turn is the flow's walk (``service.agent.flow``).

An ``agent_swap`` tool hands the chat to another agent version: from the next model call on (the rest of this
turn, and every later turn) the destination agent answers, with its prompt, tools, model and starting state (a
conversation flow: its start node), and the chat records the swap (``Chat.swap_to``; its commit keeps it). One
swap per model step.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp

from service.agent import tools, variables
from service.agent.flow import FlowTurn, Parts
from service.agent.llm import LLM
from service.agent.reply import MAX_TOOL_ROUNDS, Medium, Reply, chat_variables, ms, to_openai, tool_messages, window
from service.agent.retrieval import KnowledgeUse, Retriever
from service.agent.swap import swap
from service.catalog.store import Agent, Catalog
from service.chats.model import Chat, Message, Role
from service.errors import LLMError
from service.retell.models import RetellLLM, State

log = logging.getLogger(__name__)


def system_prompt(agent: Agent, llm: RetellLLM, values: dict[str, str], now: datetime, medium: Medium,
                  state: State | None = None) -> str:
    """The general prompt, then the current state's (a multi-state agent), then how to write for ``medium``."""
    prompt = variables.render(llm.general_prompt, values, now=now)
    if state is not None and state.state_prompt:
        prompt += "\n\n" + variables.render(state.state_prompt, values, now=now)
    return prompt + medium.instructions(agent.config.max_reply_segments)


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
        self._flow_parts = Parts(llm, http, catalog, signing_key, self.respond, retriever)

    async def _knowledge(self, llm: RetellLLM, chat: Chat, history: list[Message], now: datetime,
                         found: dict[str, str]) -> str:
        """The prompt's knowledge section for this turn (its record kept on the chat), from the LLM's knowledge
        bases; searched once per LLM in a turn (``found``: by LLM id), so a state move does not search again and a
        swap searches the destination's."""
        if llm.llm_id in found:
            return found[llm.llm_id]
        found[llm.llm_id] = await self._search(llm, chat, history, now)
        return found[llm.llm_id]

    async def _search(self, llm: RetellLLM, chat: Chat, history: list[Message], now: datetime) -> str:
        config = llm.kb_config
        use = KnowledgeUse.of(llm.knowledge_base_ids, config.top_k if config else None,
                              config.filter_score if config else None)
        if self._retriever is None or use is None:
            return ""
        section, entry = await self._retriever.context(use, history, ms(now))
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
        if agent.llm is None:
            return await FlowTurn(self._flow_parts, agent, chat, history, now=now, medium=medium, sms=sms).run()
        return await self._loop(agent, agent.llm, chat, history, now, medium, sms)

    async def write(self, agent: Agent, chat: Chat, history: list[Message], instructions: str) -> Reply:
        """One message the agent writes following ``instructions`` (after its prompt), calling no tool; a
        conversation flow writes it at the chat's node, which it does not leave."""
        if agent.llm is None:
            return await FlowTurn(self._flow_parts, agent, chat, history, now=datetime.now(UTC),
                                  medium=self._media[chat.channel], sms=None).write(instructions)
        told = agent.llm.model_copy(update={"general_prompt": agent.llm.general_prompt + instructions,
                                            "general_tools": []})
        return await self.respond(Agent(config=agent.config, llm=told), chat, history)

    async def _loop(self, agent: Agent, llm: RetellLLM, chat: Chat, history: list[Message], now: datetime,
                    medium: Medium, sms: tools.SmsHook | None) -> Reply:
        """A Retell LLM's turn: the model and its tools, up to ``MAX_TOOL_ROUNDS`` rounds."""
        state = _state(llm, chat)
        values = chat_variables(agent, chat, now)
        searched: dict[str, str] = {}
        prompt = system_prompt(agent, llm, values, now, medium, state) + await self._knowledge(
            llm, chat, history, now, searched)
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
                                                  new_state_name=result.new_state, created_timestamp=ms(now)))
                    moved = True
                    continue
                reply.messages += tool_messages(call, result, available, now)
            if swapped and agent.llm is None:   # a conversation flow goes on, from its start node
                return _joined(reply, await self.respond(agent, chat, history, now=now, sms=sms), agent)
            if moved or swapped:   # the rest of the turn runs in the new state (or agent): its prompt and tools
                llm = agent.llm or llm
                knowledge = await self._knowledge(llm, chat, history, now, searched)
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
            tool = result.swap
            return await swap(self._catalog, chat, tool.agent_id, tool.agent_version, tool.post_call_analysis_setting,
                              now, done=swapped)
        return result, None


def _state(llm: RetellLLM, chat: Chat) -> State | None:
    """The chat's state of a multi-state LLM (its starting state when the chat's is not one of the LLM's)."""
    state = llm.state(chat.current_state)
    if state is not None and chat.current_state not in (None, state.name):
        log.warning("the chat's state is not one of its agent's; starting over", extra={
            "chat_id": chat.chat_id, "state": chat.current_state})
    return state


def _joined(reply: Reply, rest: Reply, agent: Agent) -> Reply:
    """``reply`` (up to a swap) followed by the destination agent's ``rest`` of the turn."""
    reply.messages += rest.messages
    reply.text, reply.failed = rest.text, rest.failed
    reply.end_chat = reply.end_chat or rest.end_chat
    reply.agent = rest.agent or agent
    return reply
