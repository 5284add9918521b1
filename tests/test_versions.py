"""Agent versions as Retell has them, driven by Retell's official SDK: drafts edited in place, publishing, new
drafts from a version (with their LLM version), deleting, listing, and which version a chat takes."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from retell import AsyncRetell, ConflictError, NotFoundError, UnprocessableEntityError

from .conftest import OTHER_NUMBER, Parley

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


async def _agent(retell: AsyncRetell, prompt: str = "Prompt one.") -> tuple[str, str]:
    llm = await retell.llm.create(general_prompt=prompt, begin_message="")
    agent = await retell.chat_agent.create(response_engine={"type": "retell-llm", "llm_id": llm.llm_id},
                                           agent_name="A")
    return agent.agent_id, llm.llm_id


async def test_updates_edit_the_draft_and_publishing_freezes_it(retell: AsyncRetell) -> None:
    agent_id, llm_id = await _agent(retell)
    created = await retell.chat_agent.retrieve(agent_id)
    assert (created.version, created.is_published, created.base_version) == (0, False, None)
    assert created.response_engine.version == 0   # type: ignore[union-attr]
    await retell.chat_agent.update(agent_id, agent_name="B")
    updated = await retell.chat_agent.update(agent_id, agent_name="C", version_title="first cut")
    assert (updated.version, updated.agent_name, updated.version_title) == (0, "C", "first cut")
    assert (updated.model_extra or {})["unsupported"] == []   # version_title is acted on: listed with the version
    await retell.llm.update(llm_id, general_prompt="Prompt two.")
    assert (await retell.llm.retrieve(llm_id)).version == 0

    await retell.chat_agent.publish(agent_id, version=0, version_title="Launch", version_description="The first")
    listed = await retell.agent.list_versions(agent_id)
    assert [(v.version, v.is_published, v.version_title, v.version_description) for v in listed.items] == [
        (0, True, "Launch", "The first")]
    assert (await retell.llm.retrieve(llm_id)).is_published is True   # the LLM version goes with its agent's

    with pytest.raises(ConflictError, match="version 0 is already published"):
        await retell.chat_agent.publish(agent_id, version=0)
    with pytest.raises(ConflictError, match=r"version 0 is published and cannot be changed.*create-agent-version"):
        await retell.chat_agent.update(agent_id, agent_name="D")
    with pytest.raises(ConflictError, match="version 0 is published"):
        await retell.llm.update(llm_id, general_prompt="Prompt three.")
    assert (await retell.chat_agent.retrieve(agent_id)).agent_name == "C"


async def test_a_new_draft_copies_its_base_with_a_draft_of_its_llm(retell: AsyncRetell) -> None:
    agent_id, llm_id = await _agent(retell)
    await retell.chat_agent.publish(agent_id, version=0)
    draft = await retell.chat_agent.create_version(agent_id, base_version=0)
    assert (draft.version, draft.is_published, draft.base_version) == (1, False, 0)
    assert draft.response_engine.version == 1   # type: ignore[union-attr]

    edited = await retell.llm.update(llm_id, general_prompt="Prompt two.")   # the latest LLM version: the draft's
    assert (edited.version, edited.is_published) == (1, False)
    assert (await retell.llm.retrieve(llm_id, version=0)).general_prompt == "Prompt one."
    await retell.chat_agent.update(agent_id, agent_name="A2")
    assert (await retell.chat_agent.retrieve(agent_id, version=0)).agent_name == "A"

    await retell.chat_agent.publish(agent_id, version=1)
    assert (await retell.llm.retrieve(llm_id, version=1)).is_published is True
    second = await retell.chat_agent.create_version(agent_id, base_version=0)   # any version can be a base
    assert (second.version, second.base_version, second.agent_name) == (2, 0, "A")
    assert second.response_engine.version == 2   # type: ignore[union-attr]
    assert (await retell.llm.retrieve(llm_id, version=2)).general_prompt == "Prompt one."


async def test_versions_are_listed_in_pages(retell: AsyncRetell) -> None:
    agent_id, _ = await _agent(retell)
    await retell.chat_agent.publish(agent_id, version=0)
    for base in (0, 0):
        await retell.chat_agent.create_version(agent_id, base_version=base)
    first = await retell.agent.list_versions(agent_id, limit=2)
    assert [v.version for v in first.items] == [2, 1] and first.has_more and first.pagination_key == "1"
    rest = await retell.agent.list_versions(agent_id, limit=2, pagination_key=first.pagination_key)
    assert [v.version for v in rest.items] == [0] and not rest.has_more and rest.pagination_key is None
    ascending = await retell.agent.list_versions(agent_id, sort_order="ascending")
    assert [(v.version, v.base_version, v.is_published) for v in ascending.items] == [
        (0, None, True), (1, 0, False), (2, 0, False)]
    with pytest.raises(UnprocessableEntityError, match="pagination_key"):
        await retell.agent.list_versions(agent_id, pagination_key="chat_x")


async def test_new_chats_take_the_latest_version_unless_told_and_keep_theirs(
    parley: Parley, retell: AsyncRetell,
) -> None:
    agent_id, llm_id = await _agent(retell)
    with pytest.raises(UnprocessableEntityError, match=r"agent_version: .* has no published version"):
        await retell.chat.create(agent_id=agent_id, agent_version="latest_published")
    await retell.chat_agent.publish(agent_id, version=0)
    await retell.chat_agent.create_version(agent_id, base_version=0)
    await retell.llm.update(llm_id, general_prompt="Prompt two.")

    default = await retell.chat.create(agent_id=agent_id)   # Retell: "If not provided, will default to latest"
    latest = await retell.chat.create(agent_id=agent_id, agent_version="latest")
    published = await retell.chat.create(agent_id=agent_id, agent_version="latest_published")
    numbered = await retell.chat.create(agent_id=agent_id, agent_version=0)
    assert [c.version for c in (default, latest, published, numbered)] == [1, 1, 0, 0]
    prompts = []
    for chat in (default, published):
        await retell.chat.create_chat_completion(chat_id=chat.chat_id, content="hi")
        prompts.append(parley.llm.requests[-1]["messages"][0]["content"].split("\n")[0])
    assert prompts == ["Prompt two.", "Prompt one."]

    await retell.chat_agent.publish(agent_id, version=1)   # a chat already pinned keeps its version
    assert (await retell.chat.retrieve(published.chat_id)).version == 0
    assert (await retell.chat.create(agent_id=agent_id, agent_version="latest_published")).version == 1


async def test_numbers_route_to_the_version_they_name(parley: Parley, retell: AsyncRetell) -> None:
    agent_id, _ = await _agent(retell)
    await retell.phone_number.import_(phone_number=OTHER_NUMBER, termination_uri="sunny.pstn.twilio.com")
    routed = [{"agent_id": agent_id, "weight": 1, "agent_version": "latest_published"}]
    with pytest.raises(UnprocessableEntityError, match=r"inbound_sms_agents\.0\.agent_version: .* no published"):
        await retell.phone_number.update(OTHER_NUMBER, inbound_sms_agents=routed)   # type: ignore[arg-type]
    await retell.chat_agent.publish(agent_id, version=0)
    await retell.chat_agent.create_version(agent_id, base_version=0)
    number = await retell.phone_number.update(OTHER_NUMBER, inbound_sms_agents=routed,   # type: ignore[arg-type]
                                              outbound_sms_agents=[{"agent_id": agent_id, "weight": 1,
                                                                    "agent_version": 1}])
    assert number.inbound_sms_agents and number.inbound_sms_agents[0].agent_version == "latest_published"

    assert (await parley.text("hello", to=OTHER_NUMBER)).status == 200
    await parley.idle()
    assert (await parley.chat_of(to=OTHER_NUMBER))["version"] == 0
    assert parley.llm.requests[-1]["messages"][0]["content"].startswith("Prompt one.")

    with pytest.raises(ConflictError, match=rf"version 0 answers on \{OTHER_NUMBER} \(inbound_sms_agents\)"):
        await retell.chat_agent.delete_version(agent_id, version=0)
    with pytest.raises(ConflictError, match=r"version 1 answers on .*outbound_sms_agents"):
        await retell.chat_agent.delete_version(agent_id, version=1)
    override = await retell.chat.create_sms_chat(from_number=OTHER_NUMBER, to_number="+14155550177",
                                                 override_agent_version="latest_published")
    assert override.version == 0


async def test_the_chat_inbound_answer_picks_a_version(parley: Parley, retell: AsyncRetell) -> None:
    answers: list[dict[str, Any]] = []

    async def chat_inbound(request: web.Request) -> web.Response:
        return web.json_response({"chat_inbound": answers.pop(0)})
    app = web.Application()
    app.router.add_post("/inbound", chat_inbound)
    agent_id, _ = await _agent(retell)
    await retell.chat_agent.publish(agent_id, version=0)
    await retell.chat_agent.create_version(agent_id, base_version=0)
    async with TestServer(app, host="127.0.0.1") as server:
        await retell.phone_number.import_(phone_number=OTHER_NUMBER, termination_uri="sunny.pstn.twilio.com")
        await retell.phone_number.update(OTHER_NUMBER, inbound_sms_agents=[{"agent_id": agent_id, "weight": 1}],
                                         inbound_sms_webhook_url=str(server.make_url("/inbound")))
        answers += [{"override_agent_id": agent_id, "override_agent_version": "latest_published"},
                    {"override_agent_id": agent_id, "override_agent_version": 9}]
        for user in ("+14155550101", "+14155550102"):
            assert (await parley.text("hello", user=user, to=OTHER_NUMBER)).status == 200
            await parley.idle()
    published = await parley.chat_of(user="+14155550101", to=OTHER_NUMBER)
    assert published["version"] == 0 and "inbound_webhook_error" not in published
    unknown = await parley.chat_of(user="+14155550102", to=OTHER_NUMBER)   # the number's agent, at its latest
    assert unknown["version"] == 1
    assert unknown["inbound_webhook_error"].endswith(f"agent {agent_id!r} version 9 not found")


async def test_version_errors_are_clear(retell: AsyncRetell) -> None:
    agent_id, _ = await _agent(retell)
    with pytest.raises(NotFoundError, match="agent 'ghost' not found"):
        await retell.chat_agent.create_version("ghost", base_version=0)
    with pytest.raises(UnprocessableEntityError, match=f"base_version: agent '{agent_id}' version 4 not found"):
        await retell.chat_agent.create_version(agent_id, base_version=4)
    with pytest.raises(UnprocessableEntityError, match=f"version: agent '{agent_id}' version 4 not found"):
        await retell.chat_agent.publish(agent_id, version=4)
    with pytest.raises(NotFoundError, match=f"agent '{agent_id}' version 4 not found"):
        await retell.chat_agent.delete_version(agent_id, version=4)
    with pytest.raises(NotFoundError, match=f"agent '{agent_id}' version 4 not found"):
        await retell.chat_agent.retrieve(agent_id, version=4)
    with pytest.raises(ConflictError, match="the only version of agent"):
        await retell.chat_agent.delete_version(agent_id, version=0)
    with pytest.raises(UnprocessableEntityError, match=r"agent_version: .*environment tag like prod names nothing"):
        await retell.chat.create(agent_id=agent_id, agent_version="prod")
    with pytest.raises(UnprocessableEntityError, match=r"agent_version: agent .* version 7 not found"):
        await retell.chat.create(agent_id=agent_id, agent_version=7)

    draft = await retell.chat_agent.create_version(agent_id, base_version=0)
    assert draft.version == 1
    await retell.chat_agent.delete_version(agent_id, version=1)   # a draft nobody routes to goes
    assert [v.version for v in (await retell.agent.list_versions(agent_id)).items] == [0]
    assert (await retell.chat_agent.create_version(agent_id, base_version=0)).version == 1


async def test_agents_from_files_are_published_and_read_only(retell: AsyncRetell) -> None:
    listed = await retell.agent.list_versions("frontdesk")
    assert [(v.version, v.is_published) for v in listed.items] == [(0, True)]
    agent = await retell.chat_agent.retrieve("frontdesk")
    assert agent.response_engine.version == 0   # type: ignore[union-attr]
    assert (await retell.llm.retrieve("llm_frontdesk")).is_published is True
    chat = await retell.chat.create(agent_id="frontdesk", agent_version="latest_published")
    assert chat.version == 0
    for attempt in (retell.chat_agent.create_version("frontdesk", base_version=0),
                    retell.chat_agent.publish("frontdesk", version=0),
                    retell.chat_agent.delete_version("frontdesk", version=0)):
        with pytest.raises(ConflictError, match=r"frontdesk\.yaml: edit the file"):
            await attempt
