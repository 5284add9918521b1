"""The conversation queue's invariants (``service/conversations/queue.py``), driven on a real Redis: the
typed commit and its fence, holds taken by the API, the hand-back that wakes a worker, lock renewal."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from service.address import Conversation, address, split_address
from service.chats.model import Chat, ChatType, Direction, Message, Role, TurnResult
from service.chats.store import Chats, Commit
from service.clock import now_ms
from service.conversations.items import Item, ItemKind, next_batch
from service.conversations.queue import BUSY, ConversationQueue, Enqueued
from service.errors import Conflict
from service.storage import keys
from service.storage.locks import Hold, Release

CONV = Conversation("+15035550100", "+14155550123")
CONSUMER = "test-consumer"


def text(body: str) -> Item:
    return Item(ItemKind.TEXT, received_ms=now_ms(), body=body, message_sid="SM" + body)


@pytest.fixture
async def queue(redis: aioredis.Redis) -> ConversationQueue:
    q = ConversationQueue(redis, lock_ttl_ms=5_000)
    await q.ensure_groups()
    return q


@pytest.fixture
def chats(redis: aioredis.Redis) -> Chats:
    return Chats(redis, ttl_s=3_600, lock_ttl_ms=5_000)


async def taken_by_worker(queue: ConversationQueue, conv: Conversation = CONV) -> Hold:
    """Read the wake-up as a worker would and take the conversation's lock."""
    [wakeup] = await queue.read(CONSUMER, [keys.wakeups(conv.shard)], 10, block_ms=100)
    assert wakeup.conv == conv
    token = queue.new_token()
    assert (await queue.take(conv, token)).taken
    return Hold(conv, token, wakeup.entry_id)


async def pending(redis: aioredis.Redis, conv: Conversation = CONV) -> int:
    return int((await redis.xpending(keys.wakeups(conv.shard), keys.WORKER_GROUP))["pending"])


def test_conversation_ids_round_trip_and_keep_sms_keys_unchanged() -> None:
    whatsapp = Conversation(CONV.agent_number, CONV.user_number, "whatsapp")
    assert CONV.id == "+15035550100:+14155550123"   # the key layout from before channels
    assert whatsapp.id == "whatsapp:+15035550100:+14155550123"
    assert Conversation.parse(CONV.id) == CONV
    assert Conversation.parse(whatsapp.id) == whatsapp
    assert keys.mailbox(CONV) != keys.mailbox(whatsapp)
    assert split_address(address("whatsapp", "+14155550123")) == ("whatsapp", "+14155550123")
    assert split_address("+14155550123") == ("sms", "+14155550123")


def test_a_turn_takes_a_run_of_texts_or_one_control_item() -> None:
    stop = Item(ItemKind.OPT_OUT, received_ms=1)
    assert next_batch([text("a"), text("b"), stop, text("c")]) == [text("a"), text("b")]
    assert next_batch([stop, text("c")]) == [stop]
    assert len(next_batch([text(str(i)) for i in range(25)])) == 20
    assert next_batch([]) == []


async def test_put_dedupes_and_wakes_once(queue: ConversationQueue, redis: aioredis.Redis) -> None:
    assert await queue.put(CONV, text("hi"), dedupe_id="SM1") is Enqueued.ACCEPTED
    assert await queue.put(CONV, text("hi"), dedupe_id="SM1") is Enqueued.DUPLICATE
    assert await redis.llen(keys.mailbox(CONV)) == 1
    assert await redis.xlen(keys.wakeups(CONV.shard)) == 1


async def test_a_session_window_is_noted_only_when_asked(queue: ConversationQueue, redis: aioredis.Redis) -> None:
    await queue.put(CONV, text("sms"), dedupe_id="SM1")
    assert not await queue.in_session(CONV)
    await queue.put(CONV, text("wa"), dedupe_id="SM2", session_ttl_s=86_400)
    assert await queue.in_session(CONV)
    assert 86_000 < await redis.ttl(keys.session(CONV)) <= 86_400


async def test_a_commit_that_empties_the_mailbox_releases_and_acks(
    queue: ConversationQueue, chats: Chats, redis: aioredis.Redis,
) -> None:
    await queue.put(CONV, text("hi"), dedupe_id="SM1")
    hold = await taken_by_worker(queue)
    assert await pending(redis) == 1
    outcome = await chats.commit(Commit(None, CONV, TurnResult(consumed=1)), hold=hold)
    assert outcome is Release.RELEASED
    assert await redis.exists(keys.lock(CONV), keys.mailbox(CONV)) == 0
    assert await pending(redis) == 0


async def test_a_commit_that_leaves_work_keeps_the_lock(
    queue: ConversationQueue, chats: Chats, redis: aioredis.Redis,
) -> None:
    await queue.put(CONV, text("one"), dedupe_id="SM1")
    hold = await taken_by_worker(queue)
    await queue.put(CONV, text("two"), dedupe_id="SM2")    # arrives during the turn
    outcome = await chats.commit(Commit(None, CONV, TurnResult(consumed=1)), hold=hold)
    assert outcome is Release.MORE_WORK
    assert await redis.get(keys.lock(CONV)) == hold.token
    assert [Item.from_json(str(raw)).body for raw in await redis.lrange(keys.mailbox(CONV), 0, -1)] == ["two"]
    assert await pending(redis) == 1   # the wake-up it answers stays unacknowledged while work is left
    assert await redis.xlen(keys.wakeups(CONV.shard)) == 2


async def test_a_holder_that_lost_its_lock_writes_nothing(
    queue: ConversationQueue, chats: Chats, redis: aioredis.Redis,
) -> None:
    await queue.put(CONV, text("hi"), dedupe_id="SM1")
    hold = await taken_by_worker(queue)
    await redis.set(keys.lock(CONV), "someone-else")      # the lock expired and another worker took it
    chat = Chat(chat_id=keys.new_chat_id(CONV.shard), agent_id="a", version=0, chat_type=ChatType.SMS,
                start_timestamp=now_ms(), from_number=CONV.user_number, to_number=CONV.agent_number,
                direction=Direction.INBOUND)
    await chats.create(chat)
    result = TurnResult(messages=[Message(Role.AGENT, content="late reply")], consumed=1)
    assert await chats.commit(Commit(chat, CONV, result), hold=hold) is Release.LOST
    assert await chats.messages(chat.chat_id) == []
    assert await redis.llen(keys.mailbox(CONV)) == 1
    assert not await queue.keep(hold, CONSUMER)


async def test_release_keeps_a_lock_with_work_and_frees_an_empty_one(
    queue: ConversationQueue, redis: aioredis.Redis,
) -> None:
    await queue.put(CONV, text("hi"), dedupe_id="SM1")
    hold = await taken_by_worker(queue)
    assert await queue.release(hold) is Release.MORE_WORK
    await redis.ltrim(keys.mailbox(CONV), 1, -1)   # the turn's commit would have consumed it
    assert await queue.release(hold) is Release.RELEASED
    assert await pending(redis) == 0
    assert await queue.release(hold) is Release.LOST


async def test_a_hold_waits_for_the_turn_then_says_busy(queue: ConversationQueue, redis: aioredis.Redis) -> None:
    await redis.set(keys.lock(CONV), "a-worker", px=5_000)
    with pytest.raises(Conflict, match=BUSY):
        async with queue.hold(CONV, within_s=0.2):
            pass
    assert await redis.get(keys.lock(CONV)) == "a-worker"


async def test_texts_that_arrive_during_a_hold_get_a_wakeup(queue: ConversationQueue, redis: aioredis.Redis) -> None:
    async with queue.hold(CONV) as hold:
        assert await redis.get(keys.lock(CONV)) == hold.token
        await queue.put(CONV, text("meanwhile"), dedupe_id="SM1")
        await queue.read(CONSUMER, [keys.wakeups(CONV.shard)], 10, block_ms=100)   # a worker saw the lock taken
    assert not await redis.exists(keys.lock(CONV))
    woken = await queue.read(CONSUMER, [keys.wakeups(CONV.shard)], 10, block_ms=100)
    assert [w.conv for w in woken] == [CONV]


async def test_a_hold_with_nothing_new_adds_no_wakeup(queue: ConversationQueue, redis: aioredis.Redis) -> None:
    async with queue.hold(CONV):
        pass
    assert not await redis.exists(keys.lock(CONV))
    assert await redis.xlen(keys.wakeups(CONV.shard)) == 0


async def test_keep_renews_the_lock_and_the_wakeup(queue: ConversationQueue, redis: aioredis.Redis) -> None:
    await queue.put(CONV, text("hi"), dedupe_id="SM1")
    hold = await taken_by_worker(queue)
    await redis.pexpire(keys.lock(CONV), 500)
    await asyncio.sleep(0.05)
    assert await queue.keep(hold, CONSUMER)
    assert await redis.pttl(keys.lock(CONV)) > 4_000
    reclaimed = await queue.reclaim("another", keys.wakeups(CONV.shard), 10, min_idle_ms=1_000)
    assert reclaimed == []   # kept fresh: not mistaken for a dead worker's


async def test_a_dead_workers_wakeup_is_reclaimed(queue: ConversationQueue) -> None:
    await queue.put(CONV, text("hi"), dedupe_id="SM1")
    await taken_by_worker(queue)
    await asyncio.sleep(0.05)
    [wakeup] = await queue.reclaim("another", keys.wakeups(CONV.shard), 10, min_idle_ms=10)
    assert wakeup.conv == CONV and wakeup.reclaimed


async def test_wakeups_written_before_the_group_existed_are_delivered(redis: aioredis.Redis) -> None:
    queue = ConversationQueue(redis, lock_ttl_ms=5_000)
    await queue.put(CONV, text("early"), dedupe_id="SM1")     # the webhook ran before any worker started
    await queue.ensure_groups()
    await queue.ensure_groups()                                # idempotent
    [wakeup] = await queue.read(CONSUMER, [keys.wakeups(CONV.shard)], 10, block_ms=100)
    assert wakeup.conv == CONV and not wakeup.reclaimed
    assert len(queue.streams) == keys.SHARDS
    for stream in queue.streams:    # every partition's stream has the group, made with the stream
        assert [g["name"] for g in await redis.xinfo_groups(stream)] == [keys.WORKER_GROUP]


async def test_ensure_groups_lets_other_errors_through(redis: aioredis.Redis) -> None:
    queue = ConversationQueue(redis, lock_ttl_ms=5_000)
    await redis.set(keys.wakeups(0), "not a stream")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await queue.ensure_groups()


async def test_read_takes_at_most_count_new_wakeups(queue: ConversationQueue) -> None:
    stream = keys.wakeups(CONV.shard)
    for i in range(3):
        await queue.put(CONV, text(str(i)), dedupe_id=f"SM{i}")
    first = await queue.read(CONSUMER, [stream], 2, block_ms=100)
    rest = await queue.read(CONSUMER, [stream], 2, block_ms=100)
    assert (len(first), len(rest)) == (2, 1)
    assert all(w.conv == CONV and not w.reclaimed for w in first + rest)
    assert len({w.entry_id for w in first + rest}) == 3
    assert await queue.read(CONSUMER, [stream], 2, block_ms=10) == []   # read once: the next read is empty


async def test_read_waits_up_to_block_ms_for_a_wakeup(queue: ConversationQueue) -> None:
    stream = keys.wakeups(CONV.shard)
    started = time.monotonic()
    assert await queue.read(CONSUMER, [stream], 10, block_ms=300) == []
    assert time.monotonic() - started >= 0.25
    waiting = asyncio.create_task(queue.read(CONSUMER, [stream], 10, block_ms=5_000))
    await queue.put(CONV, text("hi"), dedupe_id="SM1")
    async with asyncio.timeout(5):
        [wakeup] = await waiting
    assert wakeup.conv == CONV


async def test_reclaim_takes_at_most_count_with_their_entry_ids(
    queue: ConversationQueue, redis: aioredis.Redis,
) -> None:
    stream = keys.wakeups(CONV.shard)
    for i in range(3):
        await queue.put(CONV, text(str(i)), dedupe_id=f"SM{i}")
    read = await queue.read("dead", [stream], 10, block_ms=100)
    assert len(read) == 3
    await asyncio.sleep(0.02)   # longer than the min_idle_ms below
    first = await queue.reclaim("alive", stream, 2, min_idle_ms=10)
    assert [w.entry_id for w in first] == [w.entry_id for w in read[:2]]
    assert all(w.reclaimed and w.conv == CONV for w in first)
    owners = {entry["message_id"]: entry["consumer"]
              for entry in await redis.xpending_range(stream, keys.WORKER_GROUP, "-", "+", 10)}
    assert owners == {read[0].entry_id: "alive", read[1].entry_id: "alive", read[2].entry_id: "dead"}


async def test_reclaim_skips_a_wakeup_deleted_meanwhile(queue: ConversationQueue, redis: aioredis.Redis) -> None:
    stream = keys.wakeups(CONV.shard)
    await queue.put(CONV, text("a"), dedupe_id="SM1")
    await queue.put(CONV, text("b"), dedupe_id="SM2")
    gone, kept = await queue.read("dead", [stream], 10, block_ms=100)
    await redis.xdel(stream, gone.entry_id)     # trimmed by MAXLEN, say
    await asyncio.sleep(0.02)
    reclaimed = await queue.reclaim("alive", stream, 10, min_idle_ms=10)
    assert [w.entry_id for w in reclaimed] == [kept.entry_id]


async def test_keep_is_not_a_delivery_and_keeps_nothing_once_lost(
    queue: ConversationQueue, redis: aioredis.Redis,
) -> None:
    stream = keys.wakeups(CONV.shard)
    await queue.put(CONV, text("hi"), dedupe_id="SM1")
    hold = await taken_by_worker(queue)
    await asyncio.sleep(0.3)
    assert await queue.keep(hold, CONSUMER)
    [entry] = await redis.xpending_range(stream, keys.WORKER_GROUP, "-", "+", 10)
    assert entry["times_delivered"] == 1     # a renewal: reclaim still counts only real deliveries
    assert int(entry["time_since_delivered"]) < 300   # refreshed
    await redis.set(keys.lock(CONV), "someone-else")
    await asyncio.sleep(0.3)
    assert not await queue.keep(hold, CONSUMER)
    [entry] = await redis.xpending_range(stream, keys.WORKER_GROUP, "-", "+", 10)
    assert int(entry["time_since_delivered"]) >= 300   # not refreshed
    assert await redis.get(keys.lock(CONV)) == "someone-else"


async def test_ack_acknowledges_just_that_wakeup(queue: ConversationQueue, redis: aioredis.Redis) -> None:
    await queue.put(CONV, text("a"), dedupe_id="SM1")
    await queue.put(CONV, text("b"), dedupe_id="SM2")
    first, second = await queue.read(CONSUMER, [keys.wakeups(CONV.shard)], 10, block_ms=100)
    await queue.ack(CONV, first.entry_id)
    pending_ids = [e["message_id"] for e in
                   await redis.xpending_range(keys.wakeups(CONV.shard), keys.WORKER_GROUP, "-", "+", 10)]
    assert pending_ids == [second.entry_id]
    assert await redis.llen(keys.mailbox(CONV)) == 2   # acknowledging touches no text


async def test_abandon_drops_the_lock_and_leaves_the_wakeup_for_reclaim(
    queue: ConversationQueue, redis: aioredis.Redis,
) -> None:
    await queue.put(CONV, text("hi"), dedupe_id="SM1")
    hold = await taken_by_worker(queue)
    await queue.abandon(hold)
    assert not await redis.exists(keys.lock(CONV))
    assert await redis.llen(keys.mailbox(CONV)) == 1
    assert await pending(redis) == 1
    await asyncio.sleep(0.02)
    [wakeup] = await queue.reclaim("another", keys.wakeups(CONV.shard), 10, min_idle_ms=10)
    assert wakeup.entry_id == hold.entry_id
    assert (await queue.take(CONV, queue.new_token())).taken   # the next worker can take it at once


async def test_abandon_leaves_a_lock_that_is_no_longer_the_holders(
    queue: ConversationQueue, redis: aioredis.Redis,
) -> None:
    await queue.put(CONV, text("hi"), dedupe_id="SM1")
    hold = await taken_by_worker(queue)
    await redis.set(keys.lock(CONV), "someone-else")
    await queue.abandon(hold)
    assert await redis.get(keys.lock(CONV)) == "someone-else"


async def test_release_writes_nothing_once_the_lock_is_lost(queue: ConversationQueue, redis: aioredis.Redis) -> None:
    await queue.put(CONV, text("hi"), dedupe_id="SM1")
    hold = await taken_by_worker(queue)
    await redis.ltrim(keys.mailbox(CONV), 1, -1)
    await redis.set(keys.lock(CONV), "someone-else")
    assert await queue.release(hold) is Release.LOST
    assert await redis.get(keys.lock(CONV)) == "someone-else"
    assert await pending(redis) == 1


async def test_a_hold_that_raises_still_hands_back_and_wakes_a_worker(
    queue: ConversationQueue, redis: aioredis.Redis,
) -> None:
    with pytest.raises(RuntimeError):
        async with queue.hold(CONV):
            await queue.put(CONV, text("meanwhile"), dedupe_id="SM1")
            await queue.read(CONSUMER, [keys.wakeups(CONV.shard)], 10, block_ms=100)
            raise RuntimeError("the API's send failed")
    assert not await redis.exists(keys.lock(CONV))
    woken = await queue.read(CONSUMER, [keys.wakeups(CONV.shard)], 10, block_ms=100)
    assert [w.conv for w in woken] == [CONV]
