"""STOP / START / HELP are handled before the LLM, and nothing is sent to an opted-out user."""

from __future__ import annotations

import pytest

from service.sms import keywords
from service.sms.keywords import Keyword
from service.storage import keys

from .conftest import AGENT_NUMBER, USER, MakeParley


@pytest.mark.parametrize(("body", "expected"), [
    ("STOP", Keyword.OPT_OUT), (" stop ", Keyword.OPT_OUT), ("Unsubscribe", Keyword.OPT_OUT),
    ("stopall", Keyword.OPT_OUT), ("REVOKE", Keyword.OPT_OUT), ("optout", Keyword.OPT_OUT),
    ("start", Keyword.OPT_IN), ("UNSTOP", Keyword.OPT_IN), ("yes", Keyword.OPT_IN),
    ("help", Keyword.HELP), ("INFO", Keyword.HELP),
    ("please stop texting me", None), ("stop it", None), ("", None), ("helpful", None),
])
def test_only_whole_message_keywords_count(body: str, expected: Keyword | None) -> None:
    assert keywords.classify(body) is expected


def test_advanced_opt_out_type_wins() -> None:
    assert keywords.classify("arrête", "STOP") is Keyword.OPT_OUT
    assert keywords.classify("stop", "HELP") is Keyword.HELP


async def test_stop_ends_the_chat_and_silences_everything_until_start(make_parley: MakeParley) -> None:
    parley = await make_parley()
    await parley.text("hi")
    await parley.twilio.wait_for(1)
    await parley.idle()
    chat_id = (await parley.chat_of())["chat_id"]

    assert (await parley.text("STOP")).status == 200
    await parley.idle()
    ended = await (await parley.api("GET", f"/get-chat/{chat_id}")).json()
    assert ended["chat_status"] == "ended" and ended["disconnection_reason"] == "user_requested_dnc"
    assert ended["message_with_tool_calls"][-1]["content"] == "STOP"

    await parley.text("are you there?")
    await parley.idle()
    assert len(parley.llm.requests) == 1, "an opted-out user's text reached the LLM"
    assert len(parley.twilio.messages) == 1, "something was sent to an opted-out user"
    assert await parley.redis.exists(keys.optout(keys.Conversation(AGENT_NUMBER, USER)))

    help_reply = await parley.text("HELP")
    assert "<Message>" not in await help_reply.text()

    await parley.text("START")
    await parley.idle()
    assert len(parley.llm.requests) == 1, "START itself went to the LLM"
    await parley.text("back again")
    await parley.twilio.wait_for(2)
    assert parley.twilio.messages[-1].body == "You said: back again"
    assert (await parley.chat_of())["chat_id"] != chat_id


async def test_yes_is_an_ordinary_answer_when_not_opted_out(make_parley: MakeParley) -> None:
    parley = await make_parley()
    await parley.text("YES")
    await parley.twilio.wait_for(1)
    assert parley.llm.user_texts() == ["YES"]


async def test_help_answers_with_the_numbers_help_text_without_the_llm(make_parley: MakeParley) -> None:
    numbers = [{"phone_number": AGENT_NUMBER, "help_message": "Sunny Dental: call 503-555-0100 & reply STOP.",
                "inbound_sms_agents": [{"agent_id": "frontdesk", "weight": 1}]}]
    parley = await make_parley(numbers=numbers)
    response = await parley.text("help")
    assert response.status == 200
    assert "<Message>Sunny Dental: call 503-555-0100 &amp; reply STOP.</Message>" in await response.text()
    await parley.idle()
    assert parley.llm.requests == []


async def test_an_empty_help_message_leaves_help_to_twilio(make_parley: MakeParley) -> None:
    numbers = [{"phone_number": AGENT_NUMBER, "help_message": "",
                "inbound_sms_agents": [{"agent_id": "frontdesk", "weight": 1}]}]
    parley = await make_parley(numbers=numbers)
    response = await parley.text("INFO")
    assert await response.text() == '<?xml version="1.0" encoding="UTF-8"?><Response />'
    await parley.idle()
    assert parley.llm.requests == []


async def test_twilio_21610_on_send_records_the_opt_out(make_parley: MakeParley) -> None:
    parley = await make_parley()
    parley.twilio.errors[USER] = (400, 21610)
    await parley.text("hi")
    await parley.idle()
    assert await parley.redis.exists(keys.optout(keys.Conversation(AGENT_NUMBER, USER)))
    chat = await parley.chat_of()
    agent_message = chat["message_with_tool_calls"][-1]
    assert agent_message["status"] == "failed" and agent_message["error_code"] == 21610
    await parley.text("hello?")
    await parley.idle()
    assert len(parley.llm.requests) == 1
