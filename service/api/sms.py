"""Parley's own SMS routes: ``/send-sms`` (and its Retell custom-function adapter), ``/send-chat-message``,
and the opt-out list."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from service.address import address
from service.api import id_forms
from service.api.http import json_response, model_response, read_body, read_query
from service.api.openapi import Route
from service.app_state import RUNTIME
from service.chats.model import ChatStatus, Message
from service.conversations import outreach
from service.conversations.runtime import Runtime
from service.errors import Conflict, NotFound, ParleyError
from service.retell.requests import (
    ClearOptOutRequest,
    OptOutItem,
    OptOutQuery,
    SendChatMessageRequest,
    SendSmsRequest,
    SentSms,
    ToolCallRequest,
    ToolResult,
)
from service.storage.idempotency import Idempotency
from service.validation import describe

log = logging.getLogger(__name__)



def _sent(chat_id: str, message: Message, from_number: str, to_number: str) -> SentSms:
    return SentSms(message_id=message.message_id, chat_id=chat_id, message_sid=message.message_sid,
                   status=message.status or "queued", error_code=message.error_code, error=message.error,
                   encoding=message.encoding, segments=message.segments, content=message.content,
                   from_number=from_number, to_number=to_number, created_timestamp=message.created_timestamp)


async def _send(rt: Runtime, body: SendSmsRequest) -> SentSms:
    number = await outreach.sending_number(rt, body.from_number)
    conv = outreach.conversation(rt, number, body.from_number, body.to_number)
    chat, message = await outreach.send_sms(rt, outreach.Request(
        number=number, conv=conv, exact=body.exact_text(), prompt=body.instructions(),
        transcript=outreach.transcript_text(body.transcript), variables=body.dynamic_variables,
        metadata=body.metadata))
    return _sent(chat.chat_id, message, body.from_number, body.to_number)


async def _once(rt: Runtime, key: str, body: SendSmsRequest) -> web.Response:
    """Run the send at most once per ``Idempotency-Key``; a repeat gets the first answer back."""
    async def send() -> list[Any]:
        return [200, (await _send(rt, body)).model_dump(mode="json", exclude_none=True)]

    # A refused send (a ParleyError: nothing went out) may be tried again with the same key.
    status, data = await Idempotency(rt.redis).once(key, send, forget_on=(ParleyError,))
    return json_response(data, status)


async def send_sms(request: web.Request) -> web.Response:
    """``POST /send-sms``: an exact text, or one the LLM writes, into the pair's SMS chat."""
    rt = request.app[RUNTIME]
    body = await read_body(request, SendSmsRequest)
    key = request.headers.get("Idempotency-Key")
    if key:
        return await _once(rt, key, body)
    return model_response(await _send(rt, body))


def _call_numbers(call: dict[str, object]) -> tuple[str, str]:
    """(agent number, user number) of a voice call: the caller is the user on an inbound call."""
    from_number, to_number = str(call.get("from_number") or ""), str(call.get("to_number") or "")
    if call.get("direction") == "outbound":
        return from_number, to_number
    return to_number, from_number


async def tool_send_sms(request: web.Request) -> web.Response:
    """``POST /tools/send-sms``: a Retell voice agent's custom function texts the caller from the agent's
    number. Answers ``{"result": ...}`` the voice LLM can speak from, also when the text was not sent."""
    rt = request.app[RUNTIME]
    tool = await read_body(request, ToolCallRequest)
    agent_number, user_number = _call_numbers(tool.call)
    args = tool.args
    exact = args.get("content") or args.get("message") or args.get("text")
    prompt = args.get("prompt")
    try:
        body = SendSmsRequest.model_validate({
            "from_number": agent_number, "to_number": user_number,
            **({"content": exact} if exact else {"prompt": prompt or "Text the caller what was just agreed."}),
            "transcript": tool.call.get("transcript"),
            "dynamic_variables": {k: str(v) for k, v in (tool.call.get("retell_llm_dynamic_variables") or {}).items()},
            "metadata": {"call_id": tool.call.get("call_id")} if tool.call.get("call_id") else {},
        })
        sent = await _send(rt, body)
    except ParleyError as exc:
        log.info("tool send-sms not sent", extra={"error": str(exc)})
        return model_response(ToolResult(result=f"not sent: {exc}"))
    except ValidationError as exc:   # the call's numbers are not E.164, or the args are not usable
        return model_response(ToolResult(result="not sent: " + "; ".join(describe(exc))))
    return model_response(ToolResult(result=f"sent: {sent.content}"))


async def send_chat_message(request: web.Request) -> web.Response:
    """``POST /send-chat-message``: an exact text into an ongoing SMS chat (a person, or the backend)."""
    rt = request.app[RUNTIME]
    body = await read_body(request, SendChatMessageRequest)
    chat = await rt.chats.get(id_forms.chat_id(body.chat_id))
    if chat is None:
        raise NotFound(f"chat {body.chat_id!r} not found")
    if chat.chat_status is not ChatStatus.ONGOING:
        raise Conflict(f"chat {chat.chat_id} has ended")
    message = await outreach.send_chat_message(rt, chat, body.content, human=body.role == "human")
    conv = chat.conversation
    assert conv is not None   # send_chat_message refused any other chat
    return model_response(_sent(chat.chat_id, message, address(conv.channel, conv.agent_number),
                                address(conv.channel, conv.user_number)))


async def list_opt_outs(request: web.Request) -> web.Response:
    """``GET /list-opt-outs[?from_number=]``: who opted out of which number."""
    rt = request.app[RUNTIME]
    query = read_query(request, OptOutQuery)
    return model_response([OptOutItem(from_number=o.agent_number, to_number=o.user_number, opted_out_at=o.opted_out_at)
                           for o in await rt.optouts.all(query.from_number)])


async def clear_opt_out(request: web.Request) -> web.Response:
    """``POST /clear-opt-out``: an operator clears an opt-out, stating how the user consented again."""
    rt = request.app[RUNTIME]
    body = await read_body(request, ClearOptOutRequest)
    await rt.optouts.clear_by_operator(body.from_number, body.to_number, body.consent)
    return web.Response(status=204)


ROUTES = [
    Route("POST", "/send-sms", send_sms, "Send an SMS (exact, or written by the LLM) into the pair's chat",
          body=SendSmsRequest, response=SentSms, tag="sms", errors=(409, 429, 502)),
    Route("POST", "/tools/send-sms", tool_send_sms, "Retell custom-function adapter: text the caller",
          body=ToolCallRequest, response=ToolResult, tag="sms"),
    Route("POST", "/send-chat-message", send_chat_message, "Send an exact text into an ongoing SMS chat",
          body=SendChatMessageRequest, response=SentSms, tag="sms", errors=(404, 409, 429, 502)),
    Route("GET", "/list-opt-outs", list_opt_outs, "List opt-outs", query=OptOutQuery, response=OptOutItem,
          many=True, tag="sms", scope="read"),
    Route("POST", "/clear-opt-out", clear_opt_out, "Clear an opt-out, with proof of consent",
          body=ClearOptOutRequest, status=204, tag="sms", scope="admin", errors=(404,)),
]
