"""``GET /metrics``: Prometheus text with the webhook, queue, turn, LLM, Twilio, segment and opt-out series; its
Redis reads cached and pipelined; its optional bearer token."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from service.app_state import METRICS, REDIS, RUNTIME
from service.metrics import Metrics

from .conftest import API_KEY, USER, MakeParley


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_metrics_count_what_happened(make_parley: MakeParley) -> None:
    parley = await make_parley()
    await parley.text("hello")
    await parley.twilio.wait_for(1)
    await parley.text("STOP")
    await parley.idle()
    response = await parley.client.get("/metrics")
    assert response.status == 200 and response.content_type == "text/plain"
    got = samples(await response.text())
    assert got[("parley_http_requests_total", (("route", "/twilio/sms"), ("status", "200")))] == 2
    assert got[("parley_turns_total", (("kind", "text"), ("outcome", "ok")))] == 1
    assert got[("parley_turns_total", (("kind", "opt_out"), ("outcome", "ok")))] == 1
    assert got[("parley_llm_calls_total", (("outcome", "ok"),))] >= 1
    assert got[("parley_llm_tokens_total", (("kind", "prompt"),))] >= 10
    assert got[("parley_twilio_sends_total", (("code", ""), ("outcome", "sent")))] == 1
    assert got[("parley_segments_sent_total", (("encoding", "GSM-7"),))] == 1
    assert got[("parley_optouts_total", (("source", "keyword"),))] == 1
    assert got[("parley_queue_pending", ())] == 0
    assert ("parley_queue_oldest_pending_seconds", ()) in got and ("parley_active_sms_chats", ()) in got
    assert got[("parley_http_request_seconds_count", (("route", "/twilio/sms"),))] == 2
    assert USER not in await response.text()


async def test_twilio_429_and_5xx_are_retried_but_not_permanent_errors(make_parley: MakeParley) -> None:
    parley = await make_parley()
    parley.twilio.fail_next = [(429, 20429), (503, 503)]
    await parley.text("hello")
    sent = await parley.twilio.wait_for(1)
    assert sent[0].body == "You said: hello"
    parley.twilio.errors[USER] = (400, 30007)
    await parley.text("again")
    await parley.idle()
    got = samples(await (await parley.client.get("/metrics")).text())
    assert got[("parley_twilio_sends_total", (("code", "30007"), ("outcome", "refused")))] == 1
    assert got[("parley_twilio_sends_total", (("code", "20429"), ("outcome", "refused")))] == 1
    message = (await parley.chat_of())["message_with_tool_calls"][-1]
    assert message["status"] == "failed" and message["error_code"] == 30007


class RedisCalls:
    """Counts what a Redis client is asked: pipelines run, and commands sent on their own."""

    def __init__(self, redis: Any) -> None:
        self.pipelines = 0
        self.commands = 0
        pipeline, execute_command = redis.pipeline, redis.execute_command

        def counted_pipeline(*args: Any, **kwargs: Any) -> Any:
            self.pipelines += 1
            return pipeline(*args, **kwargs)

        async def counted_command(*args: Any, **kwargs: Any) -> Any:
            self.commands += 1
            return await execute_command(*args, **kwargs)

        redis.pipeline, redis.execute_command = counted_pipeline, counted_command


async def test_concurrent_scrapes_share_one_pipelined_read_of_redis(make_parley: MakeParley) -> None:
    parley = await make_parley(run_workers=False, metrics_cache_ms=60_000)
    app = parley.client.app
    await app[RUNTIME].queue.ensure_groups()   # the streams a worker would create
    calls = RedisCalls(app[REDIS])
    responses = await asyncio.gather(*(parley.client.get("/metrics") for _ in range(20)))
    assert {r.status for r in responses} == {200}
    assert (calls.pipelines, calls.commands) == (1, 0)   # one round trip for all 20 scrapes
    assert app[METRICS].gauge_reads == 1
    assert samples(await responses[0].text())[("parley_queue_pending", ())] == 0


async def test_scrapes_in_flight_wait_for_the_one_read(redis: aioredis.Redis) -> None:
    metrics = Metrics(gauges_cache_ms=60_000)
    calls = RedisCalls(redis)
    pages = await asyncio.gather(*(metrics.scrape(redis) for _ in range(20)))
    assert calls.pipelines == 1 and calls.commands == 0 and metrics.gauge_reads == 1
    assert len(set(pages)) == 1


async def test_gauges_are_read_again_after_the_cache_window(make_parley: MakeParley) -> None:
    parley = await make_parley(run_workers=False, metrics_cache_ms=0)
    calls = RedisCalls(parley.client.app[REDIS])
    for _ in range(2):
        assert (await parley.client.get("/metrics")).status == 200
    assert calls.pipelines == 2


async def test_the_metrics_token_is_asked_only_when_set(make_parley: MakeParley) -> None:
    parley = await make_parley(metrics_token="scrape-token")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {API_KEY}"},
                    {"Authorization": "Basic scrape-token"}):
        response = await parley.client.get("/metrics", headers=headers)
        assert response.status == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
    response = await parley.client.get("/metrics", headers={"Authorization": "Bearer scrape-token"})
    assert response.status == 200 and "parley_http_requests_total" in await response.text()
    open_parley = await make_parley()
    assert (await open_parley.client.get("/metrics")).status == 200
