"""Post-chat analysis as Retell runs it: its three system presets (reworded, or made optional), conditional
prompts and examples, and Retell's default analysis model."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from service.agent.analysis import PRESET_DESCRIPTIONS, parse, schema
from service.retell.models import ChatAgent

from .conftest import MakeParley, Parley, Receiver, agent_file, api_json
from .fakes.openai import Completion

PRESETS = [
    {"type": "system-presets", "name": "chat_summary", "description": "One sentence, in Spanish."},
    {"type": "system-presets", "name": "chat_successful", "required": False,
     "conditional_prompt": "the user asked to book a visit."},
    {"type": "string", "name": "visit_day", "description": "The day booked", "examples": ["Monday", "next Friday"],
     "conditional_prompt": "a visit was booked."},
    {"type": "boolean", "name": "new_patient", "description": "New patient?", "required": True,
     "conditional_prompt": "ignored: the field is required."},
]


def agent(**extra: Any) -> ChatAgent:
    return ChatAgent.model_validate(agent_file(**extra))


def test_presets_reword_the_fields_and_make_them_optional() -> None:
    answer = schema(agent(post_chat_analysis_data=PRESETS))
    props = answer["properties"]
    assert props["chat_summary"] == {"type": "string", "description": "One sentence, in Spanish."}
    assert props["chat_successful"] == {
        "type": ["boolean", "null"],
        "description": PRESET_DESCRIPTIONS["chat_successful"] + " Fill this only if: the user asked to book a "
                                                                 "visit. Otherwise null."}
    assert props["user_sentiment"]["type"] == "string"   # not listed: as Retell has it, required
    custom = props["custom_analysis_data"]["properties"]
    assert custom["visit_day"]["description"] == ("The day booked Examples: Monday; next Friday. Fill this only "
                                                  "if: a visit was booked. Otherwise null.")
    assert custom["new_patient"]["description"] == "New patient?"   # required: the condition does not apply
    assert answer["required"] == ["chat_summary", "user_sentiment", "chat_successful", "custom_analysis_data"]


def test_an_optional_preset_may_be_null_and_a_required_one_may_not() -> None:
    with_presets = agent(post_chat_analysis_data=PRESETS)
    parsed = parse(json.dumps({"chat_summary": "Hola.", "user_sentiment": "Positive", "chat_successful": None,
                               "custom_analysis_data": {"new_patient": True}}), with_presets)
    assert parsed["chat_successful"] is None and parsed["custom_analysis_data"] == {"new_patient": True}
    with pytest.raises(ValueError, match="chat_successful is missing or of the wrong type: None"):
        parse(json.dumps({"chat_summary": "x", "user_sentiment": "Neutral", "chat_successful": None}), agent())
    with pytest.raises(ValueError, match="user_sentiment is missing or of the wrong type: 'Happy'"):
        parse(json.dumps({"chat_summary": "x", "user_sentiment": "Happy", "chat_successful": True}), agent())
    # A required custom field the model could not fill marks the chat unsuccessful.
    missing = parse(json.dumps({"chat_summary": "Hola.", "user_sentiment": "Positive", "chat_successful": True,
                                "custom_analysis_data": {"new_patient": None}}), with_presets)
    assert missing["chat_successful"] is False


def test_a_preset_must_be_one_of_retells_three() -> None:
    with pytest.raises(ValidationError, match="a system-presets item names one of chat_summary, chat_successful"):
        agent(post_chat_analysis_data=[{"type": "system-presets", "name": "call_summary"}])


async def analysed(parley: Parley, receiver: Receiver) -> dict[str, Any]:
    await parley.text("hi")
    await parley.twilio.wait_for(1)
    chat = await parley.chat_of()
    await api_json(parley, "PATCH", f"/end-chat/{chat['chat_id']}", status=204)
    await receiver.wait_for(3)   # chat_started, chat_ended, chat_analyzed: the analysis is stored
    assert receiver.events() == ["chat_started", "chat_ended", "chat_analyzed"]
    return dict(await api_json(parley, "GET", f"/get-chat/{chat['chat_id']}"))


async def test_an_optional_preset_left_out_end_to_end(make_parley: MakeParley, receiver: Receiver) -> None:
    parley = await make_parley(agent=agent_file(post_chat_analysis_data=PRESETS[:2], webhook_url=receiver.url))
    parley.llm.analyze = lambda body: Completion(content=json.dumps({
        "chat_summary": "Hola.", "user_sentiment": "Neutral", "chat_successful": None, "custom_analysis_data": {}}))
    chat = await analysed(parley, receiver)
    assert chat["chat_analysis"] == {"chat_summary": "Hola.", "user_sentiment": "Neutral",
                                     "custom_analysis_data": {}}
    request = parley.llm.analyses[0]
    assert request["model"] == "gpt-5.6-terra"   # Retell's default analysis model
    assert request["response_format"]["json_schema"]["schema"]["properties"]["chat_summary"]["description"] == (
        "One sentence, in Spanish.")
