"""The LLM tool loop: custom HTTP functions, the end tool, and bad tool input."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from .conftest import USER, MakeParley, agent_file
from .fakes.openai import Call, Completion
from .test_events import retell_verify


@pytest.fixture
async def tool_server() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A business's function endpoint: records bodies; /slow never answers in time; /fail is a 500."""
    received: list[dict[str, Any]] = []

    async def book(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({"confirmation": "BK-1042", "day": received[-1]["args"]["day"]})

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({})

    async def fail(request: web.Request) -> web.Response:
        return web.Response(status=500, text="database down")

    app = web.Application()
    app.router.add_post("/book", book)
    app.router.add_post("/slow", slow)
    app.router.add_post("/fail", fail)
    async with TestServer(app) as server:
        yield str(server.make_url("")).rstrip("/"), received


def tool(name: str, url: str, **extra: Any) -> dict[str, Any]:
    return {"type": "custom", "name": name, "description": "Book a visit.", "url": url, "timeout_ms": 1000,
            "parameters": {"type": "object", "properties": {"day": {"type": "string"}}, "required": ["day"]},
            **extra}


def call_then_answer(name: str, arguments: str) -> Any:
    """First completion calls the tool; the next one quotes the tool result back to the user."""
    def respond(body: dict[str, Any]) -> Completion:
        results = [m for m in body["messages"] if m["role"] == "tool"]
        if not results:
            return Completion(tool_calls=[Call(name, arguments)])
        return Completion(content=f"Result: {results[-1]['content']}")
    return respond


async def test_custom_tool_round_trip(make_parley: MakeParley, tool_server: tuple[str, list[Any]]) -> None:
    url, received = tool_server
    parley = await make_parley(agent=agent_file(retell_llm={"general_tools": [tool("book_visit", url + "/book")]}))
    parley.llm.respond = call_then_answer("book_visit", '{"day": "Friday"}')
    await parley.text("book me friday")
    sent = await parley.twilio.wait_for(1)
    assert json.loads(sent[0].body.removeprefix("Result: ")) == {"confirmation": "BK-1042", "day": "Friday"}
    body = received[0]
    assert body["name"] == "book_visit" and body["args"] == {"day": "Friday"}
    assert body["chat"]["chat_type"] == "sms_chat" and body["chat"]["from_number"] == USER
    definitions = parley.llm.requests[0]["tools"]
    assert definitions[0]["function"]["name"] == "book_visit"
    assert definitions[0]["function"]["parameters"]["required"] == ["day"]
    await parley.idle()
    roles = [m["role"] for m in (await parley.chat_of())["message_with_tool_calls"]]
    assert roles == ["user", "tool_call_invocation", "tool_call_result", "agent"]


@pytest.mark.parametrize(("path", "arguments", "expected"), [
    ("/slow", '{"day": "Friday"}', "did not answer within 1000 ms"),
    ("/fail", '{"day": "Friday"}', "HTTP 500: database down"),
    ("/book", "not json", "not valid JSON"),
])
async def test_tool_failures_become_results_the_llm_reads(
    make_parley: MakeParley, tool_server: tuple[str, list[Any]], path: str, arguments: str, expected: str,
) -> None:
    url, _ = tool_server
    parley = await make_parley(agent=agent_file(retell_llm={"general_tools": [tool("book_visit", url + path)]}))
    parley.llm.respond = call_then_answer("book_visit", arguments)
    await parley.text("book me friday")
    sent = await parley.twilio.wait_for(1)
    assert expected in sent[0].body
    await parley.idle()
    result = (await parley.chat_of())["message_with_tool_calls"][2]
    assert result["role"] == "tool_call_result" and result["successful"] is False


async def test_end_tool_ends_the_chat_after_the_goodbye(make_parley: MakeParley) -> None:
    parley = await make_parley()

    def respond(body: dict[str, Any]) -> Completion:
        if any(m["role"] == "tool" for m in body["messages"]):
            return Completion(content="Bye, have a great day!")
        return Completion(tool_calls=[Call("end_chat", "{}")])

    parley.llm.respond = respond
    await parley.text("that's all, thanks")
    sent = await parley.twilio.wait_for(1)
    assert sent[0].body == "Bye, have a great day!"
    await parley.idle()
    [chat_id] = await parley.chat_ids()
    chat = await (await parley.api("GET", f"/get-chat/{chat_id}")).json()
    assert chat["chat_status"] == "ended" and chat["disconnection_reason"] == "agent_hangup"
    assert chat["end_timestamp"] >= chat["start_timestamp"]
    # The next text starts a new chat.
    parley.llm.respond = lambda body: Completion(content="Hello again")
    await parley.text("one more thing")
    await parley.twilio.wait_for(2)
    await parley.idle()
    assert (await parley.chat_of())["chat_id"] != chat_id


async def test_a_model_that_loops_on_tools_is_cut_off(make_parley: MakeParley, tool_server: tuple[str, Any]) -> None:
    url, received = tool_server
    parley = await make_parley(agent=agent_file(retell_llm={"general_tools": [tool("book_visit", url + "/book")]}))

    def respond(body: dict[str, Any]) -> Completion:
        if body.get("tool_choice") == "none":
            return Completion(content="Let me get back to you.")
        return Completion(tool_calls=[Call("book_visit", '{"day": "Monday"}')])

    parley.llm.respond = respond
    await parley.text("book")
    sent = await parley.twilio.wait_for(1)
    assert sent[0].body == "Let me get back to you."
    assert len(received) == 5 and len(parley.llm.requests) == 6


async def test_a_tool_request_is_signed_with_the_webhook_key(make_parley: MakeParley) -> None:
    received: list[tuple[str, str]] = []

    async def book(request: web.Request) -> web.Response:
        received.append(((await request.read()).decode(), request.headers.get("X-Retell-Signature", "")))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/book", book)
    async with TestServer(app) as server:
        url = str(server.make_url("/book"))
        parley = await make_parley(agent=agent_file(retell_llm={"general_tools": [tool("book_visit", url)]}),
                                   api_keys=[], scoped_api_keys={"admin-key": "admin", "hook-key": "webhook"})
        parley.llm.respond = call_then_answer("book_visit", '{"day": "Friday"}')
        await parley.text("book me friday")
        await parley.twilio.wait_for(1)
    [(body, signature)] = received
    assert retell_verify(body, "hook-key", signature), "retell-sdk rejects it"
    assert not retell_verify(body, "admin-key", signature)
