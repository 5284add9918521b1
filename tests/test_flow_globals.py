"""A conversation flow's global nodes through signed Twilio webhooks: reachable from every other node when their
condition holds (a prompt the model judges, equations Parley evaluates, or both), returning by their go-back
conditions to where the chat was, and not offered again during their ``cool_down``."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import MakeParley, answered
from .test_flows import edge, model, moves, say, started, tools_of


def faq(**setting: Any) -> dict[str, Any]:
    return say("faq", "Answer the question about prices.", global_node_setting={
        "condition": "The user asks about prices.",   # Retell's plain-text form
        "go_back_conditions": [edge("e_back", None, "The question is answered.")], **setting})


FLOW: dict[str, Any] = {"nodes": [
    say("menu", "Offer help.", edge("e_book", "book", "The user wants to book.")),
    say("book", "Ask the day.", edge("e_menu", "menu", "The user wants the menu.")),
    faq(cool_down=2)]}
PICKS = model(price="transition_to_faq", thanks="transition_to_back", book="transition_to_book",
              menu="transition_to_menu")


async def test_a_global_node_is_offered_everywhere_and_goes_back(make_parley: MakeParley) -> None:
    parley = await started(make_parley, FLOW, PICKS)
    assert await answered(parley, "what's the price?") == "<faq>"
    at_menu = parley.llm.requests[0]
    assert tools_of(at_menu) == ["transition_to_book", "transition_to_faq"]
    assert at_menu["tools"][1]["function"]["description"] == "The user asks about prices."
    # At the global node: its go-back condition, and not itself.
    asked = len(parley.llm.requests)
    assert await answered(parley, "thanks, clear") == "<menu>"
    assert tools_of(parley.llm.requests[asked]) == ["transition_to_back"]
    chat = await parley.chat_of()
    assert moves(chat) == [("menu", "faq", "global"), ("faq", "menu", "global_go_back")]
    assert chat["current_node"] == "menu"


async def test_a_global_node_cools_down_for_its_node_steps(make_parley: MakeParley) -> None:
    parley = await started(make_parley, FLOW, PICKS)
    await answered(parley, "price?")
    await answered(parley, "thanks")          # back at menu: one step since faq was left
    asked = len(parley.llm.requests)
    assert await answered(parley, "price again?") == "<menu>"
    assert tools_of(parley.llm.requests[asked]) == ["transition_to_book"]
    assert await answered(parley, "book") == "<book>"   # two steps: offered again
    asked = len(parley.llm.requests)
    assert await answered(parley, "price?") == "<faq>"
    assert tools_of(parley.llm.requests[asked]) == ["transition_to_menu", "transition_to_faq"]
    # Gone back to where the chat was when it entered: book.
    assert await answered(parley, "thanks") == "<book>"


async def test_a_normal_edge_out_of_a_global_node_forgets_the_way_back(make_parley: MakeParley) -> None:
    flow = {"nodes": [FLOW["nodes"][0], FLOW["nodes"][1],
                      {**faq(), "edges": [edge("e_faq_book", "book", "The user wants to book.")]}]}
    parley = await started(make_parley, flow, PICKS)
    await answered(parley, "price?")
    assert await answered(parley, "book it") == "<book>"
    asked = len(parley.llm.requests)
    await answered(parley, "thanks")   # no go-back from book: only book's own edge and the global node
    assert tools_of(parley.llm.requests[asked]) == ["transition_to_menu", "transition_to_faq"]


async def test_a_global_nodes_equations_are_evaluated_without_the_model(make_parley: MakeParley) -> None:
    flow = {"default_dynamic_variables": {"severity": "high"}, "nodes": [
        say("menu", "Offer help."),
        say("urgent", "Please call 911 now.", static=True, global_node_setting={
            "condition": {"type": "equation", "equations": [
                {"left": "{{severity}}", "operator": "==", "right": "high"}]},
            "go_back_conditions": [edge("e_calm", None, None, ("{{user_number}}", "exists", None))]})]}
    parley = await started(make_parley, flow, model())
    assert await answered(parley, "it hurts") == "Please call 911 now."
    assert parley.llm.requests == []
    # Its go-back condition is an equation too: the next text goes back, the model only speaking at menu.
    assert await answered(parley, "ok") == "<menu>"
    assert moves(await parley.chat_of()) == [("menu", "urgent", "global"), ("urgent", "menu", "global_go_back")]
    assert [tools_of(r) for r in parley.llm.requests] == [[]]


@pytest.mark.parametrize(("hours", "offered"), [("open", True), ("closed", False)])
async def test_an_equation_prompt_condition_is_offered_only_while_its_equations_hold(
    make_parley: MakeParley, hours: str, offered: bool,
) -> None:
    flow = {"default_dynamic_variables": {"hours": hours}, "nodes": [
        say("menu", "Offer help."),
        say("human", "A person will text you.", static=True, global_node_setting={
            "condition": {"type": "equation_prompt", "equations": [
                {"left": "{{hours}}", "operator": "==", "right": "open"}],
                "prompt_condition": {"type": "prompt", "prompt": "The user wants a person."}}})]}
    parley = await started(make_parley, flow, model(person="transition_to_human"))
    reply = await answered(parley, "a person please")
    assert reply == ("A person will text you." if offered else "<menu>")
    assert tools_of(parley.llm.requests[0]) == (["transition_to_human"] if offered else [])
