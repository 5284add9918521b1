"""Issue 13's acceptance: one multi-state agent holding every chat tool type, written the way Retell's API returns
it, through signed Twilio webhooks and the local fakes: each tool runs in turn over one conversation, and the
voice-only ones are named by the unsupported report instead of being dropped."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from retell.types import LlmResponse

from service.retell.models import ChatAgent
from service.retell.unsupported import unsupported

from .conftest import AGENT_NUMBER, USER, MakeParley, agent_file
from .fakes.openai import Call, Completion
from .test_mcp import McpFixture, mcp_server  # noqa: F401  (the real MCP server fixture)

NUMBERS = [{"phone_number": AGENT_NUMBER, "inbound_sms_agents": [{"agent_id": "frontdesk", "weight": 1}]}]


@pytest.fixture
async def crm() -> AsyncIterator[str]:
    async def booking(request: web.Request) -> web.Response:
        return web.json_response({"booking": {"id": "BK-7", "day": (await request.json())["args"]["day"]}})

    app = web.Application()
    app.router.add_post("/book", booking)
    async with TestServer(app) as server:
        yield str(server.make_url("/book"))


def retell_llm(book_url: str, mcp_url: str) -> dict[str, Any]:
    """The LLM as Retell's API returns it (validated by retell-sdk's own type below)."""
    return {
        "llm_id": "llm_frontdesk", "version": 0, "is_published": True, "last_modification_timestamp": 1,
        "model_config": {"type": "cascading", "primary": {"model": "gpt-4.1"}, "temperature": 0.1},
        "general_prompt": "You are Sunny Dental's assistant.",
        "mcps": [{"name": "crm", "url": mcp_url, "timeout_ms": 5000}],
        "starting_state": "intake",
        "general_tools": [
            {"type": "end_call", "name": "end_chat", "description": "End the chat."},
            {"type": "transfer_call", "name": "to_human", "description": "Voice only.",
             "transfer_destination": {"type": "predefined", "number": "+14155550100"},
             "transfer_option": {"type": "cold_transfer"}},
        ],
        "states": [
            {"name": "intake", "state_prompt": "Learn who is writing.",
             "edges": [{"destination_state_name": "booking", "description": "Once you know the pet.",
                        "parameters": {"type": "object", "properties": {"reason": {"type": "string"}}}}],
             "tools": [
                 {"type": "extract_dynamic_variable", "name": "record", "description": "Record the pet.",
                  "variables": [{"type": "string", "name": "pet", "description": "The pet's name"}]},
                 {"type": "mcp", "name": "lookup", "description": "Find the customer.", "mcp_id": "crm",
                  "input_schema": {"phone": "string"},   # Retell's form: argument name -> type
                  "response_variables": {"customer": "customer.name"}},
             ]},
            {"name": "booking", "state_prompt": "Book a visit for {{pet}} of {{customer}}.",
             "tools": [
                 {"type": "custom", "name": "book", "description": "Book it.", "url": book_url, "timeout_ms": 5000,
                  "parameters": {"type": "object", "properties": {"day": {"type": "string"}}},
                  "response_variables": {"booking_id": "booking.id"}, "speak_during_execution": False},
                 {"type": "send_sms", "name": "confirm", "description": "Text the confirmation.",
                  "sms_content": {"type": "predefined", "text": "Booked {{booking_id}} for {{pet}}."}},
                 {"type": "agent_swap", "name": "to_billing", "description": "Billing questions.",
                  "agent_id": "billing", "post_call_analysis_setting": "both_agents"},
             ]},
        ],
    }


STEPS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    # the user's text -> the tools the model calls, one per completion
    "Hi, Rex needs a checkup": [("record", {"pet": "Rex"}), ("lookup", {"phone": USER}),
                                ("transition_to_booking", {"reason": "checkup"})],
    "Friday please": [("book", {"day": "Friday"}), ("confirm", {})],
    "and my bill?": [("to_billing", {})],
}


def scripted(body: dict[str, Any]) -> Completion:
    last_user = max(i for i, m in enumerate(body["messages"]) if m["role"] == "user")
    text, results = body["messages"][last_user]["content"], body["messages"][last_user:]
    done = sum(1 for m in results if m["role"] == "tool")
    steps = STEPS.get(text, [])
    if body["messages"][0]["content"].startswith("You are billing."):
        return Completion(content="Billing here.")
    if done < len(steps):
        name, arguments = steps[done]
        return Completion(tool_calls=[Call(name, json.dumps(arguments), id=f"call_{name}")])
    return Completion(content=f"ok: {results[-1]['content'][:60] if done else 'hi'}")


async def test_every_chat_tool_type_runs_end_to_end(
    make_parley: MakeParley, crm: str, mcp_server: McpFixture,  # noqa: F811
) -> None:
    llm = retell_llm(crm, mcp_server.url)
    LlmResponse.model_validate(llm)   # shaped exactly as Retell's API returns an LLM
    billing = agent_file(agent_name="Billing", retell_llm={"general_prompt": "You are billing."})
    parley = await make_parley(numbers=NUMBERS, agents={"frontdesk": agent_file(retell_llm=llm), "billing": billing})
    parley.llm.respond = scripted

    for sent, text in enumerate(STEPS, start=1):
        assert (await parley.text(text)).status == 200
        await parley.twilio.wait_for(sent + (1 if sent > 2 else 0))   # the send_sms tool's text is one more
        await parley.idle()

    chat = await parley.chat_of()
    entries = chat["message_with_tool_calls"]
    invoked = [(m["name"], m.get("type")) for m in entries if m["role"] == "tool_call_invocation"]
    assert invoked == [("record", "extract_dynamic_variable"), ("lookup", "mcp"), ("book", "custom"),
                       ("confirm", "send_sms"), ("to_billing", "agent_swap")]
    assert [m["new_state_name"] for m in entries if m["role"] == "state_transition"] == ["booking"]
    assert all(m["successful"] for m in entries if m["role"] == "tool_call_result")
    assert chat["collected_dynamic_variables"] == {"pet": "Rex", "customer": "Ana", "reason": "checkup",
                                                   "booking_id": "BK-7"}
    assert chat["agent_id"] == "billing"
    texts = [m.body for m in parley.twilio.messages]
    assert "Booked BK-7 for Rex." in texts and texts[-1] == "Billing here."
    booking_prompt = next(r for r in parley.llm.requests if "Book a visit" in r["messages"][0]["content"])
    assert "Book a visit for Rex of Ana." in booking_prompt["messages"][0]["content"]
    # What cannot run in a chat is named, not dropped silently.
    assert unsupported(ChatAgent.model_validate(agent_file(retell_llm=llm))) == [
        "retell_llm.general_tools.1 (to_human): a transfer_call tool does not run in a chat: the model is not "
        "offered it",
        "retell_llm.states.1 (booking).tools.0 (book).speak_during_execution: stored, not used by Parley",
    ]
