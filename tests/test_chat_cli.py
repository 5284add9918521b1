"""``parley chat AGENT_ID`` as a person runs it: a subprocess, lines on stdin, the conversation on stdout."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import yaml

from service.chats.model import Role
from service.chats.store import Chats

from .conftest import DEFAULT_NUMBERS, TEST_OUTBOUND_ALLOW, Receiver, agent_file, redis_env, write_agents
from .fakes.openai import Call, Completion, FakeOpenAI, echo, last_user_text

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


async def parley_chat(*args: str, stdin: str, redis_url: str, agents_dir: Path, llm: FakeOpenAI,
                      **more_env: str) -> Finished:
    """Run ``python -m service chat ARGS`` to completion; the fake LLM keeps answering in this loop."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "PARLEY_", "TWILIO_", "OPENAI_"))}
    env.update({**redis_env(redis_url), "PARLEY_AGENTS_DIR": str(agents_dir), "OPENAI_API_KEY": "sk-test",
                "OPENAI_BASE_URL": llm.url, "PARLEY_LLM_MAX_RETRIES": "0", **more_env})
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


# The shipped conversation-flow example (agents/booking.yaml), walked as a person would in the terminal. The fake
# model is deterministic: it fills the extract node's variables and the function node's arguments when it is made
# (tool_choice) to call those tools; at a user's text it calls the transition whose condition (the tool's
# description) the text's cue names; asked to judge with nothing cued, it answers none_of_these; otherwise it
# writes the reply of the node (or agent) whose instruction is in its prompt.
CUES = {"cleaning": "The patient said what kind of visit they need",
        "toothache": "The patient said what kind of visit they need",
        "hours": "The patient only has a question (hours, address, insurance, billing), not a visit to book",
        "person": "The patient asks to talk to a person, a human or the staff",
        "by text": "The patient wants to go on here by text",
        "Tuesday": "The patient gave their full name and a preferred weekday"}
REPLIES = {"Greet the patient as Sunny Dental": "Hi, this is Sunny Dental! What visit would you like?",
           "Ask for their full name and a preferred weekday": "Sure. Your full name and a weekday?",
           "their cleaning is requested for Tuesday": "Done: a cleaning on Tuesday. Anything else?",
           "You are the front desk of Sunny Dental": "We are open Monday to Friday, 8 AM to 5 PM."}
EXTRACTED = {"visit_type": "cleaning", "in_pain": False}
IN_PAIN = {"visit_type": "toothache", "in_pain": True}
BOOKING = {"name": "Ana Lima", "day": "Tuesday", "visit_type": "cleaning"}


def booking_model(body: dict[str, Any]) -> Completion:
    offered = {tool["function"]["name"]: tool["function"].get("description", "") for tool in body.get("tools", [])}
    choice = body.get("tool_choice")
    required = choice["function"]["name"] if isinstance(choice, dict) else None   # made to call this tool
    if required == "extract_dynamic_variables":
        extracted = IN_PAIN if "toothache" in last_user_text(body) else EXTRACTED
        return Completion(tool_calls=[Call(required, json.dumps(extracted))])
    if required == "book_visit":
        return Completion(tool_calls=[Call(required, json.dumps(BOOKING))])
    text = last_user_text(body)
    for cue, condition in CUES.items():
        picked = [name for name, description in offered.items() if description == condition]
        if cue in text and picked:
            return Completion(tool_calls=[Call(picked[0], "{}")])
    if "none_of_these" in offered:
        return Completion(tool_calls=[Call("none_of_these", "{}")])
    prompt = body["messages"][0]["content"]
    return Completion(content=next(reply for instruction, reply in REPLIES.items() if instruction in prompt))


def shipped_examples(tmp_path: Path, book_visit_url: str) -> Path:
    """agents/ as shipped, with the booking tool's URL (the one a user replaces) at the test's endpoint."""
    directory = tmp_path / "agents"
    directory.mkdir()
    for name in ("receptionist.yaml", "phone-numbers.yaml"):
        (directory / name).write_text((REPO / "agents" / name).read_text())
    booking = yaml.safe_load((REPO / "agents" / "booking.yaml").read_text())
    [tool] = booking["conversation_flow"]["tools"]
    assert tool["url"] == "https://example.com/parley-tools/book-visit"
    tool["url"] = book_visit_url
    (directory / "booking.yaml").write_text(yaml.safe_dump(booking))
    return directory


async def test_the_example_flow_walks_in_the_terminal_from_greeting_to_goodbye(
    tmp_path: Path, redis: aioredis.Redis, redis_url: str, llm: FakeOpenAI, receiver: Receiver,
) -> None:
    llm.respond = booking_model
    receiver.answers = [(200, {"status": "requested", "day": "Tuesday"})]
    lines = ["I'd like a cleaning, no pain", "Can I talk to a person?", "No, let's go on here by text",
             "Ana Lima, Tuesday please", "No, that's all. Thanks!", "never sent"]
    done = await parley_chat("booking", stdin="\n".join(lines) + "\n", redis_url=redis_url,
                             agents_dir=shipped_examples(tmp_path, receiver.url), llm=llm,
                             PARLEY_OUTBOUND_ALLOW=",".join(TEST_OUTBOUND_ALLOW))

    assert done.code == 0, done.err
    out = done.out.splitlines()
    assert [line for line in out if not line.startswith("  [tool") and not line.startswith("  [result")] == [
        "agent> Hi, this is Sunny Dental! What visit would you like?",
        "  [node Greeting -> Qualify]",
        "  [node Qualify -> Route]",
        "  [node Route -> Collect details]",
        "agent> Sure. Your full name and a weekday?",
        "  [node Collect details -> Wants a person (global)]",
        "agent> Of course. You can reach our front desk at (503) 555-0100, Monday to Friday, 8 AM to 5 PM. Or "
        "keep texting here and I'll help you book.",
        "  [node Wants a person -> Collect details (back)]",
        "agent> Sure. Your full name and a weekday?",
        "  [node Collect details -> Book the visit]",
        "  [node Book the visit -> Confirmed]",
        "agent> Done: a cleaning on Tuesday. Anything else?",
        "  [node Confirmed -> Goodbye]",
        "agent> Thanks for texting Sunny Dental. See you soon!",
        "(chat ended)",
    ]
    assert out[2] == f"  [tool extract_dynamic_variables {json.dumps(EXTRACTED)}]"
    assert out[out.index("  [node Collect details -> Book the visit]") + 1] == \
        f"  [tool book_visit {json.dumps(BOOKING)}]"
    assert receiver.bodies()[0]["args"] == BOOKING and len(receiver.received) == 1
    assert "never sent" not in llm.user_texts()

    [chat_key] = [key async for key in redis.scan_iter(match="parley:{*}:chat:chat_*")
                  if not key.endswith(":messages")]
    chat_id = chat_key.rpartition(":")[2]
    chats = Chats(redis, ttl_s=3_600, lock_ttl_ms=30_000)
    chat = await chats.get(chat_id)
    assert chat is not None and chat.chat_status.value == "ended" and chat.agent_id == "booking"
    moves = [(m.former_node_id, m.new_node_id, m.transition_type) for m in await chats.messages(chat_id)
             if m.role is Role.NODE_TRANSITION]
    assert moves == [("greeting", "qualify", "normal"), ("qualify", "route", "normal"),
                     ("route", "collect", "normal"), ("collect", "human", "global"),
                     ("human", "collect", "global_go_back"), ("collect", "book", "normal"),
                     ("book", "confirmed", "normal"), ("confirmed", "goodbye", "normal")]
    assert chat.collected_variables == {"visit_type": "cleaning", "in_pain": "false", "booking_status": "requested",
                                        "booked_day": "Tuesday"}


@pytest.mark.parametrize(("said", "shown", "agent_id", "path"), [
    ("I have a toothache and it hurts", [
        "  [node Greeting -> Qualify]", "  [node Qualify -> Route]", "  [node Route -> Urgent care]",
        "  [node Urgent care -> End]",
        "agent> I'm sorry you're in pain. Please call us now at (503) 555-0100 so we can see you today. If your face "
        "is swelling or you have a fever, go to an emergency room.", "(chat ended)"],
     "booking", [("greeting", "qualify"), ("qualify", "route"), ("route", "urgent"), ("urgent", "end_now")]),
    ("What are your hours?", [
        "  [node Greeting -> Front desk]", "agent> We are open Monday to Friday, 8 AM to 5 PM."],
     "receptionist", [("greeting", "to_front_desk")]),
], ids=["in pain: urgent care, then the end", "a question: handed to the receptionist agent"])
async def test_the_example_flow_hands_over_or_ends_when_it_cannot_book(
    tmp_path: Path, redis: aioredis.Redis, redis_url: str, llm: FakeOpenAI, receiver: Receiver, said: str,
    shown: list[str], agent_id: str, path: list[tuple[str, str]],
) -> None:
    llm.respond = booking_model
    done = await parley_chat("booking", stdin=said + "\n", redis_url=redis_url,
                             agents_dir=shipped_examples(tmp_path, receiver.url), llm=llm,
                             PARLEY_OUTBOUND_ALLOW=",".join(TEST_OUTBOUND_ALLOW))

    assert done.code == 0, done.err
    out = [line for line in done.out.splitlines() if not line.startswith(("  [tool", "  [result"))]
    assert out == ["agent> Hi, this is Sunny Dental! What visit would you like?", *shown]
    assert receiver.received == []   # nothing was booked
    [chat_key] = [key async for key in redis.scan_iter(match="parley:{*}:chat:chat_*")
                  if not key.endswith(":messages")]
    chats = Chats(redis, ttl_s=3_600, lock_ttl_ms=30_000)
    chat = await chats.get(chat_key.rpartition(":")[2])
    assert chat is not None and chat.agent_id == agent_id and chat.chat_status.value == "ended"
    assert [(m.former_node_id, m.new_node_id) for m in await chats.messages(chat.chat_id)
            if m.role is Role.NODE_TRANSITION] == path
