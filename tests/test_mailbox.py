"""The conversation's mailbox (``service/conversations/queue.py: ConversationQueue.put``, ``take``, ``peek``, and
``service/conversations/items.py``), on a real Redis: its two promises, each text answered once and in the
order it arrived; its cap and what a text refused for it becomes on Twilio's retry; the TTLs of the mailbox
and of the dedupe marker; the session window; and the stored form of an item."""

from __future__ import annotations

import asyncio

import orjson
import pytest
import redis.asyncio as aioredis

from service.address import Conversation
from service.chats.model import TurnResult
from service.chats.store import Chats, Commit
from service.conversations import queue as queue_module
from service.conversations.items import MAX_TEXTS_PER_TURN, Item, ItemKind, Media, next_batch
from service.conversations.queue import ConversationQueue, Enqueued
from service.storage import keys
from service.storage.locks import Hold, Release

from .conftest import AGENT_NUMBER, USER, MakeParley

CONV = Conversation(AGENT_NUMBER, USER)
WHATSAPP = Conversation(AGENT_NUMBER, USER, "whatsapp")
CONSUMER = "test-consumer"


def text(body: str, received_ms: int = 1_000) -> Item:
    return Item(ItemKind.TEXT, received_ms=received_ms, body=body, message_sid="SM" + body)


@pytest.fixture
async def queue(redis: aioredis.Redis) -> ConversationQueue:
    q = ConversationQueue(redis, lock_ttl_ms=5_000)
    await q.ensure_groups()
    return q


@pytest.fixture
def chats(redis: aioredis.Redis) -> Chats:
    return Chats(redis, ttl_s=3_600, lock_ttl_ms=5_000)


async def mailbox(redis: aioredis.Redis, conv: Conversation = CONV) -> list[str]:
    """The bodies waiting in the conversation's mailbox, head first."""
    return [Item.from_json(str(raw)).body for raw in await redis.lrange(keys.mailbox(conv), 0, -1)]


async def fill(queue: ConversationQueue, count: int, conv: Conversation = CONV) -> None:
    for i in range(count):
        assert await queue.put(conv, text(f"t{i}"), dedupe_id=f"SMfill{i}") is Enqueued.ACCEPTED


# The stored form of an item.

FULL = Item(ItemKind.INACTIVITY, received_ms=1_700_000_000_123, body="hello", message_sid="SM42",
            media=(Media("https://api.twilio.com/m/1", "image/jpeg"), Media("https://api.twilio.com/m/2", "audio/ogg")),
            chat_id="chat_abc", timer_score=1_700_000_060_000)


def test_an_item_is_stored_under_fixed_names() -> None:
    """Items outlive a deploy in the mailbox: the JSON names are part of the stored format."""
    assert orjson.loads(FULL.to_json()) == {
        "kind": "inactivity", "received_ms": 1_700_000_000_123, "body": "hello", "message_sid": "SM42",
        "media": [{"url": "https://api.twilio.com/m/1", "content_type": "image/jpeg"},
                  {"url": "https://api.twilio.com/m/2", "content_type": "audio/ogg"}],
        "chat_id": "chat_abc", "timer_score": 1_700_000_060_000,
    }
    # What is empty is left out; a timer score of 0 is a score, not an absence.
    assert orjson.loads(Item(ItemKind.TEXT, received_ms=5).to_json()) == {"kind": "text", "received_ms": 5}
    assert orjson.loads(Item(ItemKind.INACTIVITY, received_ms=5, timer_score=0).to_json()) == {
        "kind": "inactivity", "received_ms": 5, "timer_score": 0}


def test_an_item_reads_back_as_written() -> None:
    stored = ('{"kind":"inactivity","received_ms":1700000000123,"body":"hello","message_sid":"SM42",'
              '"media":[{"url":"https://api.twilio.com/m/1","content_type":"image/jpeg"},'
              '{"url":"https://api.twilio.com/m/2","content_type":"audio/ogg"}],'
              '"chat_id":"chat_abc","timer_score":1700000060000}')
    assert Item.from_json(stored) == FULL
    assert Item.from_json(FULL.to_json()) == FULL
    bare = Item.from_json('{"kind":"opt_out","received_ms":"7"}')
    assert bare == Item(ItemKind.OPT_OUT, received_ms=7)
    assert (bare.body, bare.message_sid, bare.media, bare.chat_id, bare.timer_score) == ("", None, (), None, None)
    zero = Item(ItemKind.INACTIVITY, received_ms=5, chat_id="c", timer_score=0)
    assert Item.from_json(zero.to_json()) == zero


def test_a_turn_takes_the_head_of_the_mailbox() -> None:
    stop = Item(ItemKind.OPT_OUT, received_ms=1)
    texts = [text(str(i)) for i in range(MAX_TEXTS_PER_TURN + 5)]
    assert MAX_TEXTS_PER_TURN == 20
    assert next_batch(texts) == texts[:20]
    assert next_batch([*texts[:20], stop]) == texts[:20]
    assert next_batch([*texts[:19], stop]) == texts[:19]
    assert next_batch([stop, stop, text("a")]) == [stop]
    assert next_batch([text("a"), stop]) == [text("a")]
    assert next_batch([]) == []


# Once only, in order.

async def drain(queue: ConversationQueue, chats: Chats, arriving: list[tuple[str, str]] | None = None) -> list[str]:
    """Run turns on ``CONV`` the way a worker does (take, then peek while the lock is kept, each turn's commit
    consuming its batch) until the mailbox is empty; ``arriving`` texts are put while the first turn runs.
    The bodies each turn answered, in order."""
    [wakeup] = await queue.read(CONSUMER, [keys.wakeups(CONV.shard)], 1, block_ms=100)
    hold = Hold(CONV, queue.new_token(), wakeup.entry_id)
    read = await queue.take(CONV, hold.token)
    assert read.taken
    answered: list[str] = []
    for _ in range(50):
        batch = next_batch(read.items)
        assert batch, "a turn with nothing to do"
        answered += [item.body for item in batch]
        for body, sid in arriving or []:
            await queue.put(CONV, text(body), dedupe_id=sid)
        arriving = None
        outcome = await chats.commit(Commit(None, CONV, TurnResult(consumed=len(batch))), hold=hold)
        if outcome is Release.RELEASED:
            return answered
        assert outcome is Release.MORE_WORK
        read = await queue.peek(CONV)
        assert read.taken
    raise AssertionError("the mailbox never emptied")


async def test_each_text_is_answered_once_and_in_arrival_order(
    queue: ConversationQueue, chats: Chats, redis: aioredis.Redis,
) -> None:
    sent = [f"m{i}" for i in range(30)]
    for i, body in enumerate(sent):
        assert await queue.put(CONV, text(body), dedupe_id=f"SM{i}") is Enqueued.ACCEPTED
        # Twilio's retries, of this text and of an earlier one, land nowhere.
        assert await queue.put(CONV, text(body), dedupe_id=f"SM{i}") is Enqueued.DUPLICATE
        assert await queue.put(CONV, text("again"), dedupe_id=f"SM{i // 2}") is Enqueued.DUPLICATE
    late = [("late1", "SM100"), ("m3 retried", "SM3"), ("late2", "SM101")]
    answered = await drain(queue, chats, arriving=late)
    assert answered == [*sent, "late1", "late2"]
    assert await redis.exists(keys.mailbox(CONV), keys.lock(CONV)) == 0
    assert await redis.xlen(keys.wakeups(CONV.shard)) == len(answered)   # one wake-up per text accepted
    # The wake-up the turns answered is acknowledged; the others, never read here, find the mailbox empty.
    assert (await redis.xpending(keys.wakeups(CONV.shard), keys.WORKER_GROUP))["pending"] == 0


async def test_concurrent_retries_of_one_text_store_it_once(queue: ConversationQueue, redis: aioredis.Redis) -> None:
    sids = [f"SM{i}" for i in range(10)]
    results = await asyncio.gather(*[queue.put(CONV, text(sid), dedupe_id=sid) for sid in sids for _ in range(4)])
    assert results.count(Enqueued.ACCEPTED) == len(sids)
    assert results.count(Enqueued.DUPLICATE) == 3 * len(sids)
    assert sorted(await mailbox(redis)) == sorted(sids)
    assert await redis.xlen(keys.wakeups(CONV.shard)) == len(sids)


async def test_dedupe_is_per_conversation(queue: ConversationQueue, redis: aioredis.Redis) -> None:
    assert await queue.put(CONV, text("sms"), dedupe_id="SM1") is Enqueued.ACCEPTED
    assert await queue.put(WHATSAPP, text("wa"), dedupe_id="SM1") is Enqueued.ACCEPTED
    assert await mailbox(redis) == ["sms"]
    assert await mailbox(redis, WHATSAPP) == ["wa"]


async def test_one_taker_at_a_time_and_the_loser_still_sees_the_mailbox(
    queue: ConversationQueue, redis: aioredis.Redis,
) -> None:
    await queue.put(CONV, text("a"), dedupe_id="SM1")
    await queue.put(CONV, text("b"), dedupe_id="SM2")
    await queue.put(CONV, text("c"), dedupe_id="SM3")
    tokens = [queue.new_token() for _ in range(5)]
    reads = await asyncio.gather(*[queue.take(CONV, token) for token in tokens])
    winners = [token for token, read in zip(tokens, reads, strict=True) if read.taken]
    assert len(winners) == 1
    assert await redis.get(keys.lock(CONV)) == winners[0]
    for read in reads:
        assert [item.body for item in read.items] == ["a", "b", "c"]


# The cap, and the retry of a text refused for it.

async def test_the_mailbox_takes_exactly_its_cap_then_refuses_one_more(
    queue: ConversationQueue, redis: aioredis.Redis,
) -> None:
    assert keys.MAILBOX_CAP == 200
    await fill(queue, keys.MAILBOX_CAP - 1)
    assert await queue.put(CONV, text("last"), dedupe_id="SMlast") is Enqueued.ACCEPTED   # the 200th
    assert await queue.put(CONV, text("over"), dedupe_id="SMover") is Enqueued.MAILBOX_FULL  # the 201st
    waiting = await mailbox(redis)
    assert len(waiting) == keys.MAILBOX_CAP
    assert waiting[0] == "t0" and waiting[-1] == "last"   # the refused one is gone, nothing else
    assert await redis.xlen(keys.wakeups(CONV.shard)) == keys.MAILBOX_CAP   # and woke nobody
    assert not await redis.exists(keys.seen(CONV, "SMover"))
    # The cap counts what waits: one answered makes room for exactly one.
    await redis.lpop(keys.mailbox(CONV))
    assert await queue.put(CONV, text("fits"), dedupe_id="SMfits") is Enqueued.ACCEPTED
    assert await queue.put(CONV, text("over2"), dedupe_id="SMover2") is Enqueued.MAILBOX_FULL
    assert (await mailbox(redis))[-1] == "fits"


async def test_a_text_refused_for_a_full_mailbox_lands_once_on_a_retry_after_room(
    queue: ConversationQueue, redis: aioredis.Redis,
) -> None:
    await fill(queue, keys.MAILBOX_CAP)
    assert await queue.put(CONV, text("late"), dedupe_id="SMlate") is Enqueued.MAILBOX_FULL
    # Twilio retries while it is still full: still refused, not mistaken for a duplicate.
    assert await queue.put(CONV, text("late"), dedupe_id="SMlate") is Enqueued.MAILBOX_FULL
    await redis.ltrim(keys.mailbox(CONV), 2, -1)   # a turn answered two
    assert await queue.put(CONV, text("late"), dedupe_id="SMlate") is Enqueued.ACCEPTED
    assert await queue.put(CONV, text("late"), dedupe_id="SMlate") is Enqueued.DUPLICATE
    waiting = await mailbox(redis)
    assert waiting.count("late") == 1 and waiting[-1] == "late"
    assert len(waiting) == keys.MAILBOX_CAP - 1


async def test_the_webhook_answers_503_for_a_full_mailbox_and_takes_twilios_retry_once(
    make_parley: MakeParley, redis: aioredis.Redis,
) -> None:
    parley = await make_parley(run_workers=False)
    queue = ConversationQueue(redis, lock_ttl_ms=5_000)
    await fill(queue, keys.MAILBOX_CAP)
    refused = await parley.text("late", sid="SMlate")
    assert refused.status == 503
    assert (await parley.text("late", sid="SMlate")).status == 503
    assert "late" not in await mailbox(redis)
    await redis.lpop(keys.mailbox(CONV))          # a turn answered one
    for _ in range(2):                            # Twilio's retry, then a retry of that
        response = await parley.text("late", sid="SMlate")
        assert response.status == 200, await response.text()
    waiting = await mailbox(redis)
    assert waiting.count("late") == 1 and waiting[-1] == "late" and len(waiting) == keys.MAILBOX_CAP


# TTLs.

async def test_the_mailbox_and_the_dedupe_marker_live_a_day(queue: ConversationQueue, redis: aioredis.Redis) -> None:
    assert keys.MAILBOX_TTL_S == 86_400 and keys.SEEN_TTL_S == 86_400
    await queue.put(CONV, text("hi"), dedupe_id="SM1")
    assert keys.SEEN_TTL_S - 1 <= await redis.ttl(keys.seen(CONV, "SM1")) <= keys.SEEN_TTL_S
    assert keys.MAILBOX_TTL_S - 1 <= await redis.ttl(keys.mailbox(CONV)) <= keys.MAILBOX_TTL_S
    # Every push gives the mailbox its full day again; a duplicate changes nothing.
    await redis.expire(keys.mailbox(CONV), 60)
    await redis.expire(keys.seen(CONV, "SM1"), 60)
    assert await queue.put(CONV, text("hi"), dedupe_id="SM1") is Enqueued.DUPLICATE
    assert await redis.ttl(keys.mailbox(CONV)) <= 60
    assert await redis.ttl(keys.seen(CONV, "SM1")) <= 60
    assert await queue.put(CONV, text("two"), dedupe_id="SM2") is Enqueued.ACCEPTED
    assert keys.MAILBOX_TTL_S - 1 <= await redis.ttl(keys.mailbox(CONV)) <= keys.MAILBOX_TTL_S
    assert keys.SEEN_TTL_S - 1 <= await redis.ttl(keys.seen(CONV, "SM2")) <= keys.SEEN_TTL_S


async def test_a_sid_is_taken_again_once_its_marker_is_gone(queue: ConversationQueue, redis: aioredis.Redis) -> None:
    await queue.put(CONV, text("hi"), dedupe_id="SM1")
    await redis.delete(keys.seen(CONV, "SM1"))   # as its TTL does after a day
    assert await queue.put(CONV, text("hi"), dedupe_id="SM1") is Enqueued.ACCEPTED
    assert await mailbox(redis) == ["hi", "hi"]


# The session window.

async def test_a_text_on_a_session_channel_opens_the_window(
    queue: ConversationQueue, redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(queue_module, "now_ms", lambda: 1_234_567)
    await queue.put(CONV, text("sms"), dedupe_id="SM1")
    assert not await redis.exists(keys.session(CONV))
    assert not await queue.in_session(CONV)
    await queue.put(WHATSAPP, text("wa"), dedupe_id="SM2", session_ttl_s=86_400)
    assert await redis.get(keys.session(WHATSAPP)) == "1234567"
    assert 86_399 <= await redis.ttl(keys.session(WHATSAPP)) <= 86_400
    assert await queue.in_session(WHATSAPP)
    assert not await queue.in_session(CONV)


async def test_a_message_that_takes_no_turn_opens_the_window_too(
    queue: ConversationQueue, redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(queue_module, "now_ms", lambda: 7_654_321)
    assert not await queue.in_session(WHATSAPP)
    await queue.note_session(WHATSAPP, 3_600)
    assert await queue.in_session(WHATSAPP)
    assert await redis.get(keys.session(WHATSAPP)) == "7654321"
    assert 3_599 <= await redis.ttl(keys.session(WHATSAPP)) <= 3_600
    assert not await redis.exists(keys.mailbox(WHATSAPP))   # nothing to answer
    assert not await queue.in_session(CONV)


# Reading the mailbox.

async def test_take_reads_the_whole_mailbox_and_the_keys_asked_for(
    queue: ConversationQueue, redis: aioredis.Redis,
) -> None:
    for body in ("a", "b", "c", "d"):
        await queue.put(CONV, text(body), dedupe_id="SM" + body)
    await redis.set(keys.current_chat(CONV), "chat_1")
    read = await queue.take(CONV, "token-1", with_keys=[keys.current_chat(CONV), keys.optout(CONV)])
    assert read.taken
    assert [item.body for item in read.items] == ["a", "b", "c", "d"]
    assert read.items[0] == text("a")
    assert read.values == ["chat_1", None]
    assert (await queue.take(CONV, "token-2")).values == []


async def test_take_sets_the_lock_with_its_ttl_and_never_steals_it(
    queue: ConversationQueue, redis: aioredis.Redis,
) -> None:
    await queue.put(CONV, text("a"), dedupe_id="SM1")
    assert (await queue.take(CONV, "first")).taken
    assert await redis.get(keys.lock(CONV)) == "first"
    assert 4_000 < await redis.pttl(keys.lock(CONV)) <= 5_000
    await redis.pexpire(keys.lock(CONV), 3_000)
    second = await queue.take(CONV, "second")
    assert not second.taken
    assert [item.body for item in second.items] == ["a"]
    assert await redis.get(keys.lock(CONV)) == "first"
    assert await redis.pttl(keys.lock(CONV)) <= 3_000   # not renewed by the loser either


async def test_peek_reads_without_touching_the_lock(queue: ConversationQueue, redis: aioredis.Redis) -> None:
    for body in ("a", "b", "c"):
        await queue.put(CONV, text(body), dedupe_id="SM" + body)
    await redis.set(keys.optout(CONV), "1")
    read = await queue.peek(CONV, with_keys=[keys.current_chat(CONV), keys.optout(CONV)])
    assert read.taken
    assert [item.body for item in read.items] == ["a", "b", "c"]
    assert read.values == [None, "1"]
    assert not await redis.exists(keys.lock(CONV))
    await redis.set(keys.lock(CONV), "holder")
    bare = await queue.peek(CONV)
    assert bare.taken and bare.values == [] and len(bare.items) == 3
    assert await redis.get(keys.lock(CONV)) == "holder"
    empty = await queue.peek(WHATSAPP)
    assert empty.taken and empty.items == [] and empty.values == []
