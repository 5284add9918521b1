"""The whole Retell-compatible flow, driven by Retell's official Python SDK (``retell-sdk``) pointed at Parley."""

from __future__ import annotations

import asyncio

import pytest
from retell import AsyncRetell, Retell

from .conftest import API_KEY, OTHER_NUMBER, USER, Parley

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


async def test_outbound_sms_flow_through_the_sdk(parley: Parley, retell: AsyncRetell) -> None:
    llm = await retell.llm.create(
        general_prompt="You confirm visits for {{customer_name}}.",
        begin_message="Hi {{customer_name}}, this is Sunny Dental about your visit tomorrow.",
        model="gpt-4.1",
    )
    assert llm.llm_id and llm.version == 0
    agent = await retell.chat_agent.create(response_engine={"type": "retell-llm", "llm_id": llm.llm_id},
                                           agent_name="Reminders", end_chat_after_silence_ms=600_000)
    number = await retell.phone_number.import_(phone_number=OTHER_NUMBER, termination_uri="sunny.pstn.twilio.com",
                                               nickname="Reminders line")
    assert number.phone_number == OTHER_NUMBER
    number = await retell.phone_number.update(
        OTHER_NUMBER, outbound_sms_agents=[{"agent_id": agent.agent_id, "weight": 1}],
        inbound_sms_agents=[{"agent_id": agent.agent_id, "weight": 1}])
    assert number.outbound_sms_agents and number.outbound_sms_agents[0].agent_id == agent.agent_id

    chat = await retell.chat.create_sms_chat(from_number=OTHER_NUMBER, to_number=USER, metadata={"visit": "v-17"},
                                             retell_llm_dynamic_variables={"customer_name": "Ana"})
    assert chat.chat_status == "ongoing" and chat.chat_type == "sms_chat"
    sent = await parley.twilio.wait_for(1)
    assert sent[0].body == "Hi Ana, this is Sunny Dental about your visit tomorrow."
    assert (sent[0].from_, sent[0].to) == (OTHER_NUMBER, USER)

    assert (await parley.text("Yes, see you then", to=OTHER_NUMBER)).status == 200
    await parley.twilio.wait_for(2)
    await parley.idle()
    assert parley.llm.requests[-1]["messages"][0]["content"].startswith("You confirm visits for Ana.")

    got = await retell.chat.retrieve(chat.chat_id)
    assert [m.role for m in got.message_with_tool_calls or []] == ["agent", "user", "agent"]
    assert got.metadata == {"visit": "v-17"}

    listed = await retell.chat.list(filter_criteria={"chat_type": {"type": "enum", "op": "in", "value": ["sms_chat"]}})
    assert [c.chat_id for c in listed.items] == [chat.chat_id]
    assert listed.items[0].transcript is None

    updated = await retell.chat.update(chat.chat_id, metadata={"visit": "v-18"},
                                       override_dynamic_variables={"customer_name": "Ana María"})
    assert updated.metadata == {"visit": "v-18"}
    assert updated.retell_llm_dynamic_variables == {"customer_name": "Ana María"}

    await retell.chat.end(chat.chat_id)
    ended = await retell.chat.retrieve(chat.chat_id)
    assert ended.chat_status == "ended" and ended.end_timestamp

    # An update edits the draft (version 0) in place; versions are made and published on purpose (test_versions).
    await retell.chat_agent.update(agent.agent_id, agent_name="Reminders v2")
    response = await parley.api("GET", f"/get-chat-agent-versions/{agent.agent_id}")
    versions = await response.json()
    assert [(v["version"], v["agent_name"], v["is_published"]) for v in versions] == [(0, "Reminders v2", False)]


async def test_api_chat_through_the_sdk(parley: Parley, retell: AsyncRetell) -> None:
    chat = await retell.chat.create(agent_id="frontdesk", retell_llm_dynamic_variables={"tone": "brief"})
    assert chat.chat_type == "api_chat"
    completion = await retell.chat.create_chat_completion(chat_id=chat.chat_id, content="are you open?")
    assert [(m.role, getattr(m, "content", None)) for m in completion.messages] == [
        ("agent", "You said: are you open?")]
    agents = await retell.chat_agent.list()
    assert [a.agent_id for a in agents.items] == ["frontdesk"]
    llms = await retell.llm.list()
    assert [llm.llm_id for llm in llms.items] == ["llm_frontdesk"]
    numbers = await retell.phone_number.list()
    assert [n.phone_number for n in numbers.items] == ["+15035550100"]


async def test_the_sync_client_works_too(parley: Parley) -> None:
    """Most backends use the SDK's synchronous client (run in a thread here, beside the server's loop)."""
    base_url = str(parley.client.make_url("")).rstrip("/")

    def use_it() -> tuple[str, str]:
        # Closed on the way out: an httpx client left to the garbage collector closes its socket with a
        # ResourceWarning, at whatever moment (in whichever later test) the collector runs.
        with Retell(api_key=API_KEY, base_url=base_url, max_retries=0) as client:
            chat = client.chat.create(agent_id="frontdesk")
            return chat.chat_id, client.chat.retrieve(chat.chat_id).chat_status

    chat_id, status = await asyncio.to_thread(use_it)
    assert chat_id.startswith("chat_") and status == "ongoing"
