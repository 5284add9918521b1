"""``GET /metrics``: Prometheus text with the webhook, queue, turn, LLM, Twilio, segment and opt-out series."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from .conftest import USER, MakeParley


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
