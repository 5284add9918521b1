"""A conversation flow's other nodes through signed Twilio webhooks: agent swaps both ways (a flow's agent_swap node
to a Retell LLM agent, an LLM's agent_swap tool to a flow agent), components (a flow's own and a shared one) entered
and left, an end node whose closing text the model writes, and the nodes Parley cannot run in a chat."""

from __future__ import annotations

from typing import Any

import pytest

from service.app_state import RUNTIME
from service.retell.flows import ConversationFlowComponent

from .conftest import MakeParley, agent_file, answered, api_json
from .fakes.openai import Call, Completion
from .test_flows import edge, flow_agent, model, moves, say, started, tag, tools_of
from .test_tool_types import NUMBERS

BILLING = agent_file(agent_name="Billing", retell_llm={"model": "gpt-billing", "general_prompt": "You are billing."})


def to_billing(agent_id: str = "billing") -> dict[str, Any]:
    return {"nodes": [
        say("greet", "Greet.", edge("e_bill", "swap", "The user asks about a bill.")),
        {"id": "swap", "type": "agent_swap", "agent_id": agent_id, "post_call_analysis_setting": "both_agents",
         "instruction": {"type": "static_text", "text": "Passing you to billing."},
         "edge": edge("e_failed", "stay", "The swap failed.")},
        say("stay", "Billing is not available; I can help.", static=True)]}


def billing_answers(body: dict[str, Any]) -> Completion:
    if body["messages"][0]["content"].startswith("You are billing."):
        return Completion(content=f"Billing here ({body['model']}).")
    return model(bill="transition_to_swap")(body)   # type: ignore[return-value]


async def test_an_agent_swap_node_hands_the_chat_to_a_retell_llm_agent(make_parley: MakeParley) -> None:
    parley = await make_parley(numbers=NUMBERS, agents={"frontdesk": flow_agent(to_billing()), "billing": BILLING})
    parley.llm.respond = billing_answers
    # The destination answers the rest of the turn, after the node's instruction.
    assert await answered(parley, "my bill is wrong") == "Passing you to billing.\n\nBilling here (gpt-billing)."
    chat = await parley.chat_of()
    assert (chat["agent_id"], chat.get("current_node")) == ("billing", None)
    invocation, result = [m for m in chat["message_with_tool_calls"] if m["role"].startswith("tool_call")]
    assert (invocation["type"], invocation["name"]) == ("agent_swap", "agent_swap")
    assert result["content"].startswith("Swapped from agent frontdesk version 0 to agent billing version 0")
    assert await answered(parley, "and now?") == "Billing here (gpt-billing)."


async def test_an_agent_swap_node_that_cannot_swap_takes_its_edge(make_parley: MakeParley) -> None:
    parley = await make_parley(numbers=NUMBERS, agents={"frontdesk": flow_agent(to_billing("ghost")),
                                                        "billing": BILLING})
    parley.llm.respond = billing_answers
    assert await answered(parley, "my bill") == "Passing you to billing.\n\nBilling is not available; I can help."
    chat = await parley.chat_of()
    assert chat["agent_id"] == "frontdesk" and chat["current_node"] == "stay"
    result = next(m for m in chat["message_with_tool_calls"] if m["role"] == "tool_call_result")
    assert (result["successful"], result["content"]) == (
        False, "Not swapped: agent 'ghost' not found. The chat stays with this agent.")


async def test_an_llm_agents_swap_goes_on_in_a_flow(make_parley: MakeParley) -> None:
    desk = agent_file(retell_llm={"general_prompt": "You are the front desk.", "general_tools": [
        {"type": "agent_swap", "name": "to_booking", "description": "Bookings.", "agent_id": "booking",
         "post_call_analysis_setting": "both_agents"}]})
    booking = flow_agent({"nodes": [say("welcome", "Welcome to bookings.", edge("e_day", "day", "A day named.")),
                                    say("day", "Booked {{user_number}}.", static=True)]})
    parley = await make_parley(numbers=NUMBERS, agents={"frontdesk": desk, "booking": booking})

    def desk_swaps(body: dict[str, Any]) -> Completion:
        if body["messages"][0]["content"].startswith("You are the front desk."):
            return Completion(tool_calls=[Call("to_booking", "{}", id="call_swap")])
        return model(Friday="transition_to_day")(body)   # type: ignore[return-value]

    parley.llm.respond = desk_swaps
    # The flow starts at its start node, which judges the text that led to the swap.
    assert await answered(parley, "I'd like to book") == "<welcome>"
    chat = await parley.chat_of()
    assert (chat["agent_id"], chat["current_node"]) == ("booking", "welcome")
    assert [m["role"] for m in chat["message_with_tool_calls"]] == [
        "user", "tool_call_invocation", "tool_call_result", "agent"]
    assert tools_of(parley.llm.requests[-1]) == ["transition_to_day"]
    # Later texts walk the flow, in another process too.
    other = await make_parley(numbers=NUMBERS, agents={"frontdesk": desk, "booking": booking})
    other._sid = parley._sid
    await parley.client.close()
    other.llm.respond = desk_swaps
    assert (await answered(other, "Friday")).startswith("Booked +1")


async def test_an_api_chat_swaps_into_a_flow_too(make_parley: MakeParley) -> None:
    desk = agent_file(retell_llm={"general_prompt": "You are the front desk.", "general_tools": [
        {"type": "agent_swap", "name": "to_booking", "description": "Bookings.", "agent_id": "booking",
         "post_call_analysis_setting": "both_agents"}]})
    booking = flow_agent({"nodes": [say("welcome", "Welcome to bookings.")]})
    parley = await make_parley(numbers=NUMBERS, agents={"frontdesk": desk, "booking": booking})
    parley.llm.respond = lambda body: (
        Completion(content="Front desk.") if not any(m["role"] == "user" for m in body["messages"])
        else Completion(tool_calls=[Call("to_booking", "{}", id="call_swap")])
        if body["messages"][0]["content"].startswith("You are the front desk.") else Completion(content=tag(body)))
    chat = await api_json(parley, "POST", "/create-chat", 201, json={"agent_id": "frontdesk"})
    answer = await api_json(parley, "POST", "/create-chat-completion", 201,
                            json={"chat_id": chat["chat_id"], "content": "book please"})
    assert [m["role"] for m in answer["messages"]] == ["tool_call_invocation", "tool_call_result", "agent"]
    assert answer["messages"][-1]["content"] == "welcome"
    assert (await api_json(parley, "GET", f"/get-chat/{chat['chat_id']}"))["current_node"] == "welcome"


COLLECT: dict[str, Any] = {"name": "collect", "nodes": [
    say("ask", "Ask for their phone number.", edge("e_phone", None, "The user gave a phone number."),
        name="Ask phone"),
]}


def calling(component: dict[str, Any]) -> dict[str, Any]:
    return {"nodes": [
        say("greet", "Hi.", static=True, skip_response_edge=edge("e_in", "comp", "Skip.")),
        {"id": "comp", "type": "component", **component,
         "edges": [edge("e_gold", "gold", None, ("{{tier}}", "==", "gold"))],
         "else_edge": edge("e_out", "thanks", "Else.")},
        say("gold", "Thanks, gold member!", static=True),
        say("thanks", "Thanks!", static=True)]}


@pytest.mark.parametrize("kind", ["local", "shared"])
async def test_a_component_runs_from_its_start_node_and_returns(make_parley: MakeParley, kind: str) -> None:
    if kind == "local":
        flow = {**calling({"component_id": "collect"}), "components": [COLLECT]}
    else:
        flow = calling({"component_id": "comp_collect", "component_type": "shared"})
    parley = await started(make_parley, flow, model(phone="transition_to_e_phone"))
    if kind == "shared":
        await parley.client.app[RUNTIME].catalog.put_component(ConversationFlowComponent.model_validate(
            {**COLLECT, "conversation_flow_component_id": "comp_collect"}))
    assert await answered(parley, "hello") == "Hi.\n\n<ask>"
    chat = await parley.chat_of()
    assert chat["current_node"] == "Ask phone"
    assert moves(chat) == [("greet", "comp", "normal"), ("comp", "comp/ask", "normal")]
    asked = len(parley.llm.requests)
    # Its edge without a destination leaves it: the component node routes (its equation fails: the else edge).
    assert await answered(parley, "my phone is 555 0100") == "Thanks!"
    assert tools_of(parley.llm.requests[asked]) == ["transition_to_e_phone"]
    assert moves(await parley.chat_of())[2:] == [("comp/ask", "comp", "normal"), ("comp", "thanks", "normal")]


async def test_a_missing_shared_component_is_said_and_passed(make_parley: MakeParley) -> None:
    parley = await started(make_parley, calling({"component_id": "ghost", "component_type": "shared"}), model())
    assert await answered(parley, "hello") == "Hi.\n\nThanks!"
    why = [m["content"] for m in (await parley.chat_of())["message_with_tool_calls"] if m["role"] == "node_transition"]
    assert why[-1] == "component 'ghost': conversation flow component 'ghost' not found; took its e_out edge"


async def test_an_end_node_may_have_the_model_write_its_closing_text(make_parley: MakeParley) -> None:
    flow = {"nodes": [say("greet", "Greet.", edge("e_bye", "bye", "The user says goodbye.")),
                      {"id": "bye", "type": "end", "instruction": {"type": "prompt", "text": "[bye] Say goodbye."}}]}
    parley = await started(make_parley, flow, model(bye="transition_to_bye"))
    assert await answered(parley, "bye now") == "<bye>"
    chat = await api_json(parley, "GET", f"/get-chat/{(await parley.chat_ids())[-1]}")
    assert (chat["chat_status"], chat["current_node"]) == ("ended", "bye")


@pytest.mark.parametrize("node", [
    {"type": "transfer_call", "transfer_destination": {"type": "predefined", "number": "+14155550100"}},
    {"type": "press_digit"}, {"type": "code", "code": "return 1"},
])
async def test_a_node_parley_cannot_run_takes_its_else_edge_saying_why(
    make_parley: MakeParley, node: dict[str, Any],
) -> None:
    flow = {"nodes": [say("greet", "Greet.", edge("e_human", "voice", "The user wants a human.")),
                      {"id": "voice", **node, "else_edge": edge("e_else", "sorry", "Else.")},
                      say("sorry", "I can only text.", static=True)]}
    parley = await started(make_parley, flow, model(human="transition_to_voice"))
    assert await answered(parley, "a human please") == "I can only text."
    transitions = [m for m in (await parley.chat_of())["message_with_tool_calls"] if m["role"] == "node_transition"]
    assert (transitions[-1]["former_node_id"], transitions[-1]["new_node_id"]) == ("voice", "sorry")
    assert transitions[-1]["content"].endswith("; took its e_else edge")
    assert node["type"] in transitions[-1]["content"]


async def test_a_node_parley_cannot_run_without_an_else_edge_ends_the_chat(make_parley: MakeParley) -> None:
    flow = {"nodes": [say("greet", "Greet.", edge("e_human", "voice", "The user wants a human.")),
                      {"id": "voice", "type": "transfer_call"}]}
    parley = await started(make_parley, flow, model(human="transition_to_voice"), fallback_message="Sorry!")
    assert await answered(parley, "a human please") == "Sorry!"
    chat = await api_json(parley, "GET", f"/get-chat/{(await parley.chat_ids())[-1]}")
    assert chat["chat_status"] == "ended"
    last = [m for m in chat["message_with_tool_calls"] if m["role"] == "node_transition"][-1]
    assert last["former_node_id"] == "voice" and "new_node_id" not in last
    assert last["content"] == ("transfer_call nodes are for voice calls and do nothing in a chat; the node has no "
                               "else edge, so the chat ended")


async def test_a_function_node_naming_a_shared_tool_takes_its_else_edge(make_parley: MakeParley) -> None:
    flow = {"nodes": [{"id": "call", "type": "function", "tool_id": "tool_shared", "tool_type": "shared",
                       "else_edge": edge("e_else", "sorry", "Else.")},
                      say("sorry", "That tool is not here.", static=True)]}
    parley = await started(make_parley, flow, model())
    assert await answered(parley, "hi") == "That tool is not here."
    last = [m for m in (await parley.chat_of())["message_with_tool_calls"] if m["role"] == "node_transition"][-1]
    assert last["content"].startswith("shared tool 'tool_shared': tools shared across Retell flows are not kept")
    assert parley.llm.requests == []


async def test_a_subagent_nodes_agent_swap_tool_hands_the_chat_over(make_parley: MakeParley) -> None:
    flow = {"nodes": [{"id": "helper", "type": "subagent", "instruction": {"type": "prompt", "text": "[helper] Help."},
                       "tools": [{"type": "agent_swap", "name": "to_billing", "description": "Billing questions.",
                                  "agent_id": "billing", "post_call_analysis_setting": "only_destination_agent"}]}]}
    parley = await make_parley(numbers=NUMBERS, agents={"frontdesk": flow_agent(flow), "billing": BILLING})
    parley.llm.respond = lambda body: (Completion(tool_calls=[Call("to_billing", "{}")]) if tag(body) == "helper"
                                       else billing_answers(body))
    assert await answered(parley, "my bill") == "Billing here (gpt-billing)."
    chat = await parley.chat_of()
    assert chat["agent_id"] == "billing"
    invocation = next(m for m in chat["message_with_tool_calls"] if m["role"] == "tool_call_invocation")
    assert (invocation["type"], invocation["name"]) == ("agent_swap", "to_billing")


async def test_components_nest(make_parley: MakeParley) -> None:
    flow = {"components": [
        {"name": "outer", "nodes": [{"id": "inner_call", "type": "component", "component_id": "inner",
                                     "else_edge": edge("e_outer_done", None, "Else.")}]},
        {"name": "inner", "nodes": [say("ask", "Ask.", edge("e_answered", None, "The user answered."))]}],
        "nodes": [{"id": "go", "type": "component", "component_id": "outer",
                   "else_edge": edge("e_done", "done", "Else.")},
                  say("done", "Done.", static=True)]}
    parley = await started(make_parley, flow, model(answer="transition_to_e_answered"))
    assert await answered(parley, "hi") == "<ask>"
    assert (await parley.chat_of())["current_node"] == "ask"
    assert await answered(parley, "my answer") == "Done."
    assert moves(await parley.chat_of()) == [
        ("go", "go/inner_call", "normal"), ("go/inner_call", "go/inner_call/ask", "normal"),
        ("go/inner_call/ask", "go/inner_call", "normal"), ("go/inner_call", "go", "normal"), ("go", "done", "normal")]
