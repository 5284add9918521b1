"""The sending path, tested directly: the sender (``conversations.sender``), the outgoing queue's Redis side
(``conversations.outgoing``) and the resend loop (``conversations.resend``).

Real Redis, and the fake Twilio reached through ``TwilioGateway`` (its own create, as Parley sends). The
tests call ``Sender``, ``Outgoing`` and ``Resender`` themselves: no background loop resends here (the resend loop
of the Parley that runs turns sleeps a minute between ticks), and the tests set the resend loop's clock and the
backoff's randomness so every due time is exact.
"""

from __future__ import annotations

import asyncio
import functools
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

import service.conversations.resend as resend_module
import service.conversations.sender as sender_module
import service.sms.pacing as pacing_module
from service.address import Conversation
from service.app_state import RUNTIME
from service.channels.sms import SmsChannel
from service.channels.whatsapp import WhatsAppChannel
from service.chats.delivery import RETRYING, failed_state, outgoing_entry, sent_state
from service.chats.model import Message, Role
from service.clock import now_ms
from service.conversations.outgoing import (
    KNOWN_CAP,
    MAX_DELAY_MS,
    READ_CAP,
    Failure,
    Gate,
    Outgoing,
    Waiting,
    retry_delay_ms,
)
from service.conversations.resend import (
    BATCH,
    BEHIND_FAILED,
    HOLD_WAIT_S,
    IDLE_POLL_MS,
    NUMBER_GONE,
    OPTED_OUT,
    Resender,
    time_up,
)
from service.conversations.runtime import Runtime
from service.conversations.sender import BEHIND, QUEUE_FULL, outside_window
from service.errors import LimitReached, SendDeferred
from service.retell.models import PhoneNumber
from service.sms.limits import LEASE, DailySegments, pacific_day
from service.storage import keys
from service.storage.locks import Hold
from service.tasks import stop_task
from service.webhooks.events import Event

from .conftest import (
    ACCOUNT_SID,
    AGENT_NUMBER,
    OTHER_ACCOUNT_SID,
    PUBLIC_URL,
    USER,
    MakeParley,
    Parley,
    agent_file,
)

PACED = "+15035550101"
LIMITED = "+15035550102"
OTHER = "+15035550103"
AGENTS = [{"agent_id": "frontdesk", "weight": 1}]
NUMBERS = [
    {"phone_number": AGENT_NUMBER, "inbound_sms_agents": AGENTS, "channels": ["sms", "whatsapp"]},
    {"phone_number": PACED, "inbound_sms_agents": AGENTS, "channels": ["sms", "whatsapp"], "segments_per_second": 10},
    {"phone_number": LIMITED, "inbound_sms_agents": AGENTS, "channels": ["sms", "whatsapp"], "daily_segment_limit": 2},
    {"phone_number": OTHER, "inbound_sms_agents": AGENTS, "twilio_account_sid": OTHER_ACCOUNT_SID},
]
CONV = Conversation(AGENT_NUMBER, USER)


# Chat ids in the conversation's partition, drawn as Parley draws them (a Redis Cluster refuses a script whose
# keys span partitions).
CHAT = keys.new_chat_id(CONV.shard)
CHAT_A, CHAT_B, CHAT_C = (keys.new_chat_id(CONV.shard) for _ in range(3))
SENTENCES = [f"Sentence {n} " + "x" * 140 + "." for n in range(3)]   # one segment each: three parts at one a part


@dataclass
class Rig:
    parley: Parley
    rt: Runtime
    sleeps: list[float]

    @property
    def twilio(self) -> Any:
        return self.parley.twilio

    @property
    def redis(self) -> Any:
        return self.parley.redis

    async def number(self, phone: str = AGENT_NUMBER) -> PhoneNumber:
        number = await self.rt.catalog.get_number(phone)
        assert number is not None
        return number

    async def send(self, text: str, *, conv: Conversation = CONV, chat_id: str | None = CHAT,
                   **kwargs: Any) -> list[Message]:
        return await self.rt.sender.send_text(conv, await self.number(conv.agent_number), text, chat_id=chat_id,
                                              **kwargs)

    def metric(self, name: str, **labels: str) -> float:
        return self.rt.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The sender's sleeps (its backoff, its pace), recorded instead of slept."""
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(sender_module, "asyncio", SimpleNamespace(sleep=sleep))
    return slept


@pytest.fixture
def low_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoff jitter at its lowest: ``retry_delay_ms`` is exact (base x 2^attempts x 0.5, Retry-After x 1.0)."""
    monkeypatch.setattr(random, "uniform", lambda low, high: low)


@pytest.fixture
async def rig(make_parley: MakeParley, sleeps: list[float]) -> Rig:
    parley = await make_parley(numbers=NUMBERS, run_workers=False)
    return Rig(parley, parley.client.app[RUNTIME], sleeps)


# --- First, what needs no Redis (mutmut's forced-failure run stops at the first test: it must leave nothing open) --


def test_the_session_window_refusal_says_why() -> None:
    conv = Conversation(LIMITED, USER, "whatsapp")
    assert outside_window(WhatsAppChannel(), conv) == (
        f"{USER} has not written to {LIMITED} on whatsapp in the last 24 hours: whatsapp allows a business to write "
        "first only with an approved template, and only within that window after the user's last message otherwise")


def test_a_try_is_counted_in_the_entry() -> None:
    raw = orjson.dumps({"chat_id": CHAT, "message": {"role": "agent", "content": "hi", "error": "first"}}).decode()
    waiting = Waiting.parse(raw)
    assert waiting.attempts == 0 and waiting.message.error == "first"
    once = Waiting.parse(waiting.tried("second"))
    assert (once.attempts, once.message.error, once.chat_id) == (1, "second", CHAT)
    twice = Waiting.parse(once.tried(None))
    assert (twice.attempts, twice.message.error) == (2, "second")
    assert Waiting.parse(twice.tried("")).message.error == "second"


def test_backoff_doubles_up_to_its_cap_with_jitter_and_honours_retry_after() -> None:
    rng_state = random.getstate()
    try:
        random.seed(12)
        for attempts, nominal in ((0, 100), (1, 200), (3, 800), (20, MAX_DELAY_MS), (40, MAX_DELAY_MS)):
            delays = [retry_delay_ms(attempts, 100) for _ in range(300)]
            assert nominal * 0.5 <= min(delays) < nominal * 0.6 and nominal * 1.4 < max(delays) <= nominal * 1.5
            assert len(set(delays)) > 50
        later = [retry_delay_ms(0, 100, retry_after_s=120) for _ in range(300)]
        assert 120_000 <= min(later) < 121_000 and 143_000 < max(later) <= 144_000
        assert all(isinstance(d, int) for d in later)
        assert 500 <= retry_delay_ms(3, 1_000, retry_after_s=0.1) <= 12_000, "a short Retry-After: the backoff"
    finally:
        random.setstate(rng_state)


# --- The sender -----------------------------------------------------------------------------------------------------


async def test_a_reply_goes_part_by_part_with_what_twilio_answered(rig: Rig) -> None:
    before = now_ms()
    sent = await rig.send(" ".join(SENTENCES), max_segments=1)
    after = now_ms()
    fake = rig.twilio.messages
    assert [m.body for m in fake] == SENTENCES
    assert [(m.from_, m.to, m.account_sid) for m in fake] == [(AGENT_NUMBER, USER, ACCOUNT_SID)] * 3
    assert {m.status_callback for m in fake} == {f"{PUBLIC_URL}/twilio/status?chat_id={CHAT}"}
    assert [m.content for m in sent] == SENTENCES
    assert [m.message_sid for m in sent] == [m.sid for m in fake]
    for message in sent:
        assert message.role is Role.AGENT and before <= message.created_timestamp <= after
        assert (message.status, message.encoding, message.segments) == ("queued", "GSM-7", 1)
        assert message.error is None and message.error_code is None
    assert rig.metric("parley_segments_sent_total", encoding="GSM-7") == 3
    # The day's counter holds the process's block (one command for the three sends) until it gives back the rest.
    assert await DailySegments(rig.redis).used(await rig.number()) == LEASE
    await rig.rt.daily.give_back()
    assert await DailySegments(rig.redis).used(await rig.number()) == 3
    assert rig.sleeps == [], "an unpaced number does not wait for a slot"


async def test_an_exact_text_goes_as_written_and_a_reply_is_sanitised(rig: Rig) -> None:
    [exact] = await rig.send("Hi “there” 😀", exact=True)
    [reply] = await rig.send("Hi “there”")
    assert [m.body for m in rig.twilio.messages] == ["Hi “there” 😀", 'Hi "there"']
    assert (exact.encoding, exact.segments, reply.encoding) == ("UCS-2", 1, "GSM-7")
    assert rig.metric("parley_segments_sent_total", encoding="UCS-2") == 1
    assert rig.metric("parley_segments_sent_total", encoding="GSM-7") == 1


async def test_a_reply_is_split_within_ten_segments_unless_told_otherwise(rig: Rig) -> None:
    text = " ".join(f"Sentence number {n} is here and it is long enough to matter." for n in range(26))
    default = await rig.send(text)
    assert [m.segments for m in default] == [10, 1]
    wider = await rig.send(text, max_segments=11)
    assert [m.segments for m in wider] == [11]
    assert rig.metric("parley_segments_sent_total", encoding="GSM-7") == 22


async def test_the_status_callback_names_the_chat(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    sender = rig.rt.sender
    assert sender.status_callback("chat a&b") == f"{PUBLIC_URL}/twilio/status?chat_id=chat+a%26b"
    assert sender.status_callback(None) == f"{PUBLIC_URL}/twilio/status"
    await rig.send("a message of no chat", chat_id=None)
    assert rig.twilio.messages[-1].status_callback == f"{PUBLIC_URL}/twilio/status"
    monkeypatch.setattr(sender, "_settings", rig.rt.settings.model_copy(update={"public_url": PUBLIC_URL + "/"}))
    assert sender.status_callback("c") == f"{PUBLIC_URL}/twilio/status?chat_id=c"
    monkeypatch.setattr(sender, "_settings", rig.rt.settings.model_copy(update={"public_url": PUBLIC_URL + "/pX/"}))
    assert sender.status_callback(None) == f"{PUBLIC_URL}/pX/twilio/status", "only the trailing slash goes"
    monkeypatch.setattr(sender, "_settings", rig.rt.settings.model_copy(update={"public_url": None}))
    assert sender.status_callback("c") is None
    await rig.send("no public URL, no callback")
    assert rig.twilio.messages[-1].status_callback is None


async def test_a_number_sends_through_its_own_account_else_the_default_one(
    rig: Rig, monkeypatch: pytest.MonkeyPatch,
) -> None:
    await rig.send("hello", conv=Conversation(OTHER, USER))
    assert rig.twilio.messages[-1].account_sid == OTHER_ACCOUNT_SID
    assert rig.rt.sender.account_for(await rig.number(OTHER)) == OTHER_ACCOUNT_SID
    monkeypatch.setattr(rig.rt.sender, "_settings", rig.rt.settings.model_copy(update={"twilio_account_sid": None}))
    [failed] = await rig.send("hello", conv=Conversation(LIMITED, USER))
    assert failed.status == "failed" and failed.message_sid is None
    assert failed.error == f"no Twilio account for {LIMITED} (set TWILIO_ACCOUNT_SID)"
    assert len(rig.twilio.creates) == 1
    await rig.rt.daily.give_back()   # the refunded segment went back to the process's block; now to the counter
    assert await DailySegments(rig.redis).used(await rig.number(LIMITED)) == 0, "the reserved segment is refunded"


@pytest.mark.parametrize("chat_id", [CHAT, None])
async def test_nothing_goes_to_a_user_who_opted_out(rig: Rig, chat_id: str | None) -> None:
    await rig.rt.optouts.record(CONV)
    assert await rig.send("hello", chat_id=chat_id) == []
    assert list(rig.twilio.creates) == []


@pytest.mark.parametrize("chat_id", [CHAT, None])
async def test_the_opt_out_is_checked_before_each_part(rig: Rig, chat_id: str | None) -> None:
    rig.twilio.delay_s = 0.2
    sending = asyncio.create_task(rig.send(" ".join(SENTENCES), max_segments=1, chat_id=chat_id))
    async with asyncio.timeout(5):
        await rig.twilio.requested.wait()          # the first part is with Twilio: the user opts out now
    await rig.rt.optouts.record(CONV)
    sent = await asyncio.wait_for(sending, 5)
    assert [m.content for m in sent] == SENTENCES[:1] and sent[0].status == "queued"
    assert [m.body for m in rig.twilio.messages] == SENTENCES[:1]


async def test_a_full_queue_fails_the_reply_at_once_but_a_chatless_text_goes(rig: Rig) -> None:
    await rig.redis.rpush(keys.outgoing(CONV), *["waiting"] * keys.OUTGOING_CAP)
    [failed] = await rig.send(" ".join(SENTENCES), max_segments=1)
    assert (failed.status, failed.error, failed.content) == ("failed", QUEUE_FULL, SENTENCES[0])
    assert list(rig.twilio.creates) == []
    # A text of no chat has no commit to queue it: it does not look at the queue (only at the opt-out).
    [chatless] = await rig.send("hello", chat_id=None)
    assert chatless.status == "queued" and rig.twilio.messages[0].body == "hello"


@pytest.mark.parametrize("marker", ["outgoing", "deferred"])
async def test_a_reply_waits_behind_what_already_waits(rig: Rig, marker: str) -> None:
    if marker == "outgoing":
        await rig.redis.rpush(keys.outgoing(CONV), "waiting")
    else:
        await rig.redis.set(keys.deferred(CONV), 1)
    sent = await rig.send(" ".join(SENTENCES), max_segments=1)
    assert [(m.content, m.status, m.error, m.message_sid) for m in sent] == [
        (part, RETRYING, BEHIND, None) for part in SENTENCES]
    assert list(rig.twilio.creates) == []


async def test_a_deferred_part_and_everything_after_it_wait(rig: Rig, low_jitter: None) -> None:
    rig.twilio.throttle(1, retry_after="2", after=1)
    before = now_ms()
    first, second, third = await rig.send(" ".join(SENTENCES), max_segments=1, conv=Conversation(LIMITED, USER))
    after = now_ms()
    conv = Conversation(LIMITED, USER)
    assert first.status == "queued" and first.message_sid == rig.twilio.messages[0].sid
    assert (second.status, second.error_code, second.message_sid) == (RETRYING, 20429, None)
    assert second.error is not None and second.error.startswith("Twilio did not take the message for now")
    assert (third.status, third.error) == (RETRYING, BEHIND)
    assert len(rig.twilio.creates) == 2, "the third part was not offered while the second waits"
    await rig.rt.daily.give_back()
    assert await DailySegments(rig.redis).used(await rig.number(LIMITED)) == 1, "the deferred part's is refunded"
    assert 290 <= await rig.redis.ttl(keys.deferred(conv)) <= keys.DEFERRED_TTL_S
    due = await rig.redis.zscore(keys.outgoing_due(conv.shard), conv.id)
    assert before + 2_000 <= due <= after + 2_000, "not before Twilio's Retry-After"
    assert rig.rt.outgoing.due_by(int(due)), "this process knows when to look"
    # Until the turn's commit queues it, a later text of the conversation waits behind it too.
    [later] = await rig.send("and one more thing", conv=conv)
    assert (later.status, later.error) == (RETRYING, BEHIND) and len(rig.twilio.creates) == 2


async def test_a_deferral_without_retry_after_is_due_after_the_base_delay(rig: Rig, low_jitter: None) -> None:
    rig.twilio.throttle(1, retry_after=None)
    before = now_ms()
    [waiting] = await rig.send("hello")
    after = now_ms()
    assert waiting.status == RETRYING
    due = await rig.redis.zscore(keys.outgoing_due(CONV.shard), CONV.id)
    base = rig.rt.settings.send_retry_base_ms
    assert before + base // 2 <= due <= after + base // 2


async def test_a_chatless_text_is_tried_three_times_with_backoff(
    rig: Rig, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(random, "random", lambda: 0.25)
    rig.twilio.throttle(2, retry_after="0")
    [sent] = await rig.send("hello", chat_id=None)
    assert sent.status == "queued" and sent.message_sid == rig.twilio.messages[0].sid
    assert len(rig.twilio.creates) == 3
    assert rig.sleeps == [0.5 * 0.75, 1.0 * 0.75]
    rig.sleeps.clear()
    rig.twilio.throttle(retry_after="0")
    [failed] = await rig.send("hello again", chat_id=None)
    assert (failed.status, failed.error_code) == ("failed", 20429)
    assert failed.error is not None and failed.error.startswith("Twilio did not take the message for now")
    assert len(rig.twilio.creates) == 6 and len(rig.sleeps) == 2
    assert not await rig.redis.exists(keys.deferred(CONV), keys.outgoing(CONV)), "nothing can queue it"
    assert await rig.redis.zcard(keys.outgoing_due(CONV.shard)) == 0


async def test_a_final_error_fails_the_part_and_stops_the_reply(rig: Rig) -> None:
    rig.twilio.errors[USER] = (400, 21211)
    [failed] = await rig.send(" ".join(SENTENCES), max_segments=1)
    assert (failed.status, failed.error_code, failed.message_sid) == ("failed", 21211, None)
    assert failed.error is not None and failed.error.startswith("Twilio refused the message")
    assert len(rig.twilio.creates) == 1
    assert not await rig.rt.optouts.is_opted_out(CONV)
    assert rig.metric("parley_optouts_total", source="twilio_21610") == 0


async def test_twilio_21610_records_the_opt_out(rig: Rig) -> None:
    rig.twilio.errors[USER] = (400, 21610)
    [failed] = await rig.send("hello")
    assert (failed.status, failed.error_code) == ("failed", 21610)
    assert await rig.rt.optouts.is_opted_out(CONV)
    assert rig.metric("parley_optouts_total", source="twilio_21610") == 1
    assert rig.metric("parley_segments_sent_total", encoding="GSM-7") == 0


async def test_whatsapp_needs_the_session_window_and_counts_no_segments(rig: Rig) -> None:
    conv = Conversation(LIMITED, USER, "whatsapp")
    [refused] = await rig.send("hello", conv=conv)
    assert refused.status == "failed" and refused.error == outside_window(rig.rt.sender.channel(conv), conv)
    assert list(rig.twilio.creates) == []
    await rig.rt.queue.note_session(conv, 60)
    sent = [m for _ in range(3) for m in await rig.send("hello", conv=conv)]   # over the SMS limit of 2: no matter
    assert [m.status for m in sent] == ["queued"] * 3
    assert (sent[0].encoding, sent[0].segments) == (None, None)
    assert {(m.from_, m.to) for m in rig.twilio.messages} == {(f"whatsapp:{LIMITED}", f"whatsapp:{USER}")}
    assert await DailySegments(rig.redis).used(await rig.number(LIMITED)) == 0
    assert rig.metric("parley_segments_sent_total", encoding="GSM-7") == 0


async def test_the_daily_limit_fails_the_part_over_it(rig: Rig) -> None:
    conv = Conversation(LIMITED, USER)
    sent = await rig.send(" ".join(SENTENCES), max_segments=1, conv=conv)
    assert [m.status for m in sent] == ["queued", "queued", "failed"]
    assert sent[2].error is not None and "daily_segment_limit of 2 segments" in sent[2].error
    assert len(rig.twilio.creates) == 2
    await rig.redis.delete(keys.segments(LIMITED, pacific_day()))   # a new day
    [two] = await rig.send("a" * 200, conv=conv, max_segments=2)    # one message of two segments counts two
    assert (two.status, two.segments) == ("queued", 2)
    assert await DailySegments(rig.redis).used(await rig.number(LIMITED)) == 2


async def test_a_channel_that_counts_no_segments_reserves_none(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rig.rt.sender, "_channels", {"sms": SmsChannel(counts_segments=False)})
    sent = await rig.send(" ".join(SENTENCES), max_segments=1, conv=Conversation(LIMITED, USER))
    assert [(m.status, m.segments) for m in sent] == [("queued", 1)] * 3, "over the daily limit of 2: no matter"
    assert await DailySegments(rig.redis).used(await rig.number(LIMITED)) == 0


@pytest.mark.parametrize(("channel", "text", "share_ms"), [("sms", "a" * 200, 200), ("whatsapp", "a" * 200, 100)])
async def test_a_paced_number_waits_for_its_slot(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, channel: str, text: str, share_ms: int,
) -> None:
    conv = Conversation(PACED, USER, channel)
    await rig.rt.queue.note_session(conv, 60)
    now = now_ms()
    monkeypatch.setattr(pacing_module, "now_ms", lambda: now)   # the pace's clock stands still
    await rig.redis.set(keys.pace(PACED), now + 300, px=5_000)
    [sent] = await rig.send(text, conv=conv, max_segments=2)
    assert sent.status == "queued"
    assert int(await rig.redis.get(keys.pace(PACED))) == now + 300 + share_ms   # its segments at 10 a second
    assert rig.sleeps == [0.3]


async def test_a_paced_slot_too_far_ahead_defers_the_reply(rig: Rig, low_jitter: None) -> None:
    conv = Conversation(PACED, USER)
    await rig.redis.set(keys.pace(PACED), now_ms() + 60_000, px=61_000)
    before = now_ms()
    [waiting] = await rig.send("hello", conv=conv)
    after = now_ms()
    assert waiting.status == RETRYING and waiting.error is not None
    found = re.fullmatch(r"\+15035550101 sends at most 10 segments a second \(segments_per_second\): its next "
                         r"free slot is (\d+) ms away", waiting.error)
    assert found is not None
    wait_ms = int(found[1])
    assert 55_000 < wait_ms <= 60_000
    due = await rig.redis.zscore(keys.outgoing_due(conv.shard), conv.id)
    assert before + wait_ms <= due <= after + wait_ms
    assert list(rig.twilio.creates) == [] and rig.sleeps == []


async def test_resend_sends_a_waiting_message_once(rig: Rig) -> None:
    number = await rig.number()
    message = Message(Role.AGENT, content="hello", status=RETRYING, error="waited", error_code=20429)
    rig.twilio.throttle(1, retry_after="3")
    deferred = await rig.rt.sender.resend(CONV, number, message, CHAT)
    assert isinstance(deferred, SendDeferred) and deferred.retry_after_s == 3.0
    assert (message.status, message.error_code, message.message_sid) == (RETRYING, 20429, None)
    assert len(rig.twilio.creates) == 1, "tried once: the queue tries it again"
    assert await rig.rt.sender.resend(CONV, number, message, CHAT) is None
    assert (message.status, message.message_sid) == ("queued", rig.twilio.messages[0].sid)
    assert message.error is None and message.error_code is None
    assert rig.twilio.messages[0].status_callback == f"{PUBLIC_URL}/twilio/status?chat_id={CHAT}"


# --- The outgoing queue's Redis side --------------------------------------------------------------------------------


def entry(chat_id: str = CHAT, content: str = "hello", **fields: Any) -> str:
    return outgoing_entry(chat_id, Message(Role.AGENT, content=content, status=RETRYING, **fields))


async def held(rig: Rig, conv: Conversation = CONV, token: str = "token-1") -> Hold:
    await rig.redis.set(keys.lock(conv), token)
    return Hold(conv, token)


async def test_the_gate_says_whether_a_message_may_go(rig: Rig) -> None:
    outgoing = rig.rt.outgoing
    assert await outgoing.gate(CONV) is Gate.CLEAR
    await rig.redis.set(keys.deferred(CONV), 1)
    assert await outgoing.gate(CONV) is Gate.WAITING
    await rig.redis.delete(keys.deferred(CONV))
    await rig.redis.rpush(keys.outgoing(CONV), *["waiting"] * (keys.OUTGOING_CAP - 1))
    assert await outgoing.gate(CONV) is Gate.WAITING
    await rig.redis.rpush(keys.outgoing(CONV), "waiting")
    assert await outgoing.gate(CONV) is Gate.FULL
    await rig.redis.set(keys.optout(CONV), 1)
    assert await outgoing.gate(CONV) is Gate.OPTED_OUT
    await rig.redis.delete(keys.outgoing(CONV))
    assert await outgoing.gate(CONV) is Gate.OPTED_OUT


async def test_defer_and_schedule_set_the_due_time_this_process_remembers(rig: Rig) -> None:
    outgoing = Outgoing(rig.redis, chat_ttl_s=60)
    await outgoing.defer(CONV, 5_000)
    assert 290 <= await rig.redis.ttl(keys.deferred(CONV)) <= keys.DEFERRED_TTL_S
    assert await rig.redis.zscore(keys.outgoing_due(CONV.shard), CONV.id) == 5_000
    other = Conversation(AGENT_NUMBER, "+14155550999")
    await outgoing.schedule(other, 7_000)
    assert await rig.redis.zscore(keys.outgoing_due(other.shard), other.id) == 7_000
    assert outgoing.due_by(4_999) is False
    assert outgoing.due_by(5_000) is True
    assert outgoing.due_by(6_999) is False, "a due time is forgotten once it came"
    assert outgoing.due_by(7_000) is True
    assert outgoing.due_by(10_000) is False


async def test_a_process_remembers_a_bounded_number_of_due_times(rig: Rig) -> None:
    outgoing = Outgoing(rig.redis, chat_ttl_s=60)
    for _ in range(KNOWN_CAP - 1):
        outgoing._note(9)
    outgoing._note(8)
    assert outgoing.due_by(8) is True, "the last one that fits is remembered"
    outgoing._note(8)
    outgoing._note(1)
    assert outgoing.due_by(1) is False, "beyond the cap, a due time is left to the idle poll"


async def test_entries_are_read_in_order_up_to_the_read_cap(rig: Rig) -> None:
    raws = [entry(content=f"m{n}") for n in range(READ_CAP + 1)]
    await rig.redis.rpush(keys.outgoing(CONV), *raws)
    read = await rig.rt.outgoing.entries(CONV)
    assert [w.raw for w in read] == raws[:READ_CAP]
    first = read[0]
    assert (first.chat_id, first.message.content, first.message.role, first.attempts) == (CHAT, "m0", Role.AGENT, 0)


async def test_settle_pops_the_head_and_records_its_sid_even_when_the_lock_is_gone(rig: Rig) -> None:
    outgoing = Outgoing(rig.redis, chat_ttl_s=1_000)
    hold = await held(rig)
    raws = [entry(content="one"), entry(content="two"), entry(content="three")]
    await rig.redis.rpush(keys.outgoing(CONV), *raws)
    one, two, three = [Waiting.parse(r) for r in raws]
    state = sent_state("SM1", "queued")
    assert await outgoing.settle(hold, one, state) is True
    assert await rig.redis.hget(keys.delivery(CHAT), one.message.message_id) == state
    assert 990 <= await rig.redis.ttl(keys.delivery(CHAT)) <= 1_000
    assert await outgoing.settle(hold, three, state) is False, "not the head: not popped"
    assert await rig.redis.lrange(keys.outgoing(CONV), 0, -1) == raws[1:]
    assert await rig.redis.hget(keys.delivery(CHAT), three.message.message_id) == state, "recorded all the same"
    await rig.redis.set(keys.lock(CONV), "someone else")
    assert await outgoing.settle(hold, two, state) is False, "popped, but the lock is gone: stop"
    assert await rig.redis.lrange(keys.outgoing(CONV), 0, -1) == raws[2:]


async def test_later_counts_the_try_and_reschedules_while_the_head_and_lock_are_the_callers(rig: Rig) -> None:
    outgoing = Outgoing(rig.redis, chat_ttl_s=1_000)
    hold = await held(rig)
    raws = [entry(content="one"), entry(content="two")]
    await rig.redis.rpush(keys.outgoing(CONV), *raws)
    one, two = [Waiting.parse(r) for r in raws]
    assert await outgoing.later(hold, two, 5_000, "x") is False
    assert await rig.redis.lrange(keys.outgoing(CONV), 0, -1) == raws
    assert await rig.redis.zscore(keys.outgoing_due(CONV.shard), CONV.id) is None
    assert await outgoing.later(hold, one, 6_000, "throttled") is True
    head = (await outgoing.entries(CONV))[0]
    assert (head.attempts, head.message.error, head.raw) == (1, "throttled", one.tried("throttled"))
    assert await rig.redis.zscore(keys.outgoing_due(CONV.shard), CONV.id) == 6_000
    assert outgoing.due_by(6_000) is True
    await rig.redis.set(keys.lock(CONV), "someone else")
    assert await outgoing.later(hold, head, 9_000, "again") is False
    assert (await outgoing.entries(CONV))[0].raw == head.raw
    assert await rig.redis.zscore(keys.outgoing_due(CONV.shard), CONV.id) == 6_000


async def test_fail_drops_the_head_entries_and_records_and_reports_them_in_one_write(rig: Rig) -> None:
    outgoing = Outgoing(rig.redis, chat_ttl_s=1_000)
    hold = await held(rig)
    raws = [entry(CHAT_A, "one"), entry(CHAT_B, "two"), entry(CHAT_A, "three"), entry(CHAT_A, "four")]
    await rig.redis.rpush(keys.outgoing(CONV), *raws)
    one, two, three, four = [Waiting.parse(r) for r in raws]
    failures = [Failure(one, failed_state("why one", 21211)), Failure(two, failed_state("behind")),
                Failure(three, failed_state("behind"))]
    events = {CHAT_A: ["event a"], CHAT_C: ["event c1", "event c2"]}
    assert await outgoing.fail(hold, failures[1:], events, 1_234) is False, "the head is another entry"
    await rig.redis.set(keys.lock(CONV), "someone else")
    assert await outgoing.fail(hold, failures, events, 1_234) is False, "the lock is another's"
    assert await rig.redis.lrange(keys.outgoing(CONV), 0, -1) == raws
    assert not await rig.redis.exists(keys.delivery(CHAT_A), keys.outbox(CHAT_A), keys.outbox(CHAT_C))
    await rig.redis.set(keys.lock(CONV), hold.token)
    outbox_due = keys.outbox_due(CONV.shard)   # the conversation's partition: its chats' too
    await rig.redis.zadd(outbox_due, {CHAT_C: 99})
    assert await outgoing.fail(hold, failures, events, 1_234) is True
    assert await rig.redis.lrange(keys.outgoing(CONV), 0, -1) == [four.raw]
    assert await rig.redis.hgetall(keys.delivery(CHAT_A)) == {one.message.message_id: failures[0].state,
                                                                three.message.message_id: failures[2].state}
    assert await rig.redis.hgetall(keys.delivery(CHAT_B)) == {two.message.message_id: failures[1].state}
    assert not await rig.redis.exists(keys.delivery(CHAT_C))
    assert await rig.redis.lrange(keys.outbox(CHAT_A), 0, -1) == ["event a"]
    assert await rig.redis.lrange(keys.outbox(CHAT_C), 0, -1) == ["event c1", "event c2"]
    assert not await rig.redis.exists(keys.outbox(CHAT_B))
    for key in (keys.delivery(CHAT_A), keys.delivery(CHAT_B), keys.outbox(CHAT_A), keys.outbox(CHAT_C)):
        assert 990 <= await rig.redis.ttl(key) <= 1_000
    assert await rig.redis.zscore(outbox_due, CHAT_A) == 1_234
    assert await rig.redis.zscore(outbox_due, CHAT_C) == 99, "an earlier due time stays"
    assert await rig.redis.zscore(outbox_due, CHAT_B) is None, "no event: not due"


async def test_finish_forgets_a_drained_conversation_and_brings_back_one_left_early(rig: Rig) -> None:
    outgoing = Outgoing(rig.redis, chat_ttl_s=1_000)
    due = keys.outgoing_due(CONV.shard)
    await rig.redis.zadd(due, {CONV.id: 100})
    await outgoing.finish(CONV, 100, 500)
    assert await rig.redis.zscore(due, CONV.id) is None
    assert outgoing.due_by(500) is False
    await rig.redis.rpush(keys.outgoing(CONV), entry())
    await rig.redis.zadd(due, {CONV.id: 100})
    await outgoing.finish(CONV, 100, 500)
    assert await rig.redis.zscore(due, CONV.id) == 500, "entries are left: due at once"
    assert outgoing.due_by(500) is True
    await outgoing.finish(CONV, 100, 700)
    assert await rig.redis.zscore(due, CONV.id) == 500, "re-scheduled meanwhile: left as it is"
    await rig.redis.delete(keys.outgoing(CONV))
    await outgoing.finish(CONV, 100, 700)
    assert await rig.redis.zscore(due, CONV.id) == 500


# --- The resend loop ------------------------------------------------------------------------------------------------


class Clock:
    """The resend loop's clock (ms), set by the test."""

    def __init__(self) -> None:
        self.now = now_ms()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(resend_module, "now_ms", lambda: clock.now)
    return clock


SILENT_CONV = Conversation(OTHER, USER)
HOOK = "https://hooks.example.com/events"


@pytest.fixture
async def turns(make_parley: MakeParley, sleeps: list[float]) -> Rig:
    """A Parley that runs turns, without its resend loop (the tests tick a ``Resender`` themselves). Its other loops
    sleep a minute between ticks. The agent of AGENT_NUMBER has a webhook (reports queue in the chats' outboxes;
    nothing delivers them here); OTHER's has none."""
    agents = {"frontdesk": agent_file(webhook_url=HOOK, webhook_events=[]), "silent": agent_file()}
    numbers = [{"phone_number": AGENT_NUMBER, "inbound_sms_agents": AGENTS},
               {"phone_number": OTHER, "inbound_sms_agents": [{"agent_id": "silent", "weight": 1}]}]
    parley = await make_parley(agents=agents, numbers=numbers, scheduler_interval_ms=60_000)
    [resends] = [task for task in asyncio.all_tasks() if task.get_name() == "parley-resends"]
    await stop_task(resends)
    return Rig(parley, parley.client.app[RUNTIME], sleeps)


async def until(condition: Callable[[], Any], within_s: float = 10.0) -> None:
    async with asyncio.timeout(within_s):
        while True:
            result = condition()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            await asyncio.sleep(0.01)


async def waiting_count(rig: Rig, conv: Conversation = CONV) -> int:
    return int(await rig.redis.llen(keys.outgoing(conv)))


async def queue_replies(rig: Rig, *texts: str, conv: Conversation = CONV) -> list[Waiting]:
    """Texts whose replies Twilio throttles: they wait in the outgoing queue (Twilio stays throttled)."""
    rig.twilio.throttle(retry_after="0")
    for n, text in enumerate(texts, 1):
        await rig.parley.text(text, user=conv.user_number, to=conv.agent_number)
        await until(functools.partial(_count_is, rig, conv, n))
    await rig.parley.idle()
    return await rig.rt.outgoing.entries(conv)


async def _count_is(rig: Rig, conv: Conversation, count: int) -> bool:
    return await waiting_count(rig, conv) == count


async def due_score(rig: Rig, conv: Conversation = CONV) -> float | None:
    score: float | None = await rig.redis.zscore(keys.outgoing_due(conv.shard), conv.id)
    return score


async def shown(rig: Rig, chat_id: str) -> list[dict[str, Any]]:
    """The chat's agent messages as /get-chat shows them."""
    response = await rig.parley.api("GET", f"/get-chat/{chat_id}")
    assert response.status == 200
    return [m for m in (await response.json())["message_with_tool_calls"] if m["role"] == "agent"]


async def reports(rig: Rig, chat_id: str) -> list[Event]:
    return [Event.from_json(raw) for raw in await rig.redis.lrange(keys.outbox(chat_id), 0, -1)]


async def test_a_tick_sends_what_waits_in_order_and_forgets_the_conversation(turns: Rig, clock: Clock) -> None:
    one, two = await queue_replies(turns, "one", "two")
    turns.twilio.release()
    clock.now = now_ms() + 1_000
    assert await Resender(turns.rt).tick() == 1
    assert [m.body for m in turns.twilio.messages] == ["You said: one", "You said: two"]
    assert {m.status_callback for m in turns.twilio.messages} == {f"{PUBLIC_URL}/twilio/status?chat_id={one.chat_id}"}
    assert await waiting_count(turns) == 0 and await due_score(turns) is None
    delivery = await turns.redis.hgetall(keys.delivery(one.chat_id))
    assert delivery == {w.message.message_id: sent_state(m.sid, "queued")
                        for w, m in zip((one, two), turns.twilio.messages, strict=True)}
    assert [(m["message_sid"], m["status"]) for m in await shown(turns, one.chat_id)] == [
        (m.sid, "queued") for m in turns.twilio.messages]
    assert await reports(turns, one.chat_id) == [], "nothing failed: nothing to report"


async def test_a_retry_twilio_refuses_again_backs_off_until_its_deadline(
    turns: Rig, clock: Clock, low_jitter: None,
) -> None:
    [first, _] = await queue_replies(turns, "one", "two")
    base = turns.rt.settings.send_retry_base_ms
    creates = len(turns.twilio.creates)
    clock.now = now_ms() + 1_000
    assert await Resender(turns.rt).tick() == 1
    assert len(turns.twilio.creates) == creates + 1, "only the head was offered"
    head, behind = await turns.rt.outgoing.entries(CONV)
    assert head.attempts == 1 and behind.attempts == 0
    assert head.message.error is not None and head.message.error.startswith("Twilio did not take the message")
    assert await due_score(turns) == clock.now + base * 2 // 2        # retry_delay_ms(1, base) at the lowest jitter
    clock.now += base
    assert await Resender(turns.rt).tick() == 1
    assert (await turns.rt.outgoing.entries(CONV))[0].attempts == 2
    assert await due_score(turns) == clock.now + base * 4 // 2
    deadline = first.message.created_timestamp + turns.rt.settings.send_retry_for_s * 1000
    clock.now = deadline - 50
    assert await Resender(turns.rt).tick() == 1
    assert await due_score(turns) == deadline, "never tried after its deadline"
    assert turns.twilio.messages == []


async def test_a_message_whose_time_is_up_fails_for_good_with_everything_behind_it(turns: Rig, clock: Clock) -> None:
    one, two = await queue_replies(turns, "one", "two")
    turns.twilio.release()
    deadline = one.message.created_timestamp + turns.rt.settings.send_retry_for_s * 1000
    clock.now = deadline
    assert await Resender(turns.rt).tick() == 1
    assert list(turns.twilio.messages) == []
    error = time_up(turns.rt.settings.send_retry_for_s, one.message.error)
    assert error.startswith("not sent: Twilio did not take it within 600 s (last: Twilio did not take")
    assert await turns.redis.hgetall(keys.delivery(one.chat_id)) == {
        one.message.message_id: failed_state(error), two.message.message_id: failed_state(error)}
    assert await waiting_count(turns) == 0 and await due_score(turns) is None
    [report] = await reports(turns, one.chat_id)
    assert report.kind == "transcript_updated" and report.url == HOOK
    messages = [m for m in orjson.loads(report.body)["chat"]["message_with_tool_calls"] if m["role"] == "agent"]
    assert [(m["status"], m["error"]) for m in messages] == [("failed", error)] * 2
    assert await turns.redis.zscore(keys.outbox_due(keys.shard_of(one.chat_id)), one.chat_id) == clock.now
    assert [(m["status"], m["error"]) for m in await shown(turns, one.chat_id)] == [("failed", error)] * 2
    assert time_up(5, None) == "not sent: Twilio did not take it within 5 s (last: no answer)"


async def test_a_message_just_within_its_time_is_sent(turns: Rig, clock: Clock) -> None:
    [one] = await queue_replies(turns, "one")
    turns.twilio.release()
    clock.now = one.message.created_timestamp + turns.rt.settings.send_retry_for_s * 1000 - 1
    assert await Resender(turns.rt).tick() == 1
    assert [m.body for m in turns.twilio.messages] == ["You said: one"]


async def test_a_final_error_on_a_retry_fails_the_head_and_everything_behind_it(turns: Rig, clock: Clock) -> None:
    one, two = await queue_replies(turns, "one", "two")
    turns.twilio.release()
    turns.twilio.errors[USER] = (400, 21211)
    clock.now = now_ms() + 1_000
    creates = len(turns.twilio.creates)
    assert await Resender(turns.rt).tick() == 1
    assert len(turns.twilio.creates) == creates + 1, "what waited behind it is not offered to Twilio"
    states = await turns.redis.hgetall(keys.delivery(one.chat_id))
    head = orjson.loads(states[one.message.message_id])
    assert (head["status"], head["error_code"]) == ("failed", 21211)
    assert head["error"].startswith("Twilio refused the message")
    assert states[two.message.message_id] == failed_state(BEHIND_FAILED)
    assert await waiting_count(turns) == 0 and len(await reports(turns, one.chat_id)) == 1
    assert turns.twilio.messages == []


async def test_a_user_who_opted_out_gets_nothing_of_what_waits(turns: Rig, clock: Clock) -> None:
    one, two = await queue_replies(turns, "one", "two")
    turns.twilio.release()
    await turns.rt.optouts.record(CONV)
    clock.now = now_ms() + 1_000
    creates = len(turns.twilio.creates)
    assert await Resender(turns.rt).tick() == 1
    assert len(turns.twilio.creates) == creates and turns.twilio.messages == []
    assert await turns.redis.hgetall(keys.delivery(one.chat_id)) == {
        one.message.message_id: failed_state(OPTED_OUT), two.message.message_id: failed_state(OPTED_OUT)}
    assert await waiting_count(turns) == 0


async def test_what_waits_for_a_number_gone_fails_and_a_chat_without_webhook_or_gone_is_not_reported(
    turns: Rig, clock: Clock,
) -> None:
    [silent] = await queue_replies(turns, "hi", conv=SILENT_CONV)
    # A number Parley no longer sends from, whose conversation shares the silent one's partition (its chats do).
    gone_conv = next(c for c in (Conversation(f"+150355501{n}", USER) for n in range(50, 99))
                     if c.shard == SILENT_CONV.shard)
    gone_chat = keys.new_chat_id(gone_conv.shard)
    orphan = entry(gone_chat)
    await turns.redis.rpush(keys.outgoing(gone_conv), silent.raw, orphan)
    await turns.redis.delete(keys.outgoing(SILENT_CONV))
    await turns.redis.zadd(keys.outgoing_due(gone_conv.shard), {gone_conv.id: 0})
    turns.twilio.release()
    clock.now = now_ms() + 1_000
    assert await Resender(turns.rt).tick() >= 1
    assert await turns.redis.hgetall(keys.delivery(silent.chat_id)) == {
        silent.message.message_id: failed_state(NUMBER_GONE)}
    assert await turns.redis.hgetall(keys.delivery(gone_chat)) == {
        Waiting.parse(orphan).message.message_id: failed_state(NUMBER_GONE)}
    assert await reports(turns, silent.chat_id) == [], "its agent has no webhook"
    assert await reports(turns, gone_chat) == []
    assert await waiting_count(turns, gone_conv) == 0 and turns.twilio.messages == []


async def test_a_conversation_a_turn_holds_is_tried_again_shortly(turns: Rig, clock: Clock) -> None:
    await queue_replies(turns, "one")
    turns.twilio.release()
    await turns.redis.set(keys.lock(CONV), "a turn")
    clock.now = now_ms() + 1_000
    started = time.monotonic()
    assert await Resender(turns.rt).tick() == 1
    assert HOLD_WAIT_S * 0.8 <= time.monotonic() - started < HOLD_WAIT_S + 0.5
    assert await due_score(turns) == clock.now + turns.rt.settings.send_retry_base_ms
    assert turns.twilio.messages == [] and await waiting_count(turns) == 1


async def test_a_cancelled_run_gives_the_conversation_back_at_once(turns: Rig, clock: Clock) -> None:
    await queue_replies(turns, "one")
    await turns.redis.set(keys.lock(CONV), "a turn")
    clock.now = now_ms() + 1_000
    ticking = asyncio.create_task(Resender(turns.rt).tick())
    leased = clock.now + turns.rt.outgoing.due.lease_ms
    await until(lambda: _score_is(turns, leased))     # popped: now waiting for the turn's lock
    ticking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await ticking
    assert await due_score(turns) == clock.now


async def _score_is(rig: Rig, score: int) -> bool:
    return await due_score(rig) == score


async def test_one_broken_conversation_does_not_stop_the_others(turns: Rig, clock: Clock) -> None:
    await queue_replies(turns, "one")
    broken = Conversation(AGENT_NUMBER, "+14155550999")
    await turns.redis.rpush(keys.outgoing(broken), "not JSON")
    await turns.redis.zadd(keys.outgoing_due(broken.shard), {broken.id: 0})
    turns.twilio.release()
    clock.now = now_ms() + 1_000
    assert await Resender(turns.rt).tick() == 2
    assert [m.body for m in turns.twilio.messages] == ["You said: one"]
    assert await due_score(turns, broken) == clock.now + turns.rt.outgoing.due.lease_ms, "its lease brings it back"


async def test_a_run_that_lost_the_lock_stops_and_comes_back_at_once(turns: Rig, clock: Clock) -> None:
    await queue_replies(turns, "one", "two")
    turns.twilio.release()
    turns.twilio.delay_s = 0.2
    turns.twilio.requested.clear()
    clock.now = now_ms() + 1_000
    ticking = asyncio.create_task(Resender(turns.rt).tick())
    async with asyncio.timeout(5):
        await turns.twilio.requested.wait()
    await turns.redis.set(keys.lock(CONV), "another holder")   # the lock expired and was taken meanwhile
    assert await asyncio.wait_for(ticking, 5) == 1
    assert [m.body for m in turns.twilio.messages] == ["You said: one"], "what Twilio took is recorded, and no more"
    assert await waiting_count(turns) == 1
    assert await due_score(turns) == clock.now


async def test_the_loop_asks_redis_when_its_due_times_come_or_every_idle_poll(turns: Rig, clock: Clock) -> None:
    resender = Resender(turns.rt)
    start = clock.now
    assert await resender.tick() == 0
    other = Conversation(AGENT_NUMBER, "+14155550999")
    await turns.redis.zadd(keys.outgoing_due(other.shard), {other.id: start})   # another process's
    clock.now = start + IDLE_POLL_MS - 1
    assert await resender.tick() == 0, "idle: Redis is not asked before the idle poll"
    clock.now = start + IDLE_POLL_MS
    assert await resender.tick() == 1
    assert await due_score(turns, other) is None
    idle_from = clock.now
    assert await resender.tick() == 0, "after finding work it looks again at once"
    await turns.rt.outgoing.schedule(other, idle_from + 10)   # this process's own due time
    clock.now = idle_from + 10
    assert await resender.tick() == 1


async def test_a_tick_takes_at_most_a_batch(turns: Rig, clock: Clock) -> None:
    # A batch is per partition: these conversations are all in one.
    convs = [c for n in range(2_000) if (c := Conversation(AGENT_NUMBER, f"+1415556{n:04d}")).shard == CONV.shard]
    for conv in convs[:BATCH + 1]:
        await turns.redis.zadd(keys.outgoing_due(conv.shard), {conv.id: 0})
    resender = Resender(turns.rt)
    assert await resender.tick() == BATCH
    assert await resender.tick() == 1


async def test_a_retry_honours_twilios_retry_after_and_keeps_its_latest_error(
    turns: Rig, clock: Clock, low_jitter: None,
) -> None:
    [first] = await queue_replies(turns, "one")
    assert first.message.error is not None and "HTTP 429" in first.message.error
    turns.twilio.release()
    turns.twilio.fail_next = [(503, 20503)]
    clock.now = now_ms() + 1_000
    assert await Resender(turns.rt).tick() == 1
    [head] = await turns.rt.outgoing.entries(CONV)
    assert head.attempts == 1 and head.message.error is not None and "HTTP 503" in head.message.error
    turns.twilio.throttle(1, retry_after="7")
    clock.now += 1_000
    assert await Resender(turns.rt).tick() == 1
    assert await due_score(turns) == clock.now + 7_000, "not before Twilio's Retry-After"


async def test_segments_are_taken_in_blocks_that_shrink_near_the_limit(rig: Rig) -> None:
    number = (await rig.number()).model_copy(update={"daily_segment_limit": 200})
    daily, key = DailySegments(rig.redis), keys.segments(AGENT_NUMBER, pacific_day())
    await daily.reserve(number, 1)
    assert int(await rig.redis.get(key)) == min(LEASE, 200 // 8)   # a block: an eighth of what is left, at most
    for _ in range(24):
        await daily.reserve(number, 1)                              # spent from the block: no command
    assert int(await rig.redis.get(key)) == 25
    other = DailySegments(rig.redis)   # another process
    await other.reserve(number, 150)   # more than a block: what it needs
    assert int(await rig.redis.get(key)) == 175
    for _ in range(25):                 # the last 25: blocks of an eighth of what is left, then of one
        await daily.reserve(number, 1)
    assert int(await rig.redis.get(key)) == 200
    with pytest.raises(LimitReached):
        await daily.reserve(number, 1)
    await other.refund(number, 2)
    await other.give_back()
    assert int(await rig.redis.get(key)) == 198   # never above the limit; given back, others may send them


async def test_sends_at_once_share_the_block_one_of_them_takes(rig: Rig) -> None:
    number = await rig.number()
    daily = DailySegments(rig.redis)
    await asyncio.gather(*(daily.reserve(number, 1) for _ in range(LEASE)))
    assert int(await rig.redis.get(keys.segments(AGENT_NUMBER, pacific_day()))) == LEASE   # one block, not 32
