"""Signed lifecycle events, delivered from a durable Redis outbox (see docs/architecture.md).

An event is queued in the same transaction as the change it reports (``queue``): its body is fixed then,
so every retry sends the same bytes. Each chat's events wait in its outbox and go out in order; its
partition's ``outbox:due`` says when each chat's next delivery is due. A delivery is signed like Retell's
(``X-Retell-Signature: v=<ms>,d=<hex HMAC-SHA256(key, body + ms)>``, so ``Retell.verify`` accepts it) and
carries a stable ``X-Parley-Event-Id`` so receivers can drop repeats.

Every delivery goes through the outbound policy (``service.outbound.fetch``): a URL it refuses fails at once,
for good. Retry policy: a timeout, a connection error, a 5xx, a 408 or a 429 is retried with exponential
backoff (``PARLEY_EVENT_RETRY_BASE_MS`` doubling, at most 10 minutes apart) up to
``PARLEY_EVENT_MAX_ATTEMPTS`` attempts; any other 4xx is not retried. An event that fails for good is moved
to ``outbox:failed`` (of its partition) with its last error, and the chat's next event goes out. Delivery is
at least once: a process that dies between a 2xx and removing the event sends it again.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aioredis

from service.clock import now_ms
from service.errors import OutboundRefused
from service.metrics import Metrics
from service.outbound import fetch
from service.storage import keys
from service.storage.dueset import DueSet, done_lua

log = logging.getLogger(__name__)

MAX_BACKOFF_MS = 600_000
FAILED_CAP = 1_000
SIGNATURE_HEADER = "X-Retell-Signature"
EVENT_ID_HEADER = "X-Parley-Event-Id"
ERROR_BODY_BYTES = 300   # of a failed delivery's answer, kept with its error for whoever reads outbox:failed

# The end of a delivery run over an empty outbox: the chat leaves the due set (KEYS[2]) unless a retry
# re-scheduled it, as ``DueSet.done`` would, in the script's own round trip.
_FORGET = done_lua("KEYS[2]", "ARGV[1]", "ARGV[2]")

# KEYS: outbox list, due set.  ARGV: chat id, leased score, now.  After a delivery run: if events remain
# (one may have been queued meanwhile), make the chat due now; else ``_FORGET``.
_FINISH = """
if redis.call('LLEN', KEYS[1]) > 0 then return redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1]) end
""" + _FORGET + """
return forgotten
"""

# KEYS: outbox list, due set.  ARGV: chat id, leased score.  The head was delivered: pop it and answer the next
# event; when there is none, the run is over (``_FORGET``), in the same round trip.
_DELIVERED = """
redis.call('LPOP', KEYS[1])
local head = redis.call('LINDEX', KEYS[1], 0)
if head then return head end
""" + _FORGET + """
return false
"""


def sign(body: bytes, key: str, timestamp_ms: int | None = None) -> str:
    """Retell's webhook signature over ``body``."""
    stamp = timestamp_ms if timestamp_ms is not None else now_ms()
    digest = hmac.new(key.encode(), body + str(stamp).encode(), hashlib.sha256).hexdigest()
    return f"v={stamp},d={digest}"


@dataclass(slots=True)
class Event:
    """One delivery: where to, the exact body, and how it has gone so far."""

    event_id: str
    chat_id: str
    kind: str
    url: str
    body: str
    timeout_ms: int = 10_000
    attempts: int = 0
    last_error: str | None = None

    def to_json(self) -> str:
        return orjson.dumps(asdict(self)).decode()

    @classmethod
    def from_json(cls, raw: str) -> Event:
        return cls(**orjson.loads(raw))


def queue(pipe: Any, event: Event, ttl_s: int) -> None:
    """Add ``event`` to a pipeline/transaction: the chat's outbox, and the chat due now unless it waits."""
    pipe.rpush(keys.outbox(event.chat_id), event.to_json())
    pipe.expire(keys.outbox(event.chat_id), ttl_s)
    pipe.zadd(keys.outbox_due(keys.shard_of(event.chat_id)), {event.chat_id: now_ms()}, nx=True)


class Outbox:
    """Delivers queued events."""

    def __init__(self, redis: aioredis.Redis, http: aiohttp.ClientSession, metrics: Metrics, *, signing_key: str,
                 max_attempts: int, retry_base_ms: int) -> None:
        self._metrics = metrics
        self._redis = redis
        self._http = http
        self._key = signing_key
        self.max_attempts = max_attempts
        self.retry_base_ms = retry_base_ms
        self._due = DueSet(redis, keys.outbox_due)
        self._finish = redis.register_script(_FINISH)
        self._delivered = redis.register_script(_DELIVERED)

    async def tick(self) -> int:
        """Deliver what is due; how many chats were handled."""
        due = await self._due.pop(now_ms(), batch=50)
        await asyncio.gather(*(self._deliver_chat(chat_id, leased) for chat_id, _, leased in due))
        return len(due)

    async def _deliver_chat(self, chat_id: str, leased: int) -> None:
        box, due = keys.outbox(chat_id), keys.outbox_due(keys.shard_of(chat_id))
        raw = await self._redis.lindex(box, 0)
        while raw is not None:
            event = Event.from_json(str(raw))
            error, retry = await self._post(event)
            if error is None:
                self._metrics.events.labels(event.kind, "delivered").inc()
                log.info("event delivered", extra={"chat_id": chat_id, "event": event.kind, "event_id": event.event_id})
                raw = await self._delivered(keys=[box, due], args=[chat_id, leased])   # the next one, if any
                if raw is None:
                    return   # the outbox is empty and the chat done with
                continue
            event.attempts += 1
            event.last_error = error
            if retry and event.attempts < self.max_attempts:
                self._metrics.events.labels(event.kind, "retried").inc()
                delay = min(self.retry_base_ms * 2 ** (event.attempts - 1), MAX_BACKOFF_MS)
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.lset(box, 0, event.to_json())
                    pipe.zadd(due, {chat_id: now_ms() + delay})
                    await pipe.execute()
                log.warning("event delivery failed; will retry", extra={
                    "chat_id": chat_id, "event": event.kind, "attempt": event.attempts, "retry_in_ms": delay,
                    "error": error})
                return
            self._metrics.events.labels(event.kind, "failed").inc()
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.lpop(box)
                failed = keys.outbox_failed(keys.shard_of(chat_id))
                pipe.lpush(failed, event.to_json())
                pipe.ltrim(failed, 0, FAILED_CAP - 1)
                pipe.lindex(box, 0)
                *_, raw = await pipe.execute()
            log.error("event delivery failed for good", extra={
                "chat_id": chat_id, "event": event.kind, "attempts": event.attempts, "error": error})
        await self._finish(keys=[box, due], args=[chat_id, leased, now_ms()])

    async def _post(self, event: Event) -> tuple[str | None, bool]:
        """Send once: (None, _) on success, else (what went wrong, whether to retry)."""
        body = event.body.encode()
        headers = {
            "Content-Type": "application/json",  # pragma: no mutate (header names ignore case)
            "User-Agent": "Parley",  # pragma: no mutate (header names ignore case)
            SIGNATURE_HEADER: sign(body, self._key), EVENT_ID_HEADER: event.event_id,
        }
        timeout_s = event.timeout_ms / 1000  # pragma: no mutate (/ 1001: 0.1 % longer, which no test can time)
        try:
            answer = await fetch(self._http, "POST", event.url, data=body, headers=headers, timeout_s=timeout_s,
                                 max_bytes=ERROR_BODY_BYTES)
        except OutboundRefused as exc:
            return str(exc), False   # the policy will not change its mind on a retry
        except TimeoutError:
            return f"no answer within {event.timeout_ms} ms", True
        except aiohttp.ClientError as exc:
            return f"{exc.__class__.__name__}: {exc}", True
        if 200 <= answer.status < 300:
            return None, False  # pragma: no mutate (the retry flag is not read when there is no error)
        retry = answer.status >= 500 or answer.status in (408, 429)
        return f"HTTP {answer.status}: {answer.body.decode(errors='replace')}", retry
