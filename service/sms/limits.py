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

from datetime import datetime
from zoneinfo import ZoneInfo

import phonenumbers
import redis.asyncio as aioredis

from service.errors import InvalidRequest, LimitReached
from service.retell.models import PhoneNumber
from service.storage import keys

PACIFIC = ZoneInfo("America/Los_Angeles")
DEFAULT_DAILY_SEGMENTS = 6_000
DEFAULT_COUNTRIES = ("US",)
COUNTER_TTL_S = 2 * 86_400


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


class DailySegments:
    """Segments sent per number per US-Pacific day, against its ``daily_segment_limit``.

    A reservation is one ``INCRBY``; one that goes over the limit is given back (``DECRBY``) and refused. So
    the counter never stays above the limit, and near it a send that races another may be refused while the
    other's reservation is briefly counted."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

    async def reserve(self, number: PhoneNumber, segments: int) -> None:
        """Count ``segments`` against today's limit, or raise ``LimitReached`` (counting nothing)."""
        limit = number.daily_segment_limit or DEFAULT_DAILY_SEGMENTS
        key = keys.segments(number.phone_number, pacific_day())
        used = int(await self._redis.incrby(key, segments))
        if used == segments:   # the day's first send: the counter is new
            await self._redis.expire(key, COUNTER_TTL_S)
        if used > limit:
            await self._redis.decrby(key, segments)
            raise LimitReached(f"{number.phone_number} reached its daily_segment_limit of {limit} segments for "
                               f"{pacific_day()} (US Pacific); nothing was sent")

    async def refund(self, number: PhoneNumber, segments: int) -> None:
        """Give back segments Twilio did not send."""
        await self._redis.decrby(keys.segments(number.phone_number, pacific_day()), segments)

    async def used(self, number: PhoneNumber) -> int:
        return int(await self._redis.get(keys.segments(number.phone_number, pacific_day())) or 0)
