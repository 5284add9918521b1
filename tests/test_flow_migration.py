"""From Retell to Parley with a conversation-flow agent: the agent and its flow as Retell's API answers them
(checked against retell-sdk's own response types), written to one agent file, answer texts the way the flow says,
and ``unsupported`` names what Parley keeps without running."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from retell.types import ChatAgentResponse, ConversationFlowResponse

from service.catalog import agent_files
from service.retell.unsupported import unsupported

from .conftest import AGENT_NUMBER, MakeParley, answered, api_json, build_settings
from .fakes.openai import Call, Completion, FakeOpenAI
from .fakes.twilio import FakeTwilio

RETELL_AGENT = {
    "agent_id": "agent_c41d", "version": 2, "is_published": True, "last_modification_timestamp": 1_764_000_000_000,
    "agent_name": "Bright Plumbing intake", "channel": "chat", "language": "en-US",
    "response_engine": {"type": "conversation-flow", "conversation_flow_id": "conversation_flow_9a1e", "version": 2},
    "end_chat_after_silence_ms": 3_600_000,
}


def _edge(edge_id: str, to: str, prompt: str | None = None, **equation: Any) -> dict[str, Any]:
    condition = {"type": "prompt", "prompt": prompt} if prompt else {
        "type": "equation", "operator": "&&", "equations": [equation]}
    return {"id": edge_id, "destination_node_id": to, "transition_condition": condition}


# As Retell's API answers GET /get-conversation-flow: canvas positions, fine-tune examples and voice settings
# included, as an export carries them.
RETELL_FLOW: dict[str, Any] = {
    "conversation_flow_id": "conversation_flow_9a1e", "version": 2, "last_modification_timestamp": 1_764_000_000_000,
    "start_speaker": "user", "start_node_id": "start-node-1764", "begin_tag_display_position": {"x": 0, "y": 0},
    "global_prompt": "You are Bright Plumbing's intake assistant. Keep texts short.",
    "model_config": {"type": "cascading", "primary": {"model": "gpt-4.1-mini"}, "temperature": 0.1},
    "default_dynamic_variables": {"area": "Portland"},
    "tools": [{"type": "custom", "tool_id": "tool-book", "name": "book_visit", "url": "https://bright.example/book",
               "description": "Book a plumber visit.", "speak_during_execution": False,
               "parameters": {"type": "object", "properties": {"zip": {"type": "string"}}, "required": ["zip"]}}],
    "nodes": [
        {"id": "start-node-1764", "type": "conversation", "name": "Greeting",
         "display_position": {"x": 120, "y": 80}, "interruption_sensitivity": 0.8,
         "instruction": {"type": "prompt", "text": "Ask what the plumbing problem is and the zip code."},
         "finetune_transition_examples": [{"id": "ex1", "destination_node_id": "node-urgent",
                                           "transcript": [{"role": "user", "content": "water everywhere"}]}],
         "edges": [_edge("edge-urgent", "node-urgent", left="{{emergency}}", operator="==", right="yes"),
                   _edge("edge-book", "node-extract", "The user described the problem")]},
        {"id": "node-extract", "type": "extract_dynamic_variables", "name": "Details",
         "variables": [{"type": "string", "name": "zip", "description": "The user's zip code"}],
         "edges": [_edge("edge-has-zip", "node-book", left="{{zip}}", operator="exists")],
         "else_edge": _edge("edge-no-zip", "start-node-1764", "Else")},
        {"id": "node-book", "type": "function", "name": "Book", "tool_id": "tool-book", "tool_type": "local",
         "wait_for_result": True, "speak_during_execution": False,
         "else_edge": _edge("edge-booked", "node-end", "Else")},
        {"id": "node-urgent", "type": "transfer_call", "name": "Transfer to on-call",
         "transfer_destination": {"type": "predefined", "number": "+15035550100"},
         "transfer_option": {"type": "cold_transfer"},
         "edge": _edge("edge-transfer-failed", "node-end", "Transfer failed")},
        {"id": "node-end", "type": "end", "name": "Goodbye",
         "instruction": {"type": "static_text", "text": "Thanks! A plumber will text you to confirm."}},
    ],
}


def export(agent: ChatAgentResponse, flow: ConversationFlowResponse, directory: Path) -> Path:
    """The README's snippet for a flow agent: the agent with its flow inline, as one file."""
    exported = {**agent.model_dump(mode="json", by_alias=True, exclude_none=True),
                "conversation_flow": flow.model_dump(mode="json", by_alias=True, exclude_none=True)}
    exported.pop("response_engine")
    path = directory / f"{agent.agent_id}.json"
    path.write_text(json.dumps(exported, indent=2))
    return path


def test_a_retell_flow_export_drops_in(tmp_path: Path, fake_twilio: FakeTwilio, fake_llm: FakeOpenAI) -> None:
    agents = tmp_path / "agents"
    agents.mkdir()
    export(ChatAgentResponse.model_validate(RETELL_AGENT), ConversationFlowResponse.model_validate(RETELL_FLOW),
           agents)
    (agents / "phone-numbers.yaml").write_text(json.dumps([{
        "phone_number": AGENT_NUMBER, "inbound_sms_agents": [{"agent_id": "agent_c41d", "weight": 1}]}]))
    declared = agent_files.load(build_settings(None, agents, fake_twilio, fake_llm))
    flow = declared.agents["agent_c41d"].conversation_flow
    assert flow is not None and flow.primary_model == "gpt-4.1-mini"
    assert [node.id for node in flow.nodes] == [node["id"] for node in RETELL_FLOW["nodes"]]
    # Nothing is lost on the way through: the flow gives back every field it was given.
    assert flow.model_dump(mode="json", by_alias=True, exclude_unset=True)["nodes"][0]["finetune_transition_examples"] \
        == RETELL_FLOW["nodes"][0]["finetune_transition_examples"]
    # The voice-only node is named, with what happens when a chat reaches it.
    reported = "\n".join(unsupported(declared.agents["agent_c41d"]))
    assert "nodes.3" in reported and "transfer_call" in reported


@pytest.fixture
async def booking() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """The business's booking endpoint (the export's URL points at it in the test)."""
    received: list[dict[str, Any]] = []

    async def book(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({"booking": "BK-7", "zip": received[-1]["args"]["zip"]})

    app = web.Application()
    app.router.add_post("/book", book)
    async with TestServer(app) as server:
        yield str(server.make_url("/book")), received


def _walk(body: dict[str, Any]) -> Completion:
    """A model that takes the greeting's edge once the user describes a leak, fills the extract node's zip, and
    calls the booking tool; otherwise it asks its question."""
    tools = {tool["function"]["name"]: tool["function"] for tool in body.get("tools", [])}
    last = json.dumps(body["messages"][-1])
    for name, tool in tools.items():
        if tool.get("description") == "The user described the problem" and "leak" in last:
            return Completion(tool_calls=[Call(name, "{}")])
        if name == "book_visit" or "zip" in tool.get("parameters", {}).get("properties", {}):
            return Completion(tool_calls=[Call(name, json.dumps({"zip": "97201"}))])
    return Completion(content="What is the problem, and your zip code?")


async def test_the_flow_export_answers_texts(make_parley: MakeParley,
                                             booking: tuple[str, list[dict[str, Any]]]) -> None:
    url, booked = booking
    flow = {**{k: v for k, v in RETELL_FLOW.items() if k != "version"},
            "tools": [{**RETELL_FLOW["tools"][0], "url": url}]}
    agent = {k: v for k, v in RETELL_AGENT.items() if k not in ("response_engine", "version", "is_published")}
    parley = await make_parley(agents={"agent_c41d": {**agent, "burst_window_ms": 0, "conversation_flow": flow}},
                               numbers=[{"phone_number": AGENT_NUMBER,
                                         "inbound_sms_agents": [{"agent_id": "agent_c41d", "weight": 1}]}])
    parley.llm.respond = _walk
    assert await answered(parley, "hi") == "What is the problem, and your zip code?"
    chat_id = (await parley.chat_of())["chat_id"]
    assert await answered(parley, "a leak under the sink, 97201") == "Thanks! A plumber will text you to confirm."
    assert booked[0]["args"] == {"zip": "97201"}
    chat = await api_json(parley, "GET", f"/get-chat/{chat_id}")
    moves = [(m["former_node_id"], m["new_node_id"]) for m in chat["message_with_tool_calls"]
             if m["role"] == "node_transition"]
    assert moves == [("start-node-1764", "node-extract"), ("node-extract", "node-book"), ("node-book", "node-end")]
    assert chat["collected_dynamic_variables"]["zip"] == "97201"
    assert (chat["chat_status"], chat["disconnection_reason"]) == ("ended", "agent_hangup")
