"""What a turn of either response engine (a Retell LLM, ``responder``; a conversation flow, ``flow``) is made of:
the reply, the chat's variables, the history window the model reads, and a tool call as Retell records it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from service.agent import tools, variables
from service.agent.llm import ToolCall
from service.catalog.store import Agent
from service.chats.model import Chat, Message, Role

MAX_TOOL_ROUNDS = 5   # tool rounds in one model step (a Retell LLM's turn, a flow's subagent node)


class Medium(Protocol):
    """What the prompt says about the channel a chat is on (a ``conversations.channel.Channel`` is one)."""

    def instructions(self, max_segments: int) -> str:
        """The prompt's closing section on how to write for this channel."""
        ...


@dataclass(slots=True)
class Reply:
    text: str
    messages: list[Message] = field(default_factory=list)   # tool calls and transitions, in order
    end_chat: bool = False
    failed: bool = False
    agent: Agent | None = None   # the agent that answered, when an agent_swap changed it


def chat_variables(agent: Agent, chat: Chat, now: datetime) -> dict[str, str]:
    """Agent defaults < the chat's variables < what its tools collected < system variables (Retell's layering).
    A multi-state agent's system variables include ``current_agent_state`` and ``previous_agent_state``; a
    conversation flow's, ``current_node`` and ``previous_node`` (names, else ids)."""
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
    if agent.flow is not None and chat.flow_state:
        for name, key in (("current_node", "node_name"), ("previous_node", "previous_name")):
            if chat.flow_state.get(key):
                system[name] = str(chat.flow_state[key])
    return variables.merge(agent.engine.default_dynamic_variables, chat.dynamic_variables, chat.collected_variables,
                           system)


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
    return out   # state and node transitions are the agent's own bookkeeping: the model does not see them


def tool_messages(call: ToolCall, result: tools.ToolOutcome, available: list[tools.Offered],
                  now: datetime) -> list[Message]:
    """A tool call as Retell records it: the invocation (with the kind of tool) and its result."""
    return [Message(Role.TOOL_CALL_INVOCATION, tool_call_id=call.id, name=call.name,
                    type=tools.tool_type(available, call.name), arguments=call.arguments, created_timestamp=ms(now)),
            Message(Role.TOOL_CALL_RESULT, content=result.content, tool_call_id=call.id,
                    successful=result.successful, created_timestamp=ms(now))]


def ms(now: datetime) -> int:
    return int(now.timestamp() * 1000)
