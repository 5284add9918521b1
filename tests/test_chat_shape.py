"""The chat object as retell-sdk reads it: MMS as ``multimedia``, tool types on invocations, Retell's
disconnection reasons, ``chat_cost``; the ``chat_inbound`` webhook's ``chat_id`` and ``agent_override``; an empty
``allowed_outbound_country_list``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from retell import AsyncRetell

from service.storage import keys

from .conftest import AGENT_NUMBER, API_KEY, MakeParley, Parley, Receiver, agent_file, api_json
from .fakes.openai import Call, Completion

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
async def parley(make_parley: MakeParley) -> Parley:
    return await make_parley()


async def tokens_of(parley: Parley, chat_id: str) -> Any:
    """The LLM tokens the chat recorded, by model."""
    return orjson.loads(str(await parley.redis.hget(keys.chat(chat_id), "llm_tokens")))


def sdk(parley: Parley) -> AsyncRetell:
    return AsyncRetell(api_key=API_KEY, base_url=str(parley.client.make_url("")).rstrip("/"), max_retries=0)


@pytest.fixture
async def retell(parley: Parley) -> AsyncIterator[AsyncRetell]:
    client = sdk(parley)
    yield client
    await client.close()


async def test_mms_comes_as_retell_multimedia_and_keeps_media(parley: Parley, retell: AsyncRetell) -> None:
    await parley.text("what is this?", extra={"NumMedia": "1", "MediaUrl0": "https://api.twilio.com/media/ME1",
                                              "MediaContentType0": "image/jpeg"})
    await parley.twilio.wait_for(1)
    await parley.idle()
    chat = await retell.chat.retrieve((await parley.chat_of())["chat_id"])
    first = (chat.message_with_tool_calls or [])[0]
    assert first.role == "user"
    assert [(m.url, m.summary) for m in getattr(first, "multimedia", None) or []] == [
        ("https://api.twilio.com/media/ME1", "image/jpeg")]
    raw = (await parley.chat_of())["message_with_tool_calls"][0]
    assert raw["media"] == [{"url": "https://api.twilio.com/media/ME1", "content_type": "image/jpeg"}]
    # What is stored stays Parley's own: multimedia is derived, so reading it back does not double it.
    stored = await parley.redis.lindex(keys.chat_messages(chat.chat_id), 0)
    assert "multimedia" in orjson.loads(str(stored)) and len((await parley.chat_of())["message_with_tool_calls"]) == 2


async def test_a_tool_call_invocation_carries_its_tool_type(parley: Parley, retell: AsyncRetell) -> None:
    def respond(body: dict[str, Any]) -> Completion:
        if any(m["role"] == "tool" for m in body["messages"]):
            return Completion(content="Bye!")
        return Completion(tool_calls=[Call("end_chat", "{}")])

    parley.llm.respond = respond
    chat = await retell.chat.create(agent_id="frontdesk")
    completion = await retell.chat.create_chat_completion(chat_id=chat.chat_id, content="that's all")
    invocation = next(m for m in completion.messages if m.role == "tool_call_invocation")
    assert getattr(invocation, "type", None) == "end_call"   # the agent file writes end_call, named end_chat
    got = await retell.chat.retrieve(chat.chat_id)
    types = [getattr(m, "type", None) for m in got.message_with_tool_calls or [] if m.role == "tool_call_invocation"]
    assert types and set(types) == {"end_call"}


async def test_disconnection_reasons_are_retells(parley: Parley, retell: AsyncRetell) -> None:
    chat = await retell.chat.create(agent_id="frontdesk")
    await retell.chat.end(chat.chat_id)
    assert (await api_json(parley, "GET", f"/get-chat/{chat.chat_id}"))["disconnection_reason"] == "manual_stopped"
    # A chat an earlier release ended with its own words reads as Retell's.
    await parley.redis.hset(keys.chat(chat.chat_id), "disconnection_reason", "api_ended")
    assert (await api_json(parley, "GET", f"/get-chat/{chat.chat_id}"))["disconnection_reason"] == "manual_stopped"


async def test_a_stop_ends_the_chat_as_user_requested_dnc(parley: Parley) -> None:
    await parley.text("hi")
    await parley.twilio.wait_for(1)
    await parley.text("STOP")
    await parley.idle()
    [chat_id] = await parley.chat_ids()
    chat = await api_json(parley, "GET", f"/get-chat/{chat_id}")
    assert (chat["chat_status"], chat["disconnection_reason"]) == ("ended", "user_requested_dnc")


async def test_chat_cost_estimates_segments_and_tokens(make_parley: MakeParley, receiver: Receiver) -> None:
    parley = await make_parley(agent=agent_file(webhook_url=receiver.url, webhook_events=["chat_analyzed"]),
                               sms_segment_prices={AGENT_NUMBER: 0.79, "US": 0.83},
                               llm_token_prices={"gpt-test": {"prompt": 1_000, "completion": 2_000},
                                                 "*": {"prompt": 500, "completion": 500}})
    await parley.text("hello")
    await parley.twilio.wait_for(1)
    await parley.idle()
    chat_id = (await parley.chat_of())["chat_id"]
    assert await tokens_of(parley, chat_id) == {"gpt-test": [10, 5]}
    async with sdk(parley) as retell:
        cost = (await retell.chat.retrieve(chat_id)).chat_cost
        assert cost is not None
        assert [(p.product, p.unit_price, p.cost) for p in cost.product_costs or []] == [
            ("sms_segments", 0.79, 0.79),   # the number's own price wins over its country's
            ("llm_prompt_tokens:gpt-test", 0.001, 0.01), ("llm_completion_tokens:gpt-test", 0.002, 0.01)]
        assert cost.combined_cost == pytest.approx(0.81)
        await retell.chat.end(chat_id)
        await receiver.wait_for(1)   # chat_analyzed: the analysis model's tokens count too
        after = await retell.chat.retrieve(chat_id)
        assert after.chat_cost is not None and after.chat_cost.combined_cost == pytest.approx(0.81 + 0.0075)
        listed = await retell.chat.list()
        assert listed.items[0].chat_cost == after.chat_cost   # in the list too, without the transcript
    tokens = await tokens_of(parley, chat_id)
    assert tokens == {"gpt-test": [10, 5], "gpt-5.6-terra": [10, 5]}   # the turn's model, the analysis's
    assert receiver.bodies()[0]["chat"]["chat_cost"]["combined_cost"] == pytest.approx(0.8175)


async def test_no_prices_no_chat_cost(parley: Parley, retell: AsyncRetell) -> None:
    chat = await retell.chat.create(agent_id="frontdesk")
    await retell.chat.create_chat_completion(chat_id=chat.chat_id, content="hi")
    got = await retell.chat.retrieve(chat.chat_id)
    assert got.chat_cost is None
    # Two calls: the model wrote the opening (no begin_message), then the answer.
    assert await tokens_of(parley, chat.chat_id) == {"gpt-test": [20, 10]}


async def test_chat_inbound_is_told_the_chat_id_and_its_agent_override_holds_for_the_chat(
    make_parley: MakeParley, receiver: Receiver,
) -> None:
    receiver.answers = [(200, {"chat_inbound": {"agent_override": {
        "retell_llm": {"model": "gpt-override", "general_prompt": "You are the night desk."},
        "agent": {"fallback_message": "Night desk is busy."}}}})]
    numbers = [{"phone_number": AGENT_NUMBER, "inbound_sms_webhook_url": receiver.url,
                "inbound_sms_agents": [{"agent_id": "frontdesk", "weight": 1}]}]
    parley = await make_parley(numbers=numbers)
    await parley.text("hello")
    await parley.twilio.wait_for(1)
    await parley.text("again")
    await parley.twilio.wait_for(2)
    await parley.idle()
    chat = await parley.chat_of()
    assert receiver.bodies()[0]["chat_inbound"]["chat_id"] == chat["chat_id"]
    assert [r["model"] for r in parley.llm.requests] == ["gpt-override", "gpt-override"]   # every turn of the chat
    assert all(r["messages"][0]["content"].startswith("You are the night desk.") for r in parley.llm.requests)
    assert "inbound_webhook_error" not in chat
    # The agent itself is unchanged: another chat gets it as it is.
    fresh = await api_json(parley, "POST", "/create-chat", 201, json={"agent_id": "frontdesk"})
    await api_json(parley, "POST", "/create-chat-completion", 201, json={"chat_id": fresh["chat_id"], "content": "x"})
    assert parley.llm.requests[-1]["model"] == "gpt-test"


@pytest.mark.parametrize(("override", "named"), [
    ({"conversation_flow": {"model_choice": {"model": "gpt-4.1"}}}, "agent_override.conversation_flow"),
    ({"retell_llm": {"llm_id": "llm_other"}}, "agent_override.retell_llm.llm_id"),
    ({"agent": {"max_reply_segments": 0}}, "agent_override.agent.max_reply_segments"),
])
async def test_an_agent_override_that_cannot_apply_is_reported_not_half_used(
    make_parley: MakeParley, receiver: Receiver, override: dict[str, Any], named: str,
) -> None:
    receiver.answers = [(200, {"chat_inbound": {"agent_override": override, "metadata": {"k": "v"}}})]
    numbers = [{"phone_number": AGENT_NUMBER, "inbound_sms_webhook_url": receiver.url,
                "inbound_sms_agents": [{"agent_id": "frontdesk", "weight": 1}]}]
    parley = await make_parley(numbers=numbers)
    await parley.text("hello")
    sent = await parley.twilio.wait_for(1)
    await parley.idle()
    assert sent[0].body == "You said: hello" and parley.llm.requests[0]["model"] == "gpt-test"
    chat = await parley.chat_of()
    assert named in chat["inbound_webhook_error"] and chat["metadata"] == {"k": "v"}
    assert await parley.redis.hget(keys.chat(chat["chat_id"]), "agent_override") is None


async def test_an_agent_override_field_parley_does_not_act_on_is_named(
    make_parley: MakeParley, receiver: Receiver,
) -> None:
    receiver.answers = [(200, {"chat_inbound": {"agent_override": {
        "retell_llm": {"model_temperature": 0.5, "start_speaker": "user"}}}})]
    numbers = [{"phone_number": AGENT_NUMBER, "inbound_sms_webhook_url": receiver.url,
                "inbound_sms_agents": [{"agent_id": "frontdesk", "weight": 1}]}]
    parley = await make_parley(numbers=numbers)
    await parley.text("hello")
    await parley.twilio.wait_for(1)
    await parley.idle()
    assert parley.llm.requests[0]["temperature"] == 0.5   # applied
    chat = await parley.chat_of()
    assert "agent_override.retell_llm.start_speaker: stored, not used by Parley" in chat["inbound_webhook_error"]


OUTBOUND = {"phone_number": AGENT_NUMBER, "inbound_sms_agents": [{"agent_id": "frontdesk", "weight": 1}],
            "outbound_sms_agents": [{"agent_id": "frontdesk", "weight": 1}]}


@pytest.mark.parametrize(("countries", "status"), [(None, 422), ([], 200), (["GB"], 200), (["US"], 422)])
async def test_an_empty_country_list_means_every_country(
    make_parley: MakeParley, countries: list[str] | None, status: int,
) -> None:
    number = {**OUTBOUND, **({"allowed_outbound_country_list": countries} if countries is not None else {})}
    parley = await make_parley(numbers=[number])
    response = await parley.api("POST", "/create-sms-chat", json={"from_number": AGENT_NUMBER,
                                                                  "to_number": "+447700900123"})
    assert response.status == status, await response.text()
    if status == 422:
        assert "allowed_outbound_country_list" in (await response.json())["message"]

