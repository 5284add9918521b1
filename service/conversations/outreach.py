"""Texts Parley starts outside a turn: ``/send-sms`` (a backend or a voice agent mid-call) and a human's
message into a chat (``/send-chat-message``).

The text is written into the pair's ongoing SMS chat, or opens one with the number's inbound agent (else
an outbound one), so when the person texts back the agent knows what was sent and why (a call's transcript
is kept in the chat as an ``injected`` message the agent reads). Both take the conversation's lock, like a
turn, so they are ordered with the agent's replies; texts that arrive meanwhile are answered after.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from service.address import Conversation, split_address
from service.agent import variables
from service.agent.reply import chat_variables
from service.catalog.store import Agent, pick_agent
from service.chats.model import Chat, ChatType, Direction, Message, Role, TurnResult
from service.clock import now_ms
from service.conversations import dialog
from service.conversations.runtime import Runtime
from service.conversations.sender import outside_window
from service.errors import Conflict, InvalidRequest, LimitReached, SendError
from service.retell.models import PhoneNumber
from service.sms.limits import check_destination

WRITE_INSTRUCTIONS = (
    "\n\n## Now\nWrite one SMS to the user, following these instructions. Answer with the text of the SMS "
    "only.\nInstructions: {prompt}"
)


@dataclass(frozen=True, slots=True)
class Request:
    number: PhoneNumber
    conv: Conversation
    exact: str | None            # the text as given (variables rendered), or
    prompt: str | None           # instructions for the LLM to write it
    transcript: str | None = None
    variables: dict[str, str] | None = None
    metadata: dict[str, Any] | None = None


def transcript_text(transcript: str | list[dict[str, Any]] | None) -> str | None:
    """A call transcript as text: as given, or Retell's ``[{role, content}]`` as ``Role: content`` lines."""
    if transcript is None or isinstance(transcript, str):
        return transcript or None
    lines = [f"{str(t.get('role', '')).capitalize()}: {t.get('content', '')}" for t in transcript]
    return "\n".join(lines) or None


async def sending_number(rt: Runtime, phone_number: str, field: str = "from_number") -> PhoneNumber:
    """The number a text Parley starts goes out from (``phone_number`` may carry a channel prefix);
    ``InvalidRequest`` when Parley does not know it."""
    number = await rt.catalog.get_number(split_address(phone_number)[1])
    if number is None:
        raise InvalidRequest(f"{field}: {phone_number} is not a number Parley sends from (import it first)")
    return number


def conversation(rt: Runtime, number: PhoneNumber, from_address: str, to_address: str) -> Conversation:
    """The conversation between ``number`` (written ``from_address``) and ``to_address``, on the channel their
    prefix names (none: SMS); ``InvalidRequest`` unless that channel is known, the same on both sides, and one
    the number is on."""
    channel, to = split_address(to_address)
    if split_address(from_address)[0] != channel:
        raise InvalidRequest(f"to_number: {to_address} is on {channel}, from_number {from_address} is not: "
                             "write both numbers with the same channel prefix (whatsapp:+1...) or neither")
    if channel not in rt.channels:
        raise InvalidRequest(f"to_number: {channel!r} is not a channel Parley knows ({', '.join(rt.channels)})")
    if channel not in number.channels:
        raise InvalidRequest(f"from_number: {number.phone_number} is not on {channel} (its channels: "
                             f"{', '.join(number.channels)}): add {channel} to its channels")
    return Conversation(number.phone_number, to, channel)


async def check_can_start(rt: Runtime, number: PhoneNumber, conv: Conversation) -> None:
    """``InvalidRequest`` when the user opted out of ``number``, lies outside its allowed countries, or, on a
    channel with a session window, has not written within it."""
    to = conv.user_number
    if await rt.optouts.is_opted_out(conv):
        raise InvalidRequest(f"to_number: {to} opted out of messages from {number.phone_number} "
                             "(replied STOP); they must text START first")
    check_destination(number, to)
    channel = rt.channels[conv.channel]
    if channel.session_window_s is not None and not await rt.queue.in_session(conv):
        raise InvalidRequest("to_number: " + outside_window(channel, conv))


async def _chat_for(rt: Runtime, conv: Conversation, req: Request) -> tuple[Chat, Agent]:
    chat = await rt.chats.ongoing(conv)
    if chat is not None:
        return chat, await dialog.agent_for(rt, chat)
    choice = pick_agent(req.number.inbound_sms_agents) or pick_agent(req.number.outbound_sms_agents)
    if choice is None:
        raise InvalidRequest(f"from_number: {req.number.phone_number} has no inbound_sms_agents to carry the "
                             "conversation when the user texts back")
    return await dialog.open_chat(rt, agent_id=choice.agent_id, version=choice.agent_version,
                                  chat_type=ChatType.SMS, conv=conv, direction=Direction.OUTBOUND,
                                  variables=req.variables, metadata=req.metadata)


async def _write(rt: Runtime, chat: Chat, agent: Agent, req: Request, context: list[Message]) -> tuple[str, bool]:
    """The text to send, and whether it is exact."""
    now = datetime.now(UTC)
    values = variables.merge(chat_variables(agent, chat, now), req.variables)
    if req.exact is not None:
        return variables.render(req.exact, values, now=now), True
    history = await rt.chats.messages(chat.chat_id, last=rt.settings.history_window)
    reply = await rt.responder.write(agent, chat, history + context, WRITE_INSTRUCTIONS.format(prompt=req.prompt))
    return reply.text, False


async def send_sms(rt: Runtime, req: Request) -> tuple[Chat, Message]:
    """Send one text to the user of ``req.conv`` from ``req.number``, recorded in the conversation's chat."""
    conv = req.conv
    await check_can_start(rt, req.number, conv)
    async with rt.queue.hold(conv):
        chat, agent = await _chat_for(rt, conv, req)
        context = [Message(Role.INJECTED, content=f"Transcript of the phone call before this text:\n{req.transcript}",
                           created_timestamp=now_ms())] if req.transcript else []
        text, exact = await _write(rt, chat, agent, req, context)
        if not text:
            raise InvalidRequest("the text to send is empty (content rendered to nothing, or the LLM wrote nothing)")
        sent = await rt.sender.send_text(conv, req.number, text, exact=exact, chat_id=chat.chat_id,
                                         max_segments=agent.config.max_reply_segments)
        # Unfenced: what was sent is recorded even if a slow LLM let the lock expire meanwhile.
        await rt.lifecycle.commit(chat, conv, TurnResult(
            messages=context + sent, deadline_ms=now_ms() + agent.config.end_chat_after_silence_ms))
    return chat, _first_or_raise(sent)


def raise_if_failed(sent: list[Message], after: str = "") -> None:
    """``LimitReached`` (429) or ``SendError`` (502) when a message of ``sent`` was not sent."""
    failed = next((m for m in sent if m.status == "failed"), None)
    if failed is None:
        return
    if failed.error_code is None and failed.error and "daily_segment_limit" in failed.error:
        raise LimitReached(failed.error + after)
    raise SendError(f"Twilio did not accept the message: {failed.error}{after}", code=failed.error_code)


def _first_or_raise(sent: list[Message]) -> Message:
    if not sent:
        raise InvalidRequest("nothing was sent: the user opted out")
    raise_if_failed(sent)
    return sent[0]


async def send_chat_message(rt: Runtime, chat: Chat, content: str, *, human: bool) -> Message:
    """An exact text into an ongoing SMS chat, recorded as the agent's (``sender: human`` for a person)."""
    conv = chat.conversation
    if conv is None:
        raise Conflict(f"chat {chat.chat_id} is not an SMS chat")
    number = await rt.catalog.get_number(conv.agent_number)
    if number is None:
        raise Conflict(f"{conv.agent_number} is no longer a number Parley sends from")
    if await rt.optouts.is_opted_out(conv):
        raise InvalidRequest(f"the user {conv.user_number} opted out of messages from {conv.agent_number}")
    channel = rt.channels[conv.channel]
    if channel.session_window_s is not None and not await rt.queue.in_session(conv):
        raise InvalidRequest(outside_window(channel, conv))
    async with rt.queue.hold(conv):
        agent = await dialog.agent_for(rt, chat)
        sent = await rt.sender.send_text(conv, number, content, exact=True, chat_id=chat.chat_id)
        for message in sent:
            message.sender = "human" if human else None
        deadline = None if chat.agent_paused else now_ms() + agent.config.end_chat_after_silence_ms
        await rt.lifecycle.commit(chat, conv, TurnResult(messages=sent, deadline_ms=deadline))
    return _first_or_raise(sent)
