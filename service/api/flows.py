"""Retell's conversation-flow routes, and its shared conversation-flow component routes.

A conversation flow is versioned with the agents that answer with it, as a Retell LLM is (``catalog.store``): an
update edits a draft version in place (the latest, or ``?version=``) and a published version is refused (409);
``/create-agent-version`` and ``/publish-agent-version`` make and publish a flow version together with the agent
version. A flow declared in an agent file is read-only (409). Deleting a flow an agent version still names is a
400, as Retell answers it, unless ``force_delete=true``.

Shared components are not versioned. Their answers carry ``linked_conversation_flow_ids``: the flows whose nodes,
in any version, name them. Deleting one gives each of those flow versions a local copy of it (Retell's rule,
``Catalog.delete_component``); a component that a flow in an agent file or another shared component names is
refused (409): neither can be rewritten.

A body is validated whole: the graph (``retell.flows``: errors name the node and the field), the URLs and headers
it would call (``catalog.targets``), and the shared components its component nodes name, which must exist (422).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from service.api import id_forms
from service.api.agents import given_id, refuse, reported
from service.api.http import ensure_writable, model_response, page_of_ids, read_object, read_query, validated
from service.api.openapi import Route
from service.app_state import FILES, RUNTIME
from service.catalog import components, targets
from service.catalog.store import Catalog
from service.errors import Conflict, InUse
from service.retell.flows import ConversationFlow, ConversationFlowComponent
from service.retell.requests import (
    ComponentAnswer,
    ComponentListResponse,
    DeleteFlowQuery,
    FlowListResponse,
    PageQuery,
    VersionQuery,
)

FLOW = "conversation flow"
READ_ONLY = {"version", "is_published", "last_modification_timestamp"}
COMPONENT_READ_ONLY = {"user_modified_timestamp", "linked_conversation_flow_ids"}
NO_NODES = "nodes: at least one node is needed (the start node)"


async def _flow_body(request: web.Request, data: dict[str, Any], flow_id: str) -> ConversationFlow:
    rt = request.app[RUNTIME]
    clean = {k: v for k, v in data.items() if k not in READ_ONLY}
    flow = validated(ConversationFlow, {**clean, "conversation_flow_id": flow_id})
    refuse(([] if flow.nodes else [NO_NODES]) + targets.graph_problems(flow, rt.outbound)
           + components.missing(flow, set(await rt.catalog.component_ids())))
    return flow


async def create_conversation_flow(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    data = await read_object(request)
    flow_id = given_id(data.pop("conversation_flow_id", ""), "conversation_flow_")
    if id_forms.is_object_id(flow_id) and await rt.catalog.flows.exists(flow_id):   # as in create_chat_agent
        raise Conflict(f"{FLOW} {flow_id!r} already exists")
    flow = await _flow_body(request, data, flow_id)
    return reported(await rt.catalog.flows.create(flow), status=201)


async def get_conversation_flow(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    flow_id = id_forms.flow_id(request.match_info["conversation_flow_id"])
    return model_response(await rt.catalog.flows.find(flow_id, read_query(request, VersionQuery).version))


async def update_conversation_flow(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    flow_id = id_forms.flow_id(request.match_info["conversation_flow_id"])
    current = await rt.catalog.flows.find(flow_id, read_query(request, VersionQuery).version)
    ensure_writable(request, FLOW, flow_id)
    rt.catalog.flows.refuse_published(current)
    data = await read_object(request)
    data.pop("conversation_flow_id", None)
    data.pop("is_transfer_cf", None)   # Retell: set at creation only, ignored on update
    given = data.get("model_config")
    if isinstance(given, dict) and current.models is not None:
        # Retell's rule: each key of model_config given replaces the current one; the others are kept.
        data["model_config"] = {**current.models.model_dump(mode="json"), **given}
    flow = await _flow_body(request, {**current.model_dump(), **data}, flow_id)
    return reported(await rt.catalog.flows.edit(flow.model_copy(update={"version": current.version})))


async def delete_conversation_flow(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    flow_id = id_forms.flow_id(request.match_info["conversation_flow_id"])
    await rt.catalog.flows.get(flow_id)
    ensure_writable(request, FLOW, flow_id)
    if not read_query(request, DeleteFlowQuery).force_delete:
        users = await _agents_of(rt.catalog, flow_id)
        if users:
            raise InUse(f"{FLOW} {flow_id!r} is the response engine of {'; '.join(users)}: point those at another "
                        "engine first, or delete with force_delete=true (they then name a flow that no longer exists)")
    await rt.catalog.flows.delete(flow_id)
    return web.Response(status=204)


async def _agents_of(catalog: Catalog, flow_id: str) -> list[str]:
    """``agent <id> (versions ...)`` for each agent with a version whose response engine is the flow."""
    users = []
    for agent_id in await catalog.agents.ids():
        versions = [str(a.version) for a in await catalog.agents.versions(agent_id)
                    if a.response_engine is not None and a.response_engine.conversation_flow_id == flow_id]
        if versions:
            users.append(f"agent {agent_id!r} (version{'s' if len(versions) > 1 else ''} {', '.join(versions)})")
    return users


async def list_conversation_flows(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    ids, more, key = page_of_ids(await rt.catalog.flows.ids(), read_query(request, PageQuery), str)
    items = [await rt.catalog.flows.get(i) for i in ids]
    return model_response(FlowListResponse(items=items, has_more=more, pagination_key=key))


async def _component_body(request: web.Request, data: dict[str, Any], component_id: str) -> ConversationFlowComponent:
    rt = request.app[RUNTIME]
    clean = {k: v for k, v in data.items() if k not in COMPONENT_READ_ONLY}
    component = validated(ConversationFlowComponent, {**clean, "conversation_flow_component_id": component_id})
    itself = [f"{where}: a component cannot run itself" for where, node in components.shared_nodes(component)
              if node.component_id == component_id]
    known = set(await rt.catalog.component_ids()) | {component_id}
    refuse(([] if component.nodes else [NO_NODES]) + itself + targets.graph_problems(component, rt.outbound)
           + components.missing(component, known))
    return component


async def _linked(catalog: Catalog, component_id: str) -> list[str]:
    """The flows whose nodes, in any version, name the shared component."""
    return [flow_id for flow_id in await catalog.flows.ids()
            if any(components.names(flow, component_id) for flow in await catalog.flows.versions(flow_id))]


async def _answer(catalog: Catalog, component: ConversationFlowComponent, status: int = 200) -> web.Response:
    linked = await _linked(catalog, component.conversation_flow_component_id)
    return reported(component, status, linked_conversation_flow_ids=linked)


async def create_conversation_flow_component(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    data = await read_object(request)
    component_id = given_id(data.pop("conversation_flow_component_id", ""), "conversation_flow_component_")
    if id_forms.is_object_id(component_id) and component_id in await rt.catalog.component_ids():
        raise Conflict(f"conversation flow component {component_id!r} already exists")
    component = await _component_body(request, data, component_id)
    return await _answer(rt.catalog, await rt.catalog.put_component(component), status=201)


async def get_conversation_flow_component(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    component_id = id_forms.component_id(request.match_info["conversation_flow_component_id"])
    return await _answer(rt.catalog, await rt.catalog.get_component(component_id))


async def update_conversation_flow_component(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    component_id = id_forms.component_id(request.match_info["conversation_flow_component_id"])
    current = await rt.catalog.get_component(component_id)
    data = await read_object(request)
    data.pop("conversation_flow_component_id", None)
    component = await _component_body(request, {**current.model_dump(), **data}, component_id)
    return await _answer(rt.catalog, await rt.catalog.put_component(component))


async def delete_conversation_flow_component(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    component_id = id_forms.component_id(request.match_info["conversation_flow_component_id"])
    await rt.catalog.get_component(component_id)
    fixed = [f"{FLOW} {flow_id!r} (declared in {path})" for flow_id in await _linked(rt.catalog, component_id)
             if (path := request.app[FILES].declared_in(FLOW, flow_id)) is not None]
    for other_id in await rt.catalog.component_ids():
        if other_id != component_id and components.names(await rt.catalog.get_component(other_id), component_id):
            fixed.append(f"shared component {other_id!r}")
    if fixed:
        raise Conflict(f"conversation flow component {component_id!r} is named by {', '.join(fixed)}, which cannot "
                       "take a local copy of it: change those first")
    await rt.catalog.delete_component(component_id)
    return web.Response(status=204)


async def list_conversation_flow_components(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    ids, more, key = page_of_ids(await rt.catalog.component_ids(), read_query(request, PageQuery), str)
    items = []
    for component_id in ids:
        component = await rt.catalog.get_component(component_id)
        items.append(ComponentAnswer.model_validate({**component.model_dump(),
                                                     "linked_conversation_flow_ids": await _linked(rt.catalog,
                                                                                                   component_id)}))
    return model_response(ComponentListResponse(items=items, has_more=more, pagination_key=key))


ROUTES = [
    Route("POST", "/create-conversation-flow", create_conversation_flow, "Create a conversation flow",
          body=ConversationFlow, response=ConversationFlow, status=201, tag="conversation flows", scope="admin",
          errors=(409,)),
    Route("GET", "/get-conversation-flow/{conversation_flow_id}", get_conversation_flow,
          "Get a conversation flow (latest, or ?version=)", query=VersionQuery, response=ConversationFlow,
          tag="conversation flows", scope="read"),
    Route("PATCH", "/update-conversation-flow/{conversation_flow_id}", update_conversation_flow,
          "Update a draft version of a conversation flow (the latest, or ?version=)", query=VersionQuery,
          body=ConversationFlow, response=ConversationFlow, tag="conversation flows", scope="admin", errors=(409,)),
    Route("DELETE", "/delete-conversation-flow/{conversation_flow_id}", delete_conversation_flow,
          "Delete a conversation flow and all its versions (400 while an agent names it, unless force_delete)",
          query=DeleteFlowQuery, status=204, tag="conversation flows", scope="admin", errors=(400, 409)),
    Route("GET", "/v2/list-conversation-flows", list_conversation_flows, "List conversation flows, paginated",
          query=PageQuery, response=FlowListResponse, tag="conversation flows", scope="read"),
    Route("POST", "/create-conversation-flow-component", create_conversation_flow_component,
          "Create a shared conversation flow component", body=ConversationFlowComponent, response=ComponentAnswer,
          status=201, tag="conversation flows", scope="admin", errors=(409,)),
    Route("GET", "/get-conversation-flow-component/{conversation_flow_component_id}",
          get_conversation_flow_component, "Get a shared conversation flow component", response=ComponentAnswer,
          tag="conversation flows", scope="read"),
    Route("PATCH", "/update-conversation-flow-component/{conversation_flow_component_id}",
          update_conversation_flow_component, "Update a shared conversation flow component",
          body=ConversationFlowComponent, response=ComponentAnswer, tag="conversation flows", scope="admin"),
    Route("DELETE", "/delete-conversation-flow-component/{conversation_flow_component_id}",
          delete_conversation_flow_component,
          "Delete a shared conversation flow component (the flows naming it get a local copy)", status=204,
          tag="conversation flows", scope="admin", errors=(409,)),
    Route("GET", "/v2/list-conversation-flow-components", list_conversation_flow_components,
          "List shared conversation flow components, paginated", query=PageQuery, response=ComponentListResponse,
          tag="conversation flows", scope="read"),
]
