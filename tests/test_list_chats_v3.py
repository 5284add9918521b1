"""``POST /v3/list-chats`` with the filters retell-sdk 6.2's ``FilterCriteria`` types: ``user_number``,
``agent_number``, ``direction``, ``disconnection_reason``, ``chat_successful``, ``user_sentiment``,
``end_timestamp``, ``chat_id``'s enum form, and ``skip``; each served from an index kept by the write that sets
the field (creation, the commit that ends a chat, the analysis), and the filters Parley cannot serve refused by
name (the filters checked chat by chat: ``test_list_chats_filters.py``)."""

from __future__ import annotations

import random
from typing import Any

import pytest
import redis.asyncio as aioredis
from retell import AsyncRetell, UnprocessableEntityError

from service.address import Conversation
from service.chats import query as query_module
from service.chats.model import Chat, ChatStatus, ChatType, Direction, EndReason, TurnResult
from service.chats.query import ChatQuery, Cursor
from service.chats.store import SENTIMENTS, Chats, Commit, listing_indexes
from service.clock import now_ms
from service.retell.requests import ChatFilter
from service.storage import keys

from .conftest import Parley
from .test_list_chats import costs, criteria, enum, expected, walk

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TTL_S = 30 * 86_400
DAY = 86_400_000
NOW = now_ms()
NUMBERS = ["+15035550100", "+15035550199"]
USERS = ["+14155550101", "+14155550102", "+14155550103", "+447700900123"]


def a_chat(rng: random.Random, n: int) -> Chat:
    """A chat of a mixed population: a fifth API chats, the rest SMS (some on WhatsApp) in both directions."""
    start = NOW - rng.randrange(0, 10 * DAY)
    if rng.random() < 0.2:
        return Chat(chat_id=keys.new_chat_id(), agent_id=rng.choice(["a1", "a2"]), version=0,
                    chat_type=ChatType.API, start_timestamp=start)
    conv = Conversation(rng.choice(NUMBERS), USERS[n % len(USERS)], rng.choice(["sms", "sms", "whatsapp"]))
    direction = rng.choice(list(Direction))
    inbound = direction is Direction.INBOUND
    return Chat(chat_id=keys.new_chat_id(conv.shard), agent_id=rng.choice(["a1", "a2"]), version=0,
                chat_type=ChatType.SMS, start_timestamp=start, direction=direction, channel=conv.channel,
                from_number=conv.user_number if inbound else conv.agent_number,
                to_number=conv.agent_number if inbound else conv.user_number)


async def populate(chats: Chats, count: int, seed: int) -> list[Chat]:
    """``count`` chats; two thirds ended (each way Parley ends one, over the days since they started) through the
    commit script, and most ended ones analysed."""
    rng = random.Random(seed)
    all_chats = [a_chat(rng, n) for n in range(count)]
    for chat in all_chats:
        await chats.create(chat)
    for chat in all_chats:
        if rng.random() < 0.33:
            continue
        end = min(NOW, chat.start_timestamp + rng.randrange(0, 3 * DAY))
        await chats.commit(Commit(chat, chat.conversation, TurnResult(end=rng.choice(list(EndReason)),
                                                                      end_timestamp=end)))
        if rng.random() < 0.8:
            chat.analysis = {"chat_summary": "s", "user_sentiment": rng.choice(SENTIMENTS),
                             "chat_successful": rng.random() < 0.5, "custom_analysis_data": {}}
            await chats.store_analysis(chat)
    return all_chats


def number(op: str, value: str) -> dict[str, Any]:
    return {"type": "string", "op": op, "value": value}


FILTERS: list[dict[str, Any]] = [
    {"user_number": number("eq", USERS[0])},
    {"user_number": number("eq", "whatsapp:" + USERS[1])},
    {"user_number": number("ne", USERS[2])},
    {"user_number": number("eq", "not a number")},
    {"agent_number": number("eq", NUMBERS[1])},
    {"agent_number": number("eq", NUMBERS[0]), "user_number": number("eq", USERS[3])},
    {"direction": enum("inbound")},
    {"direction": enum("inbound", "outbound")},
    {"direction": enum("sideways")},
    {"disconnection_reason": enum("inactivity", "user_requested_dnc")},
    {"disconnection_reason": enum("manual_stopped"), "direction": enum("outbound")},
    {"disconnection_reason": enum("dial_busy")},
    {"chat_successful": {"type": "boolean", "op": "eq", "value": True}},
    {"chat_successful": {"type": "boolean", "op": "eq", "value": False}, "agent": [{"agent_id": "a2"}]},
    {"user_sentiment": enum("Positive", "Neutral")},
    {"user_sentiment": enum("Negative"), "chat_status": enum("ended")},
    {"end_timestamp": {"type": "number", "op": "ge", "value": NOW - 2 * DAY}},
    {"end_timestamp": {"type": "range", "op": "bt", "value": [NOW - 6 * DAY - 3_600_000, NOW - 3 * DAY]}},
    {"end_timestamp": {"type": "number", "op": "lt", "value": NOW - 5 * DAY}, "direction": enum("inbound")},
    {"end_timestamp": {"type": "number", "op": "ne", "value": NOW}},
    {"end_timestamp": {"type": "number", "op": "gt", "value": NOW + 400 * DAY}},
]


@pytest.fixture
def chats(redis: aioredis.Redis) -> Chats:
    return Chats(redis, ttl_s=TTL_S, lock_ttl_ms=30_000)


async def test_the_new_filters_list_and_count_what_they_should(redis: aioredis.Redis, chats: Chats) -> None:
    all_chats = await populate(chats, 300, seed=7)
    q = ChatQuery(redis, ttl_s=TTL_S)
    seen_any = 0
    for fields in FILTERS:
        f = criteria(**fields)
        want = expected(all_chats, f, False)
        seen_any += bool(want)
        for descending in (False, True):
            assert await walk(q, f, descending=descending, limit=7) == expected(all_chats, f, descending), fields
        page = await q.page(f, descending=True, limit=7, cursor=None, count_total=True)
        assert page.total == len(want), fields
    assert seen_any >= len(FILTERS) - 4   # the filters select something, except the ones that cannot


async def test_skip_leaves_out_the_first_chats_from_the_index_or_per_chat(
    redis: aioredis.Redis, chats: Chats, monkeypatch: pytest.MonkeyPatch,
) -> None:
    all_chats = await populate(chats, 200, seed=8)
    q = ChatQuery(redis, ttl_s=TTL_S)
    for fields in ({}, {"direction": enum("inbound")}, {"agent": [{"agent_id": "a1", "version": [0]}]},
                   {"chat_id": enum(*(c.chat_id for c in all_chats[:40]))}):
        f = criteria(**fields) if fields else None
        order = expected(all_chats, f, True)
        for skip in (0, 3, 17, len(order) - 2, len(order) + 5):
            page = await q.page(f, descending=True, limit=10, cursor=None, skip=skip)
            assert [c.chat_id for c in page.chats] == order[skip:skip + 10], (fields, skip)
            assert page.has_more == (len(order) > skip + 10), (fields, skip)
            if page.cursor is not None:   # the key goes on where the skipped page ended
                rest = await walk_from(q, f, page.cursor)
                assert rest == order[skip + 10:], (fields, skip)
    monkeypatch.setattr(query_module, "SCAN_BUDGET", 20)
    f = criteria(agent=[{"agent_id": "a1", "version": [0]}])
    with pytest.raises(Exception, match="skip: 150 chats cannot be skipped"):
        await q.page(f, descending=True, limit=10, cursor=None, skip=150)


async def walk_from(q: ChatQuery, f: ChatFilter | None, cursor: Cursor) -> list[str]:
    seen: list[str] = []
    at: Cursor | None = cursor
    while at is not None:
        page = await q.page(f, descending=True, limit=10, cursor=Cursor.decode(at.encode()))
        seen += [c.chat_id for c in page.chats]
        at = page.cursor
    return seen


async def test_each_write_keeps_its_indexes(redis: aioredis.Redis, chats: Chats) -> None:
    conv = Conversation(NUMBERS[0], USERS[0])
    chat = Chat(chat_id=keys.new_chat_id(conv.shard), agent_id="a1", version=0, chat_type=ChatType.SMS,
                start_timestamp=NOW - DAY, direction=Direction.INBOUND, from_number=USERS[0], to_number=NUMBERS[0])
    shard = keys.shard_of(chat.chat_id)
    await chats.create(chat)
    created = [keys.chats_by_direction(shard, "inbound"), keys.chats_by_user(shard, USERS[0]),
               keys.chats_by_number(shard, NUMBERS[0])]
    assert [await redis.zscore(k, chat.chat_id) for k in created] == [NOW - DAY] * 3
    await chats.commit(Commit(chat, conv, TurnResult(end=EndReason.INACTIVITY, end_timestamp=NOW)))
    ended = [keys.chats_by_reason(shard, "inactivity"), keys.chats_ended_on(shard, keys.end_day(NOW))]
    assert [await redis.zscore(k, chat.chat_id) for k in ended] == [NOW - DAY] * 2
    assert all([await redis.ttl(k) > 0 for k in created + ended])
    chat.analysis = {"user_sentiment": "Negative", "chat_successful": False}
    await chats.store_analysis(chat)
    chat.analysis = {"user_sentiment": "Positive", "chat_successful": True}   # a rerun moves it
    await chats.store_analysis(chat)
    moved = {k: await redis.zscore(k, chat.chat_id) for k in (
        keys.chats_by_sentiment(shard, "Negative"), keys.chats_by_sentiment(shard, "Positive"),
        keys.chats_by_success(shard, False), keys.chats_by_success(shard, True))}
    assert list(moved.values()) == [None, NOW - DAY, None, NOW - DAY]
    stored = await chats.get(chat.chat_id)
    assert stored is not None and set(listing_indexes(stored)) >= set(created + ended)
    await chats.delete(stored)
    for key in listing_indexes(stored):
        assert await redis.zscore(key, chat.chat_id) is None, key


async def test_chats_written_before_these_indexes_are_indexed_once(redis: aioredis.Redis, chats: Chats) -> None:
    all_chats = await populate(chats, 120, seed=9)
    stored = [await chats.get(c.chat_id) for c in all_chats]
    for chat in stored:   # as the release before left them: {S}:chats and the agent, type and ongoing indexes
        assert chat is not None
        newer = set(listing_indexes(chat)[3:]) - {keys.chats_ongoing(keys.shard_of(chat.chat_id))}
        if newer:
            await redis.delete(*newer)
    await redis.delete(*(keys.chats_indexed(s) for s in range(keys.SHARDS)))
    query_module._INDEXED.pop(redis, None)
    q = ChatQuery(redis, ttl_s=TTL_S)
    for fields in FILTERS[:2] + FILTERS[6:7] + FILTERS[9:10] + FILTERS[12:13] + FILTERS[14:15] + FILTERS[16:17]:
        f = criteria(**fields)
        assert await walk(q, f, descending=True, limit=9) == expected(all_chats, f, True), fields
    assert [await redis.get(keys.chats_indexed(s)) for s in range(keys.SHARDS)] == ["0"] * keys.SHARDS


async def test_one_users_chats_are_read_from_their_index(redis: aioredis.Redis, chats: Chats) -> None:
    rng = random.Random(10)
    crowd = [a_chat(rng, n) for n in range(600)]
    conv = Conversation(NUMBERS[0], "+12065550177")
    rare = [Chat(chat_id=keys.new_chat_id(conv.shard), agent_id="a1", version=0, chat_type=ChatType.SMS,
                 start_timestamp=NOW - i * 1000, direction=Direction.OUTBOUND, from_number=NUMBERS[0],
                 to_number="+12065550177") for i in range(12)]
    for chat in crowd + rare:
        await chats.create(chat)
    f = criteria(user_number=number("eq", "+12065550177"))
    await ChatQuery(redis, ttl_s=TTL_S).page(f, descending=False, limit=1, cursor=None)   # indexes checked once
    pages = await costs(redis, f, limit=5)
    assert len(pages) == 3
    # A scan would read the 612 chats; the user's index holds 12.
    assert max(p["ZRANGE"] for p in pages) <= 12 and max(p["HGETALL"] for p in pages) <= 6


# ----------------------------------------------------------------------------------------- through the SDK


async def test_the_sdk_lists_with_every_new_filter(parley: Parley, retell: AsyncRetell) -> None:
    chats = Chats(parley.redis, ttl_s=parley.settings.chat_ttl_s, lock_ttl_ms=30_000)
    all_chats = await populate(chats, 80, seed=11)
    sdk_filters: list[Any] = [
        {"user_number": {"type": "string", "op": "eq", "value": USERS[0]}},
        {"agent_number": {"type": "string", "op": "eq", "value": NUMBERS[0]}},
        {"direction": {"type": "enum", "op": "in", "value": ["outbound"]}},
        {"disconnection_reason": {"type": "enum", "op": "in", "value": ["inactivity", "agent_hangup"]}},
        {"chat_successful": {"type": "boolean", "op": "eq", "value": True}},
        {"user_sentiment": {"type": "enum", "op": "in", "value": ["Positive"]}},
        {"end_timestamp": {"type": "range", "op": "bt", "value": [NOW - 4 * DAY, NOW]}},
        {"chat_id": {"type": "enum", "op": "in", "value": [c.chat_id for c in all_chats[:5]]}},
    ]
    for filter_criteria in sdk_filters:
        want = expected(all_chats, ChatFilter.model_validate(filter_criteria), True)
        got: list[str] = []
        page = await retell.chat.list(filter_criteria=filter_criteria, limit=6, include_total=True)
        assert page.total == len(want), filter_criteria
        got += [c.chat_id for c in page.items]
        while page.has_more and page.pagination_key:
            page = await retell.chat.list(filter_criteria=filter_criteria, limit=6, pagination_key=page.pagination_key)
            got += [c.chat_id for c in page.items]
        assert got == want and want, filter_criteria
    everything = expected(all_chats, None, True)
    skipped = await retell.chat.list(skip=10, limit=5)
    assert [c.chat_id for c in skipped.items] == everything[10:15]
    first = (await retell.chat.list(filter_criteria={"chat_id": {"type": "enum", "op": "in",
                                                                 "value": [everything[3]]}})).items[0]
    assert first.chat_id == everything[3] and first.transcript is None


@pytest.mark.parametrize(("body", "named"), [
    ({"filter_criteria": {"custom_analysis_data": [{"type": "present", "op": "pr"}]}}, "key"),
    ({"filter_criteria": {"user_number": {"type": "string", "op": "co", "value": "415"}}}, "user_number"),
    ({"filter_criteria": {"agent_number": {"type": "string", "op": "sw", "value": "+1"}}}, "agent_number"),
    ({"skip": 5, "pagination_key": "abc"}, "skip"),
    ({"skip": 10_001}, "skip"),
])
async def test_what_parley_cannot_serve_is_refused_by_name(parley: Parley, body: dict[str, Any], named: str) -> None:
    response = await parley.api("POST", "/v3/list-chats", json=body)
    assert response.status == 422, await response.text()
    assert named in (await response.json())["message"]


async def test_the_sdk_sees_a_refused_filter_as_its_422(retell: AsyncRetell) -> None:
    with pytest.raises(UnprocessableEntityError, match="user_number"):
        await retell.chat.list(filter_criteria={"user_number": {"type": "string", "op": "co", "value": "415"}})


async def test_the_old_list_route_still_works(parley: Parley, retell: AsyncRetell) -> None:
    chat = await retell.chat.create(agent_id="frontdesk")
    response = await parley.api("GET", "/list-chat")
    assert response.status == 200
    assert [c["chat_id"] for c in await response.json()] == [chat.chat_id]
    assert ChatStatus.ONGOING.value == (await response.json())[0]["chat_status"]
