"""Conversation-flow agents answering texts (``service.agent.flow``): the walk from node to node through signed
Twilio webhooks and the API, the transitions recorded as Retell records them, the place kept in Redis across turns
and processes, equations judged without the model, Retell's always, else and skip-response edges, the bound on a
turn's nodes, the fallback when the model fails, and each node's own model."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from service.agent.flow_place import tool_names

from .conftest import AGENT_NUMBER, DEFAULT_NUMBERS, USER, MakeParley, Parley, answered, api_json, write_agents
from .fakes.openai import Call, Completion, FakeOpenAI, HttpError, last_user_text
from .test_chat_cli import parley_chat

Responder = Callable[[dict[str, Any]], Completion | HttpError]


def flow_agent(flow: dict[str, Any], **agent: Any) -> dict[str, Any]:
    """An agent file answering with ``flow``, inline."""
    return {"agent_name": "Sunny Dental", "burst_window_ms": 0, "end_chat_after_silence_ms": 3_600_000,
            "conversation_flow": flow, **agent}


def say(node_id: str, text: str, *edges: dict[str, Any], static: bool = False, **fields: Any) -> dict[str, Any]:
    """A conversation node: a prompt (``[node_id]`` in it, so the fake model knows where it is) or static text."""
    instruction = {"type": "static_text", "text": text} if static else {"type": "prompt",
                                                                         "text": f"[{node_id}] {text}"}
    return {"id": node_id, "type": "conversation", "instruction": instruction, "edges": list(edges), **fields}


def edge(edge_id: str, to: str | None, prompt: str | None = None, *equations: tuple[str, str, str | None],
         join: str = "&&") -> dict[str, Any]:
    """An edge to ``to``: a prompt condition, else equations ``(left, operator, right)``."""
    condition: dict[str, Any] = {"type": "prompt", "prompt": prompt} if prompt else {
        "type": "equation", "operator": join,
        "equations": [{"left": left, "operator": op, **({"right": right} if right is not None else {})}
                      for left, op, right in equations]}
    return {"id": edge_id, "transition_condition": condition,
            **({"destination_node_id": to} if to is not None else {})}


def prompt_of(body: dict[str, Any]) -> str:
    return str(body["messages"][0]["content"])


def tools_of(body: dict[str, Any]) -> list[str]:
    return [tool["function"]["name"] for tool in body.get("tools", [])]


def tag(body: dict[str, Any]) -> str:
    """The node the model is asked at: the last ``[tag]`` in its prompt."""
    found = re.findall(r"\[(\w+)\]", prompt_of(body))
    return found[-1] if found else "?"


def model(**moves: str) -> Responder:
    """The fake model: when the user's last text holds a word of ``moves`` and the transition tool it names is
    offered, it calls it; asked to judge (``none_of_these`` offered), it answers none of these; else it answers
    ``<tag>``, the node it is at."""
    def respond(body: dict[str, Any]) -> Completion | HttpError:
        names, text = tools_of(body), last_user_text(body)
        for word, tool in moves.items():
            if word in text and tool in names:
                return Completion(tool_calls=[Call(tool, "{}")])
        if "none_of_these" in names:
            return Completion(tool_calls=[Call("none_of_these", "{}")])
        return Completion(content=f"<{tag(body)}>")
    return respond


def moves(chat: dict[str, Any]) -> list[tuple[str | None, str | None, str]]:
    """The chat's node transitions: (former node id, new node id, transition type)."""
    return [(m.get("former_node_id"), m.get("new_node_id"), m["transition_type"])
            for m in chat["message_with_tool_calls"] if m["role"] == "node_transition"]


async def started(make_parley: MakeParley, flow: dict[str, Any], responder: Responder, **agent: Any) -> Parley:
    parley = await make_parley(agent=flow_agent(flow, **agent))
    parley.llm.respond = responder
    return parley


BOOKING: dict[str, Any] = {
    "global_prompt": "You are Sunny Dental's assistant.",
    "start_node_id": "greet",
    "nodes": [
        say("greet", "Hi {{user_number}}! This is Sunny Dental.", edge("e_book", "ask_day", "The user wants to book."),
            static=True, name="Greeting"),
        say("ask_day", "Ask which day suits {{user_number}}. Now at {{current_node}}, before {{previous_node}}.",
            edge("e_day", "bye", "The user named a day."), name="Ask day"),
        {"id": "bye", "name": "Goodbye", "type": "end", "instruction": {"type": "static_text", "text": "See you!"}},
    ],
}
BOOKS = model(book="transition_to_ask_day", Tuesday="transition_to_bye")


async def test_a_flow_walks_from_node_to_node_and_records_each_move(make_parley: MakeParley) -> None:
    parley = await started(make_parley, BOOKING, BOOKS)
    # The first text is judged at the start node; nothing moves, so its static text is said as written.
    assert await answered(parley, "hello") == f"Hi {USER}! This is Sunny Dental."
    [judged] = parley.llm.requests
    assert tools_of(judged) == ["transition_to_ask_day", "none_of_these"] and judged["tool_choice"] == "required"
    assert judged["tools"][0]["function"]["description"] == "The user wants to book."
    assert prompt_of(judged).startswith("You are Sunny Dental's assistant.\n\nHi +14155550123! This is Sunny")
    # A transition the model calls: the destination speaks in the same turn, with its own prompt and no tools.
    assert await answered(parley, "I want to book") == "<ask_day>"
    at_greet, at_ask_day = parley.llm.requests[1:]
    assert tools_of(at_greet) == ["transition_to_ask_day"] and at_greet["tool_choice"] == "auto"
    assert "Ask which day suits +14155550123. Now at Ask day, before Greeting." in prompt_of(at_ask_day)
    assert tools_of(at_ask_day) == []
    chat = await parley.chat_of()
    assert chat["current_node"] == "Ask day"
    transition = next(m for m in chat["message_with_tool_calls"] if m["role"] == "node_transition")
    assert transition == {**transition, "former_node_id": "greet", "former_node_name": "Greeting",
                          "new_node_id": "ask_day", "new_node_name": "Ask day", "transition_type": "normal"}
    assert [m["role"] for m in chat["message_with_tool_calls"]] == ["user", "agent", "user", "node_transition",
                                                                    "agent"]
    # An end node says its closing text and ends the chat.
    assert await answered(parley, "Tuesday") == "See you!"
    chat = await api_json(parley, "GET", f"/get-chat/{chat['chat_id']}")
    assert (chat["chat_status"], chat["disconnection_reason"], chat["current_node"]) == (
        "ended", "agent_hangup", "Goodbye")
    assert moves(chat) == [("greet", "ask_day", "normal"), ("ask_day", "bye", "normal")]


async def test_the_place_survives_turns_and_processes(make_parley: MakeParley) -> None:
    parley = await started(make_parley, BOOKING, BOOKS)
    await answered(parley, "I want to book")
    other = await make_parley(agent=flow_agent(BOOKING))   # another process on the same Redis
    other._sid = parley._sid   # new MessageSids: the first one's again would be a duplicate
    await parley.client.close()
    other.llm.respond = BOOKS
    asked = len(other.llm.requests)
    assert await answered(other, "maybe") == "<ask_day>"   # still at ask_day: its prompt, its edge offered
    assert [tools_of(r) for r in other.llm.requests[asked:]] == [["transition_to_bye"]]
    assert await answered(other, "Tuesday") == "See you!"


EQUATIONS: dict[str, Any] = {"nodes": [
    say("greet", "Greet.", edge("e_book", "ask_day", "The user wants to book."),
        edge("e_gold", "gold", None, ("{{tier}}", "==", "gold"), ("{{visits}}", ">", "3"))),
    say("ask_day", "Ask the day."),
    say("gold", "Welcome back, gold member {{name}}.", static=True)]}


@pytest.mark.parametrize(("variables", "reply", "asked"), [
    ({"tier": "gold", "visits": "12", "name": "Ana"}, "Welcome back, gold member Ana.", []),
    ({"tier": "gold", "visits": "2"}, "<ask_day>", ["greet", "ask_day"]),   # the equations fail: the model judges
    ({}, "<ask_day>", ["greet", "ask_day"]),
])
async def test_equations_are_judged_before_the_model_and_without_it(
    make_parley: MakeParley, variables: dict[str, str], reply: str, asked: list[str],
) -> None:
    parley = await started(make_parley, {**EQUATIONS, "default_dynamic_variables": variables},
                           model(book="transition_to_ask_day"))
    assert await answered(parley, "I want to book") == reply
    assert [tag(r) for r in parley.llm.requests] == asked
    assert moves(await parley.chat_of()) == [("greet", "gold" if not asked else "ask_day", "normal")]


SKIPS: dict[str, Any] = {"nodes": [
    say("intro", "Welcome.", static=True, skip_response_edge=edge("e_skip", "menu", "Skip.")),
    say("menu", "Offer the menu.", always_edge=edge("e_always", "pick", "Always.")),
    say("pick", "Ask what they want.", edge("e_pizza", "pizza", "The user wants pizza."),
        else_edge=edge("e_else", "other", "Else.")),
    say("other", "We only have pizza.", static=True, skip_response_edge=edge("e_back", "pick", "Back.")),
    say("pizza", "Pizza it is.", static=True),
]}


async def test_skip_response_always_and_else_edges(make_parley: MakeParley) -> None:
    parley = await started(make_parley, SKIPS, model(pizza="transition_to_pizza"))
    # skip_response_edge: the static text, then at once the next node, both in the one reply.
    assert await answered(parley, "hi") == "Welcome.\n\n<menu>"
    assert [tag(r) for r in parley.llm.requests] == ["menu"]
    # always_edge: the next text moves along it, no edge judged at menu.
    asked = len(parley.llm.requests)
    assert await answered(parley, "whatever") == "<pick>"
    assert [(tag(r), tools_of(r)) for r in parley.llm.requests[asked:]] == [("pick", [])]
    # else_edge: the model judges the edges; none holds, so the else edge is taken.
    asked = len(parley.llm.requests)
    assert await answered(parley, "sushi") == "We only have pizza.\n\n<pick>"
    judged = parley.llm.requests[asked]
    assert (tools_of(judged), judged["tool_choice"]) == (["transition_to_pizza", "none_of_these"], "required")
    assert await answered(parley, "pizza then") == "Pizza it is."
    assert moves(await parley.chat_of()) == [
        ("intro", "menu", "normal"), ("menu", "pick", "normal"), ("pick", "other", "normal"),
        ("other", "pick", "normal"), ("pick", "pizza", "normal")]


async def test_a_turn_that_loops_ends_with_the_fallback(make_parley: MakeParley) -> None:
    flow = {"nodes": [{"id": "a", "type": "branch", "else_edge": edge("e_a", "b", "Else.")},
                      {"id": "b", "type": "branch", "else_edge": edge("e_b", "a", "Else.")}]}
    parley = await started(make_parley, flow, model(), fallback_message="Sorry, one moment.")
    assert await answered(parley, "hi") == "Sorry, one moment."
    chat = await parley.chat_of()
    assert len(moves(chat)) == 20 and chat["chat_status"] == "ongoing"
    assert chat["current_node"] in ("a", "b")
    assert parley.llm.requests == []


async def test_when_the_model_fails_the_fallback_is_sent_and_the_chat_stays(make_parley: MakeParley) -> None:
    parley = await started(make_parley, BOOKING, BOOKS, fallback_message="Sorry, one moment.")
    await answered(parley, "I want to book")
    parley.llm.respond = lambda body: HttpError(500)
    assert await answered(parley, "Tuesday") == "Sorry, one moment."
    chat = await parley.chat_of()
    assert (chat["current_node"], chat["chat_status"]) == ("Ask day", "ongoing")
    assert moves(chat) == [("greet", "ask_day", "normal")]
    parley.llm.respond = BOOKS
    assert await answered(parley, "Tuesday") == "See you!"   # the next text goes on from where the chat was


async def test_each_node_may_have_its_own_model(make_parley: MakeParley) -> None:
    flow = {"model_config": {"primary": {"model": "gpt-flow"}, "temperature": 0.3}, "nodes": [
        say("greet", "Greet.", edge("e_book", "ask_day", "The user wants to book.")),
        say("ask_day", "Ask the day.", edge("e_day", "older", "A day."),
            model_config={"primary": {"model": "gpt-day"}, "temperature": 0.9}),
        say("older", "Confirm.", model_choice={"type": "cascading", "model": "gpt-choice"})]}
    parley = await started(make_parley, flow, model(book="transition_to_ask_day", Tuesday="transition_to_older"))
    await answered(parley, "I want to book")
    await answered(parley, "Tuesday")
    assert [(tag(r), r["model"], r["temperature"]) for r in parley.llm.requests] == [
        ("greet", "gpt-flow", 0.3), ("ask_day", "gpt-day", 0.9), ("ask_day", "gpt-day", 0.9),
        ("older", "gpt-choice", 0.3)]


API_BOOKING = {**BOOKING, "nodes": [say("greet", "Hi! This is Sunny Dental.", *BOOKING["nodes"][0]["edges"],
                                        static=True, name="Greeting"), *BOOKING["nodes"][1:]]}


async def test_an_api_chat_opens_at_the_start_node_and_walks(make_parley: MakeParley) -> None:
    parley = await started(make_parley, API_BOOKING, BOOKS)
    chat = await api_json(parley, "POST", "/create-chat", 201, json={"agent_id": "frontdesk"})
    assert [(m["role"], m["content"]) for m in chat["message_with_tool_calls"]] == [
        ("agent", "Hi! This is Sunny Dental.")]
    assert chat["current_node"] == "Greeting"
    answer = await api_json(parley, "POST", "/create-chat-completion", 201,
                            json={"chat_id": chat["chat_id"], "content": "can I book?"})
    assert [m["role"] for m in answer["messages"]] == ["node_transition", "agent"]
    assert answer["messages"][1]["content"] == "<ask_day>"
    # The static text was said at the opening: at the next text, the model answers at the node, from it.
    at_greet = parley.llm.requests[0]
    assert "Hi! This is Sunny Dental." in prompt_of(at_greet) and tools_of(at_greet) == ["transition_to_ask_day"]
    assert [tag(r) for r in parley.llm.requests[1:]] == ["ask_day"]
    stored = await api_json(parley, "GET", f"/get-chat/{chat['chat_id']}")
    assert stored["current_node"] == "Ask day"


async def test_an_outbound_sms_chat_opens_at_the_start_node(make_parley: MakeParley) -> None:
    parley = await started(make_parley, BOOKING, BOOKS)
    await api_json(parley, "POST", "/create-sms-chat", json={"from_number": AGENT_NUMBER, "to_number": USER,
                                                             "override_agent_id": "frontdesk"})
    assert [m.body for m in parley.twilio.messages] == [f"Hi {USER}! This is Sunny Dental."]
    assert (await parley.chat_of())["current_node"] == "Greeting"
    assert await answered(parley, "I'd like to book") == "<ask_day>"


async def test_a_text_written_from_a_prompt_is_written_at_the_chats_node(make_parley: MakeParley) -> None:
    parley = await started(make_parley, BOOKING, BOOKS)
    await answered(parley, "I want to book")
    parley.llm.respond = lambda body: Completion(content=f"Reminder from {tag(body)}.")
    await api_json(parley, "POST", "/send-sms", json={"from_number": AGENT_NUMBER, "to_number": USER,
                                                      "prompt": "Remind them to pick a day."})
    assert parley.twilio.messages[-1].body == "Reminder from ask_day."
    written = parley.llm.requests[-1]
    assert tools_of(written) == [] and "Instructions: Remind them to pick a day." in prompt_of(written)
    chat = await parley.chat_of()
    assert chat["current_node"] == "Ask day" and moves(chat) == [("greet", "ask_day", "normal")]
    parley.llm.respond = BOOKS
    assert await answered(parley, "Tuesday") == "See you!"


async def test_parley_chat_walks_a_flow_in_the_terminal(
    tmp_path: Path, redis: aioredis.Redis, redis_url: str, fake_llm: FakeOpenAI,
) -> None:
    directory = tmp_path / "agents"
    write_agents(directory, {"frontdesk": flow_agent(API_BOOKING)}, DEFAULT_NUMBERS)
    fake_llm.respond = BOOKS
    done = await parley_chat("frontdesk", stdin="I want to book\nTuesday\n", redis_url=redis_url,
                             agents_dir=directory, llm=fake_llm)
    assert done.code == 0, done.err
    assert done.out.splitlines() == [
        "agent> Hi! This is Sunny Dental.", "  [node Greeting -> Ask day]", "agent> <ask_day>",
        "  [node Ask day -> Goodbye]", "agent> See you!", "(chat ended)"]


def test_transition_tool_names_are_ones_openai_accepts() -> None:
    names = tool_names(["ask_day", "ask day", "ask_day", "x" * 100, "émoji ✓", "", "/"])
    assert names[:3] == ["transition_to_ask_day", "transition_to_ask_day_2", "transition_to_ask_day_3"]
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name) for name in names) and len(set(names)) == len(names)
    assert names[4:] == ["transition_to_moji", "transition_to_node", "transition_to_node_2"]
