"""Multi-state Retell LLMs (``states``, ``starting_state``): the prompt and tools of the current state, moves by
``transition_to_{state}`` tools whose arguments become variables, the move recorded as Retell records it, and
the state kept in Redis across turns and processes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from retell import AsyncRetell

from service.catalog import agent_files
from service.errors import ConfigError

from .conftest import (
    API_KEY,
    DEFAULT_NUMBERS,
    MakeParley,
    agent_file,
    answered,
    api_json,
    build_settings,
    write_agents,
)
from .fakes.openai import Call, Completion, FakeOpenAI
from .fakes.twilio import FakeTwilio

BOOK = {"type": "custom", "name": "book", "description": "Book the visit.", "url": "http://127.0.0.1:9/book"}
STATES = {
    "general_prompt": "You are Sunny Dental's assistant for {{user_number}}.",
    "starting_state": "greeting",
    "states": [
        {"name": "greeting", "state_prompt": "Find out who is writing.",
         "edges": [{"destination_state_name": "booking", "description": "Once you know the patient's name.",
                    "parameters": {"type": "object", "properties": {"patient": {"type": "string"}},
                                   "required": ["patient"]}}]},
        {"name": "booking",
         "state_prompt": "Book a visit for {{patient}}. "
                         "Now: {{current_agent_state}}, before: {{previous_agent_state}}.",
         "tools": [BOOK], "edges": [{"destination_state_name": "greeting", "description": "Someone else writes."}]},
    ],
}


def prompt_of(request: dict[str, Any]) -> str:
    return str(request["messages"][0]["content"])


def tools_of(request: dict[str, Any]) -> list[str]:
    return [tool["function"]["name"] for tool in request.get("tools", [])]


def moving_then_answering(body: dict[str, Any]) -> Completion:
    """Moves to booking on the first text (naming the patient), then answers with the state it sees."""
    if "Find out who is writing." in prompt_of(body) and not any(m["role"] == "tool" for m in body["messages"]):
        return Completion(tool_calls=[Call("transition_to_booking", json.dumps({"patient": "Ana"}), id="call_1")])
    return Completion(content="In " + ("booking" if "Book a visit" in prompt_of(body) else "greeting"))


async def test_a_transition_moves_the_chat_and_is_recorded_as_retell_records_it(make_parley: MakeParley) -> None:
    parley = await make_parley(agent=agent_file(retell_llm=STATES))
    parley.llm.respond = moving_then_answering
    assert await answered(parley, "Hi, it's Ana") == "In booking"
    first, second = parley.llm.requests
    # The starting state: the general prompt, then the state's; its edge as a tool with the edge's schema.
    assert prompt_of(first).startswith("You are Sunny Dental's assistant for +14155550123.\n\nFind out who is writing.")
    assert tools_of(first) == ["end_chat", "transition_to_booking"]
    edge = first["tools"][1]["function"]
    assert edge["description"] == "Once you know the patient's name."
    assert edge["parameters"]["required"] == ["patient"]
    # The same turn goes on in the new state: its prompt (with the edge's arguments as variables) and tools.
    assert "Book a visit for Ana. Now: booking, before: greeting." in prompt_of(second)
    assert tools_of(second) == ["end_chat", "book", "transition_to_greeting"]
    chat = await parley.chat_of()
    entries = chat["message_with_tool_calls"]
    assert [m["role"] for m in entries] == ["user", "state_transition", "agent"]
    assert (entries[1]["former_state_name"], entries[1]["new_state_name"]) == ("greeting", "booking")
    assert chat["collected_dynamic_variables"] == {"patient": "Ana"}


async def test_the_state_survives_turns_and_processes(make_parley: MakeParley) -> None:
    parley = await make_parley(agent=agent_file(retell_llm=STATES))
    parley.llm.respond = moving_then_answering
    await answered(parley, "Hi, it's Ana")
    other = await make_parley(agent=agent_file(retell_llm=STATES))   # another process on the same Redis
    other._sid = parley._sid   # its texts get new MessageSids, not the first one's (a retry would be a duplicate)
    await parley.client.close()
    assert await answered(other, "Tuesday please") == "In booking"
    assert tools_of(other.llm.requests[-1]) == ["end_chat", "book", "transition_to_greeting"]
    assert "Now: booking, before: greeting." in prompt_of(other.llm.requests[-1])


async def test_a_chat_without_states_has_no_state_variables(make_parley: MakeParley) -> None:
    parley = await make_parley(agent=agent_file(retell_llm={"general_prompt": "State: {{current_agent_state}}."}))
    await answered(parley, "hi")
    assert prompt_of(parley.llm.requests[0]).startswith("State: {{current_agent_state}}.")


async def test_one_move_per_step(make_parley: MakeParley) -> None:
    parley = await make_parley(agent=agent_file(retell_llm=STATES))

    def twice(body: dict[str, Any]) -> Completion:
        if not any(m["role"] == "tool" for m in body["messages"]):
            return Completion(tool_calls=[Call("transition_to_booking", '{"patient": "Ana"}', id="a"),
                                          Call("transition_to_booking", '{"patient": "Bo"}', id="b")])
        results = [m["content"] for m in body["messages"] if m["role"] == "tool"]
        return Completion(content=" | ".join(results))

    parley.llm.respond = twice
    reply = await answered(parley, "hi")
    assert reply == ("Moved to the state booking. | Not moved: the agent already moved to booking in this step; "
                     "move one state at a time.")
    chat = await parley.chat_of()
    assert [m["role"] for m in chat["message_with_tool_calls"]] == [
        "user", "state_transition", "tool_call_invocation", "tool_call_result", "agent"]
    assert chat["collected_dynamic_variables"] == {"patient": "Ana"}


@pytest.mark.parametrize(("change", "message"), [
    ({"starting_state": None}, "starting_state: required when there are states (one of greeting, booking)"),
    ({"starting_state": "nowhere"}, "starting_state: no state named 'nowhere' (states: greeting, booking)"),
    ({"states": [STATES["states"][0]]}, "states.0.edges.0.destination_state_name: no state named 'booking'"),
    ({"states": [*STATES["states"], {"name": "booking"}]}, "states: names must be unique; repeated: booking"),
    ({"general_tools": [{**BOOK}]}, "states.1 (booking): tool names must be unique among the general tools, "
                                    "the state's tools and its transitions; repeated: book"),
    ({"states": [{"name": "bad name"}], "starting_state": "bad name"}, "states.0.name"),
])
def test_states_that_do_not_hold_together_are_refused_at_load(
    tmp_path: Path, fake_twilio: FakeTwilio, fake_llm: FakeOpenAI, change: dict[str, Any], message: str,
) -> None:
    write_agents(tmp_path / "agents", {"frontdesk": agent_file(retell_llm={**STATES, **change})}, DEFAULT_NUMBERS)
    with pytest.raises(ConfigError) as refused:
        agent_files.load(build_settings(None, tmp_path / "agents", fake_twilio, fake_llm, outbound_allow=["127.0.0.1"]))
    assert message in str(refused.value)


async def test_the_sdk_writes_and_reads_states(make_parley: MakeParley) -> None:
    parley = await make_parley()
    async with AsyncRetell(api_key=API_KEY, base_url=str(parley.client.make_url("")).rstrip("/"),
                           max_retries=0) as retell:
        llm = await retell.llm.create(
            general_prompt="p", starting_state="a",
            states=[{"name": "a", "state_prompt": "A", "edges": [{"destination_state_name": "b",
                                                                  "description": "go"}]},
                    {"name": "b", "state_prompt": "B"}])
        assert llm.starting_state == "a" and [s.name for s in llm.states or []] == ["a", "b"]
    refused = await parley.api("POST", "/create-retell-llm", json={"states": [{"name": "a"}]})
    assert refused.status == 422
    assert "starting_state: required when there are states" in (await refused.json())["message"]
    assert (await api_json(parley, "GET", f"/get-retell-llm/{llm.llm_id}"))["states"][0]["edges"][0][
        "destination_state_name"] == "b"
