"""Delivery tracking: Twilio's status callbacks move each sent message through a monotonic state machine; a
message that waits for Twilio (``retrying``) gets its SID, or why it failed, once its send is settled.

``queued < sending < sent < delivered``; ``undelivered`` and ``failed`` are terminal. A callback that
arrives late or out of order never moves a message back (Twilio does not promise order). The latest
status and error code of each message live in ``{S}:chat:<id>:delivery`` (SID -> JSON) and are laid over
the chat's messages when it is read. Error 21610 (the recipient replied STOP) records the opt-out and ends
the chat (``channels.twilio.status``), through the conversation's mailbox so it is ordered with its turns.

A message Twilio refused for now (429, 5xx) is recorded in its turn's commit with the status ``retrying`` and
no SID, and the same commit puts it in its conversation's outgoing queue (``outgoing_entry``; the queue is
``conversations.outgoing``). When a later attempt settles it, the same hash gets a field keyed by its message
id (``sent_state``, ``failed_state``): ``apply`` lays that over the message first (its SID, its status), then
the SID's callbacks over that. So ``/get-chat`` shows the final SID and status, and callbacks keep working by
SID.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
import redis.asyncio as aioredis

from service.chats.model import Message
from service.storage import keys
from service.storage.watchers import Watchers

RETRYING = "retrying"   # Parley holds the message: Twilio refused it for now, or an earlier one still waits

RANKS = {"accepted": 0, "scheduled": 0, "queued": 0, "sending": 1, "sent": 2, "delivered": 3,
         "undelivered": 3, "failed": 3, "read": 4, "canceled": 3, "partially_delivered": 3}

# KEYS: delivery hash.  ARGV: sid, new JSON, new rank, ttl.  Store it only if it ranks above what is stored.
_ADVANCE = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  local rank = cjson.decode(old)['rank']
  if rank and rank >= tonumber(ARGV[3]) then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
if ARGV[5] ~= '' then redis.call('PUBLISH', ARGV[5], ARGV[6]) end   -- the console's live views, while open
return 1
"""


def outgoing_entry(chat_id: str, message: Message) -> str:
    """The outgoing-queue entry of a ``retrying`` message of chat ``chat_id`` (written by the commit that
    records it): the message as recorded, and how many times the queue has tried it."""
    return orjson.dumps({"chat_id": chat_id, "message": message.to_retell(), "attempts": 0}).decode()


def sent_state(sid: str, status: str) -> str:
    """The message-id field of a waiting message Twilio has now accepted."""
    return orjson.dumps({"message_sid": sid, "status": status, "rank": RANKS.get(status, 0)}).decode()


def failed_state(error: str, error_code: int | None = None) -> str:
    """The message-id field of a waiting message that will not be sent."""
    return orjson.dumps({"status": "failed", "error_code": error_code, "error": error, "rank": RANKS["failed"]}
                        ).decode()


def _lay(message: Message, state: dict[str, Any]) -> None:
    message.status = state["status"]
    if "message_sid" in state:
        message.message_sid = state["message_sid"]
        message.error_code = message.error = None    # why it waited, now moot
    else:
        message.error_code = state.get("error_code")
        message.error = state.get("error")


class Delivery:
    def __init__(self, redis: aioredis.Redis, *, ttl_s: int, watchers: Watchers | None = None) -> None:
        self._redis = redis
        self._watchers = watchers or Watchers(redis)
        self._ttl_s = ttl_s
        self._advance = redis.register_script(_ADVANCE)

    async def record(self, chat_id: str, message_sid: str, status: str, error_code: int | None) -> bool:
        """Apply a callback; True if it moved the message forward."""
        rank = RANKS.get(status)
        if rank is None:
            return False
        state = orjson.dumps({"status": status, "error_code": error_code, "rank": rank}).decode()
        return bool(await self._advance(keys=[keys.delivery(chat_id)],
                                        args=[message_sid, state, rank, self._ttl_s, await self._watchers.channel(),
                                              chat_id]))

    async def apply(self, chat_id: str, messages: list[Message], also: Mapping[str, str] | None = None
                    ) -> list[Message]:
        """``messages`` with each message's settled send (a waiting message's SID, or why it failed), then each
        sent message's latest status and error code. ``also``: fields about to be written, laid over too."""
        states = await self._redis.hgetall(keys.delivery(chat_id))
        return _lay_over({**states, **also} if also else states, messages)


def _lay_over(states: Mapping[Any, Any], messages: list[Message]) -> list[Message]:
    """``Delivery.apply`` with the delivery hash already read (``states``: field -> JSON)."""
    if not states:
        return messages
    for message in messages:
        settled = states.get(message.message_id) if message.status == RETRYING else None
        if settled:
            _lay(message, orjson.loads(settled))
        raw = states.get(message.message_sid) if message.message_sid else None
        if raw:
            state = orjson.loads(raw)
            message.status = state["status"]
            message.error_code = state["error_code"] or message.error_code
    return messages
