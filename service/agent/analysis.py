"""Post-chat analysis: after a chat ends, any way, an LLM call with a JSON-schema
answer fills ``chat_analysis``; then ``chat_analyzed`` is queued, always, also when the analysis failed
(the chat then carries ``analysis_error``).

``chat_analysis`` holds ``chat_summary``, ``user_sentiment`` (Negative / Positive / Neutral / Unknown),
``chat_successful``, and ``custom_analysis_data`` from the agent's ``post_chat_analysis_data`` (string,
enum, boolean, number; a ``required`` item the model could not extract marks the chat unsuccessful). As in
Retell, a ``system-presets`` item rewords one of the first three (its ``description``) or makes it optional
(``required: false``), and ``conditional_prompt`` says when an optional field is filled; ``examples`` show
the style of a string field.
Ended chats wait in ``analysis:due``; any process takes them (leased), so a restart loses none.

A chat that swapped agents (``agent_swap``) is analysed with the model of the agent it ended with, and the
``post_chat_analysis_data`` its swaps call for (``analysis_fields``): ``only_destination_agent`` keeps only the
agent's it went to, ``both_agents`` adds the agent's it left (and, through further ``both_agents`` swaps, theirs);
on a name both declare, the later agent's item wins. ``chat_analyzed`` goes where the chat's other events go.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import redis.asyncio as aioredis

from service.agent.llm import LLM
from service.catalog.store import Catalog
from service.chats.lifecycle import Lifecycle
from service.chats.model import Chat
from service.chats.store import SENTIMENTS, Chats
from service.clock import now_ms
from service.errors import LLMError, NotFound
from service.retell.models import AnalysisField, ChatAgent
from service.storage import keys
from service.storage.dueset import DueSet

log = logging.getLogger(__name__)

INSTRUCTIONS = (
    "You analyse a finished text-message conversation between a business's agent and a user. Answer with "
    "the JSON object the schema describes, following each field's description; use null where a field "
    "allows it and the conversation does not say."
)
# Retell's three analysis fields, with what the model is told about each unless a system-presets item says else.
PRESET_DESCRIPTIONS = {
    "chat_summary": "Two or three sentences summarising the conversation.",
    "user_sentiment": "The user's sentiment over the conversation.",
    "chat_successful": "Whether the agent achieved the conversation's purpose.",
}
_PRESET_TYPES: dict[str, dict[str, Any]] = {
    "chat_summary": {"type": "string"},
    "user_sentiment": {"type": "string", "enum": list(SENTIMENTS)},
    "chat_successful": {"type": "boolean"},
}
_TYPES = {"string": "string", "enum": "string", "boolean": "boolean", "number": "number"}


def _custom_fields(agent: ChatAgent) -> list[AnalysisField]:
    return [f for f in agent.post_chat_analysis_data if f.type != "system-presets"]


def _presets(agent: ChatAgent) -> dict[str, AnalysisField]:
    return {f.name: f for f in agent.post_chat_analysis_data if f.type == "system-presets"}


def _description(text: str, field: AnalysisField | None) -> str:
    """A field's description, with its examples and, for an optional one, when to fill it."""
    if field is not None and field.examples:
        text += " Examples: " + "; ".join(field.examples) + "."
    if field is not None and field.conditional_prompt and not field.is_required:
        text += f" Fill this only if: {field.conditional_prompt} Otherwise null."
    return text.strip()


def schema(agent: ChatAgent) -> dict[str, Any]:
    """The strict JSON schema the model answers with."""
    presets = _presets(agent)
    properties: dict[str, Any] = {}
    for name, shape in _PRESET_TYPES.items():
        preset = presets.get(name)
        prop = {**shape, "description": _description((preset and preset.description) or PRESET_DESCRIPTIONS[name],
                                                      preset)}
        if preset is not None and not preset.is_required:
            prop["type"] = [shape["type"], "null"]
            if "enum" in prop:
                prop["enum"] = [*prop["enum"], None]
        properties[name] = prop
    custom: dict[str, Any] = {}
    for f in _custom_fields(agent):
        prop = {"type": [_TYPES[f.type], "null"], "description": _description(f.description, f)}
        if f.type == "enum":
            prop["enum"] = [*f.choices, None]
        custom[f.name] = prop
    properties["custom_analysis_data"] = {"type": "object", "additionalProperties": False, "required": list(custom),
                                          "properties": custom}
    return {"type": "object", "additionalProperties": False, "required": list(properties),
            "properties": properties}


def _check_value(f: AnalysisField, value: Any) -> Any:
    ok = {"string": isinstance(value, str), "enum": value in f.choices, "boolean": isinstance(value, bool),
          "number": isinstance(value, int | float) and not isinstance(value, bool)}[f.type]
    if not ok:
        expected = f"one of {f.choices}" if f.type == "enum" else f"a {f.type}"
        raise ValueError(f"custom_analysis_data.{f.name}: expected {expected}, got {value!r}")
    return value


def parse(text: str, agent: ChatAgent) -> dict[str, Any]:
    """The model's answer, checked field by field against what the agent declared."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ValueError(f"the analysis is not JSON: {text[:200]!r}") from None
    if not isinstance(data, dict):
        raise ValueError("the analysis is not a JSON object")
    presets = _presets(agent)
    for name, expected in (("chat_summary", str), ("user_sentiment", str), ("chat_successful", bool)):
        value = data.get(name)
        optional = name in presets and not presets[name].is_required
        if value is None and optional:
            continue
        if not isinstance(value, expected) or (name == "user_sentiment" and value not in SENTIMENTS):
            raise ValueError(f"{name} is missing or of the wrong type: {value!r}")
    summary, sentiment, successful = data.get("chat_summary"), data.get("user_sentiment"), data.get("chat_successful")
    given = data.get("custom_analysis_data") or {}
    custom: dict[str, Any] = {}
    for f in _custom_fields(agent):
        value = given.get(f.name) if isinstance(given, dict) else None
        if value is None:
            if f.is_required:   # Retell: a required field not extracted marks the chat unsuccessful
                successful = False
            continue
        custom[f.name] = _check_value(f, value)
    return {"chat_summary": summary, "user_sentiment": sentiment, "chat_successful": successful,
            "custom_analysis_data": custom}


async def analysis_fields(catalog: Catalog, chat: Chat, agent: ChatAgent) -> list[AnalysisField]:
    """What the analysis of ``chat`` extracts: ``agent``'s items, then back through each ``both_agents`` swap the
    items of the agent it left (a missing agent version adds none)."""
    fields = {f.name: f for f in agent.post_chat_analysis_data}
    for swap in reversed(chat.swaps):
        if swap.post_call_analysis_setting != "both_agents":
            break
        try:
            left = await catalog.agents.get(swap.agent_id, swap.version)
        except NotFound:
            log.warning("an agent the chat swapped from is gone; its analysis items are left out",
                        extra={"chat_id": chat.chat_id, "agent_id": swap.agent_id})
            continue
        fields = {f.name: f for f in left.post_chat_analysis_data} | fields
    return list(fields.values())


class Analyzer:
    def __init__(self, chats: Chats, catalog: Catalog, llm: LLM, lifecycle: Lifecycle, redis: aioredis.Redis) -> None:
        self._chats, self._catalog, self._llm, self._lifecycle = chats, catalog, llm, lifecycle
        self._due = DueSet(redis, keys.analysis_due)

    async def analyze(self, chat_id: str) -> Chat:
        """Analyse the chat now, store the result (or the error) and queue ``chat_analyzed``."""
        chat = await self._chats.get(chat_id)
        if chat is None:
            raise NotFound(f"chat {chat_id!r} not found")
        messages = await self._chats.messages(chat_id)
        agent = await self._catalog.agents.get(chat.agent_id, chat.version)
        if chat.swaps:
            agent = agent.model_copy(update={
                "post_chat_analysis_data": await analysis_fields(self._catalog, chat, agent)})
        transcript = chat.to_response(messages).transcript or "(no messages)"
        try:
            completion = await self._llm.complete(
                model=agent.post_chat_analysis_model, names=agent.llm_models, temperature=0.0, tools=[],
                messages=[{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": transcript}],
                response_format={"type": "json_schema",
                                 "json_schema": {"name": "chat_analysis", "strict": True, "schema": schema(agent)}},
            )
            chat.add_tokens(completion.model, completion.prompt_tokens, completion.completion_tokens)
            chat.analysis, chat.analysis_error = parse(completion.content, agent), None
        except (LLMError, ValueError) as exc:
            chat.analysis_error = str(exc)
            log.warning("post-chat analysis failed", extra={"chat_id": chat_id, "error": str(exc)})
        self._lifecycle.price(chat)
        target = self._lifecycle.target(agent) if not chat.swaps else await self._lifecycle.target_of(chat)
        events = []
        if target is not None and "chat_analyzed" in target.kinds:
            events.append(self._lifecycle.event(target, "chat_analyzed", chat, messages))
        await self._chats.store_analysis(chat, events)
        return chat

    async def tick(self) -> int:
        due = await self._due.pop(now_ms(), batch=20)
        await asyncio.gather(*(self._one(chat_id, leased) for chat_id, _, leased in due))
        return len(due)

    async def _one(self, chat_id: str, leased: int) -> None:
        try:
            await self.analyze(chat_id)
        except NotFound:
            log.info("chat gone before its analysis", extra={"chat_id": chat_id})
        await self._due.done(chat_id, leased)

