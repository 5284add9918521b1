"""The dev phone: text an agent from the browser, without a phone or Twilio (``channels.dev``).

Pick one of Parley's numbers (its inbound agents answer) and a made-up customer number, and write. The text
takes the path a Twilio text takes after the webhook's signature and routing (``conversations.inbound``:
keywords, dedupe, mailbox, wake-up; then a worker's burst window, turn, tools, events); the replies go to the
dev gateway instead of Twilio and show up here live. Dev chats are marked ``channel: dev``, shown as tests, and
left out of the overview and of the numbers' daily segment limits.
"""

from __future__ import annotations

import secrets

from aiohttp import web

from service.address import DEV, Conversation, address
from service.api.http import Handler
from service.app_state import RUNTIME
from service.chats.model import Chat, Message
from service.chats.query import ChatQuery
from service.console.chats import FOLDED, e164
from service.console.pages import render
from service.console.sessions import require, session_of
from service.conversations import inbound
from service.conversations.queue import Enqueued
from service.errors import InvalidRequest
from service.retell.requests import ChatFilter

DEFAULT_USER = "+15555550123"


async def _latest(request: web.Request, conv: Conversation) -> Chat | None:
    """The conversation's newest chat (ongoing or not)."""
    rt = request.app[RUNTIME]
    criteria = ChatFilter.model_validate({
        "user_number": {"type": "string", "op": "eq", "value": address(DEV, conv.user_number)},
        "agent_number": {"type": "string", "op": "eq", "value": address(DEV, conv.agent_number)}})
    page = await ChatQuery(rt.redis, ttl_s=rt.chats.ttl_s).page(criteria, descending=True, limit=1, cursor=None)
    return page.chats[0] if page.chats else None


def _conversation(number: str, user: str) -> Conversation:
    return Conversation(e164(number), e164(user), DEV)


async def _view(request: web.Request, number: str, user: str) -> tuple[Chat | None, list[Message]]:
    """The dev conversation's newest chat and its transcript, for the page and its live part."""
    rt = request.app[RUNTIME]
    if not number:
        return None, []
    chat = await _latest(request, _conversation(number, user))
    messages = await rt.delivery.apply(chat.chat_id, await rt.chats.messages(chat.chat_id)) if chat else []
    return chat, messages


async def page(request: web.Request, *, error: str = "", notice: str = "", status: int = 200) -> web.Response:
    rt = request.app[RUNTIME]
    numbers = await rt.catalog.numbers()
    number = request.query.get("number") or (numbers[0].phone_number if numbers else "")
    user = request.query.get("user") or DEFAULT_USER
    chat: Chat | None = None
    messages: list[Message] = []
    try:
        chat, messages = await _view(request, number, user)
    except InvalidRequest as exc:
        error, status = str(exc), 422
    return render(request, "devphone.html", status=status, numbers=numbers, number=number, user=user,
                  error=error, notice=notice, folded=FOLDED, may_act=session_of(request).may("write"), chat=chat,
                  messages=messages)


async def transcript_part(request: web.Request) -> web.Response:
    chat, messages = await _view(request, request.query.get("number", ""), request.query.get("user") or DEFAULT_USER)
    return render(request, "_transcript.html", folded=FOLDED, chat=chat, messages=messages)


async def text(request: web.Request) -> web.Response:
    """``POST /console/dev/text``: the text goes into the dev conversation's mailbox, as the webhook puts one."""
    require(request, "write")
    rt = request.app[RUNTIME]
    form = await request.post()
    body, number_value, user = (str(form.get(name, "")) for name in ("body", "number", "user"))
    try:
        conv = _conversation(number_value, user)
        number = await rt.catalog.get_number(conv.agent_number)
        if number is None:
            raise InvalidRequest(f"number: {number_value} is not one of Parley's numbers")
        if not body.strip():
            raise InvalidRequest("body: empty; write the text to send")
        received = await inbound.receive(rt, conv, number, body, "DV" + secrets.token_hex(16))
    except InvalidRequest as exc:
        return await page(request, error=str(exc), status=422)
    if received.queued is Enqueued.MAILBOX_FULL:
        return await page(request, error="this conversation has too many unanswered texts; wait for the agent",
                          status=503)
    where = f"/console/dev?number={conv.agent_number}&user={conv.user_number}"
    if received.reply:   # HELP: the number's help message, answered at once as Twilio's TwiML would be
        return await page(request, notice=f"Answered at once (a HELP keyword): {received.reply}")
    raise web.HTTPSeeOther(where.replace("+", "%2B"))


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/dev", page),
    ("GET", "/dev/transcript", transcript_part),
    ("POST", "/dev/text", text),
]
