"""The chat routes' behaviour: versions pinned per chat, listing, the first message of an SMS chat."""

from __future__ import annotations

import asyncio
from typing import Any

from service.storage import keys

from .conftest import AGENT_NUMBER, USER, MakeParley, agent_file
from .conftest import api_json as ok

OUTBOUND = [{"phone_number": AGENT_NUMBER, "inbound_sms_agents": [{"agent_id": "frontdesk", "weight": 1}],
             "outbound_sms_agents": [{"agent_id": "frontdesk", "weight": 1}]}]



async def test_an_edit_never_changes_a_chat_on_a_published_version(make_parley: MakeParley) -> None:
    parley = await make_parley()
    llm = await ok(parley, "POST", "/create-retell-llm", 201, json={"general_prompt": "Prompt one."})
    agent = await ok(parley, "POST", "/create-chat-agent", 201, json={
        "response_engine": {"type": "retell-llm", "llm_id": llm["llm_id"]}, "agent_name": "A"})
    await ok(parley, "POST", f"/publish-agent-version/{agent['agent_id']}", 204, json={"version": 0})
    old = await ok(parley, "POST", "/create-chat", 201, json={"agent_id": agent["agent_id"]})

    draft = await ok(parley, "POST", f"/create-agent-version/{agent['agent_id']}", 201, json={"base_version": 0})
    assert draft["version"] == 1 and draft["response_engine"] == {"type": "retell-llm", "llm_id": llm["llm_id"],
                                                                   "version": 1}
    changed = await ok(parley, "PATCH", f"/update-retell-llm/{llm['llm_id']}", json={"general_prompt": "Prompt two."})
    assert changed["version"] == 1
    renamed = await ok(parley, "PATCH", f"/update-chat-agent/{agent['agent_id']}", json={"agent_name": "B"})
    assert renamed["version"] == 1 and renamed["response_engine"]["llm_id"] == llm["llm_id"]

    new = await ok(parley, "POST", "/create-chat", 201, json={"agent_id": agent["agent_id"]})
    pinned = await ok(parley, "POST", "/create-chat", 201, json={"agent_id": agent["agent_id"], "agent_version": 0})
    published = await ok(parley, "POST", "/create-chat", 201, json={"agent_id": agent["agent_id"],
                                                                     "agent_version": "latest_published"})
    assert (old["version"], new["version"], pinned["version"], published["version"]) == (0, 1, 0, 0)
    prompts = []
    for chat in (old, new):
        await ok(parley, "POST", "/create-chat-completion", 201, json={"chat_id": chat["chat_id"], "content": "hi"})
        prompts.append(parley.llm.requests[-1]["messages"][0]["content"].split("\n")[0])
    assert prompts == ["Prompt one.", "Prompt two."]
    first = await ok(parley, "GET", f"/get-chat-agent/{agent['agent_id']}?version=0")
    assert first["agent_name"] == "A"


async def test_editing_an_agent_file_makes_a_new_version_at_start(make_parley: MakeParley) -> None:
    await make_parley(agent=agent_file(agent_name="Before"))
    parley = await make_parley(agent=agent_file(agent_name="After"))
    versions = await ok(parley, "GET", "/get-chat-agent-versions/frontdesk")
    assert [(v["version"], v["agent_name"]) for v in versions] == [(0, "Before"), (1, "After")]
    again = await make_parley(agent=agent_file(agent_name="After"))
    assert len(await ok(again, "GET", "/get-chat-agent-versions/frontdesk")) == 2


async def test_list_chats_filters_sorts_and_pages(make_parley: MakeParley) -> None:
    parley = await make_parley()
    ids = []
    for _ in range(5):
        ids.append((await ok(parley, "POST", "/create-chat", 201, json={"agent_id": "frontdesk"}))["chat_id"])
        await asyncio.sleep(0.002)
    await ok(parley, "PATCH", f"/end-chat/{ids[1]}", 204)

    seen, key = [], None
    while True:
        body: dict[str, Any] = {"limit": 2, "sort_order": "ascending"}
        if key:
            body["pagination_key"] = key
        page = await ok(parley, "POST", "/v3/list-chats", json=body)
        seen += [c["chat_id"] for c in page["items"]]
        assert "transcript" not in page["items"][0] and "message_with_tool_calls" not in page["items"][0]
        key = page.get("pagination_key")
        if not page["has_more"]:
            break
    assert seen == ids

    newest_first = await ok(parley, "POST", "/v3/list-chats", json={})
    assert [c["chat_id"] for c in newest_first["items"]] == ids[::-1]
    ended = await ok(parley, "POST", "/v3/list-chats", json={"filter_criteria": {
        "chat_status": {"type": "enum", "op": "in", "value": ["ended"]}}, "include_total": True})
    assert [c["chat_id"] for c in ended["items"]] == [ids[1]] and ended["total"] == 1
    start = (await ok(parley, "GET", f"/get-chat/{ids[3]}"))["start_timestamp"]
    later = await ok(parley, "POST", "/v3/list-chats", json={"filter_criteria": {
        "start_timestamp": {"type": "number", "op": "ge", "value": start},
        "agent": [{"agent_id": "frontdesk", "version": [0]}]}, "sort_order": "ascending"})
    assert [c["chat_id"] for c in later["items"]] == ids[3:]
    by_id = await ok(parley, "POST", "/v3/list-chats", json={"filter_criteria": {
        "chat_id": {"type": "string", "op": "eq", "value": ids[2]}}})
    assert [c["chat_id"] for c in by_id["items"]] == [ids[2]]

    legacy = await ok(parley, "GET", f"/list-chat?limit=2&pagination_key={ids[4]}")
    assert [c["chat_id"] for c in legacy] == [ids[3], ids[2]]


async def test_delete_chat_removes_it_everywhere(make_parley: MakeParley) -> None:
    parley = await make_parley()
    chat = await ok(parley, "POST", "/create-chat", 201, json={"agent_id": "frontdesk"})
    await ok(parley, "DELETE", f"/delete-chat/{chat['chat_id']}", 204)
    assert (await parley.api("GET", f"/get-chat/{chat['chat_id']}")).status == 404
    assert (await ok(parley, "POST", "/v3/list-chats", json={}))["items"] == []
    assert [k async for k in parley.redis.scan_iter(match=keys.chat(chat["chat_id"]) + "*")] == []


async def test_update_chat_merges_and_removes_variables(make_parley: MakeParley) -> None:
    parley = await make_parley()
    chat = await ok(parley, "POST", "/create-chat", 201, json={
        "agent_id": "frontdesk", "retell_llm_dynamic_variables": {"a": "1", "b": "2"}})
    updated = await ok(parley, "PATCH", f"/update-chat/{chat['chat_id']}",
                       json={"override_dynamic_variables": {"b": None, "c": "3"}})
    assert updated["retell_llm_dynamic_variables"] == {"a": "1", "c": "3"}


async def test_sms_chat_first_message_by_the_llm_and_replaces_the_ongoing_chat(make_parley: MakeParley) -> None:
    parley = await make_parley(numbers=OUTBOUND)
    await parley.text("hi")
    await parley.twilio.wait_for(1)
    await parley.idle()
    inbound = await parley.chat_of()
    chat = await ok(parley, "POST", "/create-sms-chat", json={"from_number": AGENT_NUMBER, "to_number": USER})
    assert chat["direction"] == "outbound" and chat["from_number"] == AGENT_NUMBER and chat["to_number"] == USER
    assert parley.twilio.messages[-1].body == "Hi, this is the front desk."   # begin_message is null: the LLM
    assert parley.llm.requests[-1]["messages"][-1]["role"] == "system"
    old = await ok(parley, "GET", f"/get-chat/{inbound['chat_id']}")
    assert old["chat_status"] == "ended" and old["disconnection_reason"] == "replaced_by_new_chat"
    assert (await parley.chat_of())["chat_id"] == chat["chat_id"]
    await parley.text("thanks")
    await parley.twilio.wait_for(3)
    await parley.idle()
    assert [m["role"] for m in (await parley.chat_of())["message_with_tool_calls"]] == ["agent", "user", "agent"]


async def test_an_empty_begin_message_waits_for_the_user(make_parley: MakeParley) -> None:
    parley = await make_parley(numbers=OUTBOUND, agent=agent_file(retell_llm={"begin_message": ""}))
    chat = await ok(parley, "POST", "/create-sms-chat", json={"from_number": AGENT_NUMBER, "to_number": USER})
    assert chat["message_with_tool_calls"] == [] and parley.twilio.messages == [] and parley.llm.requests == []


async def test_texts_that_arrive_while_an_sms_chat_opens_are_answered(make_parley: MakeParley) -> None:
    agent = agent_file(retell_llm={"begin_message": "Hello {{user_number}}"})
    parley = await make_parley(numbers=OUTBOUND, agent=agent)
    parley.twilio.delay_s = 0.3          # the first message is in flight while the user texts
    opening = asyncio.create_task(parley.api("POST", "/create-sms-chat",
                                             json={"from_number": AGENT_NUMBER, "to_number": USER}))
    await parley.twilio.requested.wait()
    assert await parley.redis.exists(keys.lock(keys.Conversation(AGENT_NUMBER, USER)))
    await parley.text("who is this?")
    assert (await opening).status == 200
    parley.twilio.delay_s = 0
    sent = await parley.twilio.wait_for(2)
    assert [m.body for m in sent] == [f"Hello {USER}", "You said: who is this?"]
