"""The README's way from Retell to Parley: an agent and its LLM as Retell's SDK returns them, written to one file
the way the README's snippet writes it, load, and ``parley check`` names what Parley keeps without running."""

from __future__ import annotations

import json
from pathlib import Path

from retell.types import ChatAgentResponse, LlmResponse

from service.catalog import agent_files
from service.retell.unsupported import NOT_USED, unsupported

from .conftest import AGENT_NUMBER, MakeParley, build_settings
from .fakes.openai import FakeOpenAI
from .fakes.twilio import FakeTwilio

# As Retell's API answers GET /get-chat-agent and GET /get-retell-llm (fields from retell-sdk's types).
RETELL_AGENT = {
    "agent_id": "agent_8f2c", "version": 3, "is_published": True, "last_modification_timestamp": 1_764_000_000_000,
    "agent_name": "Sunny Dental SMS", "channel": "chat", "language": "en-US",
    "response_engine": {"type": "retell-llm", "llm_id": "llm_51b0", "version": 3},
    "end_chat_after_silence_ms": 3_600_000, "webhook_url": None, "data_storage_setting": "everything",
    "post_chat_analysis_model": "gpt-4.1-mini",
    "post_chat_analysis_data": [{"type": "system-presets", "name": "chat_successful", "required": False},
                                {"type": "string", "name": "visit_day", "description": "The day booked"}],
}
RETELL_LLM = {
    "llm_id": "llm_51b0", "version": 3, "is_published": True, "last_modification_timestamp": 1_764_000_000_000,
    "model_config": {"type": "cascading", "primary": {"model": "claude-4.6-sonnet"}, "temperature": 0.2},
    "general_prompt": "You are Sunny Dental's assistant. The user is {{user_number}}.",
    "begin_message": None, "starting_state": "greet", "tool_call_strict_mode": True,
    "states": [
        {"name": "greet", "state_prompt": "Greet and ask what they need.",
         "edges": [{"destination_state_name": "book", "description": "They want a visit."}]},
        {"name": "book", "state_prompt": "Book the visit.",
         "tools": [{"type": "send_sms", "name": "send_link", "description": "Text the booking link.",
                    "sms_content": {"type": "predefined", "text": "Book: https://sunny.example/b"}}]},
    ],
    "general_tools": [{"type": "end_call", "name": "end_chat", "description": "End the chat."}],
}


def export(agent: ChatAgentResponse, llm: LlmResponse, directory: Path) -> Path:
    """The README's snippet, line for line."""
    exported = {**agent.model_dump(mode="json", by_alias=True, exclude_none=True),
                "retell_llm": llm.model_dump(mode="json", by_alias=True, exclude_none=True)}
    exported.pop("response_engine")
    path = directory / f"{agent.agent_id}.json"
    with open(path, "w") as out:
        json.dump(exported, out, indent=2)
    return path


def test_a_retell_export_drops_in(tmp_path: Path, fake_twilio: FakeTwilio, fake_llm: FakeOpenAI) -> None:
    agents = tmp_path / "agents"
    agents.mkdir()
    export(ChatAgentResponse.model_validate(RETELL_AGENT), LlmResponse.model_validate(RETELL_LLM), agents)
    (agents / "phone-numbers.yaml").write_text(json.dumps([{
        "phone_number": AGENT_NUMBER, "inbound_sms_agents": [{"agent_id": "agent_8f2c", "weight": 1}]}]))
    declared = agent_files.load(build_settings(None, agents, fake_twilio, fake_llm))
    agent = declared.agents["agent_8f2c"]
    assert agent.retell_llm is not None and agent.retell_llm.primary_model == "claude-4.6-sonnet"
    assert [state.name for state in agent.retell_llm.states] == ["greet", "book"]
    assert unsupported(agent) == [
        f"data_storage_setting: {NOT_USED}",
        f"retell_llm.tool_call_strict_mode: {NOT_USED}",
    ]


async def test_the_export_answers_texts(make_parley: MakeParley) -> None:
    llm = {k: v for k, v in RETELL_LLM.items() if v is not None and k not in ("llm_id", "version", "is_published")}
    agent = {k: v for k, v in RETELL_AGENT.items() if v is not None and k != "response_engine"}
    parley = await make_parley(agents={"agent_8f2c": {**agent, "retell_llm": llm}}, numbers=[{
        "phone_number": AGENT_NUMBER, "inbound_sms_agents": [{"agent_id": "agent_8f2c", "weight": 1}]}],
        llm_models={"*": "served-model"})
    assert (await parley.text("hello")).status == 200
    await parley.twilio.wait_for(1)
    request = parley.llm.requests[0]
    assert (request["model"], request["temperature"]) == ("served-model", 0.2)
    assert "Greet and ask what they need." in request["messages"][0]["content"]
