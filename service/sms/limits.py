"""What a number may send: to which countries, and how many segments a day.

Countries: each number's ``allowed_outbound_country_list`` (ISO 3166 alpha-2, Retell's field; default
``["US"]`` when the number leaves it out; an empty list means every country, as Retell documents) bounds the
destinations of messages Parley starts (outbound chats, ``send-sms``, the ``send_sms`` tool). Replies to someone
who texted the number first are not limited.

Segments: A2P 10DLC low-volume brands may send about 6,000 segments a day, and T-Mobile counts per day in
US Pacific time. ``segments:<number>:<day>`` counts what each number sent that Pacific day across every
process; a send that would pass ``daily_segment_limit`` (default 6,000) is refused before it reaches Twilio.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from datetime import datetime
from zoneinfo import ZoneInfo

import phonenumbers
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.errors import InvalidRequest, LimitReached
from service.retell.models import PhoneNumber
from service.storage import keys

log = logging.getLogger(__name__)

PACIFIC = ZoneInfo("America/Los_Angeles")
DEFAULT_DAILY_SEGMENTS = 6_000
DEFAULT_COUNTRIES = ("US",)
COUNTER_TTL_S = 2 * 86_400
LEASE = 32   # segments a process takes from the day's counter at once, when the day has room (DailySegments)


# Every turn prices its messages by the user's country (chats/cost.py): one entry per user (about 200 bytes).
@functools.lru_cache(maxsize=32_768)
def country_of(e164: str) -> str:
    """The ISO country of an E.164 number ("ZZ" when unknown)."""
    try:
        parsed = phonenumbers.parse(e164)
    except phonenumbers.NumberParseException:
        return "ZZ"
    region = phonenumbers.region_code_for_number(parsed)
    if not region and parsed.country_code is not None:
        region = phonenumbers.region_code_for_country_code(parsed.country_code)
    return str(region or "ZZ")


def check_destination(number: PhoneNumber, to: str, field: str = "to_number") -> None:
    """``InvalidRequest`` unless ``number`` may start a conversation with ``to``."""
    given = number.allowed_outbound_country_list
    if given == []:   # Retell: an empty list allows every country
        return
    allowed = [c.upper() for c in (given if given is not None else DEFAULT_COUNTRIES)]
    country = country_of(to)
    if country not in allowed:
        raise InvalidRequest(f"{field}: {to} is in {country}, and {number.phone_number} may send only to "
                             f"{', '.join(allowed)} (allowed_outbound_country_list)")


def pacific_day(now: datetime | None = None) -> str:
    return (now or datetime.now(PACIFIC)).astimezone(PACIFIC).date().isoformat()


# KEYS: the day's counter.  ARGV: limit, segments needed, most to take, counter TTL s.  Takes what is needed and,
# when there is room, up to an eighth of what is left (at most ARGV[3]); returns what it took, 0 when the need
# does not fit.
_TAKE = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local need, free = tonumber(ARGV[2]), tonumber(ARGV[1]) - used
if need > free then return 0 end
local take = math.min(math.max(need, math.floor(free / 8)), math.max(need, tonumber(ARGV[3])))
if redis.call('INCRBY', KEYS[1], take) == take then redis.call('EXPIRE', KEYS[1], ARGV[4]) end
return take
"""


class DailySegments:
    """Segments sent per number per US-Pacific day, against its ``daily_segment_limit``.

    The counter in Redis is what every process has taken. A process takes segments in blocks (``LEASE``, and
    at most an eighth of what the day has left, so near the limit blocks shrink to the send's own need) and
    spends them with no Redis command until the block is used up: most sends cost none. So the counter may run
    ahead of what was sent by what processes hold unspent (given back when the process stops, ``give_back``),
    and near the limit a send may be refused while another process still holds a few segments; it never lets
    more than the limit be sent."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._take = redis.register_script(_TAKE)
        self._held: dict[str, int] = {}   # counter key -> segments taken and not yet spent, by this process
        self._taking: dict[str, asyncio.Future[None]] = {}   # counter key -> a block being taken now

    async def reserve(self, number: PhoneNumber, segments: int) -> None:
        """Count ``segments`` against today's limit, or raise ``LimitReached`` (counting nothing)."""
        key = keys.segments(number.phone_number, pacific_day())
        while (held := self._held.get(key, 0)) < segments:
            taking = self._taking.get(key)
            if taking is not None:   # another send of this process is taking a block: wait for it, then look
                await asyncio.shield(taking)
                continue
            self._taking[key] = asyncio.get_running_loop().create_future()
            try:
                limit = number.daily_segment_limit or DEFAULT_DAILY_SEGMENTS
                taken = int(await self._take(keys=[key], args=[limit, segments - held, LEASE, COUNTER_TTL_S]))
            finally:
                self._taking.pop(key).set_result(None)
            if not taken:
                raise LimitReached(f"{number.phone_number} reached its daily_segment_limit of {limit} segments for "
                                   f"{pacific_day()} (US Pacific); nothing was sent")
            day = key.rsplit(":", 1)[1]   # what is held of other days is no longer counted anywhere
            self._held = {k: v for k, v in self._held.items() if k.endswith(day)}
            self._held[key] = self._held.get(key, 0) + taken
        self._held[key] = held - segments

    async def refund(self, number: PhoneNumber, segments: int) -> None:
        """Give back segments Twilio did not send (to this process's block: the next send spends them)."""
        key = keys.segments(number.phone_number, pacific_day())
        self._held[key] = self._held.get(key, 0) + segments

    async def give_back(self) -> None:
        """Return the unspent segments of today's blocks to the counters (the process is stopping)."""
        held, self._held = self._held, {}
        try:
            for key, segments in held.items():
                if segments:
                    await self._redis.decrby(key, segments)
        except RedisError as exc:   # Redis is gone as the process stops: those few stay counted for the day
            log.warning("could not give back the unsent segments of today's blocks", extra={"error": str(exc)})

    async def used(self, number: PhoneNumber) -> int:
        return int(await self._redis.get(keys.segments(number.phone_number, pacific_day())) or 0)
