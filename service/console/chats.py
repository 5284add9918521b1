"""Conversations: the live list with its filters, a conversation's view, and taking it over.

The list reads the API's listing (``chats.query``: its indexes); the acts call what the API's handlers call
(``conversations.takeover`` to pause, resume and end, ``outreach.send_chat_message`` to send as a human), so the
console and the API never disagree. An act answers with a redirect to the conversation (the page reloads whole
without JavaScript), or, when it is refused, the conversation again with the reason and the API's status.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import phonenumbers
from aiohttp import web
from pydantic import ValidationError

from service.api.http import Handler, status_of
from service.app_state import RUNTIME
from service.chats.model import Chat, ChatStatus, Message, Role
from service.chats.query import ChatQuery, Cursor
from service.console.pages import render
from service.console.sessions import require, session_of
from service.conversations import outreach, takeover
from service.errors import InvalidRequest, ParleyError
from service.retell.requests import ChatFilter
from service.sms import segments
from service.storage import keys

PAGE = 50
HUMAN_SCAN = 500   # "needs a human" looks through this many ongoing chats (paused chats have no index)
FOLDED = {Role.TOOL_CALL_INVOCATION, Role.TOOL_CALL_RESULT, Role.STATE_TRANSITION, Role.NODE_TRANSITION}


def e164(value: str) -> str:
    """A number as typed by a person (``(415) 555-0123``, ``+44 20...``) as E.164; US when it has no country."""
    channel, _, number = value.strip().rpartition(":")
    try:
        parsed = phonenumbers.parse(number, "US")
    except phonenumbers.NumberParseException:
        raise InvalidRequest(f"{value!r} is not a phone number: expected one like +14155550123") from None
    formatted = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return f"{channel}:{formatted}" if channel else formatted


def _filter(query: dict[str, str]) -> ChatFilter | None:
    """The listing's filter from the page's form (agent, number, status, user number)."""
    criteria: dict[str, Any] = {}
    if query.get("agent"):
        criteria["agent"] = [{"agent_id": query["agent"]}]
    if query.get("number"):
        criteria["agent_number"] = {"type": "string", "op": "eq", "value": e164(query["number"])}
    if query.get("user"):
        criteria["user_number"] = {"type": "string", "op": "eq", "value": e164(query["user"])}
    status = "ongoing" if query.get("human") else query.get("status")
    if status in ("ongoing", "ended"):
        criteria["chat_status"] = {"type": "enum", "op": "in", "value": [status]}
    try:
        return ChatFilter.model_validate(criteria) if criteria else None
    except ValidationError as exc:
        raise InvalidRequest(str(exc.errors()[0]["msg"])) from None


@dataclass
class Rows:
    """A page of the list: each chat with its last message, the next page's link, or why the filters are wrong."""

    rows: list[tuple[Chat, Message | None]] = field(default_factory=list)
    older: str = ""
    error: str = ""


async def _rows(request: web.Request) -> Rows:
    rt = request.app[RUNTIME]
    query = dict(request.query)
    try:
        chat_filter = _filter(query)
        cursor = Cursor.decode(query["after"]) if query.get("after") else None
    except (InvalidRequest, ParleyError) as exc:
        return Rows(error=str(exc))
    human = bool(query.get("human"))
    page = await ChatQuery(rt.redis, ttl_s=rt.chats.ttl_s).page(chat_filter, descending=True,
                                                                limit=HUMAN_SCAN if human else PAGE, cursor=cursor)
    found = [c for c in page.chats if c.agent_paused][:PAGE] if human else page.chats
    older = ""
    if page.cursor is not None and not human:
        older = "/console/chats?" + urlencode({**{k: v for k, v in query.items() if k != "after"},
                                               "after": page.cursor.encode()})
    async with rt.redis.pipeline(transaction=False) as pipe:
        for chat in found:
            pipe.lindex(keys.chat_messages(chat.chat_id), -1)
        lasts = await pipe.execute()
    rows = [(chat, Message.from_json(last) if last else None) for chat, last in zip(found, lasts, strict=True)]
    return Rows(rows, older)


async def list_page(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    page = await _rows(request)
    agent_ids = sorted(await rt.catalog.agents.ids())
    return render(request, "chats.html", page=page, query=dict(request.query), agent_ids=agent_ids,
                  status=422 if page.error else 200, rows_url=f"/console/chats/rows?{request.query_string}")


async def rows_part(request: web.Request) -> web.Response:
    return render(request, "_rows.html", page=await _rows(request))


async def _chat(request: web.Request) -> Chat:
    chat_id = request.match_info["chat_id"]
    chat = await request.app[RUNTIME].chats.get(chat_id) if keys.is_chat_id(chat_id) else None
    if chat is None:
        raise web.HTTPNotFound(text=f"chat {chat_id!r} not found (it may have expired or been deleted)")
    return chat


async def _transcript(request: web.Request, chat: Chat) -> list[Message]:
    rt = request.app[RUNTIME]
    return await rt.delivery.apply(chat.chat_id, await rt.chats.messages(chat.chat_id))


async def chat_page(request: web.Request, *, error: str = "", status: int = 200, draft: str = "") -> web.Response:
    chat = await _chat(request)
    return render(request, "chat.html", status=status, chat=chat, messages=await _transcript(request, chat),
                  folded=FOLDED, error=error, draft=draft, may_act=session_of(request).may("write"))


async def transcript_part(request: web.Request) -> web.Response:
    chat = await _chat(request)
    return render(request, "_transcript.html", chat=chat, messages=await _transcript(request, chat), folded=FOLDED)


async def _act(request: web.Request, chat: Chat) -> web.Response:
    """After an act: back to the conversation (303), with the act done (the act's write told the live views)."""
    raise web.HTTPSeeOther(f"/console/chats/{chat.chat_id}")


async def pause(request: web.Request) -> web.Response:
    return await _set_paused(request, True)


async def resume(request: web.Request) -> web.Response:
    return await _set_paused(request, False)


async def _set_paused(request: web.Request, paused: bool) -> web.Response:
    require(request, "write")   # PATCH /update-chat's scope
    rt, chat = request.app[RUNTIME], await _chat(request)
    try:
        await takeover.set_paused(rt, chat, paused)
    except ParleyError as exc:
        return await _refused(request, exc)
    await rt.chats.update(chat)
    return await _act(request, chat)


async def end(request: web.Request) -> web.Response:
    require(request, "write")   # PATCH /end-chat's scope
    chat = await _chat(request)
    try:
        await takeover.end(request.app[RUNTIME], chat, by="console")
    except ParleyError as exc:
        return await _refused(request, exc)
    return await _act(request, chat)


async def send(request: web.Request) -> web.Response:
    """Send as a human: ``POST /send-chat-message``'s path (opt-out, caps, the outgoing queue, the commit)."""
    require(request, "write")
    rt, chat = request.app[RUNTIME], await _chat(request)
    content = str((await request.post()).get("content", ""))
    try:
        if not content.strip():
            raise InvalidRequest("content: empty; write the text to send")
        if chat.chat_status is not ChatStatus.ONGOING:
            raise InvalidRequest(f"chat {chat.chat_id} has ended")
        message = await outreach.send_chat_message(rt, chat, content, human=True)
    except ParleyError as exc:
        return await _refused(request, exc, draft=content)
    if message.status == "failed":
        return await chat_page(request, error=f"not sent: {message.error}", status=502, draft=content)
    return await _act(request, chat)


async def _refused(request: web.Request, exc: ParleyError, draft: str = "") -> web.Response:
    return await chat_page(request, error=str(exc), status=status_of(exc), draft=draft)


async def measure(request: web.Request) -> web.Response:
    """``POST /console/measure``: the segments and encoding of the text being typed (as it would go, exactly)."""
    content = str((await request.post()).get("content", ""))
    return render(request, "_measure.html", measure=segments.measure(content), chars=len(content),
                  not_gsm=segments.not_gsm(content))


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/chats", list_page),
    ("GET", "/chats/rows", rows_part),
    ("GET", "/chats/{chat_id}", chat_page),
    ("GET", "/chats/{chat_id}/transcript", transcript_part),
    ("POST", "/chats/{chat_id}/pause", pause),
    ("POST", "/chats/{chat_id}/resume", resume),
    ("POST", "/chats/{chat_id}/end", end),
    ("POST", "/chats/{chat_id}/send", send),
    ("POST", "/measure", measure),
]
