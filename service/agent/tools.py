"""The agent's tools: their OpenAI definitions, and running them.

``end_call``/``end_chat`` ends the chat after the reply. ``custom`` POSTs Retell's custom-function body
``{"name", "args", "chat"}`` to the tool's URL (``args_at_root`` sends the arguments at the top level)
and gives the LLM the response text. Its URL (``{{variables}}`` rendered) goes through the outbound policy
(``service.outbound.fetch``): a URL the policy refuses is a result saying so. ``send_sms`` texts the chat's
user (or another number) through the turn's ``SmsHook``. Every failure is a tool result the LLM can read,
never a crash.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from service.agent.variables import render
from service.errors import OutboundRefused
from service.outbound import fetch
from service.retell.models import CustomTool, EndChatTool, RetellLLM, SendSmsTool
from service.webhooks.events import SIGNATURE_HEADER, sign

log = logging.getLogger(__name__)

# Sends ``text`` to ``to`` (None: the chat's user); returns why it failed, or None when sent.
SmsHook = Callable[[str | None, str], Awaitable[str | None]]

MAX_RESULT_CHARS = 4_000
MAX_RESPONSE_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """What running a tool gave: the text the LLM reads, whether it worked, and whether the chat should end."""

    content: str
    successful: bool
    end_chat: bool = False


def definitions(llm: RetellLLM) -> list[dict[str, Any]]:
    """The tools in OpenAI's function-calling format (unsupported Retell types are left out)."""
    out: list[dict[str, Any]] = []
    for tool in llm.general_tools:
        if isinstance(tool, EndChatTool):
            params: dict[str, Any] = {"type": "object", "properties": {}}
        elif isinstance(tool, CustomTool):
            params = tool.parameters or {"type": "object", "properties": {}}
        elif isinstance(tool, SendSmsTool):
            params = {"type": "object", "properties": {}}
            if tool.sms_content.type == "inferred":
                params = {"type": "object", "required": ["content"], "properties": {"content": {
                    "type": "string", "description": f"The text message to send. {tool.sms_content.prompt}"}}}
        else:
            continue
        out.append({"type": "function",
                    "function": {"name": tool.name, "description": tool.description, "parameters": params}})
    return out


async def run(
    llm: RetellLLM, name: str, arguments: str, *, http: aiohttp.ClientSession, chat: Callable[[], dict[str, Any]],
    values: dict[str, str], sms: SmsHook | None, signing_key: str | None = None,
) -> ToolOutcome:
    """Run the tool the LLM called."""
    tool = next((t for t in llm.general_tools if getattr(t, "name", None) == name), None)
    if isinstance(tool, EndChatTool):
        return ToolOutcome("The chat will end after your next message. Say a short goodbye.", True, end_chat=True)
    if not isinstance(tool, CustomTool | SendSmsTool):
        return ToolOutcome(f"There is no tool named {name!r}.", False)
    try:
        args = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return ToolOutcome("The arguments were not valid JSON.", False)
    if not isinstance(args, dict):
        return ToolOutcome("The arguments must be a JSON object.", False)
    if isinstance(tool, SendSmsTool):
        return await _send_sms(tool, args, values=values, sms=sms)
    try:
        return await _call(tool, args, http=http, chat=chat(), values=values, signing_key=signing_key)
    except Exception as exc:   # not CancelledError (a BaseException): a shutdown still stops the turn
        # An HTTP tool must not break the turn: whatever else went wrong (a header aiohttp refuses, a bug) is a
        # result the LLM reads. The details go to the log, not to the LLM.
        log.exception("tool failed unexpectedly", extra={"tool": name})
        return ToolOutcome(f"The tool failed: {exc.__class__.__name__}", False)


async def _send_sms(tool: SendSmsTool, args: dict[str, Any], *, values: dict[str, str],
                    sms: SmsHook | None) -> ToolOutcome:
    """Retell's results: "Sent successfully" or "Failed to send" (with why)."""
    text = tool.sms_content.predefined
    text = render(text, values) if text is not None else str(args.get("content") or "")
    to = render(tool.to_number, values) if tool.to_number else None
    if sms is None:
        return ToolOutcome("Failed to send: this chat has no phone number.", False)
    if not text.strip():
        return ToolOutcome("Failed to send: the message is empty.", False)
    error = await sms(to, text)
    return ToolOutcome("Sent successfully" if error is None else f"Failed to send: {error}", error is None)


async def _call(
    tool: CustomTool, args: dict[str, Any], *, http: aiohttp.ClientSession, chat: dict[str, Any],
    values: dict[str, str], signing_key: str | None = None,
) -> ToolOutcome:
    body = {**args} if tool.args_at_root else {"name": tool.name, "args": args, "chat": chat}
    if tool.args_at_root:
        body.setdefault("chat", chat)
    payload = orjson.dumps(body)
    headers = {"Content-Type": "application/json", **tool.headers}
    if signing_key:   # Retell signs its custom-function requests: the receiver checks them with retell-sdk's verify
        headers[SIGNATURE_HEADER] = sign(payload, signing_key)
    # The URL may hold {{variables}}; the policy judges it as rendered (in fetch, and again after DNS). Values
    # are percent-encoded, so a variable fills a path segment or a query value: it cannot add a host, a "/..",
    # a "?" or an "@".
    url = render(tool.url, {name: quote(value, safe="") for name, value in values.items()})
    try:
        answer = await fetch(http, tool.method, url, params=tool.query_params or None, data=payload, headers=headers,
                             timeout_s=tool.timeout_ms / 1000, max_bytes=MAX_RESPONSE_BYTES)
    except OutboundRefused as exc:
        log.warning("tool url refused", extra={"tool": tool.name, "error": str(exc)})
        return ToolOutcome(f"The tool's URL is not allowed: {exc}", False)
    except TimeoutError:
        return ToolOutcome(f"The tool did not answer within {tool.timeout_ms} ms.", False)
    except aiohttp.ClientError as exc:
        return ToolOutcome(f"The tool could not be reached: {exc.__class__.__name__}", False)
    text = answer.body.decode("utf-8", errors="replace")[:MAX_RESULT_CHARS]
    if answer.status >= 400:
        return ToolOutcome(f"The tool failed with HTTP {answer.status}: {text}", False)
    return ToolOutcome(text, True)
