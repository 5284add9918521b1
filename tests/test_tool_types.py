"""Retell's chat tool types written the way Retell's API returns them: a custom function's rendered headers and
query, its response variables and long results; send_sms's destination, sender and content shapes; and
extract_dynamic_variable. Each runs end to end: a signed Twilio text, the fake LLM calling the tool, the reply."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import ValidationError

from service.agent.tools import MAX_RESULT_CHARS, pick
from service.retell.models import INFO_COLLECTION_TEXT, RetellLLM
from service.retell.unsupported import unsupported

from .conftest import AGENT_NUMBER, USER, MakeParley, agent_file, answered
from .fakes.openai import Call, Completion

NUMBERS = [{"phone_number": AGENT_NUMBER, "inbound_sms_agents": [{"agent_id": "frontdesk", "weight": 1}]}]


class Endpoint:
    """The business's function endpoint: records each request; answers ``answer`` as JSON (or ``text``)."""

    def __init__(self) -> None:
        self.requests: list[web.Request] = []
        self.bodies: list[Any] = []
        self.answer: Any = {}
        self.text: str | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(request)
        self.bodies.append(await request.json() if request.can_read_body else None)
        if self.text is not None:
            return web.Response(text=self.text)
        return web.json_response(self.answer)


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    found = Endpoint()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", found.handle)
    async with TestServer(app) as server:
        found.url = str(server.make_url("")).rstrip("/")
        yield found


def calls(*steps: tuple[str, dict[str, Any]]) -> Any:
    """The model calls each tool of ``steps`` in turn (one per completion), then answers with the last result."""
    def respond(body: dict[str, Any]) -> Completion:
        last_user = max(i for i, m in enumerate(body["messages"]) if m["role"] == "user")
        results = [m for m in body["messages"][last_user:] if m["role"] == "tool"]
        if len(results) < len(steps):
            name, arguments = steps[len(results)]
            return Completion(tool_calls=[Call(name, json.dumps(arguments), id=f"call_{len(results)}")])
        return Completion(content=f"Tool said: {results[-1]['content']}")
    return respond


def custom(url: str, **extra: Any) -> dict[str, Any]:
    return {"type": "custom", "name": "lookup", "description": "Look the customer up.", "url": url,
            "timeout_ms": 2000, "parameters": {"type": "object", "properties": {"day": {"type": "string"}}}, **extra}


async def test_custom_tool_headers_and_query_take_variables(make_parley: MakeParley, endpoint: Endpoint) -> None:
    tool = custom(endpoint.url + "/crm/{{account}}", method="GET", headers={"X-Account": "{{account}}",
                                                                           "X-Caller": "{{user_number}}"},
                  query_params={"phone": "{{user_number}}", "fixed": "yes"})
    parley = await make_parley(numbers=NUMBERS, agent=agent_file(retell_llm={
        "general_tools": [tool], "default_dynamic_variables": {"account": "acme 7"}}))
    parley.llm.respond = calls(("lookup", {"day": "Monday"}))
    await answered(parley, "who am I?")
    request = endpoint.requests[0]
    assert request.method == "GET"
    assert request.raw_path.split("?")[0] == "/crm/acme%207"   # a variable in the URL fills one path segment, encoded
    assert (request.headers["X-Account"], request.headers["X-Caller"]) == ("acme 7", USER)
    assert dict(request.query) == {"phone": USER, "fixed": "yes"}


async def test_a_rendered_header_that_cannot_be_sent_is_a_result(make_parley: MakeParley, endpoint: Endpoint) -> None:
    parley = await make_parley(numbers=NUMBERS, agent=agent_file(retell_llm={
        "general_tools": [custom(endpoint.url + "/x", headers={"X-Note": "{{note}}"})],
        "default_dynamic_variables": {"note": "a\r\nX-Injected: 1"}}))
    parley.llm.respond = calls(("lookup", {}))
    reply = await answered(parley, "hi")
    assert reply.startswith("Tool said: The tool's header X-Note could not be sent: the value contains a line break")
    assert endpoint.requests == []


async def test_response_variables_become_the_chats_variables(make_parley: MakeParley, endpoint: Endpoint) -> None:
    endpoint.answer = {"customer": {"name": "Ana", "tier": 2, "tags": ["vip"]}, "visits": [{"day": "Friday"}]}
    tool = custom(endpoint.url + "/crm", response_variables={
        "customer_name": "customer.name", "tier": "$.customer.tier", "tags": "customer.tags",
        "next_visit": "visits[0].day", "missing": "customer.email"})
    greeter = {"type": "custom", "name": "greet", "description": "Greet.", "timeout_ms": 2000,
               "url": endpoint.url + "/greet/{{customer_name}}"}
    parley = await make_parley(numbers=NUMBERS, agent=agent_file(retell_llm={
        "general_prompt": "Customer: {{customer_name}}.", "general_tools": [tool, greeter]}))
    # Within the turn, a later tool already sees the variables the first one yielded.
    parley.llm.respond = calls(("lookup", {}), ("greet", {}))
    await answered(parley, "hello")
    assert endpoint.requests[1].path == "/greet/Ana"
    chat = await parley.chat_of()
    assert chat["collected_dynamic_variables"] == {
        "customer_name": "Ana", "tier": "2", "tags": '["vip"]', "next_visit": "Friday"}
    # The next turn's prompt has them, and they survive in Redis across turns.
    parley.llm.respond = lambda body: Completion(content="ok")
    await answered(parley, "thanks")
    assert parley.llm.requests[-1]["messages"][0]["content"].startswith("Customer: Ana.")
    assert (await parley.chat_of())["collected_dynamic_variables"]["customer_name"] == "Ana"


async def test_a_result_is_kept_up_to_retells_15000_characters(make_parley: MakeParley, endpoint: Endpoint) -> None:
    endpoint.text = "x" * 20_000
    parley = await make_parley(numbers=NUMBERS, agent=agent_file(retell_llm={
        "general_tools": [custom(endpoint.url + "/big")]}))
    parley.llm.respond = calls(("lookup", {}))
    await answered(parley, "hi")
    result = next(m for m in parley.llm.requests[-1]["messages"] if m["role"] == "tool")["content"]
    assert result == "x" * MAX_RESULT_CHARS and MAX_RESULT_CHARS == 15_000


def test_json_paths() -> None:
    document = {"a": {"b": [10, {"c": None}]}, "d.e": 1}
    assert pick(document, "a.b[0]") == 10
    assert pick(document, "$.a.b[1].c") is None
    assert pick(document, "a") == {"b": [10, {"c": None}]}
    for absent in ("a.x", "a.b[2]", "a.b.c", "a.b[0].c"):
        with pytest.raises(KeyError):
            pick(document, absent)
    with pytest.raises(ValidationError, match="is not a JSON path"):
        RetellLLM.model_validate({"general_tools": [custom("https://x.example/", response_variables={"v": "a..b"})]})


def sms(**extra: Any) -> dict[str, Any]:
    return {"type": "send_sms", "name": "text_it", "description": "Text it.",
            "sms_content": {"type": "predefined", "text": "Your code is 42"}, **extra}


@pytest.mark.parametrize(("tool", "to", "body"), [
    (sms(sms_destination={"type": "customer_number"}), USER, "Your code is 42"),
    (sms(sms_destination={"type": "phone_number", "phone_number": "{{manager}}"}), "+15035550177", "Your code is 42"),
    (sms(to_number="+15035550178"), "+15035550178", "Your code is 42"),   # Parley's older field
    (sms(sms_content={"text": "No type given"}), USER, "No type given"),   # type is optional in the SDK
    (sms(sms_content={"type": "template", "template": "info_collection"}), USER, INFO_COLLECTION_TEXT),
    (sms(sms_sender={"type": "current_number"}), USER, "Your code is 42"),
])
async def test_send_sms_as_retell_writes_it(make_parley: MakeParley, tool: dict[str, Any], to: str, body: str) -> None:
    parley = await make_parley(numbers=NUMBERS, agent=agent_file(retell_llm={
        "general_tools": [tool], "default_dynamic_variables": {"manager": "+15035550177"}}))
    parley.llm.respond = calls(("text_it", {}))
    assert await answered(parley, "text me") == "Tool said: Sent successfully"
    sent = parley.twilio.messages[0]
    assert (sent.from_, sent.to, sent.body) == (AGENT_NUMBER, to, body)


def test_send_sms_content_must_say_what_to_send() -> None:
    with pytest.raises(ValidationError, match="needs text \\(predefined\\), a prompt \\(inferred\\) or a template"):
        RetellLLM.model_validate({"general_tools": [sms(sms_content={})]})
    with pytest.raises(ValidationError, match="a phone_number destination needs phone_number"):
        RetellLLM.model_validate({"general_tools": [sms(sms_destination={"type": "phone_number"})]})
    with pytest.raises(ValidationError, match=r"'555-0100' is not an E\.164 number"):
        RetellLLM.model_validate({"general_tools": [sms(sms_destination={"type": "phone_number",
                                                                         "phone_number": "555-0100"})]})
    RetellLLM.model_validate({"general_tools": [sms(sms_destination={   # as Retell allows
        "type": "phone_number", "phone_number": "555-0100", "ignore_e164_validation": True})]})
    long_code = RetellLLM.model_validate({"general_tools": [sms(sms_sender={"type": "retell_long_code"})]})
    assert unsupported(long_code) == ["general_tools.0 (text_it).sms_sender: retell_long_code is Retell's shared "
                                      "number; Parley sends from the chat's number"]
    llm = RetellLLM.model_validate({"general_tools": [sms(sms_content={"prompt": "Write the address."})]})
    assert llm.general_tools[0].sms_content.type == "inferred"   # type: ignore[union-attr]


EXTRACT = {"type": "extract_dynamic_variable", "name": "record", "description": "Record the booking details.",
           "variables": [
               {"type": "string", "name": "pet_name", "description": "The pet's name", "examples": ["Rex"]},
               {"type": "enum", "name": "size", "description": "How big", "choices": ["small", "large"]},
               {"type": "boolean", "name": "first_visit", "description": "First visit?", "required": True},
               {"type": "number", "name": "age", "description": "Age in years"},
           ]}


async def test_extract_dynamic_variable_fills_the_chats_variables(make_parley: MakeParley) -> None:
    parley = await make_parley(numbers=NUMBERS, agent=agent_file(retell_llm={
        "general_prompt": "Pet: {{pet_name}} ({{size}}, {{age}}).", "general_tools": [EXTRACT]}))
    parley.llm.respond = calls(("record", {"pet_name": "Rex", "size": "large", "first_visit": True, "age": 3.0}))
    assert await answered(parley, "Rex, big dog, 3, never been") == (
        "Tool said: Recorded pet_name=Rex, size=large, first_visit=true, age=3.")
    schema = parley.llm.requests[0]["tools"][0]["function"]["parameters"]
    assert schema["properties"]["size"] == {"type": "string", "enum": ["small", "large"], "description": "How big"}
    assert schema["properties"]["pet_name"]["description"] == "The pet's name Examples: Rex"
    assert schema["properties"]["first_visit"]["type"] == "boolean" and schema["required"] == ["first_visit"]
    chat = await parley.chat_of()
    assert chat["collected_dynamic_variables"] == {"pet_name": "Rex", "size": "large", "first_visit": "true",
                                                   "age": "3"}
    parley.llm.respond = lambda body: Completion(content="ok")
    await answered(parley, "thanks")
    assert parley.llm.requests[-1]["messages"][0]["content"].startswith("Pet: Rex (large, 3).")


async def test_extract_refuses_values_of_the_wrong_type(make_parley: MakeParley) -> None:
    parley = await make_parley(numbers=NUMBERS, agent=agent_file(retell_llm={"general_tools": [EXTRACT]}))
    parley.llm.respond = calls(("record", {"pet_name": "Rex", "size": "medium", "age": "three"}))
    reply = await answered(parley, "Rex")
    assert reply == ("Tool said: Recorded pet_name=Rex. Not recorded: size must be one of small, large, not "
                     '"medium"; first_visit is required; age must be a number, not "three".')
    assert (await parley.chat_of())["collected_dynamic_variables"] == {"pet_name": "Rex"}
    result = (await parley.chat_of())["message_with_tool_calls"][2]
    assert result["role"] == "tool_call_result" and result["successful"] is False
