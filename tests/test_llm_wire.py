"""Parley's chat-completions request (``service/agent/completions.py``) against the official ``openai`` client's:
the same body on the wire, the same URL and key, and the client's retry policy, against the fake OpenAI server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import unused_port
from openai import AsyncOpenAI

from service.agent.completions import CompletionError, Completions, env_proxy, retry_delay_s, should_retry
from service.agent.llm import LLM
from service.errors import LLMError
from service.metrics import Metrics
from service.settings import Settings

from .fakes.openai import Completion, FakeOpenAI, HttpError

TOOLS = [{"type": "function", "function": {"name": "end_chat", "description": "End the chat.",
                                           "parameters": {"type": "object", "properties": {}}}}]
MESSAGES = [{"role": "system", "content": "You are “Sunny”: be brief — and kind. Ünïcode ✓ 🙂"},
            {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "What's \"up\"?\n"}]
SCHEMA = {"type": "json_schema", "json_schema": {"name": "analysis", "strict": True, "schema": {
    "type": "object", "properties": {"chat_summary": {"type": "string"}}, "required": ["chat_summary"],
    "additionalProperties": False}}}


def settings(url: str, retries: int = 0) -> Settings:
    return Settings.model_validate({"openai_api_key": "sk-test", "openai_base_url": url, "llm_max_retries": retries,
                                    "llm_timeout_s": 5})


@pytest.fixture
async def llm(fake_llm: FakeOpenAI) -> AsyncIterator[LLM]:
    client = LLM(settings(fake_llm.url), Metrics())
    yield client
    await client.close()


@pytest.mark.parametrize("case", ["plain", "tools", "required tool", "no tools allowed", "analysis"])
async def test_the_body_on_the_wire_is_the_openai_clients(fake_llm: FakeOpenAI, llm: LLM, case: str) -> None:
    kwargs: dict[str, Any] = {"model": "gpt-4.1", "messages": MESSAGES, "temperature": 0.2}
    require = None
    if case != "plain" and case != "analysis":
        kwargs |= {"tools": TOOLS, "tool_choice": {"tools": "auto", "required tool": {
            "type": "function", "function": {"name": "end_chat"}}, "no tools allowed": "none"}[case]}
        require = "end_chat" if case == "required tool" else None
    if case == "analysis":
        kwargs["response_format"] = SCHEMA
    fake_llm.analyze = lambda _: Completion('{"chat_summary": "ok"}')
    official = AsyncOpenAI(api_key="sk-test", base_url=fake_llm.url, max_retries=0)
    try:
        await official.chat.completions.create(**kwargs)
    finally:
        await official.close()
    await llm.complete(model="gpt-4.1", temperature=0.2, messages=MESSAGES, tools=TOOLS if "tools" in kwargs else [],
                       allow_tools=case != "no tools allowed", require=require,
                       response_format=kwargs.get("response_format"))
    (theirs, their_headers), (ours, our_headers) = fake_llm.wire
    assert orjson.loads(ours) == orjson.loads(theirs)
    for header in ("Authorization", "Content-Type", "Accept"):
        assert our_headers[header] == their_headers[header], header


async def test_what_the_client_retries_is_retried_and_answers(fake_llm: FakeOpenAI) -> None:
    answers: list[Completion | HttpError] = [HttpError(500, retry_after_ms=10), HttpError(429, retry_after_ms=10),
                                             HttpError(408, retry_after_ms=10), Completion("at last")]
    fake_llm.respond = lambda _: answers.pop(0)
    client = LLM(settings(fake_llm.url, retries=3), Metrics())
    try:
        completion = await client.complete(model="m", temperature=0, messages=MESSAGES, tools=[])
    finally:
        await client.close()
    assert completion.content == "at last" and len(fake_llm.wire) == 4


@pytest.mark.parametrize(("answer", "kind", "tries"), [
    (HttpError(400, "bad request"), "BadRequestError", 1),              # never retried
    (HttpError(422), "UnprocessableEntityError", 1),
    (HttpError(500, should_retry=False), "InternalServerError", 1),     # the server said not to
    (HttpError(400, should_retry=True, retry_after_ms=10), "BadRequestError", 2),   # ... or to
    (HttpError(503, retry_after_ms=10), "InternalServerError", 2),     # retried once, then given up
])
async def test_failures_are_named_as_the_client_names_them(fake_llm: FakeOpenAI, answer: HttpError, kind: str,
                                                           tries: int) -> None:
    fake_llm.respond = lambda _: answer
    client = LLM(settings(fake_llm.url, retries=1), Metrics())
    try:
        with pytest.raises(LLMError, match=f"LLM call failed: {kind}: Error code: {answer.status} - .*"
                                           f"{answer.message}"):
            await client.complete(model="m", temperature=0, messages=MESSAGES, tools=[])
    finally:
        await client.close()
    assert len(fake_llm.wire) == tries


async def failure(base_url: str, timeout_s: float) -> str:
    """What a request to ``base_url`` fails with (the openai client's name for it)."""
    completions = Completions(api_key="sk-test", base_url=base_url, timeout_s=timeout_s, max_retries=0)
    try:
        with pytest.raises(CompletionError) as caught:
            await completions.create({"model": "m", "messages": MESSAGES})
    finally:
        await completions.close()
    return caught.value.kind


async def test_a_slow_or_unreachable_server_is_a_timeout_or_a_connection_error(fake_llm: FakeOpenAI) -> None:
    fake_llm.delay_s = 2.0
    assert await failure(fake_llm.url, timeout_s=0.2) == "APITimeoutError"
    assert await failure(f"http://127.0.0.1:{unused_port()}/v1", timeout_s=1) == "APIConnectionError"


def test_the_retry_policy_is_the_clients() -> None:
    assert should_retry(409, {}) and should_retry(502, {}) and not should_retry(404, {})
    assert not should_retry(500, {"retry-after": "121"})   # longer than two minutes: not waited for
    assert retry_delay_s(0, {"retry-after-ms": "1500"}) == 1.5
    assert retry_delay_s(0, {"retry-after": "3"}) == 3.0
    for taken, most in ((0, 0.5), (1, 1.0), (2, 2.0), (5, 8.0)):   # 0.5 s doubling to 8 s, up to 25 % less
        assert most * 0.75 <= retry_delay_s(taken, None) <= most


def test_the_environments_proxy_is_used_unless_the_host_is_excluded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "llm.internal")
    assert env_proxy("https://api.openai.com/v1/chat/completions") == "http://proxy.internal:3128"
    assert env_proxy("https://llm.internal/v1/chat/completions") is None
    assert env_proxy("http://127.0.0.1:8000/v1/chat/completions") is None   # no HTTP_PROXY
