"""A conversation-flow agent's turn: the walk through its nodes (Retell's conversation flows, adapted to chat).

At a user turn, at the current node N (a conversation or subagent node):

1. N's ``always_edge``, if it has one, is taken at once.
2. Equations, in order, first true wins: N's equation edges, then the global nodes whose condition is an
   equation (or an equation_prompt's equations with no prompt), then N's go-back conditions when N was entered
   as a global node. Parley evaluates them (``equations``); the model is not asked.
3. The model is asked at N: the flow's ``global_prompt``, N's instruction and how to write for the channel, with
   one transition tool per prompt edge of N, per prompt-condition global node (not N, not cooling down) and per
   go-back prompt, and a subagent node's own tools. A transition called moves the chat there; a text is the
   reply and the chat stays at N. A node with an ``else_edge`` (or a ``static_text`` not said yet) is judged
   instead: the model must pick a transition or ``none_of_these``; none takes the else edge (or says the text).

Entering a node acts on it in the same turn (``_enter``): a conversation node speaks (a ``static_text`` as written
on its first visit; a prompt, one model call without transitions) and waits for the user, unless it has a
``skip_response_edge``; a branch routes; an end node says its closing text and ends the chat; the other nodes act
(``flow_nodes``) and route on what happened. Several nodes may speak in one turn: their texts are joined by a
blank line. At most ``MAX_NODE_ENTRIES`` entries a turn: beyond, the turn ends with the agent's fallback message.
An LLM failure ends the turn with the fallback message and leaves the chat where it was.
"""

from __future__ import annotations

import logging

from service.agent import flow_edges, flow_nodes
from service.agent.equations import holds
from service.agent.flow_model import FlowModel, Handover, Looping, Parts
from service.agent.flow_place import Place, Target, TransitionType, child, parent
from service.agent.reply import Reply, ms
from service.agent.variables import render
from service.chats.model import Message, Role
from service.errors import LLMError, NotFound
from service.retell.flows import ConversationNode, Edge, EndNode, EquationCondition, Node

__all__ = ["MAX_NODE_ENTRIES", "FlowTurn", "Parts"]

log = logging.getLogger(__name__)

MAX_NODE_ENTRIES = 20   # node entries in one turn: a flow that loops ends its turn with the fallback message


class FlowTurn(FlowModel):
    """One turn of a conversation flow; ``run`` walks it and gives the reply."""

    async def run(self) -> Reply:
        start = self.place.copy()
        try:
            if self.history:
                await self._answer()
            else:   # the chat's opening: the start node speaks
                await self._start(opening=True)
        except LLMError as exc:
            log.warning("llm failed, sending the fallback", extra={"chat_id": self.chat.chat_id, "error": str(exc)})
            self.place = start
            self.reply.messages = [m for m in self.reply.messages if m.role is not Role.NODE_TRANSITION]
            self.texts, self.reply.failed = [self.agent.config.fallback_message], True
        except Looping:
            log.warning("conversation flow loops: more node entries in one turn than allowed; sending the fallback",
                        extra={"chat_id": self.chat.chat_id, "limit": MAX_NODE_ENTRIES,
                               "nodes": " -> ".join(self.entries)})
            self.texts = [self.agent.config.fallback_message]
        except Handover as handover:
            rest = await self.parts.respond(handover.agent, self.chat, self.history, now=self.now, sms=self.sms)
            self.reply.messages += rest.messages
            self.reply.text = "\n\n".join([*self.texts, rest.text]).strip()
            self.reply.end_chat = self.reply.end_chat or rest.end_chat
            self.reply.failed, self.reply.agent = rest.failed, rest.agent or handover.agent
            return self.reply   # the chat's place is the destination's now (the swap cleared this flow's)
        self.chat.flow_state = self.place.dump()
        self.reply.text = "\n\n".join(t for t in self.texts if t)
        if not self.reply.text and not self.reply.end_chat:
            log.warning("conversation flow said nothing this turn", extra={
                "chat_id": self.chat.chat_id, "node": self.place.node})
        return self.reply

    async def write(self, instructions: str) -> Reply:
        """One message the model writes at the chat's node (the start node before the first), following
        ``instructions`` after the node's prompt: no tools, no transition, the place as it was."""
        state = self.chat.flow_state
        node = await self._current() or self.flow.start
        try:
            if node is not None:
                completion = await self.complete(node, self.messages(self.prompt(node) + instructions), [])
                self.reply.text = completion.content.strip()
        except LLMError as exc:
            log.warning("llm failed, sending the fallback", extra={"chat_id": self.chat.chat_id, "error": str(exc)})
            self.reply.text, self.reply.failed = self.agent.config.fallback_message, True
        self.chat.flow_state = state
        return self.reply

    async def _start(self, *, opening: bool) -> None:
        start = self.flow.start
        if start is None:
            log.warning("conversation flow has no nodes", extra={"chat_id": self.chat.chat_id})
            self.texts.append(self.agent.config.fallback_message)
            return
        if opening or not isinstance(start, ConversationNode):
            await self._enter(start.id)
        else:   # an inbound first text: the start node is where the chat is, and judges it
            self.place.node, self.place.node_name = start.id, start.label

    async def _answer(self) -> None:
        node = await self._current()
        if node is None:
            await self._start(opening=False)
            if self.place.node is None or self.entries:
                return
            node = await self.node(self.place.node)
        path = self.place.node or node.id
        if isinstance(node, ConversationNode):
            await self._judge_text(path, node)
        else:   # the chat waits at a node that found no way on: the new text may open one
            await self.route(path, node)

    async def _current(self) -> Node | None:
        """The node the chat is at; None at the start (or when its node is no longer in the flow)."""
        if self.place.node is None:
            return None
        try:
            return await self.node(self.place.node)
        except NotFound as exc:
            log.warning("the chat's node is not in its flow; starting over", extra={
                "chat_id": self.chat.chat_id, "error": str(exc)})
            self.place = Place(steps=self.place.steps)
            return None

    # -- the user's text at a conversation node ------------------------------------------------------------------

    async def _judge_text(self, path: str, node: ConversationNode) -> None:
        if node.always_edge is not None:
            return await self.go(Target("normal", node.always_edge))
        values = self.values()
        chosen = flow_edges.by_equations(self.flow, self.place, path, node, values)
        if chosen is not None:
            return await self.go(chosen)
        targets = flow_edges.by_prompts(self.flow, self.place, path, node, values)
        static = flow_edges.says_as_written(self.place, path, node)
        if node.else_edge is not None or static:
            chosen = await self.judge(node, targets) if targets else None
            if chosen is not None:
                return await self.go(chosen)
            if node.else_edge is not None:
                return await self.go(Target("normal", node.else_edge))
            return await self._speak(path, node)
        answer = await self.converse(path, node, self.prompt(node), targets)
        if isinstance(answer, Target):
            return await self.go(answer)
        self.say(answer)
        return None

    # -- moving --------------------------------------------------------------------------------------------------

    async def go(self, target: Target, *, why: str | None = None) -> None:
        """Take ``target`` from where the chat is, record it (with ``why``, when it is taken for want of another),
        and act on the node it leads to."""
        former = self.place.node or ""
        leaving = False
        if target.kind == "global_go_back" and self.place.back:
            to: str | None = self.place.back.pop()[0]
        elif target.kind == "global":
            to = target.to
            self.place.back.append((former, target.to or ""))
        else:
            assert target.edge is not None
            to, leaving = await self._destination(former, target.edge)
            if self.place.back and self.place.back[-1][1] == former:
                self.place.back.pop()   # the chat goes on from the global node: it will not go back
        if to is None:
            log.warning("edge leads nowhere; the chat stays", extra={"chat_id": self.chat.chat_id, "node": former})
            return
        left = self.flow.node(former)
        if left is not None and left.global_node_setting is not None:   # its cool_down counts from here
            self.place.left[former] = self.place.steps
        await self._move(former, to, target.kind, why)
        if leaving:   # out of a component: its component node routes, as a function node does
            self._count(to)
            await self.route(to, await self.node(to))
        else:
            await self._enter(to)

    async def _destination(self, former: str, edge: Edge) -> tuple[str | None, bool]:
        """Where ``edge`` (out of the node at ``former``) leads, and whether that is out of a component."""
        prefix = parent(former)
        graph = await self.graph(prefix)
        if edge.destination_node_id is not None and graph.node(edge.destination_node_id) is not None:
            return child(prefix, edge.destination_node_id), False
        return (prefix, True) if prefix else (None, False)

    async def _move(self, former: str, to: str, kind: TransitionType, why: str | None = None) -> None:
        former_name = (await self.node(former)).label if former else None
        new_name = (await self.node(to)).label
        self.reply.messages.append(Message(
            Role.NODE_TRANSITION, content=why or "", former_node_id=former or None, former_node_name=former_name,
            new_node_id=to, new_node_name=new_name, transition_type=kind, created_timestamp=ms(self.now)))
        self.place.previous, self.place.previous_name = former or None, former_name
        self.place.node, self.place.node_name = to, new_name

    async def step_in(self, component: str, to: str) -> None:
        """From a component node into the component's start node."""
        await self._move(component, to, "normal")
        await self._enter(to)

    def _count(self, path: str) -> None:
        self.entries.append(path)
        self.place.steps += 1
        if len(self.entries) > MAX_NODE_ENTRIES:
            raise Looping(path)

    async def _enter(self, path: str) -> None:
        self._count(path)
        node = await self.node(path)
        self.place.node, self.place.node_name = path, node.label
        if isinstance(node, ConversationNode):
            await self._speak(path, node)
        elif isinstance(node, EndNode):
            if node.instruction is not None:
                self.say(await self.instruction_text(node, node.instruction))
            self.reply.end_chat = True
        else:
            await flow_nodes.act(self, path, node)

    async def _speak(self, path: str, node: ConversationNode) -> None:
        if flow_edges.says_as_written(self.place, path, node):
            self.say(render(node.instruction.text, self.values(), now=self.now))
        else:
            answer = await self.converse(path, node, self.prompt(node), [])
            self.say(answer if isinstance(answer, str) else "")
        if path not in self.place.seen:
            self.place.seen.append(path)
        if node.skip_response_edge is not None:
            await self.go(Target("normal", node.skip_response_edge))

    async def route(self, path: str, node: Node) -> None:
        """Leave ``node`` by its edges: the first equation that holds, else the prompt the model picks, else its
        ``else_edge``; with none, the chat waits at the node for the user's next text."""
        values = self.values()
        edges: list[Edge] = getattr(node, "edges", [])
        for edge in edges:
            cond = edge.transition_condition
            if isinstance(cond, EquationCondition) and holds(cond.equations, cond.operator, values):
                return await self.go(Target("normal", edge))
        targets = flow_edges.by_prompts(self.flow, self.place, path, node, values)
        chosen = await self.judge(node, targets) if targets else None
        if chosen is not None:
            return await self.go(chosen)
        else_edge: Edge | None = getattr(node, "else_edge", None)
        if else_edge is not None:
            return await self.go(Target("normal", else_edge))
        log.warning("no edge of the node holds; the chat waits there", extra={
            "chat_id": self.chat.chat_id, "node": path})
        return None

