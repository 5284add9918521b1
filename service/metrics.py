"""Prometheus metrics (``GET /metrics``), one registry per app so tests and processes never share one.

Counters and histograms are updated where things happen (the HTTP middleware, turns, the LLM and Twilio
adapters, the outbox, opt-outs); gauges that describe Redis (queue depth, lag and age, active chats) are read
when Prometheus scrapes, at most once per ``gauges_cache_ms`` (``PARLEY_METRICS_CACHE_MS``) and in one
pipeline: a scrape is an open route, and scrapes must not add to the load of the Redis the webhooks wait on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from redis.exceptions import RedisError

from service.storage import keys

LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self, *, gauges_cache_ms: int = 5_000) -> None:
        self._gauges_cache_s = gauges_cache_ms / 1000
        self._gauges_read_at: float | None = None   # time.monotonic() of the last read of the Redis gauges
        self._gauges_lock = asyncio.Lock()           # one read at a time; scrapes that wait share its result
        self.gauge_reads = 0                         # reads of the Redis gauges (tests count them)
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter("parley_http_requests_total", "HTTP requests", ["route", "status"], registry=r)
        self.http_seconds = Histogram("parley_http_request_seconds", "HTTP request latency", ["route"],
                                      buckets=LATENCY, registry=r)
        self.turns = Counter("parley_turns_total", "Conversation turns", ["kind", "outcome"], registry=r)
        self.turn_seconds = Histogram("parley_turn_seconds", "Turn latency (lock held)", buckets=LATENCY, registry=r)
        self.llm_calls = Counter("parley_llm_calls_total", "LLM calls", ["outcome"], registry=r)
        self.llm_seconds = Histogram("parley_llm_seconds", "LLM call latency", buckets=LATENCY, registry=r)
        self.llm_tokens = Counter("parley_llm_tokens_total", "LLM tokens", ["kind"], registry=r)
        self.twilio_sends = Counter("parley_twilio_sends_total", "Twilio sends", ["outcome", "code"], registry=r)
        self.twilio_seconds = Histogram("parley_twilio_seconds", "Twilio send latency", buckets=LATENCY, registry=r)
        self.segments = Counter("parley_segments_sent_total", "SMS segments sent", ["encoding"], registry=r)
        self.optouts = Counter("parley_optouts_total", "Opt-outs recorded", ["source"], registry=r)
        self.events = Counter("parley_events_total", "Lifecycle event deliveries", ["event", "outcome"], registry=r)
        self.queue_depth = Gauge("parley_queue_pending", "Wake-ups read but not yet acknowledged", registry=r)
        self.queue_lag = Gauge("parley_queue_lag", "Wake-ups not yet read by any worker", registry=r)
        self.queue_age = Gauge("parley_queue_oldest_pending_seconds", "Age of the oldest unacknowledged wake-up",
                               registry=r)
        self.knowledge_searches = Counter(
            "parley_knowledge_searches_total", "Knowledge-base searches (a turn's question)", ["outcome"], registry=r)
        self.knowledge_search_seconds = Histogram("parley_knowledge_search_seconds",
                                                  "Knowledge-base search latency (the question's embedding included)",
                                                  buckets=LATENCY, registry=r)
        self.knowledge_sources = Counter("parley_knowledge_sources_total", "Knowledge-base sources ingested",
                                         ["outcome"], registry=r)
        self.embedding_calls = Counter("parley_embedding_calls_total", "Embeddings requests", ["outcome"], registry=r)
        self.active_chats = Gauge("parley_active_sms_chats", "Ongoing SMS chats (with a silence timer)", registry=r)
        self.tally = Tally()   # the console overview's counters, kept in Redis

    async def scrape(self, redis: aioredis.Redis) -> bytes:
        """The text exposition, with the Redis-side gauges read if they are older than the cache window."""
        if not self._gauges_fresh():
            async with self._gauges_lock:
                if not self._gauges_fresh():   # else another scrape read them while this one waited
                    await self._read_gauges(redis)
        return bytes(generate_latest(self.registry))

    def _gauges_fresh(self) -> bool:
        read_at = self._gauges_read_at
        return read_at is not None and time.monotonic() - read_at < self._gauges_cache_s

    async def _read_gauges(self, redis: aioredis.Redis) -> None:
        """Every partition's pending summary, group lag and timer count, in one pipeline (one round trip on a
        single server; one per master on a cluster)."""
        self.gauge_reads += 1
        try:
            async with redis.pipeline(transaction=False) as pipe:
                for shard in range(keys.SHARDS):
                    stream = keys.wakeups(shard)
                    pipe.xpending(stream, keys.WORKER_GROUP)
                    pipe.xinfo_groups(stream)
                    pipe.zcard(keys.timers(shard))
                replies = await pipe.execute()
        except RedisError:
            # The counters still answer; /readyz says Redis is down. A failed read counts as a read, so that a
            # Redis in trouble is not asked again by every scrape.
            self._gauges_read_at = time.monotonic()
            return
        pending, oldest, lag, active = 0, None, 0, 0
        for summary, groups, timers in zip(replies[0::3], replies[1::3], replies[2::3], strict=True):
            pending += summary["pending"]
            first = summary.get("min")
            if first and (oldest is None or _ms(first) < _ms(oldest)):
                oldest = first
            lag += next((g.get("lag") or 0 for g in groups if g["name"] == keys.WORKER_GROUP), 0)
            active += timers
        self.queue_depth.set(pending)
        self.queue_age.set(max(time.time() - _ms(oldest) / 1000, 0.0) if oldest else 0.0)
        self.queue_lag.set(lag)
        self.active_chats.set(active)
        self._gauges_read_at = time.monotonic()


# Reply latency buckets (ms) of the console overview: a reply counts in the first bucket at or above it.
LATENCY_BUCKETS_MS = (250, 500, 1_000, 2_000, 3_000, 5_000, 8_000, 13_000, 20_000, 30_000, 60_000, 120_000)


class Tally:
    """The console overview's counters (``service/console/overview.py``), by UTC hour: counted in this process
    where things happen (a turn's commit, the LLM client) and added to Redis by ``flush``, every
    ``FLUSH_S`` and when the process stops, one pipeline of HINCRBYs for everything since the last. So a text
    costs no Redis command of its own; a crash loses at most ``FLUSH_S`` of counts, an overview's not a bill's.
    Names: ``in:<number>``, ``out:<number>``, ``seg:<number>``, ``cost:<number>`` (millicents), ``lat:<ms>`` (a
    bucket of ``LATENCY_BUCKETS_MS``), ``optouts``, ``llm_errors``, ``twilio_errors``."""

    FLUSH_S = 5.0

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], int] = {}   # (day, "<hour>:<name>") -> count since the last flush
        self._hour: tuple[int, str, str] = (-1, "", "")   # the last hour counted in: (number, day, "<hour>:")

    def add(self, name: str, amount: int = 1, *, at_ms: int | None = None) -> None:
        if amount <= 0:
            return
        hour = (at_ms if at_ms is not None else int(time.time() * 1000)) // 3_600_000
        if hour != self._hour[0]:   # a turn counts five things: the day and hour are written once an hour
            when = time.gmtime(hour * 3600)
            self._hour = (hour, time.strftime("%Y-%m-%d", when), f"{when.tm_hour:02d}:")
        _, day, prefix = self._hour
        key = (day, prefix + name)
        self._counts[key] = self._counts.get(key, 0) + amount

    def latency(self, ms: int, *, at_ms: int | None = None) -> None:
        bucket = next((b for b in LATENCY_BUCKETS_MS if ms <= b), LATENCY_BUCKETS_MS[-1])
        self.add(f"lat:{bucket}", at_ms=at_ms)

    def pending(self) -> dict[tuple[str, str], int]:
        """What was counted since the last flush: (day, field) -> count."""
        return dict(self._counts)

    async def flush(self, redis: aioredis.Redis) -> None:
        """Add what was counted since the last flush to Redis (kept on failure, for the next one)."""
        counts, self._counts = self._counts, {}
        if not counts:
            return
        try:
            async with redis.pipeline(transaction=False) as pipe:
                for (day, field), amount in counts.items():
                    pipe.hincrby(keys.stats(day), field, amount)
                for day in {day for day, _ in counts}:
                    pipe.expire(keys.stats(day), keys.STATS_TTL_S, nx=True)
                await pipe.execute()
        except RedisError:
            for key, amount in counts.items():
                self._counts[key] = self._counts.get(key, 0) + amount
            raise


def _ms(entry_id: object) -> int:
    """The time (ms) in a stream entry id."""
    return int(str(entry_id).split("-")[0])


def middleware(metrics: Metrics) -> Middleware:
    """Counts and times every request by route (the route's pattern, so ids do not explode the labels)."""
    @web.middleware
    async def measure(request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            metrics.http_requests.labels(route, str(status)).inc()
            metrics.http_seconds.labels(route).observe(time.perf_counter() - started)
    return measure


def exposition(body: bytes) -> web.Response:
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
