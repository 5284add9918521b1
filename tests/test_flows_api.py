"""Conversation flows and shared conversation-flow components through Retell's official SDK: create, read, update
(drafts only), delete, list in pages; flows versioned with the agents that answer with them; components linked to
the flows that name them, and copied into those flows when deleted."""

from __future__ import annotations

from typing import Any

import pytest
from retell import AsyncRetell, BadRequestError, ConflictError, NotFoundError, UnprocessableEntityError

from .conftest import MakeParley, Parley, agent_file

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

GREET: dict[str, Any] = {"id": "greet", "name": "Greet", "type": "conversation",
         "instruction": {"type": "prompt", "text": "Greet the user and ask what they need."},
         "edges": [{"id": "to_end", "destination_node_id": "bye",
                    "transition_condition": {"type": "prompt", "prompt": "The user is done"}}]}
BYE: dict[str, Any] = {"id": "bye", "type": "end", "instruction": {"type": "static_text", "text": "Goodbye!"}}


def flow(*nodes: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A flow body: greet -> bye, or ``nodes``."""
    return {"start_speaker": "agent", "global_prompt": "You are the front desk of Sunny Dental.",
            "start_node_id": "greet", "nodes": list(nodes) or [GREET, BYE], **fields}


def sdk(body: Any) -> Any:
    """``body`` as the SDK's parameter types take it (mypy: plain dicts are not its TypedDicts)."""
    return body


def published(found: Any) -> bool:
    """A flow's ``is_published``: Parley answers it (as for Retell LLMs); the SDK's flow type does not declare it."""
    return bool(found.model_dump()["is_published"])


def calling(component_id: str, component_type: str = "shared") -> dict[str, Any]:
    """A flow whose start node runs a component, then ends."""
    node: dict[str, Any] = {
        "id": "run", "type": "component", "component_id": component_id, "component_type": component_type,
        "else_edge": {"id": "after", "destination_node_id": "bye",
                      "transition_condition": {"type": "prompt", "prompt": "Else"}}}
    return flow(node, BYE, start_node_id="run")


COMPONENT: dict[str, Any] = {"name": "Collect details", "start_node_id": "ask",
             "nodes": [{"id": "ask", "type": "conversation", "instruction": {"type": "prompt", "text": "Ask the name."},
                        "edges": [{"id": "out", "transition_condition": {"type": "prompt", "prompt": "Got it"}}]}]}


async def test_a_flow_is_created_read_updated_listed_and_deleted(retell: AsyncRetell) -> None:
    created = await retell.conversation_flow.create(**flow(model_config={"primary": {"model": "gpt-4.1"},
                                                                         "temperature": 0.2}))
    assert created.conversation_flow_id.startswith("conversation_flow_")
    assert (created.version, published(created), created.start_node_id) == (0, False, "greet")
    assert (created.model_extra or {})["unsupported"] == []
    flow_id = created.conversation_flow_id
    got = await retell.conversation_flow.retrieve(flow_id)
    assert [n.id for n in got.nodes or []] == ["greet", "bye"]
    assert got.global_prompt == "You are the front desk of Sunny Dental."

    # A partial body merges over the current version; model_config merges key by key, as Retell does.
    updated = await retell.conversation_flow.update(flow_id, global_prompt="Be brief.",
                                                    model_config={"temperature": 0.7})
    assert (updated.version, updated.global_prompt, [n.id for n in updated.nodes or []]) == (0, "Be brief.",
                                                                                             ["greet", "bye"])
    config = updated.model_dump(by_alias=True)["model_config"]
    assert (config["primary"]["model"], config["temperature"]) == ("gpt-4.1", 0.7)

    named = await retell.conversation_flow.create(**flow(), extra_body={"conversation_flow_id": "cf_named"})
    assert named.conversation_flow_id == "cf_named"
    with pytest.raises(ConflictError, match="conversation flow 'cf_named' already exists"):
        await retell.conversation_flow.create(**flow(), extra_body={"conversation_flow_id": "cf_named"})
    first = await retell.conversation_flow.list(limit=1, sort_order="ascending")
    assert [f.conversation_flow_id for f in first.items] == ["cf_named"] and first.has_more
    assert first.pagination_key is not None
    rest = await retell.conversation_flow.list(limit=1, sort_order="ascending", pagination_key=first.pagination_key)
    assert [f.conversation_flow_id for f in rest.items] == [flow_id] and not rest.has_more

    await retell.conversation_flow.delete(flow_id)
    with pytest.raises(NotFoundError, match=f"conversation flow '{flow_id}' not found"):
        await retell.conversation_flow.retrieve(flow_id)


@pytest.mark.parametrize(("body", "expected"), [
    (flow({**GREET, "edges": [{**GREET["edges"][0], "destination_node_id": "nowhere"}]}, BYE),
     "nodes.0 (greet).edges.0.destination_node_id: no node has the id 'nowhere'"),
    (flow(GREET, BYE, start_node_id="hello"), "start_node_id: no node has the id 'hello'"),
    (flow({"id": "look", "type": "function", "tool_id": "lookup",
           "else_edge": {"id": "e", "destination_node_id": "bye", "transition_condition": {"type": "prompt",
                                                                                          "prompt": "Else"}}},
          BYE, start_node_id="look"),
     "nodes.0 (look).tool_id: no tool in tools has the id 'lookup' (tools: none)"),
    (flow({"id": "split", "type": "branch", "else_edge": {"id": "e", "destination_node_id": "bye",
                                                          "transition_condition": {"type": "prompt", "prompt": "E"}},
           "edges": [{"id": "x", "destination_node_id": "bye", "transition_condition": {
               "type": "equation", "equations": [{"left": "{{age", "operator": ">", "right": "17"}]}}]},
          BYE, start_node_id="split"), "left: '{{age' has unbalanced or empty {{ }}"),
    (calling("component_missing"),
     "nodes.0 (run).component_id: no shared conversation flow component has the id 'component_missing'"),
    (calling("Billing", "local"), "nodes.0 (run).component_id: no component in components is named 'Billing'"),
    (flow(tools=[{"type": "custom", "name": "book", "url": "http://10.0.0.9/book"}]),
     "tools.0.url (tool 'book'): http://10.0.0.9 is not allowed"),
    (flow(mcps=[{"name": "crm", "url": "https://crm.example.com/mcp", "headers": {"X-Key": "a\r\nb"}}]),
     "mcps.0.headers (server 'crm', header 'X-Key'): the value contains a line break"),
    ({"start_speaker": "user", "nodes": []}, "nodes: at least one node is needed (the start node)"),
])
async def test_a_flow_that_does_not_hold_together_is_refused_naming_node_and_field(
        retell: AsyncRetell, body: dict[str, Any], expected: str) -> None:
    with pytest.raises(UnprocessableEntityError) as refused:
        await retell.conversation_flow.create(**body)
    assert expected in refused.value.message


async def test_an_update_is_checked_whole_and_only_drafts_change(retell: AsyncRetell) -> None:
    created = await retell.conversation_flow.create(**flow())
    flow_id = created.conversation_flow_id
    with pytest.raises(UnprocessableEntityError, match=r"nodes.0 \(greet\).edges.0.destination_node_id: no node"):
        await retell.conversation_flow.update(flow_id, nodes=sdk([GREET]))   # bye is gone, greet still leads there
    agent = await retell.chat_agent.create(response_engine={"type": "conversation-flow",
                                                            "conversation_flow_id": flow_id})
    await retell.chat_agent.publish(agent.agent_id, version=0)
    with pytest.raises(ConflictError, match=r"conversation flow '.*' version 0 is published \(with an agent "
                                            r"version\) and cannot be changed: make a draft of that agent version"):
        await retell.conversation_flow.update(flow_id, global_prompt="Changed.")
    with pytest.raises(NotFoundError, match="version 5 not found"):
        await retell.conversation_flow.update(flow_id, version=5, global_prompt="Changed.")


async def test_flow_versions_follow_the_agent_versions(retell: AsyncRetell) -> None:
    flow_id = (await retell.conversation_flow.create(**flow())).conversation_flow_id
    agent = await retell.chat_agent.create(response_engine={"type": "conversation-flow",
                                                            "conversation_flow_id": flow_id}, agent_name="Desk")
    engine = agent.response_engine.model_dump()   # pinned to the flow's latest version
    assert (engine["type"], engine["conversation_flow_id"], engine["version"]) == ("conversation-flow", flow_id, 0)

    await retell.chat_agent.publish(agent.agent_id, version=0)
    assert published(await retell.conversation_flow.retrieve(flow_id)) is True
    draft = await retell.chat_agent.create_version(agent.agent_id, base_version=0)
    assert (draft.version, draft.response_engine.model_dump()["version"]) == (1, 1)
    edited = await retell.conversation_flow.update(flow_id, global_prompt="Version two.")
    assert (edited.version, published(edited)) == (1, False)
    assert (await retell.conversation_flow.retrieve(flow_id, version=0)).global_prompt == (
        "You are the front desk of Sunny Dental.")
    await retell.chat_agent.publish(agent.agent_id, version=1)
    assert published(await retell.conversation_flow.retrieve(flow_id, version=1)) is True

    # An agent names a flow version that exists, or is refused naming the field.
    moved = await retell.chat_agent.create_version(agent.agent_id, base_version=1)
    pinned = await retell.chat_agent.update(agent.agent_id, response_engine={
        "type": "conversation-flow", "conversation_flow_id": flow_id, "version": 0})
    assert (pinned.version, pinned.response_engine.model_dump()["version"]) == (moved.version, 0)
    with pytest.raises(UnprocessableEntityError, match=r"response_engine.conversation_flow_id: no conversation flow "
                                                       "'cf_ghost'"):
        await retell.chat_agent.update(agent.agent_id, response_engine={"type": "conversation-flow",
                                                                         "conversation_flow_id": "cf_ghost"})
    with pytest.raises(UnprocessableEntityError, match="conversation_flow: not accepted here; create the flow with "
                                                       "/create-conversation-flow"):
        await retell.chat_agent.create(response_engine={"type": "conversation-flow", "conversation_flow_id": flow_id},
                                       extra_body={"conversation_flow": flow()})
    with pytest.raises(UnprocessableEntityError, match=f"response_engine.conversation_flow_id: no conversation flow "
                                                       f"'{flow_id}' version 9"):
        await retell.chat_agent.create(response_engine={"type": "conversation-flow", "conversation_flow_id": flow_id,
                                                        "version": 9})


async def test_a_flow_an_agent_answers_with_is_deleted_only_by_force(retell: AsyncRetell) -> None:
    flow_id = (await retell.conversation_flow.create(**flow())).conversation_flow_id
    agent = await retell.chat_agent.create(response_engine={"type": "conversation-flow",
                                                            "conversation_flow_id": flow_id})
    await retell.chat_agent.publish(agent.agent_id, version=0)
    await retell.chat_agent.create_version(agent.agent_id, base_version=0)
    with pytest.raises(BadRequestError, match=rf"is the response engine of agent '{agent.agent_id}' \(versions 0, "
                                              r"1\).*force_delete=true"):
        await retell.conversation_flow.delete(flow_id)
    await retell.conversation_flow.delete(flow_id, force_delete=True)
    with pytest.raises(NotFoundError):
        await retell.conversation_flow.retrieve(flow_id)


async def test_a_flow_from_an_agent_file_is_read_only(make_parley: MakeParley) -> None:
    parley: Parley = await make_parley(agent={**{k: v for k, v in agent_file().items() if k != "retell_llm"},
                                              "conversation_flow": flow()})
    got = await parley.api("GET", "/get-conversation-flow/cf_frontdesk")
    assert got.status == 200 and (await got.json())["is_published"] is True
    for method, path in (("PATCH", "/update-conversation-flow/cf_frontdesk"),
                         ("DELETE", "/delete-conversation-flow/cf_frontdesk?force_delete=true")):
        refused = await parley.api(method, path, json={})
        assert refused.status == 409
        assert "conversation flow 'cf_frontdesk' is declared in" in (await refused.json())["message"]


async def test_a_shared_component_is_linked_to_the_flows_that_name_it(retell: AsyncRetell) -> None:
    created = await retell.conversation_flow_component.create(**COMPONENT)
    component_id = created.conversation_flow_component_id
    assert component_id.startswith("conversation_flow_component_") and created.linked_conversation_flow_ids == []
    assert created.user_modified_timestamp > 0
    flow_id = (await retell.conversation_flow.create(**calling(component_id))).conversation_flow_id
    await retell.conversation_flow.create(**flow())   # names no component
    got = await retell.conversation_flow_component.retrieve(component_id)
    assert (got.name, got.linked_conversation_flow_ids) == ("Collect details", [flow_id])

    renamed = await retell.conversation_flow_component.update(component_id, name="Details")
    assert (renamed.name, [n.id for n in renamed.nodes]) == ("Details", ["ask"])
    with pytest.raises(UnprocessableEntityError, match=r"nodes.0 \(ask\).edges.0.destination_node_id: no node has "
                                                       "the id 'x'"):
        await retell.conversation_flow_component.update(component_id, nodes=sdk([
            {**COMPONENT["nodes"][0], "edges": [{"id": "out", "destination_node_id": "x",
                                                 "transition_condition": {"type": "prompt", "prompt": "Go"}}]}]))
    second = await retell.conversation_flow_component.create(**COMPONENT, extra_body={
        "conversation_flow_component_id": "component_b"})
    listed = await retell.conversation_flow_component.list(limit=1, sort_order="descending")
    assert [c.conversation_flow_component_id for c in listed.items] == [component_id] and listed.has_more
    assert listed.items[0].linked_conversation_flow_ids == [flow_id]
    assert listed.pagination_key is not None
    rest = await retell.conversation_flow_component.list(limit=1, pagination_key=listed.pagination_key)
    assert [c.conversation_flow_component_id for c in rest.items] == [second.conversation_flow_component_id]


async def test_deleting_a_shared_component_gives_its_flows_a_local_copy(retell: AsyncRetell) -> None:
    component_id = (await retell.conversation_flow_component.create(**COMPONENT)).conversation_flow_component_id
    flow_id = (await retell.conversation_flow.create(**calling(component_id))).conversation_flow_id
    agent = await retell.chat_agent.create(response_engine={"type": "conversation-flow",
                                                            "conversation_flow_id": flow_id})
    await retell.chat_agent.publish(agent.agent_id, version=0)
    await retell.chat_agent.create_version(agent.agent_id, base_version=0)

    await retell.conversation_flow_component.delete(component_id)
    with pytest.raises(NotFoundError, match=f"conversation flow component '{component_id}' not found"):
        await retell.conversation_flow_component.retrieve(component_id)
    for version in (0, 1):   # the published version too: what it runs is unchanged
        got = (await retell.conversation_flow.retrieve(flow_id, version=version)).model_dump()
        node = got["nodes"][0]
        assert (node["component_type"], node["component_id"]) == ("local", component_id)
        assert [(c["name"], c["id"], [n["id"] for n in c["nodes"]]) for c in got["components"]] == [
            ("Collect details", component_id, ["ask"])]
    assert published(await retell.conversation_flow.retrieve(flow_id, version=0)) is True
    edited = await retell.conversation_flow.update(flow_id, global_prompt="Still valid.")   # the copy validates
    assert edited.version == 1


async def test_a_component_a_copy_cannot_reach_is_not_deleted(retell: AsyncRetell) -> None:
    inner = (await retell.conversation_flow_component.create(**COMPONENT)).conversation_flow_component_id
    run_inner: dict[str, Any] = {"id": "inner", "type": "component", "component_id": inner, "component_type": "shared"}
    outer = await retell.conversation_flow_component.create(name="Outer", nodes=sdk([run_inner]))
    with pytest.raises(ConflictError, match=f"'{inner}' is named by shared component "
                                            f"'{outer.conversation_flow_component_id}'"):
        await retell.conversation_flow_component.delete(inner)
    with pytest.raises(UnprocessableEntityError, match=r"nodes.0 \(inner\).component_id: a component cannot run "
                                                       "itself"):
        await retell.conversation_flow_component.update(inner, nodes=sdk([run_inner]), start_node_id="inner")
    with pytest.raises(UnprocessableEntityError, match=r"nodes.0 \(inner\).component_id: no shared conversation "
                                                       "flow component has the id 'component_gone'"):
        await retell.conversation_flow_component.create(name="Broken", nodes=sdk([{**run_inner,
                                                                                   "component_id": "component_gone"}]))
    with pytest.raises(NotFoundError, match="conversation flow component 'nope' not found"):
        await retell.conversation_flow_component.delete("nope")
