"""The model and the places of a conversation flow's turn (``flow.FlowTurn`` walks; this is what it stands on):
the chat's values, the prompt at a node (the flow's ``global_prompt``, the node's instruction, how to write for
the channel), the model calls (each node's own model, else the flow's), and the nodes a place's path names (the
flow's, a local component's, a shared component's)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import aiohttp

from service.agent import tools
from service.agent.flow_place import NONE_OF_THESE, NONE_TOOL, Place, Target, parent
from service.agent.llm import LLM, Completion, ToolCall
from service.agent.reply import MAX_TOOL_ROUNDS, Medium, Reply, chat_variables, ms, to_openai, tool_messages, window
from service.agent.retrieval import KnowledgeUse, Retriever
from service.agent.swap import swap
from service.agent.variables import render
from service.catalog.store import Agent, Catalog
from service.chats.model import Chat, Message
from service.errors import NotFound
from service.retell.flows import (
    ComponentNode,
    ConversationNode,
    FlowTool,
    Instruction,
    Node,
    SubagentNode,
    _Graph,
    model_of,
)
from service.retell.models import AgentSwapTool, McpTool

log = logging.getLogger(__name__)


class Respond(Protocol):
    """``Responder.respond``: the turn of whichever agent a swap hands the chat to."""

    async def __call__(self, agent: Agent, chat: Chat, history: list[Message], *, now: datetime | None = None,
                       sms: tools.SmsHook | None = None) -> Reply: ...


@dataclass(frozen=True, slots=True)
class Parts:
    """What a flow's turn uses: the LLM, HTTP for tools, the catalog (shared components, swaps), the webhook key
    custom tools are signed with, and the responder (the agent a swap goes to answers the rest of the turn)."""

    llm: LLM
    http: aiohttp.ClientSession
    catalog: Catalog
    signing_key: str | None
    respond: Respond
    retriever: Retriever | None = None   # knowledge-base retrieval (service.agent.retrieval)


class Looping(Exception):
    """The turn entered more than ``flow.MAX_NODE_ENTRIES`` nodes."""


class Handover(Exception):   # not an error: the walk's way out when the chat swapped agents
    """An agent swap was made: ``agent`` answers the rest of the turn."""

    def __init__(self, agent: Agent) -> None:
        super().__init__(agent.config.agent_id)
        self.agent = agent


class FlowModel:
    """A flow turn's chat, place and reply, and its model calls."""

    def __init__(self, parts: Parts, agent: Agent, chat: Chat, history: list[Message], *, now: datetime,
                 medium: Medium, sms: tools.SmsHook | None) -> None:
        assert agent.flow is not None
        self.parts, self.agent, self.flow, self.chat = parts, agent, agent.flow, chat
        self.history, self.now, self.medium, self.sms = history, now, medium, sms
        self.place = Place.of(chat.flow_state)
        self.reply = Reply(text="")
        self.texts: list[str] = []
        self.said: list[dict[str, Any]] = []   # this turn's texts and tool calls, as the model reads them
        self.entries: list[str] = []
        self._graphs: dict[str, _Graph] = {"": self.flow}
        self._knowledge: dict[KnowledgeUse, str] = {}   # this turn's searches, by what was searched

    # -- where the chat is ---------------------------------------------------------------------------------------

    async def graph(self, prefix: str) -> _Graph:
        """The nodes a path's prefix holds: the flow (""), else the component its component node runs."""
        if prefix not in self._graphs:
            node = (await self.graph(parent(prefix))).node(prefix.rpartition("/")[2])
            if not isinstance(node, ComponentNode):
                raise NotFound(f"{prefix!r} is not a component node")
            self._graphs[prefix] = await self.component(node)
        return self._graphs[prefix]

    async def component(self, node: ComponentNode) -> _Graph:
        if node.component_type == "shared":
            return await self.parts.catalog.get_component(node.component_id)
        found = self.flow.component(node.component_id)
        if found is None:
            raise NotFound(f"component {node.component_id!r} not found")
        return found

    async def node(self, path: str) -> Node:
        found = (await self.graph(parent(path))).node(path.rpartition("/")[2])
        if found is None:
            raise NotFound(f"node {path!r} not found")
        return found

    # -- the model -----------------------------------------------------------------------------------------------

    def values(self) -> dict[str, str]:
        self.chat.flow_state = self.place.dump()   # current_node and previous_node as the chat is now
        return chat_variables(self.agent, self.chat, self.now)

    def prompt(self, node: Node, task: str = "") -> str:
        """The flow's global prompt, the node's instruction (or ``task``), and how to write for the channel."""
        values = self.values()
        parts = [render(self.flow.global_prompt, values, now=self.now)]
        instruction = getattr(node, "instruction", None)
        if task:
            parts.append(task)
        elif instruction is not None and instruction.text:
            parts.append(render(instruction.text, values, now=self.now))
        body = "\n\n".join(p for p in parts if p.strip())
        return body + self.medium.instructions(self.agent.config.max_reply_segments)

    def messages(self, prompt: str) -> list[dict[str, Any]]:
        return [{"role": "system", "content": prompt},
                *to_openai(window(self.history), images=self.agent.config.model_accepts_images), *self.said]

    async def complete(self, node: Node, messages: list[dict[str, Any]], definitions: list[dict[str, Any]], *,
                       allow_tools: bool = True, require: str | None = None) -> Completion:
        """One model call at ``node``: its own model (``model_config``/``model_choice``), else the flow's."""
        config = node.models
        if messages and messages[0].get("role") == "system":   # a fresh list each call (``messages``)
            messages[0] = {**messages[0], "content": messages[0]["content"] + await self.knowledge(node)}
        completion = await self.parts.llm.complete(
            model=model_of(config, node.model_choice) or self.flow.primary_model,
            backup=config.backup.model if config is not None and config.backup else self.flow.backup_model,
            temperature=config.temperature if config is not None and config.temperature is not None
            else self.flow.temperature,
            names=self.agent.config.llm_models, messages=messages, tools=definitions, allow_tools=allow_tools,
            require=require)
        self.chat.add_tokens(completion.model, completion.prompt_tokens, completion.completion_tokens)
        return completion

    async def knowledge(self, node: Node) -> str:
        """The knowledge section of the prompt at a conversation (or subagent) node, the nodes that talk: its own
        ``knowledge_base_ids`` else the flow's, its ``kb_config`` else the flow's. Searched once per turn for each
        set of knowledge bases and config; the chat records each search."""
        if not isinstance(node, ConversationNode):
            return ""
        config = node.kb_config or self.flow.kb_config
        use = KnowledgeUse.of(node.knowledge_base_ids or self.flow.knowledge_base_ids, config.top_k if config else None,
                              config.filter_score if config else None)
        if use is None or self.parts.retriever is None:
            return ""
        if use not in self._knowledge:
            section, entry = await self.parts.retriever.context(use, self.history, ms(self.now))
            self._knowledge[use] = section
            if entry is not None:
                self.chat.retrieved(entry)
        return self._knowledge[use]

    async def judge(self, node: Node, targets: list[Target]) -> Target | None:
        """The transition the model picks among ``targets``, or None (``none_of_these``, or a text)."""
        task = ("Decide which of the conditions of your tools holds for the conversation so far, and call that "
                f"tool; call {NONE_OF_THESE} when none holds. Do not write a reply.")
        completion = await self.complete(node, self.messages(self.prompt(node) + "\n\n" + task),
                                         [t.definition() for t in targets] + [NONE_TOOL], require="any")
        return next((t for call in completion.tool_calls for t in targets if t.name == call.name), None)

    async def instruction_text(self, node: Node, instruction: Instruction) -> str:
        """A node's instruction said: ``static_text`` rendered, a ``prompt`` written by the model."""
        if instruction.type == "static_text":
            return render(instruction.text, self.values(), now=self.now)
        completion = await self.complete(node, self.messages(self.prompt(node)), [])
        return completion.content.strip()

    async def converse(self, path: str, node: Node, prompt: str, targets: list[Target]) -> str | Target:
        """The model at ``node`` with ``targets`` as transition tools (and a subagent node's tools): the
        transition it calls, or its text."""
        available = (subagent_tools(await self.graph(parent(path)), node)
                     if isinstance(node, SubagentNode) else [])
        definitions = tools.definitions(available) + [t.definition() for t in targets]
        for round_ in range(MAX_TOOL_ROUNDS + 1):
            completion = await self.complete(node, self.messages(prompt), definitions,
                                             allow_tools=round_ < MAX_TOOL_ROUNDS)
            chosen = next((t for call in completion.tool_calls for t in targets if t.name == call.name), None)
            if chosen is not None:   # a transition wins over the other tools called beside it
                return chosen
            if not completion.tool_calls:
                return completion.content.strip()
            for call in completion.tool_calls:   # the next rounds, and the next nodes of the turn, see them
                result = await self.run_tool(available, call)
                self.heard(call, result.content)
            if self.reply.end_chat and completion.content.strip():
                return completion.content.strip()
        return ""

    async def run_tool(self, available: list[tools.Offered], call: ToolCall) -> tools.ToolOutcome:
        """Run a tool the model (or a function node) called, and record it as Retell does."""
        result = await tools.run(available, call.name, call.arguments, http=self.parts.http,
                                 chat=lambda: self.chat.to_response(self.history).model_dump(mode="json"),
                                 values=self.values(), sms=self.sms, signing_key=self.parts.signing_key)
        if result.swap is not None:
            return await self.swap_to(call, result.swap, available)
        self.reply.messages += tool_messages(call, result, available, self.now)
        self.reply.end_chat = self.reply.end_chat or result.end_chat
        if result.variables:   # the chat keeps them (its commit writes them) and later nodes see them
            self.chat.collected_variables.update(result.variables)
        return result

    def heard(self, call: ToolCall, result: str) -> None:
        """A tool call and its result, in what the next model calls of the turn read."""
        self.said += [{"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}]},
            {"role": "tool", "tool_call_id": call.id, "content": result}]

    def say(self, text: str) -> None:
        if text:
            self.texts.append(text)
            self.said.append({"role": "assistant", "content": text})

    async def swap_to(self, call: ToolCall, tool: AgentSwapTool, available: list[tools.Offered]) -> tools.ToolOutcome:
        """Swap agents (a subagent's ``agent_swap`` tool, an agent_swap node), recorded as a tool call; when it is
        made the destination answers the rest of the turn (``Handover``), else the outcome says why not."""
        result, destination = await swap(self.parts.catalog, self.chat, tool.agent_id, tool.agent_version,
                                         tool.post_call_analysis_setting, self.now)
        self.reply.messages += tool_messages(call, result, available, self.now)
        if destination is not None:
            raise Handover(destination)
        return result


def subagent_tools(graph: _Graph, node: SubagentNode) -> list[tools.Offered]:
    """A subagent node's tools: its own, and the flow's its ``tool_ids`` name (custom ones; apps do not run)."""
    out: list[tools.Offered] = []
    for tool in node.tools:
        if not isinstance(tool, McpTool):
            out.append(tool)
        elif (server := graph.mcp_server(tool.mcp_id or "")) is not None:
            out.append(tools.ServerTool(tool, server))
    for tool_id in node.tool_ids:
        found = graph.tool(tool_id)
        if isinstance(found, FlowTool):
            out.append(found)
        else:   # an integration app: kept and reported (retell.unsupported), not offered
            log.warning("subagent node's tool is not one Parley runs", extra={"node": node.id, "tool": tool_id})
    return out
