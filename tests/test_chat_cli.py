"""``parley chat AGENT_ID`` as a person runs it: a subprocess, lines on stdin, the conversation on stdout."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from .conftest import DEFAULT_NUMBERS, agent_file, redis_env, write_agents
from .fakes.openai import Call, Completion, FakeOpenAI, echo

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 10.0


@dataclass
class Finished:
    code: int
    out: str
    err: str


@pytest.fixture
def llm(fake_llm: FakeOpenAI) -> FakeOpenAI:
    """The conftest's fake OpenAI server, under this file's name for it."""
    return fake_llm


async def parley_chat(*args: str, stdin: str, redis_url: str, agents_dir: Path, llm: FakeOpenAI) -> Finished:
    """Run ``python -m service chat ARGS`` to completion; the fake LLM keeps answering in this loop."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "PARLEY_", "TWILIO_", "OPENAI_"))}
    env.update({**redis_env(redis_url), "PARLEY_AGENTS_DIR": str(agents_dir), "OPENAI_API_KEY": "sk-test",
                "OPENAI_BASE_URL": llm.url, "PARLEY_LLM_MAX_RETRIES": "0"})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", "chat", *args, cwd=REPO, env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin.encode()), TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return Finished(process.returncode, out.decode(), err.decode())


def agents(tmp_path: Path, **agent: Any) -> Path:
    directory = tmp_path / "agents"
    write_agents(directory, {"frontdesk": agent_file(**agent)}, DEFAULT_NUMBERS)
    return directory


async def chat_statuses(redis: aioredis.Redis) -> list[Any]:
    return [await redis.hget(key, "chat_status") async for key in redis.scan_iter(match="parley:{*}:chat:*")
            if ":" not in key.split(":chat:")[1]]


async def test_a_conversation_on_stdin_and_stdout_ends_the_chat(
    tmp_path: Path, redis: aioredis.Redis, redis_url: str, llm: FakeOpenAI,
) -> None:
    done = await parley_chat("frontdesk", stdin="hello there\n\n/end\n", redis_url=redis_url,
                             agents_dir=agents(tmp_path), llm=llm)

    assert done.code == 0, done.err
    assert done.out.splitlines() == ["agent> Hi, this is the front desk.", "agent> You said: hello there"]
    assert llm.user_texts() == ["", "hello there"]   # the opening, then one completion: the empty line was skipped
    assert await chat_statuses(redis) == ["ended"]
    assert "key_" not in done.out + done.err   # the run's API key is never shown


async def test_an_unknown_agent_is_an_api_error(
    tmp_path: Path, redis: aioredis.Redis, redis_url: str, llm: FakeOpenAI,
) -> None:
    done = await parley_chat("nobody", stdin="hello\n", redis_url=redis_url, agents_dir=agents(tmp_path), llm=llm)

    assert done.code == 2
    assert done.out == ""
    assert "agent 'nobody' not found" in done.err
    assert await chat_statuses(redis) == []


async def test_the_agent_ending_the_chat_ends_the_session(
    tmp_path: Path, redis: aioredis.Redis, redis_url: str, llm: FakeOpenAI,
) -> None:
    def respond(body: dict[str, Any]) -> Completion:
        messages = body["messages"]
        if messages[-1]["role"] == "user" and not any(m["role"] == "tool" for m in messages):
            return Completion(tool_calls=[Call("end_chat", "{}")])
        if messages[-1]["role"] == "tool":
            return Completion(content="Goodbye!")
        return echo(body)

    llm.respond = respond
    done = await parley_chat("frontdesk", stdin="that's all, thanks\nnever sent\n", redis_url=redis_url,
                             agents_dir=agents(tmp_path), llm=llm)

    assert done.code == 0, done.err
    lines = done.out.splitlines()
    assert lines[0] == "agent> Hi, this is the front desk."
    assert lines[1] == "  [tool end_chat {}]"
    assert lines[2].startswith("  [result: The chat will end after your next message.")
    assert lines[3:] == ["agent> Goodbye!", "(chat ended)"]
    assert "never sent" not in llm.user_texts()
    assert await chat_statuses(redis) == ["ended"]
