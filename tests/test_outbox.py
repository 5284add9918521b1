"""The events outbox itself (service/webhooks/events.py), driven directly on real Redis and a local endpoint.

The clock is the one thing mocked: ``now_ms`` of the module is a ``Clock`` the test moves, so the retry
schedule (the chat's score in ``outbox:due``) can be asserted to the millisecond.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer

from service.metrics import Metrics
from service.outbound import OutboundPolicy
from service.storage import keys
from service.webhooks import events
from service.webhooks.events import Event, Outbox, queue, sign

from .conftest import TEST_OUTBOUND_ALLOW, is_cluster

KEY = "outbox-signing-key"
START = 1_700_000_000_000
CHAT = "chat_outbox_a"


class Clock:
    """Stands in for ``events.now_ms``."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


@dataclass
class Answer:
    status: int = 200
    body: bytes = b"{}"
    delay_s: float = 0.0


@dataclass
class Endpoint:
    """A receiver whose answers are scripted byte for byte (``answers``, then 200 ``{}``)."""

    url: str = ""
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)   # (method, path)

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        self.requests.append((request.method, request.path))
        answer = self.answers.pop(0) if self.answers else Answer()
        if answer.delay_s:
            await asyncio.sleep(answer.delay_s)
        if answer.status in (302, 307):
            return web.Response(status=answer.status, headers={"Location": "/moved"})
        return web.Response(status=answer.status, body=answer.body, content_type="application/json")

    def ids(self) -> list[str]:
        return [headers["X-Parley-Event-Id"] for headers, _ in self.received]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock(START)
    monkeypatch.setattr(events, "now_ms", fake)
    return fake


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    point = Endpoint()
    app = web.Application()
    app.router.add_post("/hook", point.handle)
    app.router.add_route("*", "/moved", point.handle)
    async with TestServer(app) as server:
        point.url = str(server.make_url("/hook"))
        yield point


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with OutboundPolicy(TEST_OUTBOUND_ALLOW).session() as session:
        yield session


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


def outbox(redis: aioredis.Redis, http: aiohttp.ClientSession, metrics: Metrics, *, max_attempts: int = 5,
           retry_base_ms: int = 1_000) -> Outbox:
    return Outbox(redis, http, metrics, signing_key=KEY, max_attempts=max_attempts, retry_base_ms=retry_base_ms)


# The default timeout is the Event's own: .ci/run's cluster pass once saw a local POST take over 2 s to answer.
def event(url: str, n: int = 1, *, chat_id: str = CHAT, kind: str = "chat_started", timeout_ms: int = 10_000,
          ) -> Event:
    return Event(event_id=f"evt_{n}", chat_id=chat_id, kind=kind, url=url,
                 body=orjson.dumps({"event": kind, "n": n, "text": "héllo"}).decode(), timeout_ms=timeout_ms)


async def put(redis: aioredis.Redis, *queued: Event, ttl_s: int = 3_600) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        for one in queued:
            queue(pipe, one, ttl_s)
        await pipe.execute()


async def due_at(redis: aioredis.Redis, chat_id: str = CHAT) -> float | None:
    score: float | None = await redis.zscore(keys.outbox_due(keys.shard_of(chat_id)), chat_id)
    return score


async def waiting(redis: aioredis.Redis, chat_id: str = CHAT) -> list[Event]:
    return [Event.from_json(str(raw)) for raw in await redis.lrange(keys.outbox(chat_id), 0, -1)]


async def failed(redis: aioredis.Redis, chat_id: str = CHAT) -> list[Event]:
    return [Event.from_json(str(raw)) for raw in await redis.lrange(keys.outbox_failed(keys.shard_of(chat_id)), 0, -1)]


def counted(metrics: Metrics, kind: str, outcome: str) -> float:
    return metrics.registry.get_sample_value("parley_events_total", {"event": kind, "outcome": outcome}) or 0.0


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- sign, Event, queue ----------------------------------------------------------------------------------------


def test_sign_is_an_hmac_of_the_body_and_the_timestamp(clock: Clock) -> None:
    def expected(body: bytes, stamp: int) -> str:
        return f"v={stamp},d=" + hmac.new(KEY.encode(), body + str(stamp).encode(), hashlib.sha256).hexdigest()

    assert sign(b'{"a":1}', KEY, 1_234) == expected(b'{"a":1}', 1_234)
    assert sign(b"x", KEY, 0) == expected(b"x", 0), "a timestamp of 0 is a timestamp"
    assert sign(b"x", KEY) == expected(b"x", START), "no timestamp: now"
    assert sign(b"x", "other") != expected(b"x", START)


def test_an_event_round_trips_through_json_with_its_defaults() -> None:
    plain = Event(event_id="evt_1", chat_id=CHAT, kind="chat_ended", url="https://example.com/h", body="{}")
    assert (plain.timeout_ms, plain.attempts, plain.last_error) == (10_000, 0, None)
    assert orjson.loads(plain.to_json()) == {
        "event_id": "evt_1", "chat_id": CHAT, "kind": "chat_ended", "url": "https://example.com/h", "body": "{}",
        "timeout_ms": 10_000, "attempts": 0, "last_error": None}
    tried = Event("evt_2", CHAT, "chat_ended", "https://example.com/h", "{}", 500, 3, "HTTP 500: x")
    assert Event.from_json(tried.to_json()) == tried


async def test_queue_appends_sets_the_ttl_and_makes_the_chat_due_once(redis: aioredis.Redis, clock: Clock) -> None:
    first, second = event("https://example.com/h", 1), event("https://example.com/h", 2)
    await put(redis, first, ttl_s=777)
    clock.ms += 5_000
    await put(redis, second, ttl_s=777)
    assert await waiting(redis) == [first, second]
    assert 770 <= await redis.ttl(keys.outbox(CHAT)) <= 777
    assert await due_at(redis) == START, "a chat already due keeps its time (a retry's schedule included)"


# --- delivery ------------------------------------------------------------------------------------------------


async def test_a_delivery_is_signed_sent_as_queued_and_removed(
    redis: aioredis.Redis, http: aiohttp.ClientSession, metrics: Metrics, endpoint: Endpoint, clock: Clock,
) -> None:
    one = event(endpoint.url, 1, kind="chat_ended")
    await put(redis, one)
    box = outbox(redis, http, metrics)
    assert await box.tick() == 1
    [(headers, body)] = endpoint.received
    assert body == one.body.encode()
    assert headers["Content-Type"] == "application/json" and headers["User-Agent"] == "Parley"
    assert headers["X-Parley-Event-Id"] == "evt_1"
    assert headers["X-Retell-Signature"] == sign(body, KEY, START)
    assert await waiting(redis) == [] and await due_at(redis) is None and await failed(redis) == []
    assert counted(metrics, "chat_ended", "delivered") == 1
    assert await box.tick() == 0 and len(endpoint.received) == 1


async def test_nothing_is_sent_before_it_is_due(
    redis: aioredis.Redis, http: aiohttp.ClientSession, metrics: Metrics, endpoint: Endpoint, clock: Clock,
) -> None:
    await put(redis, event(endpoint.url))
    clock.ms -= 1
    assert await outbox(redis, http, metrics).tick() == 0
    assert endpoint.received == [] and len(await waiting(redis)) == 1


async def test_retry_backoff_doubles_from_the_base_and_caps_at_ten_minutes(
    redis: aioredis.Redis, http: aiohttp.ClientSession, metrics: Metrics, endpoint: Endpoint, clock: Clock,
) -> None:
    endpoint.answers = [Answer(500)] * 6
    await put(redis, event(endpoint.url))
    box = outbox(redis, http, metrics, max_attempts=10, retry_base_ms=100_000)
    delays = []
    for attempt in range(1, 7):
        assert await box.tick() == 1
        assert len(endpoint.received) == attempt
        [retrying] = await waiting(redis)
        assert (retrying.attempts, retrying.last_error) == (attempt, "HTTP 500: {}")
        due = await due_at(redis)
        assert due is not None
        delays.append(int(due) - clock.ms)
        clock.ms = int(due) - 1
        assert await box.tick() == 0, "not before its time"
        clock.ms = int(due)
    assert delays == [100_000, 200_000, 400_000, 600_000, 600_000, 600_000]
    assert counted(metrics, "chat_started", "retried") == 6
    assert await box.tick() == 1 and len(endpoint.received) == 7
    assert await waiting(redis) == [] and await due_at(redis) is None
    assert len(set(endpoint.ids())) == 1 and len({body for _, body in endpoint.received}) == 1


async def test_an_event_fails_for_good_after_max_attempts(
    redis: aioredis.Redis, http: aiohttp.ClientSession, metrics: Metrics, endpoint: Endpoint, clock: Clock,
) -> None:
    endpoint.answers = [Answer(503)] * 3
    await put(redis, event(endpoint.url, 1, kind="chat_ended"))
    box = outbox(redis, http, metrics, max_attempts=3, retry_base_ms=10)
    for _ in range(2):
        assert await box.tick() == 1
        clock.ms += 20
    assert [e.attempts for e in await waiting(redis)] == [2]
    assert await box.tick() == 1
    assert len(endpoint.received) == 3
    [gone] = await failed(redis)
    assert (gone.event_id, gone.attempts, gone.last_error) == ("evt_1", 3, "HTTP 503: {}")
    assert await waiting(redis) == [] and await due_at(redis) is None
    assert (counted(metrics, "chat_ended", "retried"), counted(metrics, "chat_ended", "failed")) == (2, 1)


async def test_a_delivery_that_times_out_is_retried(
    redis: aioredis.Redis, http: aiohttp.ClientSession, metrics: Metrics, endpoint: Endpoint, clock: Clock,
) -> None:
    endpoint.answers = [Answer(delay_s=2.0)]
    await put(redis, event(endpoint.url, timeout_ms=300))
    box = outbox(redis, http, metrics, retry_base_ms=1_000)
    async with asyncio.timeout(1.5):   # it gave up at its own timeout, well before the answer
        assert await box.tick() == 1
    [retrying] = await waiting(redis)
    assert (retrying.attempts, retrying.last_error) == (1, "no answer within 300 ms")
    assert await due_at(redis) == START + 1_000
    clock.ms += 1_000
    assert await box.tick() == 1
    assert endpoint.ids() == ["evt_1", "evt_1"] and await waiting(redis) == []


async def test_a_slow_answer_within_the_timeout_is_delivered(
    redis: aioredis.Redis, http: aiohttp.ClientSession, metrics: Metrics, endpoint: Endpoint, clock: Clock,
) -> None:
    endpoint.answers = [Answer(delay_s=0.3)]
    await put(redis, event(endpoint.url, timeout_ms=1_500))
    assert await outbox(redis, http, metrics).tick() == 1
    assert await waiting(redis) == [] and counted(metrics, "chat_started", "delivered") == 1


async def test_a_connection_error_is_retried(
    redis: aioredis.Redis, http: aiohttp.ClientSession, metrics: Metrics, clock: Clock,
) -> None:
    await put(redis, event(f"http://127.0.0.1:{closed_port()}/hook"))
    assert await outbox(redis, http, metrics, retry_base_ms=250).tick() == 1
    [retrying] = await waiting(redis)
    assert retrying.attempts == 1 and retrying.last_error is not None
    assert retrying.last_error.startswith("ClientConnectorError: Cannot connect to host 127.0.0.1")
    assert await due_at(redis) == START + 250 and await failed(redis) == []


async def test_a_url_the_policy_refuses_fails_at_once_and_the_next_event_goes_out(
    redis: aioredis.Redis, http: aiohttp.ClientSession, metrics: Metrics, endpoint: Endpoint, clock: Clock,
) -> None:
    await put(redis, event("http://10.0.0.1/hook", 1), event(endpoint.url, 2))
    assert await outbox(redis, http, metrics, max_attempts=5).tick() == 1
    [refused] = await failed(redis)
    assert refused.event_id == "evt_1" and refused.attempts == 1
    assert refused.last_error is not None and "10.0.0.1 is a private address" in refused.last_error
    assert endpoint.ids() == ["evt_2"] and await waiting(redis) == [] and await due_at(redis) is None


@pytest.mark.parametrize(("status", "outcome"), [
    (200, "delivered"), (201, "delivered"), (299, "delivered"),
    (300, "failed"), (400, "failed"), (404, "failed"), (499, "failed"),
    (408, "retried"), (429, "retried"), (500, "retried"), (503, "retried"), (599, "retried"),
])
async def test_which_answers_are_retried(
    redis: aioredis.Redis, http: aiohttp.ClientSession, metrics: Metrics, endpoint: Endpoint, clock: Clock,
    status: int, outcome: str,
) -> None:
    endpoint.answers = [Answer(status)]
    await put(redis, event(endpoint.url))
    assert await outbox(redis, http, metrics, retry_base_ms=1_000).tick() == 1
    assert counted(metrics, "chat_started", outcome) == 1
    left, gone = await waiting(redis), await failed(redis)
    if outcome == "delivered":
        assert left == [] and gone == [] and await due_at(redis) is None
    elif outcome == "failed":
        assert left == [] and [(e.attempts, e.last_error) for e in gone] == [(1, f"HTTP {status}: {{}}")]
    else:
        assert gone == [] and [(e.attempts, e.last_error) for e in left] == [(1, f"HTTP {status}: {{}}")]
        assert await due_at(redis) == START + 1_000


async def test_the_error_keeps_the_first_300_bytes_of_the_answer(
    redis: aioredis.Redis, http: aiohttp.ClientSession, metrics: Metrics, endpoint: Endpoint, clock: Clock,
) -> None:
    body = b"A" * 299 + "é".encode() + b"B" * 500   # byte 300 cuts the é in two
    endpoint.answers = [Answer(422, body)]
    await put(redis, event(endpoint.url))
    await outbox(redis, http, metrics).tick()
    [gone] = await failed(redis)
    assert gone.last_error == "HTTP 422: " + "A" * 299 + "\ufffd"


async def test_a_retry_holds_back_the_chats_later_events(
    redis: aioredis.Redis, http: aiohttp.ClientSession, metrics: Metrics, endpoint: Endpoint, clock: Clock,
) -> None:
    endpoint.answers = [Answer(500)]
    await put(redis, event(endpoint.url, 1), event(endpoint.url, 2), event(endpoint.url, 3))
    box = outbox(redis, http, metrics, retry_base_ms=50)
    assert await box.tick() == 1
    assert endpoint.ids() == ["evt_1"]
    assert [(e.event_id, e.attempts) for e in await waiting(redis)] == [("evt_1", 1), ("evt_2", 0), ("evt_3", 0)]
    clock.ms += 50
    assert await box.tick() == 1
    assert endpoint.ids() == ["evt_1", "evt_1", "evt_2", "evt_3"]
    assert await waiting(redis) == [] and await due_at(redis) is None


async def test_chats_are_delivered_independently(
    redis: aioredis.Redis, http: aiohttp.ClientSession, metrics: Metrics, endpoint: Endpoint, clock: Clock,
) -> None:
    other = next(f"chat_other_{i}" for i in range(100) if keys.shard_of(f"chat_other_{i}") != keys.shard_of(CHAT))
    await put(redis, event(f"http://127.0.0.1:{closed_port()}/hook", 1))   # this chat's endpoint is down
    await put(redis, event(endpoint.url, 2, chat_id=other))
    assert await outbox(redis, http, metrics).tick() == 2
    assert endpoint.ids() == ["evt_2"]
    assert [e.event_id for e in await waiting(redis)] == ["evt_1"] and await waiting(redis, other) == []
    assert await due_at(redis) == START + 1_000 and await due_at(redis, other) is None


# --- the failed list ------------------------------------------------------------------------------------------


async def test_the_failed_list_keeps_the_newest_thousand(
    redis: aioredis.Redis, http: aiohttp.ClientSession, metrics: Metrics, endpoint: Endpoint, clock: Clock,
) -> None:
    failed_key = keys.outbox_failed(keys.shard_of(CHAT))
    await redis.rpush(failed_key, *[f"old-{i}" for i in range(1_000)])   # old-0 is the newest, old-999 the oldest
    endpoint.answers = [Answer(400)]
    await put(redis, event(endpoint.url, 1))
    await outbox(redis, http, metrics).tick()
    assert await redis.llen(failed_key) == 1_000
    head, *_, before_last, last = await redis.lrange(failed_key, 0, -1)
    assert Event.from_json(str(head)).event_id == "evt_1"
    assert (before_last, last) == ("old-997", "old-998"), "the oldest (old-999) was dropped"


async def test_a_short_failed_list_is_not_trimmed(
    redis: aioredis.Redis, http: aiohttp.ClientSession, metrics: Metrics, endpoint: Endpoint, clock: Clock,
) -> None:
    endpoint.answers = [Answer(400), Answer(400)]
    await put(redis, event(endpoint.url, 1), event(endpoint.url, 2))
    await outbox(redis, http, metrics).tick()
    assert [e.event_id for e in await failed(redis)] == ["evt_2", "evt_1"]


# --- the due set: batches and finishing ---------------------------------------------------------------------


async def test_a_tick_handles_at_most_fifty_chats_of_a_partition(
    redis: aioredis.Redis, http: aiohttp.ClientSession, metrics: Metrics, clock: Clock,
) -> None:
    same = [c for c in (f"chat_batch_{i}" for i in range(2_000)) if keys.shard_of(c) == 0][:51]
    await redis.zadd(keys.outbox_due(0), dict.fromkeys(same, START))
    box = outbox(redis, http, metrics)
    assert await box.tick() == 50
    assert await box.tick() == 1
    assert await redis.zcard(keys.outbox_due(0)) == 0


async def test_finishing_a_run(redis: aioredis.Redis, http: aiohttp.ClientSession, metrics: Metrics) -> None:
    box = outbox(redis, http, metrics)
    due = keys.outbox_due(keys.shard_of(CHAT))
    finish_keys = [keys.outbox(CHAT), due]
    # The lease still holds: nothing else happened to the chat, so it is done.
    await redis.zadd(due, {CHAT: 5_000})
    assert await box._finish(keys=finish_keys, args=[CHAT, 5_000, 9_000]) == 1
    assert await due_at(redis) is None
    # Re-scheduled meanwhile (another score): it stays as scheduled.
    await redis.zadd(due, {CHAT: 7_000})
    assert await box._finish(keys=finish_keys, args=[CHAT, 5_000, 9_000]) == 0
    assert await due_at(redis) == 7_000
    # An event was queued meanwhile: the chat is due now.
    await redis.rpush(keys.outbox(CHAT), event("https://example.com/h").to_json())
    await box._finish(keys=finish_keys, args=[CHAT, 5_000, 9_000])
    assert await due_at(redis) == 9_000
    # Not in the set at all: nothing to do.
    await redis.delete(keys.outbox(CHAT), due)
    assert await box._finish(keys=finish_keys, args=[CHAT, 5_000, 9_000]) == 0
    assert await due_at(redis) is None


async def test_a_delivered_event_is_popped_and_the_next_one_read_and_the_last_ends_the_run(
    redis: aioredis.Redis, http: aiohttp.ClientSession, metrics: Metrics,
) -> None:
    box = outbox(redis, http, metrics)
    due = keys.outbox_due(keys.shard_of(CHAT))
    run_keys = [keys.outbox(CHAT), due]
    first, second = event("https://example.com/h", 1).to_json(), event("https://example.com/h", 2).to_json()
    await redis.rpush(keys.outbox(CHAT), first, second)
    await redis.zadd(due, {CHAT: 5_000})
    assert await box._delivered(keys=run_keys, args=[CHAT, 5_000]) == second    # the next one; still due
    assert await due_at(redis) == 5_000
    assert await box._delivered(keys=run_keys, args=[CHAT, 5_000]) is None      # the last: the run is over
    assert await due_at(redis) is None and not await redis.exists(keys.outbox(CHAT))
    # Re-scheduled meanwhile (another score): it stays as scheduled.
    await redis.rpush(keys.outbox(CHAT), first)
    await redis.zadd(due, {CHAT: 7_000})
    assert await box._delivered(keys=run_keys, args=[CHAT, 5_000]) is None
    assert await due_at(redis) == 7_000


# --- redirects and atomic writes ------------------------------------------------------------------------------


async def test_redirects_are_followed_like_a_browser_posts(
    redis: aioredis.Redis, http: aiohttp.ClientSession, metrics: Metrics, endpoint: Endpoint, clock: Clock,
) -> None:
    endpoint.answers = [Answer(307), Answer(), Answer(302), Answer()]
    one, two = event(endpoint.url, 1), event(endpoint.url, 2)
    await put(redis, one, two)
    assert await outbox(redis, http, metrics).tick() == 1
    assert endpoint.requests == [("POST", "/hook"), ("POST", "/moved"), ("POST", "/hook"), ("GET", "/moved")]
    bodies = [body for _, body in endpoint.received]
    assert bodies == [one.body.encode(), one.body.encode(), two.body.encode(), b""], "a 302 turns a POST into a GET"
    assert endpoint.received[1][0]["X-Retell-Signature"] == sign(one.body.encode(), KEY, START)
    assert await waiting(redis) == []


async def client_commands(redis: aioredis.Redis, action: Callable[[], Awaitable[object]]) -> list[list[str]]:
    """The commands (name first) each Redis client sent while ``action`` ran, seen by MONITOR."""
    seen: dict[str, list[str]] = {}
    async with redis.monitor() as monitor:
        await action()
        marker = "outbox-test-" + secrets.token_hex(4)
        await redis.echo(marker)   # MONITOR shows it after everything the action sent
        async with asyncio.timeout(5):
            while marker not in (info := await monitor.next_command())["command"]:
                client = f"{info['client_address']}:{info['client_port']}"
                seen.setdefault(client, []).append(info["command"].split(" ")[0].upper())
    return list(seen.values())


def runs(commands: list[str], run: list[str]) -> bool:
    return any(commands[i:i + len(run)] == run for i in range(len(commands)))


async def test_a_retry_and_a_failure_are_each_written_in_one_transaction(
    redis: aioredis.Redis, redis_url: str, http: aiohttp.ClientSession, metrics: Metrics, endpoint: Endpoint,
    clock: Clock,
) -> None:
    if is_cluster(redis_url):
        pytest.skip("MONITOR is per node")
    endpoint.answers = [Answer(500), Answer(500)]
    await put(redis, event(endpoint.url, 1))
    box = outbox(redis, http, metrics, max_attempts=2, retry_base_ms=10)
    sent = await client_commands(redis, box.tick)
    assert any(runs(c, ["MULTI", "LSET", "ZADD", "EXEC"]) for c in sent), sent
    clock.ms += 10
    sent = await client_commands(redis, box.tick)
    assert any(runs(c, ["MULTI", "LPOP", "LPUSH", "LTRIM", "LINDEX", "EXEC"]) for c in sent), sent   # and the next
    assert [e.attempts for e in await failed(redis)] == [2]
