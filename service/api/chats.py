"""Retell's chat routes: create (API and SMS), complete, get, list, update, end, delete."""

from __future__ import annotations

import logging

from aiohttp import web

from service.api import id_forms
from service.api.http import UNSUPPORTED_HEADER, model_response, read_body, read_query
from service.api.openapi import Route
from service.app_state import RUNTIME
from service.catalog.store import Agent, pick_agent
from service.chats.model import Chat, ChatStatus, ChatType, Direction, EndReason, Message, Role, TurnResult
from service.chats.query import ChatQuery, Cursor
from service.clock import now_ms
from service.conversations import dialog, outreach, takeover
from service.conversations.runtime import Runtime
from service.errors import Conflict, InvalidRequest, NotFound
from service.retell.models import AgentVersion, ChatResponse
from service.retell.requests import (
    ChatCompletionResponse,
    ChatListItem,
    CreateChatCompletionRequest,
    CreateChatRequest,
    CreateSmsChatRequest,
    ListChatsRequest,
    ListChatsResponse,
    PageQuery,
    UpdateChatRequest,
)

log = logging.getLogger(__name__)

TRANSCRIPT_FIELDS = {"transcript", "message_with_tool_calls"}
# data_storage_setting from least to most restrictive: Retell's update-chat cannot move a chat down this list.
STORAGE_ORDER = ("everything", "everything_except_pii", "basic_attributes_only")


async def _chat(rt: Runtime, chat_id: str) -> Chat:
    chat = await rt.chats.get(id_forms.chat_id(chat_id))
    if chat is None:
        raise NotFound(f"chat {chat_id!r} not found")
    return chat


async def _response(rt: Runtime, chat: Chat) -> ChatResponse:
    messages = await rt.delivery.apply(chat.chat_id, await rt.chats.messages(chat.chat_id))
    return chat.to_response(messages)


async def _agent(rt: Runtime, agent_id: str, version: AgentVersion | None, field: str, version_field: str) -> Agent:
    """The agent a new chat would use, or a 422 naming the field (the agent's, or the version's) that is wrong."""
    try:
        await rt.catalog.agents.get(id_forms.agent_id(agent_id))
    except NotFound as exc:
        raise InvalidRequest(f"{field}: {exc}") from None
    try:
        return await rt.catalog.resolve(agent_id, version)
    except NotFound as exc:
        raise InvalidRequest(f"{version_field}: {exc}") from None


async def create_chat(request: web.Request) -> web.Response:
    """``POST /create-chat``: an ``api_chat`` (no SMS), for testing agents and web chat."""
    rt = request.app[RUNTIME]
    body = await read_body(request, CreateChatRequest)
    await _agent(rt, body.agent_id, body.agent_version, "agent_id", "agent_version")
    chat, agent = await dialog.open_chat(rt, agent_id=body.agent_id, version=body.agent_version,
                                         chat_type=ChatType.API, variables=body.retell_llm_dynamic_variables,
                                         metadata=body.metadata)
    reply = await dialog.opening(rt, chat, agent)
    first = [Message(Role.AGENT, content=reply.text, created_timestamp=now_ms())] if reply.text else []
    await rt.lifecycle.commit(chat, None, TurnResult(messages=reply.messages + first))
    return model_response(await _response(rt, chat), status=201)


async def create_chat_completion(request: web.Request) -> web.Response:
    """``POST /create-chat-completion``: the user's message in, the agent's new messages out."""
    rt = request.app[RUNTIME]
    body = await read_body(request, CreateChatCompletionRequest)
    chat = await _chat(rt, body.chat_id)
    if chat.chat_type is not ChatType.API:
        raise Conflict(f"chat {chat.chat_id} is an SMS chat: the user texts its number instead")
    async with rt.chats.locked(chat.chat_id):
        chat = await _chat(rt, body.chat_id)   # re-read under the lock
        if chat.chat_status is not ChatStatus.ONGOING:
            raise Conflict(f"chat {chat.chat_id} has ended")
        agent = await dialog.agent_for(rt, chat)
        user = Message(Role.USER, content=body.content, created_timestamp=now_ms())
        reply = await dialog.answer(rt, chat, agent, [user])
        new = reply.messages + ([Message(Role.AGENT, content=reply.text, created_timestamp=now_ms())]
                                if reply.text else [])
        result = TurnResult(messages=[user, *new])
        if reply.end_chat:
            result.end, result.end_timestamp = EndReason.AGENT_ENDED, now_ms()
        await rt.lifecycle.commit(chat, None, result)
    return model_response(ChatCompletionResponse(messages=[m.to_retell() for m in new]), status=201)


async def create_sms_chat(request: web.Request) -> web.Response:
    """``POST /create-sms-chat``: open an outbound SMS chat and send its first message."""
    rt = request.app[RUNTIME]
    body = await read_body(request, CreateSmsChatRequest)
    number = await outreach.sending_number(rt, body.from_number)
    conv = outreach.conversation(rt, number, body.from_number, body.to_number)
    await outreach.check_can_start(rt, number, conv)
    if body.override_agent_id:
        agent_id, version = body.override_agent_id, body.override_agent_version
    else:
        choice = pick_agent(number.outbound_sms_agents)
        if choice is None:
            raise InvalidRequest(f"override_agent_id: required, since {body.from_number} has no outbound_sms_agents")
        # Retell's override_agent_version overrides "the agent version used", the number's agent's too.
        agent_id = choice.agent_id
        version = choice.agent_version if body.override_agent_version is None else body.override_agent_version
    fields = ("override_agent_id" if body.override_agent_id else "outbound_sms_agents.agent_id",
              "outbound_sms_agents.agent_version" if body.override_agent_version is None else "override_agent_version")
    await _agent(rt, agent_id, version, *fields)
    async with rt.queue.hold(conv):
        ongoing = await rt.chats.ongoing(conv)
        if ongoing is not None:
            await rt.lifecycle.commit(ongoing, conv, TurnResult(end=EndReason.REPLACED, end_timestamp=now_ms()))
        chat, agent = await dialog.open_chat(rt, agent_id=agent_id, version=version, chat_type=ChatType.SMS,
                                             conv=conv, direction=Direction.OUTBOUND,
                                             variables=body.retell_llm_dynamic_variables, metadata=body.metadata)
        reply = await dialog.opening(rt, chat, agent)
        agent = reply.agent or agent   # the opening's model may have swapped agents (agent_swap)
        sent = await rt.sender.send_text(conv, number, reply.text, chat_id=chat.chat_id,
                                         max_segments=agent.config.max_reply_segments) if reply.text else []
        result = TurnResult(messages=reply.messages + sent,
                            deadline_ms=now_ms() + agent.config.end_chat_after_silence_ms)
        failed = [m for m in sent if m.status == "failed"]
        if failed:
            result.end, result.end_timestamp = EndReason.SEND_FAILED, now_ms()
        await rt.lifecycle.commit(chat, conv, result)
    outreach.raise_if_failed(failed, after=f" (the first message of chat {chat.chat_id}; the chat was ended)")
    response = model_response(await _response(rt, chat))
    if body.honor_internal_dnc is False:   # accepted, as Retell's SDK may send it, but said not obeyed
        response.headers[UNSUPPORTED_HEADER] = "honor_internal_dnc=false: opted-out numbers are always refused"
    return response


async def get_chat(request: web.Request) -> web.Response:
    """``GET /get-chat/{chat_id}``."""
    rt = request.app[RUNTIME]
    return model_response(await _response(rt, await _chat(rt, request.match_info["chat_id"])))


async def list_chats(request: web.Request) -> web.Response:
    """``POST /v3/list-chats``: filtered, sorted, paginated; items without transcripts."""
    rt = request.app[RUNTIME]
    body = await read_body(request, ListChatsRequest)
    cursor = Cursor.decode(body.pagination_key) if body.pagination_key else None
    query = ChatQuery(rt.redis, ttl_s=rt.chats.ttl_s)
    page = await query.page(body.filter_criteria, descending=body.sort_order == "descending", limit=body.limit,
                            cursor=cursor, count_total=body.include_total, skip=body.skip)
    # to_response validated each chat already: build the items from its fields, not through a second validation.
    items = [ChatListItem.model_construct(**{**dict(c.to_response([])), **dict.fromkeys(TRANSCRIPT_FIELDS)})
             for c in page.chats]
    return model_response(ListChatsResponse(items=items, has_more=page.has_more,
                                            pagination_key=page.cursor.encode() if page.cursor else None,
                                            total=page.total))


async def list_chat_legacy(request: web.Request) -> web.Response:
    """``GET /list-chat``: Retell's older list, a bare array."""
    rt = request.app[RUNTIME]
    query = read_query(request, PageQuery)
    cursor = None
    if query.pagination_key:
        chat = await _chat(rt, query.pagination_key)
        cursor = Cursor(chat.start_timestamp, chat.chat_id)
    page = await ChatQuery(rt.redis, ttl_s=rt.chats.ttl_s).page(
        None, descending=query.sort_order == "descending", limit=query.limit, cursor=cursor)
    return model_response([await _response(rt, c) for c in page.chats])


async def update_chat(request: web.Request) -> web.Response:
    """``PATCH /update-chat/{chat_id}``: metadata, variables merged in (null removes one), custom attributes merged
    in, the data storage setting (stored, answered and listed by; not applied: Parley keeps every chat's data)."""
    rt = request.app[RUNTIME]
    body = await read_body(request, UpdateChatRequest)
    chat = await _chat(rt, request.match_info["chat_id"])
    if body.metadata is not None:
        chat.metadata = body.metadata
    for name, value in (body.override_dynamic_variables or {}).items():
        if value is None:
            chat.dynamic_variables.pop(name, None)
        else:
            chat.dynamic_variables[name] = value
    if body.custom_attributes is not None:
        chat.custom_attributes |= body.custom_attributes
    setting = body.data_storage_setting
    if setting is not None:
        current = chat.data_storage_setting or STORAGE_ORDER[0]
        if STORAGE_ORDER.index(setting) < STORAGE_ORDER.index(current):
            raise InvalidRequest(f"data_storage_setting: chat {chat.chat_id} is {current!r}, which cannot be "
                                 f"changed to the less restrictive {setting!r}")
        chat.data_storage_setting = setting
    if body.agent_paused is not None:
        await takeover.set_paused(rt, chat, body.agent_paused)
    await rt.chats.update(chat)
    response = model_response(await _response(rt, chat))
    if setting is not None and setting != STORAGE_ORDER[0]:
        response.headers[UNSUPPORTED_HEADER] = (f"data_storage_setting={setting}: stored and listed by, not applied "
                                                f"(Parley keeps every chat's data until chat_ttl_s)")
    return response


async def end_chat(request: web.Request) -> web.Response:
    """``PATCH /end-chat/{chat_id}``: ends the chat the way any end does; 204."""
    rt = request.app[RUNTIME]
    await takeover.end(rt, await _chat(rt, request.match_info["chat_id"]))
    return web.Response(status=204)


async def rerun_chat_analysis(request: web.Request) -> web.Response:
    """``PUT /rerun-chat-analysis/{chat_id}``: analyse an ended chat again (``chat_analyzed`` follows)."""
    rt = request.app[RUNTIME]
    chat = await _chat(rt, request.match_info["chat_id"])
    if chat.chat_status is ChatStatus.ONGOING:
        raise Conflict(f"chat {chat.chat_id} is ongoing: it is analysed when it ends")
    return model_response(await _response(rt, await rt.analyzer.analyze(chat.chat_id)))


async def delete_chat(request: web.Request) -> web.Response:
    """``DELETE /delete-chat/{chat_id}``: the chat and its messages are gone; 204."""
    rt = request.app[RUNTIME]
    chat = await _chat(rt, request.match_info["chat_id"])
    await rt.chats.delete(chat)
    return web.Response(status=204)


ROUTES = [
    Route("POST", "/create-chat", create_chat, "Create an API chat (no SMS)", body=CreateChatRequest,
          response=ChatResponse, status=201),
    Route("POST", "/create-chat-completion", create_chat_completion, "Send a user message to an API chat",
          body=CreateChatCompletionRequest, response=ChatCompletionResponse, status=201, errors=(404, 409)),
    Route("POST", "/create-sms-chat", create_sms_chat, "Start an outbound SMS chat", body=CreateSmsChatRequest,
          response=ChatResponse, errors=(429, 502)),
    Route("GET", "/get-chat/{chat_id}", get_chat, "Get a chat", response=ChatResponse, scope="read"),
    Route("POST", "/v3/list-chats", list_chats, "List chats", body=ListChatsRequest, response=ListChatsResponse,
          scope="read"),
    Route("GET", "/list-chat", list_chat_legacy, "List chats (legacy)", query=PageQuery, response=ChatResponse,
          many=True, scope="read", errors=(404,)),
    Route("PATCH", "/update-chat/{chat_id}", update_chat, "Update a chat's metadata and variables",
          body=UpdateChatRequest, response=ChatResponse, errors=(409,)),
    Route("PATCH", "/end-chat/{chat_id}", end_chat, "End a chat", status=204, errors=(409,)),
    Route("DELETE", "/delete-chat/{chat_id}", delete_chat, "Delete a chat", status=204, scope="admin"),
    Route("PUT", "/rerun-chat-analysis/{chat_id}", rerun_chat_analysis, "Analyse an ended chat again",
          response=ChatResponse, errors=(409,)),
]
