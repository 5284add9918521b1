"""When Twilio throttles: replies wait in the conversation's outgoing queue and go out later, once each, in order.

The fake Twilio answers 429 (20429) with a ``Retry-After`` for a while (``FakeTwilio.throttle``); Parley's retry
base delay is 100 ms in tests (``conftest.build_settings``) and the bounded time is set per test.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from service.channels.twilio.gateway import retry_after_s
from service.clock import now_ms
from service.conversations.outgoing import MAX_DELAY_MS, retry_delay_ms
from service.conversations.resend import BEHIND_FAILED, OPTED_OUT
from service.storage import keys

from .conftest import AGENT_NUMBER, USER, MakeParley, Parley, Receiver, agent_file
from .fakes.openai import Completion
from .test_sms import NUMBERS, call_tool_then_answer, sms_tool, status_callback

CONV = keys.Conversation(AGENT_NUMBER, USER)


async def until(condition: Callable[[], Any], within_s: float = 10.0) -> None:
    """Wait until ``condition()`` (sync or async) is true."""
    async with asyncio.timeout(within_s):
        while True:
            result = condition()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            await asyncio.sleep(0.02)


async def waiting(parley: Parley, conv: keys.Conversation = CONV) -> int:
    """Messages waiting in the conversation's outgoing queue."""
    return int(await parley.redis.llen(keys.outgoing(conv)))


async def due_conversations(parley: Parley) -> int:
    return sum([await parley.redis.zcard(keys.outgoing_due(s)) for s in range(keys.SHARDS)])


async def agent_messages(parley: Parley, chat_id: str | None = None) -> list[dict[str, Any]]:
    """The agent messages of the conversation's chat (its latest one when ``chat_id`` is None), as /get-chat
    shows them."""
    if chat_id is None:
        chat_id = (await parley.chat_ids())[-1]
    response = await parley.api("GET", f"/get-chat/{chat_id}")
    assert response.status == 200
    return [m for m in (await response.json())["message_with_tool_calls"] if m["role"] == "agent"]


async def test_every_texter_gets_one_reply_through_a_throttled_spell(make_parley: MakeParley) -> None:
    parley = await make_parley()
    users = [f"+1415555{n:04d}" for n in range(30)]
    parley.twilio.throttle(retry_after="0")
    for user in users:
        assert (await parley.text("hello", user=user)).status == 200
    convs = [keys.Conversation(AGENT_NUMBER, user) for user in users]
    await until(lambda: all_waiting(parley, convs))   # every reply was refused and waits
    parley.twilio.release()

    await parley.twilio.wait_for(len(users))
    await until(lambda: nothing_waits(parley, convs))
    assert sorted(m.to for m in parley.twilio.messages) == sorted(users), "a texter got none, or two"
    assert {m.body for m in parley.twilio.messages} == {"You said: hello"}
    # /get-chat shows the SID and status Twilio gave the retried send, and no longer why it waited.
    message = (await parley.chat_of(user=users[0]))["message_with_tool_calls"][-1]
    sid = next(m.sid for m in parley.twilio.messages if m.to == users[0])
    assert (message["message_sid"], message["status"]) == (sid, "queued")
    assert "error" not in message and "error_code" not in message


async def all_waiting(parley: Parley, convs: list[keys.Conversation]) -> bool:
    return all([await waiting(parley, conv) == 1 for conv in convs])


async def nothing_waits(parley: Parley, convs: list[keys.Conversation]) -> bool:
    return not any([await waiting(parley, conv) for conv in convs]) and await due_conversations(parley) == 0


async def test_a_second_reply_waits_behind_the_first_and_status_callbacks_follow_it(make_parley: MakeParley) -> None:
    parley = await make_parley()
    parley.twilio.throttle(retry_after="0")
    await parley.text("one")
    await until(lambda: waiting(parley))
    await parley.text("two")
    await until(lambda: _count_waiting(parley, 2))
    # The second reply was never offered to Twilio while the first waited.
    assert {body for _, _, body in parley.twilio.creates} == {"You said: one"}
    statuses = [m["status"] for m in await agent_messages(parley)]
    assert statuses == ["retrying", "retrying"]

    parley.twilio.release()
    await parley.twilio.wait_for(2)
    await until(lambda: nothing_waits(parley, [CONV]))
    assert [m.body for m in parley.twilio.messages] == ["You said: one", "You said: two"]
    shown = await agent_messages(parley)
    assert [m["message_sid"] for m in shown] == [m.sid for m in parley.twilio.messages]
    # Twilio's callbacks name the SID, as for any message.
    assert await status_callback(parley, parley.twilio.messages[0].sid, "delivered") == 204
    assert [m["status"] for m in await agent_messages(parley)] == ["delivered", "queued"]


async def _count_waiting(parley: Parley, count: int) -> bool:
    return await waiting(parley) == count


async def test_a_final_error_on_a_retry_fails_what_waits_behind_it(make_parley: MakeParley) -> None:
    parley = await make_parley()
    parley.twilio.throttle(retry_after="0")
    await parley.text("one")
    await until(lambda: waiting(parley))
    await parley.text("two")
    await until(lambda: _count_waiting(parley, 2))
    parley.twilio.errors[USER] = (400, 21211)     # not a valid number after all
    parley.twilio.release()
    await until(lambda: nothing_waits(parley, [CONV]))
    first, second = await agent_messages(parley)
    assert (first["status"], first["error_code"]) == ("failed", 21211)
    assert (second["status"], second["error"]) == ("failed", BEHIND_FAILED)
    assert parley.twilio.messages == []


async def test_parts_of_a_reply_after_a_throttled_one_wait_behind_it(make_parley: MakeParley) -> None:
    parley = await make_parley(agent=agent_file(max_reply_segments=1))   # one sentence a message
    sentences = [f"Sentence {n} " + "x" * 140 + "." for n in range(3)]
    parley.llm.respond = lambda body: Completion(content=" ".join(sentences))
    parley.twilio.throttle(retry_after="0", after=1)    # the first part goes, then Twilio throttles
    await parley.text("tell me")
    await until(lambda: _count_waiting(parley, 2))
    assert [m["status"] for m in await agent_messages(parley)] == ["queued", "retrying", "retrying"]
    parley.twilio.release()
    await parley.twilio.wait_for(3)
    await until(lambda: nothing_waits(parley, [CONV]))
    assert [m.body for m in parley.twilio.messages] == sentences


async def test_a_reply_waits_behind_a_tool_text_of_its_own_turn(make_parley: MakeParley) -> None:
    # The tool's text is refused once; the reply, sent later in the same turn, must not overtake it although
    # nothing is in the outgoing queue until the turn commits.
    parley = await make_parley(numbers=NUMBERS, agent=agent_file(retell_llm={"general_tools": [sms_tool()]}))
    parley.llm.respond = call_tool_then_answer("text_link")
    parley.twilio.throttle(1, retry_after="0")
    await parley.text("send me the link")
    await parley.twilio.wait_for(2)
    await until(lambda: nothing_waits(parley, [CONV]))
    assert [m.body for m in parley.twilio.messages] == [f"Book here: https://sunny.example/{USER}",
                                                        "Tool said: Sent successfully"]
    assert [b for _, _, b in parley.twilio.creates].count("Tool said: Sent successfully") == 1


async def test_retry_after_is_honoured(make_parley: MakeParley) -> None:
    parley = await make_parley()
    parley.twilio.throttle(1, retry_after="1")
    await parley.text("hello")
    await parley.twilio.wait_for(1)
    (refused_at, _, _), (accepted_at, _, _) = parley.twilio.creates
    assert accepted_at - refused_at >= 1.0


async def test_a_restart_delivers_what_the_first_process_left_waiting(make_parley: MakeParley) -> None:
    # The first process's resend loop sleeps (a long scheduler interval): what it queued stays queued.
    first = await make_parley(scheduler_interval_ms=60_000)
    first.twilio.throttle()
    await first.text("are you open?")
    await until(lambda: waiting(first))
    await first.client.close()
    first.twilio.release()
    due_ms = await first.redis.zscore(keys.outgoing_due(CONV.shard), CONV.id)
    assert due_ms is not None
    await until(lambda: now_ms() >= due_ms)   # so the second process finds it due when it starts

    second = await make_parley()          # another process on the same Redis
    sent = await second.twilio.wait_for(1)
    await until(lambda: nothing_waits(second, [CONV]))
    assert [m.body for m in sent] == ["You said: are you open?"]
    assert (await agent_messages(second))[0]["message_sid"] == sent[0].sid


async def test_a_message_that_waits_too_long_fails_and_is_reported(
    make_parley: MakeParley, receiver: Receiver,
) -> None:
    # The agent asks for chat_ended only: a failed message is reported all the same.
    parley = await make_parley(send_retry_for_s=1,
                               agent=agent_file(webhook_url=receiver.url, webhook_events=["chat_ended"]))
    parley.twilio.throttle(retry_after="0")
    started = time.monotonic()
    await parley.text("hello")
    [event] = await receiver.wait_for(1)
    assert time.monotonic() - started >= 1.0
    assert event["event"] == "transcript_updated"
    reported = event["chat"]["message_with_tool_calls"][-1]
    assert reported["status"] == "failed" and "within 1 s" in reported["error"] and "message_sid" not in reported
    [shown] = await agent_messages(parley)
    assert shown["status"] == "failed" and shown["error"] == reported["error"]
    assert await waiting(parley) == 0 and await due_conversations(parley) == 0
    parley.twilio.release()
    assert parley.twilio.messages == []


async def test_a_user_who_opts_out_while_a_message_waits_gets_nothing(make_parley: MakeParley) -> None:
    parley = await make_parley()
    parley.twilio.throttle(retry_after="0")
    await parley.text("hi")
    await until(lambda: waiting(parley))
    chat_id = (await parley.chat_ids())[-1]
    await parley.text("STOP")
    await until(lambda: _failed(parley, chat_id))
    parley.twilio.release()
    await parley.idle()
    assert await waiting(parley) == 0 and await due_conversations(parley) == 0
    assert parley.twilio.messages == []
    [shown] = await agent_messages(parley, chat_id)
    assert shown["error"] == OPTED_OUT


async def _failed(parley: Parley, chat_id: str) -> bool:
    return [m["status"] for m in await agent_messages(parley, chat_id)] == ["failed"]


async def test_concurrent_creates_are_capped_per_account(make_parley: MakeParley) -> None:
    parley = await make_parley(twilio_max_concurrency=2)
    parley.twilio.delay_s = 0.2
    users = [f"+1415555{n:04d}" for n in range(8)]
    for user in users:
        await parley.text("hello", user=user)
    await parley.twilio.wait_for(len(users))
    assert parley.twilio.max_in_flight == 2


async def test_a_timeout_is_not_retried(make_parley: MakeParley) -> None:
    # Twilio may have taken a request it did not answer in time: sending it again could send it twice.
    parley = await make_parley(twilio_timeout_s=0.3)
    parley.twilio.delay_s = 1.0
    await parley.text("hello")
    await until(lambda: _failed_any(parley))
    [shown] = await agent_messages(parley)
    assert "did not answer" in shown["error"]
    assert len(parley.twilio.creates) == 1
    assert await waiting(parley) == 0 and await due_conversations(parley) == 0
    await until(lambda: parley.twilio.in_flight == 0)


async def _failed_any(parley: Parley) -> bool:
    ids = await parley.chat_ids()
    return bool(ids) and [m["status"] for m in await agent_messages(parley, ids[-1])] == ["failed"]


PACED = [{"phone_number": AGENT_NUMBER, "inbound_sms_agents": [{"agent_id": "frontdesk", "weight": 1}],
          "segments_per_second": 5}]


async def test_a_paced_number_spaces_its_messages_across_processes(make_parley: MakeParley) -> None:
    first = await make_parley(numbers=PACED)
    second = await make_parley(numbers=PACED)     # another process: the pace is kept in Redis
    for n, parley in enumerate((first, second)):   # warm up: each process's first request opens its connection
        response = await parley.api("POST", "/send-sms", json={"from_number": AGENT_NUMBER,
                                                               "to_number": f"+1415556{n:04d}", "content": "hi"})
        assert response.status == 200, await response.text()
    first.twilio.creates.clear()
    first.twilio.messages.clear()
    users = [f"+1415555{n:04d}" for n in range(6)]
    started = time.monotonic()
    for n, user in enumerate(users):
        await (first if n % 2 else second).text("hello", user=user)
    await first.twilio.wait_for(len(users))
    # 5 segments a second: the k-th one-segment message's slot is k x 200 ms after the first one's, which is no
    # sooner than the first text; a message never reaches Twilio before its slot (however late the first one did:
    # measured from the start, a busy machine cannot make this fail).
    times = sorted(at for at, _, _ in first.twilio.creates)
    assert all(at - started >= 0.2 * k - 0.01 for k, at in enumerate(times)), [at - started for at in times]


async def test_a_paced_slot_too_far_ahead_waits_in_the_queue(make_parley: MakeParley) -> None:
    parley = await make_parley(numbers=PACED)
    await parley.redis.set(keys.pace(AGENT_NUMBER), now_ms() + 60_000, px=61_000)   # the number is booked a minute
    await parley.text("hello")
    await until(lambda: waiting(parley))
    [shown] = await agent_messages(parley)
    assert shown["status"] == "retrying" and "segments_per_second" in shown["error"]
    due_ms = await parley.redis.zscore(keys.outgoing_due(CONV.shard), CONV.id)
    assert due_ms is not None and due_ms >= now_ms() + 55_000   # tried again when its slot comes, not before
    assert parley.twilio.creates == deque()


def test_retry_after_reads_seconds_and_dates() -> None:
    now = datetime(2026, 11, 26, 20, 0, tzinfo=UTC)
    assert retry_after_s("2") == 2.0
    assert retry_after_s(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30.0
    assert retry_after_s(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0.0
    assert retry_after_s("soon") is None and retry_after_s(None) is None
    assert retry_after_s("99999") == 3_600.0


@pytest.mark.parametrize("attempts", [0, 1, 5, 40])
def test_backoff_doubles_with_jitter_within_bounds(attempts: int) -> None:
    for _ in range(50):
        delay = retry_delay_ms(attempts, 100)
        nominal = min(100 * 2 ** attempts, MAX_DELAY_MS)
        assert nominal * 0.5 <= delay <= nominal * 1.5
        assert retry_delay_ms(attempts, 100, retry_after_s=120) >= 120_000
