"""A person takes a chat over: pause the agent, resume it, end the chat. The API (``api.chats``) and the console
(``service.console``) both call these, so the two never disagree. Sending as a human is
``outreach.send_chat_message``.
"""

from __future__ import annotations

import logging

from service.chats.model import Chat, ChatStatus, ChatType, EndReason, TurnResult
from service.clock import now_ms
from service.conversations import dialog
from service.conversations.runtime import Runtime
from service.errors import Conflict

log = logging.getLogger(__name__)


async def set_paused(rt: Runtime, chat: Chat, paused: bool) -> None:
    """Hand the chat to a human (``paused``) or back to its agent, on ``chat`` (written by ``Chats.update``, which
    the caller runs). Silence does not close a chat a human has taken over; resuming starts the clock again."""
    if paused == chat.agent_paused:
        return
    if chat.chat_type is not ChatType.SMS or chat.chat_status is not ChatStatus.ONGOING:
        raise Conflict("agent_paused: only an ongoing SMS chat can be handed to a human")
    chat.agent_paused = paused
    silence = (await dialog.agent_for(rt, chat)).config.end_chat_after_silence_ms
    await rt.chats.set_deadline(chat.chat_id, None if paused else now_ms() + silence)
    log.info("agent paused" if paused else "agent resumed", extra={"chat_id": chat.chat_id})


async def end(rt: Runtime, chat: Chat, *, by: str = "api") -> None:
    """End an ongoing chat the way any end does (``chat_ended``, analysis), as ``manual_stopped``."""
    if chat.chat_status is not ChatStatus.ONGOING:
        raise Conflict(f"chat {chat.chat_id} has already ended")
    await rt.lifecycle.commit(chat, chat.conversation, TurnResult(end=EndReason.API, end_timestamp=now_ms()))
    log.info(f"chat ended by the {by}", extra={"chat_id": chat.chat_id})
