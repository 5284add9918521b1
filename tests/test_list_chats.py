"""Listing chats across the 16 partitions: every chat once and in order, ties, filters from the indexes, chats
deleted mid-paging, old pagination keys, the indexing of chats written before the indexes, and a page's cost
(index entries and hashes read, counted at the Redis client) that does not grow with its depth."""

from __future__ import annotations

import asyncio
import base64
import random
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from service.chats import query as query_module
from service.chats.model import Chat, ChatStatus, ChatType, Direction, EndReason, TurnResult
from service.chats.query import ChatQuery, Cursor, matches
from service.chats.store import Chats, Commit
from service.clock import now_ms
from service.retell.requests import ChatFilter
from service.storage import keys

from .conftest import MakeParley

TTL_S = 86_400
BASE = now_ms() - 3_600_000


def a_chat(ts: int, *, agent: str = "a1", version: int = 0, chat_type: ChatType = ChatType.API,
           status: ChatStatus = ChatStatus.ONGOING, n: int = 0) -> Chat:
    sms = chat_type is ChatType.SMS
    user, number = f"+1415{n:07d}", "+15035550100"
    # An SMS chat lives in its conversation's partition, as keys.new_chat_id draws it for Parley.
    chat_id = keys.new_chat_id(keys.Conversation(number, user).shard if sms else None)
    return Chat(chat_id=chat_id, agent_id=agent, version=version, chat_type=chat_type, start_timestamp=ts,
                chat_status=status, from_number=user if sms else None, to_number=number if sms else None,
                direction=Direction.INBOUND if sms else None)


async def store(chats: Chats, all_chats: list[Chat]) -> None:
    for start in range(0, len(all_chats), 200):
        await asyncio.gather(*(chats.create(c) for c in all_chats[start:start + 200]))


def expected(all_chats: list[Chat], f: ChatFilter | None, descending: bool) -> list[str]:
    kept = sorted((c for c in all_chats if matches(c, f)), key=lambda c: (c.start_timestamp, c.chat_id),
                  reverse=descending)
    return [c.chat_id for c in kept]


async def walk(q: ChatQuery, f: ChatFilter | None, *, descending: bool, limit: int,
               between: Callable[[int, Cursor], Any] | None = None) -> list[str]:
    """Every page, following each page's key through its opaque string; ``between`` runs after each page."""
    seen: list[str] = []
    cursor: Cursor | None = None
    for number in range(100_000):
        page = await q.page(f, descending=descending, limit=limit, cursor=cursor)
        assert len(page.chats) <= limit
        seen += [c.chat_id for c in page.chats]
        if not page.has_more:
            assert page.cursor is None
            return seen
        assert page.cursor is not None
        cursor = Cursor.decode(page.cursor.encode())
        if between is not None:
            await between(number, cursor)
    raise AssertionError("the listing never ended")


def criteria(**fields: Any) -> ChatFilter:
    return ChatFilter.model_validate(fields)


def enum(*values: str) -> dict[str, Any]:
    return {"type": "enum", "op": "in", "value": list(values)}


@pytest.fixture
def chats(redis: aioredis.Redis) -> Chats:
    return Chats(redis, ttl_s=TTL_S, lock_ttl_ms=30_000)


async def test_300_chats_are_paged_once_each_and_in_order_both_ways(redis: aioredis.Redis, chats: Chats) -> None:
    rng = random.Random(1)
    all_chats = [a_chat(BASE + rng.randrange(0, 100_000)) for _ in range(300)]
    await store(chats, all_chats)
    assert len({keys.shard_of(c.chat_id) for c in all_chats}) == keys.SHARDS
    q = ChatQuery(redis, ttl_s=TTL_S)
    for descending in (False, True):
        listed = await walk(q, None, descending=descending, limit=50)
        assert listed == expected(all_chats, None, descending)


async def test_chats_that_share_a_start_time_are_paged_once_each(redis: aioredis.Redis, chats: Chats) -> None:
    # 300 chats in three bursts of one millisecond each: the cursor sits inside a run of ties on most pages.
    all_chats = [a_chat(BASE + 1000 * (i % 3)) for i in range(300)]
    await store(chats, all_chats)
    q = ChatQuery(redis, ttl_s=TTL_S)
    for descending in (False, True):
        for limit in (7, 50):
            assert await walk(q, None, descending=descending, limit=limit) == expected(all_chats, None, descending)
    page = await q.page(None, descending=False, limit=100, cursor=None)
    assert page.cursor is not None and page.cursor.ties   # the next page skips the run by offset


FILTERS: list[dict[str, Any]] = [
    {"agent": [{"agent_id": "a1"}]},
    {"agent": [{"agent_id": "a2"}, {"agent_id": "a3"}]},
    {"agent": [{"agent_id": "a2", "version": [1]}]},
    {"agent": []},
    {"chat_status": enum("ongoing")},
    {"chat_status": enum("ended")},
    {"chat_status": enum("ongoing", "ended")},
    {"chat_status": enum("error")},
    {"chat_type": enum("sms_chat")},
    {"chat_type": enum("api_chat", "sms_chat")},
    {"agent": [{"agent_id": "a1"}], "chat_status": enum("ongoing")},
    {"agent": [{"agent_id": "a3"}], "chat_status": enum("ended"), "chat_type": enum("api_chat")},
    {"start_timestamp": {"type": "range", "op": "bt", "value": [BASE + 20_000, BASE + 60_000]}},
    {"start_timestamp": {"type": "number", "op": "gt", "value": BASE + 50_000}, "agent": [{"agent_id": "a2"}]},
    {"start_timestamp": {"type": "number", "op": "lt", "value": BASE + 30_000}, "chat_status": enum("ongoing")},
    {"start_timestamp": {"type": "number", "op": "ne", "value": BASE + 5}},
    {"chat_id": {"type": "string", "op": "sw", "value": "chat_a"}},
]


async def test_filters_served_from_the_indexes_list_and_count_what_they_should(
    redis: aioredis.Redis, chats: Chats,
) -> None:
    rng = random.Random(2)
    all_chats = [a_chat(BASE + rng.randrange(0, 100) * 1000, agent=rng.choice(["a1", "a2", "a2", "a3"]),
                        version=rng.choice([0, 1]), chat_type=rng.choice(list(ChatType)), n=i) for i in range(400)]
    await store(chats, all_chats)
    for chat in all_chats[::3]:   # end a third of them the way every end goes: the commit script
        await chats.commit(Commit(chat, None, TurnResult(end=EndReason.API, end_timestamp=now_ms())))
    q = ChatQuery(redis, ttl_s=TTL_S)
    for fields in FILTERS:
        f = criteria(**fields)
        for descending in (False, True):
            assert await walk(q, f, descending=descending, limit=9) == expected(all_chats, f, descending), fields
        page = await q.page(f, descending=True, limit=9, cursor=None, count_total=True)
        assert page.total == len(expected(all_chats, f, False)), fields
    one = all_chats[7]
    f = criteria(chat_id={"type": "string", "op": "eq", "value": one.chat_id})
    page = await q.page(f, descending=True, limit=9, cursor=None, count_total=True)
    assert [c.chat_id for c in page.chats] == [one.chat_id] and page.total == 1 and not page.has_more


async def test_ending_and_deleting_a_chat_keep_every_index_right(redis: aioredis.Redis, chats: Chats) -> None:
    chat = a_chat(BASE, agent="ag", chat_type=ChatType.SMS)
    await chats.create(chat)
    shard = keys.shard_of(chat.chat_id)
    indexes = [keys.chats(shard), keys.chats_by_agent(shard, "ag"), keys.chats_by_type(shard, "sms_chat"),
               keys.chats_ongoing(shard)]
    assert [await redis.zscore(k, chat.chat_id) for k in indexes] == [BASE] * 4
    assert all([await redis.ttl(k) > 0 for k in indexes[1:]])
    await chats.commit(Commit(chat, chat.conversation, TurnResult(end=EndReason.API, end_timestamp=now_ms())))
    assert [await redis.zscore(k, chat.chat_id) for k in indexes] == [BASE] * 3 + [None]
    await chats.delete(chat)
    assert [await redis.zscore(k, chat.chat_id) for k in indexes] == [None] * 4


async def test_chats_deleted_mid_paging_are_skipped_and_nothing_else_is(redis: aioredis.Redis, chats: Chats) -> None:
    rng = random.Random(3)
    # Runs of ties too: deleting a chat before the cursor in a run moves the rest of the run (the anchor check).
    all_chats = [a_chat(BASE + rng.randrange(0, 40) * 1000) for _ in range(300)]
    await store(chats, all_chats)
    by_id = {c.chat_id: c for c in all_chats}
    deleted: set[str] = set()
    q = ChatQuery(redis, ttl_s=TTL_S)
    for descending in (False, True):
        order = expected([c for c in all_chats if c.chat_id not in deleted], None, descending)

        async def delete_some(_: int, cursor: Cursor, order: list[str] = order) -> None:
            at = order.index(cursor.chat_id)
            for chat_id in {order[at], order[max(0, at - 3)], order[min(len(order) - 1, at + 5)]} - deleted:
                deleted.add(chat_id)
                await chats.delete(by_id[chat_id])

        listed = await walk(q, None, descending=descending, limit=20, between=delete_some)
        assert len(listed) == len(set(listed))
        assert set(order) - set(listed) <= deleted          # only deleted chats are missing
        assert [i for i in order if i in set(listed)] == listed   # and the rest came in order


async def test_a_chat_deleted_mid_paging_through_the_api(make_parley: MakeParley) -> None:
    parley = await make_parley()
    chats = Chats(parley.redis, ttl_s=parley.settings.chat_ttl_s, lock_ttl_ms=30_000)
    all_chats = [a_chat(BASE + i) for i in range(60)]
    await store(chats, all_chats)
    first = await parley.api("POST", "/v3/list-chats", json={"limit": 25, "sort_order": "ascending"})
    page = await first.json()
    await chats.delete(all_chats[24])   # the chat the key points at
    await chats.delete(all_chats[30])   # and one ahead
    seen = [c["chat_id"] for c in page["items"]]
    while page["has_more"]:
        response = await parley.api("POST", "/v3/list-chats", json={
            "limit": 25, "sort_order": "ascending", "pagination_key": page["pagination_key"]})
        assert response.status == 200, await response.text()
        page = await response.json()
        seen += [c["chat_id"] for c in page["items"]]
    assert seen == [c.chat_id for i, c in enumerate(all_chats) if i != 30]


async def test_a_key_in_the_first_format_still_works(redis: aioredis.Redis, chats: Chats) -> None:
    all_chats = [a_chat(BASE + i) for i in range(30)]
    await store(chats, all_chats)
    old = base64.urlsafe_b64encode(orjson.dumps([BASE + 9, all_chats[9].chat_id])).decode().rstrip("=")
    page = await ChatQuery(redis, ttl_s=TTL_S).page(None, descending=False, limit=5, cursor=Cursor.decode(old))
    assert [c.chat_id for c in page.chats] == [c.chat_id for c in all_chats[10:15]]


async def test_a_filter_no_index_serves_is_scanned_within_a_budget(
    redis: aioredis.Redis, chats: Chats, monkeypatch: pytest.MonkeyPatch,
) -> None:
    all_chats = [a_chat(BASE + i, version=1 if i % 40 == 0 else 0) for i in range(400)]
    await store(chats, all_chats)
    monkeypatch.setattr(query_module, "SCAN_BUDGET", 30)
    f = criteria(agent=[{"agent_id": "a1", "version": [1]}])
    q = ChatQuery(redis, ttl_s=TTL_S)
    short = await q.page(f, descending=False, limit=5, cursor=None)
    assert short.has_more and len(short.chats) < 5   # past the budget: a short page, and a key to go on
    assert await walk(q, f, descending=False, limit=5) == expected(all_chats, f, False)
    assert await walk(q, f, descending=True, limit=5) == expected(all_chats, f, True)


async def test_the_total_is_exact_or_bounded(
    redis: aioredis.Redis, chats: Chats, monkeypatch: pytest.MonkeyPatch,
) -> None:
    all_chats = [a_chat(BASE + i, version=i % 2) for i in range(100)]
    await store(chats, all_chats)
    q = ChatQuery(redis, ttl_s=TTL_S)
    f = criteria(agent=[{"agent_id": "a1", "version": [1]}])
    assert (await q.page(f, descending=True, limit=5, cursor=None, count_total=True)).total == 50
    monkeypatch.setattr(query_module, "TOTAL_SCAN_CAP", 10)
    # Past the cap the count is the index's: an upper bound.
    assert (await q.page(f, descending=True, limit=5, cursor=None, count_total=True)).total == 100


@pytest.mark.parametrize("created_since", [False, True])
async def test_chats_written_before_the_indexes_are_indexed_once(
    redis: aioredis.Redis, chats: Chats, created_since: bool,
) -> None:
    all_chats = [a_chat(BASE + i, agent=f"a{i % 3}", chat_type=list(ChatType)[i % 2]) for i in range(90)]
    await store(chats, all_chats)
    for chat in all_chats[:30]:
        await chats.commit(Commit(chat, None, TurnResult(end=EndReason.API, end_timestamp=now_ms())))
    for shard in range(keys.SHARDS):   # as an older Parley left them: only {S}:chats
        await redis.delete(keys.chats_ongoing(shard), keys.chats_indexed(shard),
                           *(keys.chats_by_agent(shard, f"a{i}") for i in range(3)),
                           *(keys.chats_by_type(shard, t.value) for t in ChatType))
    if created_since:   # the upgraded Parley created chats since: they are indexed, and mark where that began
        newer = [a_chat(BASE + 7_200_000 + i, agent=f"a{i % 3}") for i in range(40)]
        await store(chats, newer)
        all_chats += newer
        assert any([await redis.get(keys.chats_indexed(s)) not in (None, "0") for s in range(keys.SHARDS)])
    query_module._INDEXED.pop(redis, None)
    q = ChatQuery(redis, ttl_s=TTL_S)
    for fields in ({"agent": [{"agent_id": "a1"}]}, {"chat_status": enum("ongoing")},
                   {"chat_type": enum("sms_chat")}, {"chat_status": enum("ended")}):
        f = criteria(**fields)
        assert await walk(q, f, descending=True, limit=8) == expected(all_chats, f, True), fields
    assert [await redis.get(keys.chats_indexed(s)) for s in range(keys.SHARDS)] == ["0"] * keys.SHARDS
    assert await redis.ttl(keys.chats_by_agent(keys.shard_of(all_chats[0].chat_id), "a0")) > 0


# ------------------------------------------------------------------------------------------------ the cost


class Reads(Counter[str]):
    """Entries Redis answered, by command, counted in the client's reply parsing (pipelines included)."""


@contextmanager
def counting(redis: aioredis.Redis) -> Iterator[Reads]:
    reads = Reads()
    callbacks: Any = redis.response_callbacks   # the cluster client's is shared by its nodes and pipelines
    saved = {name: callbacks.get(name) for name in ("ZRANGE", "HGETALL", "HMGET")}

    def wrap(name: str) -> Any:
        inner = saved[name]

        def callback(response: Any, **options: Any) -> Any:
            parsed = inner(response, **options) if inner is not None else response
            reads[name] += len(parsed) if name == "ZRANGE" else 1
            return parsed
        return callback

    for name in saved:
        callbacks[name] = wrap(name)
    try:
        yield reads
    finally:
        for name, callback in saved.items():
            if callback is None:
                callbacks.pop(name, None)
            else:
                callbacks[name] = callback


async def costs(redis: aioredis.Redis, f: ChatFilter | None, *, limit: int, descending: bool = False) -> list[Reads]:
    """What each page of a whole listing read."""
    q = ChatQuery(redis, ttl_s=TTL_S)
    out: list[Reads] = []
    cursor: Cursor | None = None
    while True:
        with counting(redis) as reads:
            page = await q.page(f, descending=descending, limit=limit, cursor=cursor)
        out.append(reads)
        if not page.has_more:
            return out
        cursor = page.cursor


async def test_a_page_costs_the_same_however_deep_it_is(redis: aioredis.Redis, chats: Chats) -> None:
    rng = random.Random(4)
    all_chats = [a_chat(BASE + rng.randrange(0, 10_000_000)) for _ in range(1_200)]
    await store(chats, all_chats)
    for descending in (False, True):
        pages = await costs(redis, None, limit=50, descending=descending)
        assert len(pages) == 24
        entries = [p["ZRANGE"] for p in pages[:-1]]
        # The first design read 200 entries from each of the 16 partitions for every page (here all 1,200).
        assert max(entries) <= 400, entries
        assert max(entries[-10:]) <= 2 * max(entries[:10]), entries
        assert max(p["HGETALL"] for p in pages) <= 51


async def test_a_page_inside_a_run_of_ties_costs_no_more_the_deeper_it_is(redis: aioredis.Redis, chats: Chats) -> None:
    # 800 chats in one millisecond (a bulk import): the first design re-read the run from its start on every
    # page, 800 entries more every few pages (800, 800, 800, 1600, ... 4000).
    await store(chats, [a_chat(BASE) for _ in range(800)])
    for descending in (False, True):
        pages = await costs(redis, None, limit=50, descending=descending)
        entries = [p["ZRANGE"] for p in pages]
        assert len(pages) == 16 and max(entries) <= 400, entries
        assert max(entries[8:]) <= 1.5 * max(entries[:8]), entries


async def test_a_rare_agent_is_listed_from_its_own_index(redis: aioredis.Redis, chats: Chats) -> None:
    rng = random.Random(5)
    common = [a_chat(BASE + rng.randrange(0, 1_000_000), agent="common") for _ in range(1_000)]
    rare = [a_chat(BASE + rng.randrange(0, 1_000_000), agent="rare") for _ in range(20)]
    await store(chats, common + rare)
    f = criteria(agent=[{"agent_id": "rare"}])
    await ChatQuery(redis, ttl_s=TTL_S).page(f, descending=False, limit=1, cursor=None)   # indexes checked once
    pages = await costs(redis, f, limit=5)
    assert len(pages) == 4
    # The first design scanned the 1,020 chats for each page, 200 at a time, each batch re-reading the last.
    assert max(p["ZRANGE"] for p in pages) <= 100 and max(p["HGETALL"] for p in pages) <= 6
