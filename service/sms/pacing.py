"""Pacing: a number that sets ``segments_per_second`` sends no faster than that, across every process.

Twilio queues what it accepts per sender and sends it at the sender's throughput (10DLC: set per brand and
campaign; a long code of old, 1 segment a second), so Parley need not pace to be delivered. A number sets a pace
when it should not lean on that queue (it would overflow: error 21611 past about 10 hours of backlog; or the
business wants its own rate). Off by default.

Key (built in ``storage.keys``; one per paced number, anywhere on a cluster, like the daily counters)::

    pace:<E.164>    STRING  the earliest time (ms) the number's next message may go; TTL: until then, plus 1 s

Each send reserves its slot in one script: it goes at ``max(now, next)`` and moves ``next`` on by its segments
divided by the pace. A slot more than ``MAX_WAIT_MS`` ahead is not taken: the message waits in its
conversation's outgoing queue instead of holding the conversation (``SendDeferred`` with that wait).
"""

from __future__ import annotations

import redis.asyncio as aioredis

from service.clock import now_ms
from service.retell.models import PhoneNumber
from service.storage import keys

MAX_WAIT_MS = 5_000   # the longest a send sleeps for its slot while its turn holds the conversation

# KEYS: pace.  ARGV: now ms, the message's share of a second (ms), max wait ms.  Returns the time (ms) of the
# slot it reserved, or minus that time when the slot is more than max wait ahead (nothing reserved then).
_RESERVE = """
local now = tonumber(ARGV[1])
local at = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
if at - now > tonumber(ARGV[3]) then return -at end
local after = at + tonumber(ARGV[2])
redis.call('SET', KEYS[1], after, 'PX', after - now + 1000)
return at
"""


class Pacing:
    """Per-number send slots (``PhoneNumber.segments_per_second``)."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._reserve = redis.register_script(_RESERVE)

    async def reserve(self, number: PhoneNumber, segments: int) -> int:
        """Reserve the number's next slot for a message of ``segments`` (at least 1); how long to wait for it from
        now (ms, 0: go now), or minus that wait when it is more than ``MAX_WAIT_MS`` away (nothing is reserved)."""
        if not number.segments_per_second:
            return 0
        share_ms = max(1, round(max(segments, 1) * 1000 / number.segments_per_second))
        at = int(await self._reserve(keys=[keys.pace(number.phone_number)], args=[now_ms(), share_ms, MAX_WAIT_MS]))
        # From the slot's time, not from the call's: the reply may have come late.
        wait = max(abs(at) - now_ms(), 0)
        return -max(wait, 1) if at < 0 else wait
