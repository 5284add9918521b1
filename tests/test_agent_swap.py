"""Retell's ``agent_swap`` tool: the chat goes on with another agent version (its prompt, tools and model), from the
model call after the swap on; the swap is recorded in the transcript and kept with the chat in Redis; the analysis
follows ``post_call_analysis_setting``; events keep going to the first agent's webhook. SMS and API chats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from service.catalog import agent_files
from service.retell.models import RetellLLM
from service.retell.unsupported import unsupported

from .conftest import MakeParley, Receiver, agent_file, answered, api_json
from .fakes.openai import Call, Completion
from .test_agentfiles import NUMBERS as FILE_NUMBERS
from .test_agentfiles import settings_for, write
from .test_tool_types import NUMBERS


def swap(setting: str = "both_agents", **extra: Any) -> dict[str, Any]:
    return {"type": "agent_swap", "name": "to_billing", "description": "Hand billing questions to billing.",
            "agent_id": "billing", "post_call_analysis_setting": setting, **extra}


def agents(setting: str = "both_agents", **frontdesk: Any) -> dict[str, dict[str, Any]]:
    return {
        "frontdesk": agent_file(post_chat_analysis_data=[{"type": "string", "name": "reason"}], **frontdesk,
                                retell_llm={"general_prompt": "You are the front desk.",
                                            "general_tools": [swap(setting)]}),
        "billing": agent_file(agent_name="Billing", post_chat_analysis_data=[{"type": "number", "name": "amount"}],
                              retell_llm={"model": "gpt-billing", "general_prompt": "You are billing.",
                                          "general_tools": [{"type": "end_call", "name": "billing_done",
                                                             "description": "End."}]}),
    }


def desk_swaps_billing_answers(body: dict[str, Any]) -> Completion:
    """The front desk greets, then hands over at the first message; billing answers every message."""
    if not any(m["role"] == "user" for m in body["messages"]):
        return Completion(content="Hi, front desk here.")
    if body["messages"][0]["content"].startswith("You are the front desk."):
        return Completion(tool_calls=[Call("to_billing", "{}", id="call_swap")])
    return Completion(content=f"Billing here ({body['model']}).")


async def test_an_sms_chat_goes_on_with_the_other_agent(make_parley: MakeParley) -> None:
    parley = await make_parley(numbers=NUMBERS, agents=agents())
    parley.llm.respond = desk_swaps_billing_answers
    # The destination answers the message that led to the swap, in the same turn: no hand-off message.
    assert await answered(parley, "my bill is wrong") == "Billing here (gpt-billing)."
    billing_call = parley.llm.requests[-1]
    assert billing_call["messages"][0]["content"].startswith("You are billing.")
    assert [t["function"]["name"] for t in billing_call["tools"]] == ["billing_done"]
    chat = await parley.chat_of()
    assert (chat["agent_id"], chat["version"]) == ("billing", 0)
    invocation, result = [m for m in chat["message_with_tool_calls"] if m["role"].startswith("tool_call")]
    assert (invocation["type"], invocation["name"]) == ("agent_swap", "to_billing")
    assert result["content"].startswith("Swapped from agent frontdesk version 0 to agent billing version 0")
    assert result["successful"] is True
    # Kept with the chat in Redis: another process answers the next text as billing.
    other = await make_parley(numbers=NUMBERS, agents=agents())
    other._sid = parley._sid   # new MessageSids: the first one's again would be a duplicate
    await parley.client.close()
    asked = len(parley.llm.requests)
    assert await answered(other, "and now?") == "Billing here (gpt-billing)."
    assert [r["messages"][0]["content"].split(".")[0] for r in parley.llm.requests[asked:]] == ["You are billing"]
    # The chat is listed under the agent it went on with.
    listed = await api_json(other, "POST", "/v3/list-chats",
                            json={"filter_criteria": {"agent": [{"agent_id": "billing"}]}})
    assert [c["chat_id"] for c in listed["items"]] == [chat["chat_id"]]
    assert (await api_json(other, "POST", "/v3/list-chats",
                           json={"filter_criteria": {"agent": [{"agent_id": "frontdesk"}]}}))["items"] == []


async def test_an_api_chat_swaps_too(make_parley: MakeParley) -> None:
    parley = await make_parley(numbers=NUMBERS, agents=agents())
    parley.llm.respond = desk_swaps_billing_answers
    chat = await api_json(parley, "POST", "/create-chat", 201, json={"agent_id": "frontdesk"})
    answer = await api_json(parley, "POST", "/create-chat-completion", 201,
                            json={"chat_id": chat["chat_id"], "content": "refund please"})
    assert [m["role"] for m in answer["messages"]] == ["tool_call_invocation", "tool_call_result", "agent"]
    assert answer["messages"][-1]["content"] == "Billing here (gpt-billing)."
    again = await api_json(parley, "POST", "/create-chat-completion", 201,
                           json={"chat_id": chat["chat_id"], "content": "thanks"})
    assert [m["role"] for m in again["messages"]] == ["agent"]   # billing answers; nothing swaps again
    stored = await api_json(parley, "GET", f"/get-chat/{chat['chat_id']}")
    assert stored["agent_id"] == "billing"


@pytest.mark.parametrize(("setting", "fields"), [("both_agents", ["reason", "amount"]),
                                                 ("only_destination_agent", ["amount"])])
async def test_the_analysis_follows_post_call_analysis_setting(
    make_parley: MakeParley, receiver: Receiver, setting: str, fields: list[str],
) -> None:
    parley = await make_parley(numbers=NUMBERS, agents=agents(setting, webhook_url=receiver.url))
    parley.llm.respond = desk_swaps_billing_answers
    await answered(parley, "my bill is wrong")
    chat_id = (await parley.chat_of())["chat_id"]
    await api_json(parley, "PATCH", f"/end-chat/{chat_id}", 204)
    analysed = await api_json(parley, "PUT", f"/rerun-chat-analysis/{chat_id}")
    assert sorted(analysed["chat_analysis"]["custom_analysis_data"]) == sorted(fields)
    request = parley.llm.analyses[-1]
    assert request["model"] == "gpt-5.6-terra"   # the analysis model (Retell's default) of the agent it ended with
    # Events go to the first agent's webhook for the whole chat (billing has none), as in Retell.
    events = [(b["event"], b["chat"]["agent_id"]) for b in await receiver.wait_for(3)]
    assert events[:3] == [("chat_started", "frontdesk"), ("chat_ended", "billing"), ("chat_analyzed", "billing")]


async def test_a_swap_to_a_missing_agent_is_a_result(make_parley: MakeParley) -> None:
    files = agents()
    files["frontdesk"]["retell_llm"]["general_tools"] = [swap(agent_id="ghost")]
    parley = await make_parley(numbers=NUMBERS, agents=files)
    calls = iter([Completion(tool_calls=[Call("to_billing", "{}", id="call_1")]), Completion(content="Still me.")])
    parley.llm.respond = lambda body: next(calls)
    assert await answered(parley, "bill?") == "Still me."
    chat = await parley.chat_of()
    assert chat["agent_id"] == "frontdesk"
    result = next(m for m in chat["message_with_tool_calls"] if m["role"] == "tool_call_result")
    assert result == {**result, "successful": False,
                      "content": "Not swapped: agent 'ghost' not found. The chat stays with this agent."}


def test_the_tool_as_retell_writes_it() -> None:
    llm = RetellLLM.model_validate({"general_tools": [swap(agent_version="3", keep_current_voice=True,
                                                           webhook_setting="both_agents")]})
    assert llm.general_tools[0].agent_version == 3   # type: ignore[union-attr]
    assert unsupported(llm) == [
        "general_tools.0 (to_billing).webhook_setting: 'both_agents' is not followed: after a swap the chat's events "
        "go to the first agent's webhook (only_source_agent)",
        "general_tools.0 (to_billing).keep_current_voice: stored, not used by Parley"]
    with pytest.raises(ValidationError, match="post_call_analysis_setting"):
        RetellLLM.model_validate({"general_tools": [{**swap(), "post_call_analysis_setting": "source"}]})
    assert json.loads(RetellLLM.model_validate({"general_tools": [swap()]}).model_dump_json())["general_tools"][0][
        "agent_id"] == "billing"


def test_a_swap_to_an_agent_no_file_declares_is_said_at_load(tmp_path: Path) -> None:
    files = agents()
    files["frontdesk"]["retell_llm"]["general_tools"] = [swap(agent_id="sales")]
    directory = write(tmp_path / "a", {"frontdesk.yaml": files["frontdesk"], "billing.yaml": files["billing"],
                                       "phone-numbers.yaml": FILE_NUMBERS})
    [warning] = [w for w in agent_files.load(settings_for(directory)).warnings if "agent_swap" in w]
    assert "agent_swap tool 'to_billing' names agent 'sales', which no file" in warning
