"""A conversation flow's nodes that call something, end to end through signed Twilio webhooks: a function node's
custom tool (arguments the model writes, its result routing the chat, its response variables), an MCP node, an
extract node feeding a branch, a subagent node's tools, and an SMS node sending through the chat's number."""

from __future__ import annotations

import json
from typing import Any

import pytest

from .conftest import AGENT_NUMBER, USER, MakeParley, answered, api_json
from .fakes.openai import Call, Completion, last_user_text
from .test_flows import edge, model, moves, say, started, tag, tools_of
from .test_mcp import McpFixture, mcp_server  # noqa: F401  (the real MCP server fixture)
from .test_tool_types import Endpoint, endpoint  # noqa: F401  (the business's function endpoint)


def forced(body: dict[str, Any]) -> str | None:
    """The tool the request makes the model call, if it does."""
    choice = body.get("tool_choice")
    return choice["function"]["name"] if isinstance(choice, dict) else None


def booking_flow(url: str, **function: Any) -> dict[str, Any]:
    return {"tools": [{"type": "custom", "tool_id": "tool_book", "name": "book_visit", "description": "Book a visit.",
                       "url": url + "/book", "timeout_ms": 2000,
                       "parameters": {"type": "object", "properties": {"day": {"type": "string"}},
                                      "required": ["day"]},
                       "response_variables": {"booking_id": "booking.id", "booked_day": "booking.day"}}],
            "nodes": [
                say("greet", "Ask for a day.", edge("e_day", "book", "The user named a day.")),
                {"id": "book", "name": "Book", "type": "function", "tool_id": "tool_book",
                 "instruction": {"type": "static_text", "text": "One moment, booking it."},
                 "speak_during_execution": True, "wait_for_result": True,
                 "edges": [edge("e_ok", "done", None, ("{{booking_id}}", "exists", None)),
                           edge("e_full", "full", "The booking tool said the day is full.")],
                 "else_edge": edge("e_else", "sorry", "Else."), **function},
                say("done", "Booked: {{booking_id}} on {{booked_day}}.", static=True),
                say("full", "That day is full.", static=True),
                say("sorry", "Sorry, we could not book.", static=True)]}


def books(body: dict[str, Any]) -> Completion:
    """Moves on a day; writes the tool's arguments when made to; judges on the tool's result."""
    if forced(body) == "book_visit":
        return Completion(tool_calls=[Call("book_visit", json.dumps({"day": "Tuesday"}))])
    results = [m["content"] for m in body["messages"] if m["role"] == "tool"]
    if "none_of_these" in tools_of(body):
        full = results and "full" in results[-1]
        return Completion(tool_calls=[Call("transition_to_full" if full else "none_of_these", "{}")])
    if "transition_to_book" in tools_of(body) and "Tuesday" in last_user_text(body):
        return Completion(tool_calls=[Call("transition_to_book", "{}")])
    return Completion(content=f"<{tag(body)}>")


async def test_a_function_node_calls_its_tool_and_routes_on_the_result(
    make_parley: MakeParley, endpoint: Endpoint,  # noqa: F811
) -> None:
    endpoint.answer = {"booking": {"id": "BK-7", "day": "Tuesday"}}
    parley = await started(make_parley, booking_flow(endpoint.url), books)
    assert await answered(parley, "Tuesday please") == "One moment, booking it.\n\nBooked: BK-7 on Tuesday."
    # The model wrote the arguments, made to call the tool and offered only it.
    [writing] = [r for r in parley.llm.requests if forced(r)]
    assert tools_of(writing) == ["book_visit"]
    assert endpoint.bodies[0]["name"] == "book_visit" and endpoint.bodies[0]["args"] == {"day": "Tuesday"}
    assert endpoint.bodies[0]["chat"]["chat_id"]
    chat = await parley.chat_of()
    assert [m["role"] for m in chat["message_with_tool_calls"]] == [
        "user", "node_transition", "tool_call_invocation", "tool_call_result", "node_transition", "agent"]
    invocation, result = chat["message_with_tool_calls"][2:4]
    assert (invocation["type"], invocation["name"], json.loads(invocation["arguments"])) == (
        "custom", "book_visit", {"day": "Tuesday"})
    assert result["successful"] is True and result["tool_call_id"] == invocation["tool_call_id"]
    assert chat["collected_dynamic_variables"] == {"booking_id": "BK-7", "booked_day": "Tuesday"}
    assert moves(chat) == [("greet", "book", "normal"), ("book", "done", "normal")]


async def test_a_function_nodes_prompt_edges_are_judged_with_the_result(
    make_parley: MakeParley, endpoint: Endpoint,  # noqa: F811
) -> None:
    endpoint.answer = {"error": "Tuesday is full"}
    parley = await started(make_parley, booking_flow(endpoint.url), books)
    assert await answered(parley, "Tuesday") == "One moment, booking it.\n\nThat day is full."
    judged = parley.llm.requests[-1]
    assert tools_of(judged) == ["transition_to_full", "none_of_these"]
    assert judged["messages"][-1] == {"role": "tool", "tool_call_id": judged["messages"][-2]["tool_calls"][0]["id"],
                                      "content": '{"error": "Tuesday is full"}'}


async def test_a_function_node_that_does_not_wait_takes_its_else_edge(
    make_parley: MakeParley, endpoint: Endpoint,  # noqa: F811
) -> None:
    endpoint.answer = {"booking": {"id": "BK-7", "day": "Tuesday"}}
    parley = await started(make_parley, booking_flow(endpoint.url, wait_for_result=False,
                                                     speak_during_execution=False), books)
    assert await answered(parley, "Tuesday") == "Sorry, we could not book."
    assert len(endpoint.bodies) == 1   # it ran all the same
    assert (await parley.chat_of())["collected_dynamic_variables"]["booking_id"] == "BK-7"


async def test_an_mcp_node_calls_the_servers_tool(
    make_parley: MakeParley, mcp_server: McpFixture,  # noqa: F811
) -> None:
    flow = {"mcps": [{"name": "crm", "url": mcp_server.url, "timeout_ms": 5000}], "nodes": [
        {"id": "find", "type": "mcp", "mcp_id": "crm", "mcp_tool_name": "lookup",
         "response_variables": {"customer": "customer.name", "last_visit": "customer.visits[0].day"},
         "edges": [edge("e_known", "known", None, ("{{customer}}", "exists", None))],
         "else_edge": edge("e_new", "stranger", "Else.")},
        say("known", "Hi {{customer}}, see you again on {{last_visit}}?", static=True),
        say("stranger", "Hi! Who is this?", static=True)]}

    def looks_up(body: dict[str, Any]) -> Completion:
        assert forced(body) == "lookup"
        return Completion(tool_calls=[Call("lookup", json.dumps({"phone": USER}))])

    parley = await started(make_parley, flow, looks_up)
    # The start node acts on the first text: the tool as the server lists it, the arguments the model writes.
    assert await answered(parley, "hello") == "Hi Ana, see you again on Friday?"
    schema = parley.llm.requests[0]["tools"][0]["function"]
    assert schema["description"] == "Look a customer up by phone number."
    assert list(schema["parameters"]["properties"]) == ["phone"]
    chat = await parley.chat_of()
    invocation = next(m for m in chat["message_with_tool_calls"] if m["role"] == "tool_call_invocation")
    assert (invocation["type"], invocation["name"]) == ("mcp", "lookup")
    assert chat["collected_dynamic_variables"] == {"customer": "Ana", "last_visit": "Friday"}


QUALIFY: dict[str, Any] = {"nodes": [
    say("ask", "Ask for their name and age.", edge("e_told", "extract", "The user gave their name and age.")),
    {"id": "extract", "type": "extract_dynamic_variables", "else_edge": edge("e_next", "split", "Else."),
     "variables": [{"type": "string", "name": "first_name", "description": "Their first name."},
                   {"type": "number", "name": "age", "description": "Their age in years."}]},
    {"id": "split", "type": "branch", "edges": [edge("e_adult", "adult", None, ("{{age}}", ">=", "18"))],
     "else_edge": edge("e_minor", "minor", "Else.")},
    say("adult", "Thanks {{first_name}}, let's book.", static=True),
    say("minor", "Thanks {{first_name}}, a parent must book.", static=True)]}


@pytest.mark.parametrize(("age", "reply"), [(42, "Thanks Ana, let's book."), (12, "Thanks Ana, a parent must book.")])
async def test_an_extract_node_fills_variables_and_a_branch_splits_on_them(
    make_parley: MakeParley, age: int, reply: str,
) -> None:
    def extracts(body: dict[str, Any]) -> Completion:
        if forced(body) == "extract_dynamic_variables":
            return Completion(tool_calls=[Call("extract_dynamic_variables",
                                               json.dumps({"first_name": "Ana", "age": age}))])
        return model(Ana="transition_to_extract")(body)   # type: ignore[return-value]

    parley = await started(make_parley, QUALIFY, extracts)
    assert await answered(parley, f"I'm Ana, {age}") == reply
    chat = await parley.chat_of()
    assert chat["collected_dynamic_variables"] == {"first_name": "Ana", "age": str(age)}
    extracting = next(r for r in parley.llm.requests if forced(r))
    properties = extracting["tools"][0]["function"]["parameters"]["properties"]
    assert properties["age"] == {"type": "number", "description": "Their age in years."}
    assert moves(chat) == [("ask", "extract", "normal"), ("extract", "split", "normal"),
                           ("split", "adult" if age >= 18 else "minor", "normal")]


async def test_a_subagent_node_runs_its_tools(
    make_parley: MakeParley, endpoint: Endpoint,  # noqa: F811
) -> None:
    endpoint.answer = {"booking": {"id": "BK-9", "day": "Monday"}}
    flow = booking_flow(endpoint.url)
    flow["nodes"] = [{"id": "helper", "type": "subagent", "instruction": {"type": "prompt", "text": "[helper] Help."},
                      "tool_ids": ["tool_book"],
                      "tools": [{"type": "end_call", "name": "end_chat", "description": "End the chat."}]}]

    def helps(body: dict[str, Any]) -> Completion:
        results = [m["content"] for m in body["messages"] if m["role"] == "tool"]
        if not results:
            return Completion(tool_calls=[Call("book_visit", json.dumps({"day": "Monday"}))])
        return Completion(content=f"Done: {results[-1]}")

    parley = await started(make_parley, flow, helps)
    assert await answered(parley, "book Monday") == 'Done: {"booking": {"id": "BK-9", "day": "Monday"}}'
    assert tools_of(parley.llm.requests[0]) == ["end_chat", "book_visit"]
    assert (await parley.chat_of())["collected_dynamic_variables"]["booking_id"] == "BK-9"


def texting(instruction: dict[str, Any], **sms: Any) -> dict[str, Any]:
    return {"nodes": [
        {"id": "link", "type": "sms", "instruction": instruction, **sms,
         "success_edge": edge("e_sent", "sent", "Sent."), "failed_edge": edge("e_failed", "failed", "Failed.")},
        say("sent", "I texted you the link.", static=True),
        say("failed", "I could not text you.", static=True)]}


async def test_an_sms_node_sends_a_text_and_routes_on_success(make_parley: MakeParley) -> None:
    flow = texting({"type": "static_text", "text": "Book at https://x.test/{{code}}"})
    parley = await started(make_parley, {**flow, "default_dynamic_variables": {"code": "A1"}}, model())
    assert await answered(parley, "send me the link") == "I texted you the link."
    assert [(m.to, m.body) for m in parley.twilio.messages] == [
        (USER, "Book at https://x.test/A1"), (USER, "I texted you the link.")]
    chat = await parley.chat_of()
    invocation, result = [m for m in chat["message_with_tool_calls"] if m["role"].startswith("tool_call")]
    assert (invocation["type"], result["content"], result["successful"]) == ("send_sms", "Sent successfully", True)
    assert moves(chat) == [("link", "sent", "normal")]


async def test_an_sms_node_text_the_model_writes_to_another_number(make_parley: MakeParley) -> None:
    manager = "+14155550999"
    flow = texting({"type": "prompt", "text": "Tell the manager who wants a visit."},
                   sms_destination={"type": "phone_number", "phone_number": "{{manager}}"})

    def writes(body: dict[str, Any]) -> Completion:
        assert "Tell the manager who wants a visit." in body["messages"][0]["content"]
        return Completion(content=f"{USER} wants a visit.")

    parley = await started(make_parley, {**flow, "default_dynamic_variables": {"manager": manager}}, writes)
    assert await answered(parley, "hi") == "I texted you the link."
    assert [(m.to, m.body) for m in parley.twilio.messages] == [
        (manager, f"{USER} wants a visit."), (USER, "I texted you the link.")]
    assert parley.twilio.messages[0].from_ == AGENT_NUMBER


async def test_an_sms_node_in_an_api_chat_takes_its_failed_edge(make_parley: MakeParley) -> None:
    parley = await started(make_parley, texting({"type": "template", "template": "info_collection"}), model())
    chat = await api_json(parley, "POST", "/create-chat", 201, json={"agent_id": "frontdesk"})
    assert [m["content"] for m in chat["message_with_tool_calls"] if m["role"] == "agent"] == [
        "I could not text you."]
    result = next(m for m in chat["message_with_tool_calls"] if m["role"] == "tool_call_result")
    assert (result["content"], result["successful"]) == ("Failed to send: this chat has no phone number.", False)
    assert parley.twilio.messages == []


async def test_an_sms_node_to_a_number_that_opted_out_takes_its_failed_edge(make_parley: MakeParley) -> None:
    manager = "+14155550999"
    flow = texting({"type": "static_text", "text": "Someone wants a visit."},
                   sms_destination={"type": "phone_number", "phone_number": manager})
    parley = await started(make_parley, flow, model())
    assert (await parley.text("STOP", user=manager)).status == 200   # the manager opted out of this number
    await parley.idle()
    assert await answered(parley, "hi") == "I could not text you."
    assert [m.to for m in parley.twilio.messages] == [USER]
    result = next(m for m in (await parley.chat_of())["message_with_tool_calls"] if m["role"] == "tool_call_result")
    assert result["content"] == "Failed to send: the recipient opted out of texts from this number"
