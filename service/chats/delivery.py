"""Delivery tracking: Twilio's status callbacks move each sent message through a monotonic state machine.

``queued < sending < sent < delivered``; ``undelivered`` and ``failed`` are terminal. A callback that
arrives late or out of order never moves a message back (Twilio does not promise order). The latest
status and error code of each message live in ``{S}:chat:<id>:delivery`` (SID -> JSON) and are laid over
the chat's messages when it is read. Error 21610 (the recipient replied STOP) records the opt-out and ends
the chat (``channels.twilio.status``), through the conversation's mailbox so it is ordered with its turns.
"""

from __future__ import annotations

import orjson
import redis.asyncio as aioredis

from service.chats.model import Message
from service.storage import keys

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
return 1
"""


class Delivery:
    def __init__(self, redis: aioredis.Redis, *, ttl_s: int) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._advance = redis.register_script(_ADVANCE)

    async def record(self, chat_id: str, message_sid: str, status: str, error_code: int | None) -> bool:
        """Apply a callback; True if it moved the message forward."""
        rank = RANKS.get(status)
        if rank is None:
            return False
        state = orjson.dumps({"status": status, "error_code": error_code, "rank": rank}).decode()
        return bool(await self._advance(keys=[keys.delivery(chat_id)], args=[message_sid, state, rank, self._ttl_s]))

    async def apply(self, chat_id: str, messages: list[Message]) -> list[Message]:
        """``messages`` with each sent message's latest status and error code."""
        states = await self._redis.hgetall(keys.delivery(chat_id))
        for message in messages:
            raw = states.get(message.message_sid) if message.message_sid else None
            if raw:
                state = orjson.loads(raw)
                message.status = state["status"]
                message.error_code = state["error_code"] or message.error_code
        return messages
