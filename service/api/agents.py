"""Retell's chat-agent and Retell-LLM routes. An update edits a draft version in place (the latest, or
``?version=``); a published version is refused (409). File objects are read-only. The version routes
(create, publish, delete, list) are in ``api.versions``.

A URL Parley would call (an agent's ``webhook_url``, a custom tool's ``url``) that the outbound policy refuses,
and a tool header that cannot be sent, are a 422 (``catalog.targets``).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel

from service.agent import mcp
from service.api import id_forms
from service.api.http import (
    ensure_writable,
    json_response,
    model_response,
    page_of_ids,
    read_object,
    read_query,
    validated,
)
from service.api.openapi import Route
from service.app_state import RUNTIME
from service.catalog import targets
from service.catalog.store import Versioned
from service.chats.model import new_id
from service.errors import Conflict, InvalidRequest, NotFound
from service.outbound import OutboundPolicy
from service.retell.models import AgentVersion, ChatAgent, ResponseEngine, RetellLLM
from service.retell.requests import (
    AgentListItem,
    AgentListResponse,
    LLMListResponse,
    McpToolDefinition,
    McpToolsQuery,
    PageQuery,
    VersionQuery,
)
from service.retell.unsupported import unsupported

READ_ONLY = {"version", "is_published", "base_version", "last_modification_timestamp"}


def _version(request: web.Request) -> AgentVersion | None:
    return read_query(request, VersionQuery).version


async def _pin_llm(request: web.Request, agent: ChatAgent) -> ChatAgent:
    """``agent`` naming the version of its Retell LLM: the one it gives (which must exist), else the LLM's latest,
    so that the agent version and its LLM version go together (``catalog.store``)."""
    rt = request.app[RUNTIME]
    engine = agent.response_engine
    if engine is None:
        raise InvalidRequest("response_engine: required: {\"type\": \"retell-llm\", \"llm_id\": ...} or "
                             "{\"type\": \"conversation-flow\", \"conversation_flow_id\": ...}")
    store = rt.catalog.engines(engine)
    try:
        found = await store.get(engine.engine_id, engine.version)
    except NotFound:
        field = "conversation_flow_id" if engine.is_flow else "llm_id"
        raise InvalidRequest(f"response_engine.{field}: no {store.kind} {engine.engine_id!r}"
                             + (f" version {engine.version}" if engine.version is not None else "")) from None
    return agent.model_copy(update={"response_engine": ResponseEngine.of(found)})


def _policy(request: web.Request) -> OutboundPolicy:
    return request.app[RUNTIME].outbound


def refuse(problems: list[str]) -> None:
    """A 422 naming each URL the outbound policy refuses and each header that cannot be sent."""
    if problems:
        raise InvalidRequest("; ".join(problems))


def _agent_body(data: dict[str, Any], agent_id: str, policy: OutboundPolicy) -> ChatAgent:
    if "retell_llm" in data:
        raise InvalidRequest("retell_llm: not accepted here; create the LLM with /create-retell-llm and name it "
                             "in response_engine")
    if "conversation_flow" in data:
        raise InvalidRequest("conversation_flow: not accepted here; create the flow with /create-conversation-flow "
                             "and name it in response_engine")
    clean = {k: v for k, v in data.items() if k not in READ_ONLY}
    agent = validated(ChatAgent, {**clean, "agent_id": agent_id})
    refuse(targets.agent_problems(agent, policy))
    return agent


def reported(model: BaseModel, status: int = 200, **more: Any) -> web.Response:
    """A created or updated agent, Retell LLM, conversation flow or component (and ``more`` fields), with Parley's
    additive ``unsupported``: the fields it holds that Parley stores but does not act on
    (``service.retell.unsupported``), so nothing is ignored silently."""
    return json_response({**model.model_dump(mode="json", exclude_none=True), **more,
                          "unsupported": unsupported(model)}, status)


def given_id(value: Any, prefix: str) -> Any:
    """The id a create body gives, or a new one when it gives none (or ""). Anything but a string (null too) is
    left for the body's check to refuse (422), never made into a string."""
    return new_id(prefix) if value == "" else value


async def create_chat_agent(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    data = await read_object(request)
    agent_id = given_id(data.pop("agent_id", ""), "agent_")
    # A malformed id is not looked up: the body check below refuses it, saying why.
    if id_forms.is_object_id(agent_id) and await rt.catalog.agents.exists(agent_id):
        raise Conflict(f"agent {agent_id!r} already exists")
    agent = await _pin_llm(request, _agent_body(data, agent_id, _policy(request)))
    return reported(await rt.catalog.agents.create(agent), status=201)


async def get_chat_agent(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    agent_id = id_forms.agent_id(request.match_info["agent_id"])
    return model_response(await rt.catalog.agents.find(agent_id, _version(request)))


async def update_chat_agent(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    agent_id = id_forms.agent_id(request.match_info["agent_id"])
    current = await rt.catalog.agents.find(agent_id, _version(request))
    ensure_writable(request, "agent", agent_id)
    rt.catalog.agents.refuse_published(current)
    data = await read_object(request)
    data.pop("agent_id", None)
    stored = current.model_dump(exclude={"retell_llm", "conversation_flow"})
    agent = _agent_body({**stored, **data}, agent_id, _policy(request))
    agent = await _pin_llm(request, agent.model_copy(update={
        "version": current.version, "base_version": current.base_version}))
    return reported(await rt.catalog.agents.edit(agent))


async def delete_chat_agent(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    agent_id = id_forms.agent_id(request.match_info["agent_id"])
    await rt.catalog.agents.get(agent_id)
    ensure_writable(request, "agent", agent_id)
    users = [n.phone_number for n in await rt.catalog.numbers()
             if any(a.agent_id == agent_id for a in n.inbound_sms_agents + n.outbound_sms_agents)]
    if users:
        raise Conflict(f"agent {agent_id!r} answers on {', '.join(users)}: remove it from those numbers first")
    await rt.catalog.agents.delete(agent_id)
    return web.Response(status=204)


async def get_chat_agent_versions(request: web.Request) -> web.Response:
    """Every version in full (Parley's, older than Retell's paginated ``/list-agent-versions``)."""
    rt = request.app[RUNTIME]
    versions = await rt.catalog.agents.versions(id_forms.agent_id(request.match_info["agent_id"]))
    if not versions:
        raise NotFound(f"agent {request.match_info['agent_id']!r} not found")
    return model_response(list(versions))


async def _latest_all(store: Versioned[Any]) -> list[Any]:
    return [await store.get(object_id) for object_id in await store.ids()]


async def list_chat_agents(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    return model_response(await _latest_all(rt.catalog.agents))


async def list_agents_v2(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    ids, more, key = page_of_ids(await rt.catalog.agents.ids(), read_query(request, PageQuery), str)
    agents = [await rt.catalog.agents.get(i) for i in ids]
    items = [AgentListItem(agent_id=a.agent_id, agent_name=a.agent_name or "",
                           user_modified_timestamp=a.last_modification_timestamp) for a in agents]
    return model_response(AgentListResponse(items=items, has_more=more, pagination_key=key))


def _llm_body(data: dict[str, Any], llm_id: str, policy: OutboundPolicy) -> RetellLLM:
    clean = {k: v for k, v in data.items() if k not in READ_ONLY}
    llm = validated(RetellLLM, {**clean, "llm_id": llm_id})
    refuse(targets.llm_problems(llm, policy))
    return llm


async def create_retell_llm(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    data = await read_object(request)
    llm_id = given_id(data.pop("llm_id", ""), "llm_")
    if id_forms.is_object_id(llm_id) and await rt.catalog.llms.exists(llm_id):   # as in create_chat_agent
        raise Conflict(f"retell llm {llm_id!r} already exists")
    return reported(await rt.catalog.llms.create(_llm_body(data, llm_id, _policy(request))), status=201)


async def get_retell_llm(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    llm_id = id_forms.llm_id(request.match_info["llm_id"])
    return model_response(await rt.catalog.llms.find(llm_id, _version(request)))


async def update_retell_llm(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    llm_id = id_forms.llm_id(request.match_info["llm_id"])
    current = await rt.catalog.llms.find(llm_id, _version(request))
    ensure_writable(request, "retell llm", llm_id)
    rt.catalog.llms.refuse_published(current)
    data = await read_object(request)
    data.pop("llm_id", None)
    given = data.get("model_config")
    if isinstance(given, dict) and current.models is not None:
        # Retell's rule: each key of model_config given replaces the current one; the others are kept.
        data["model_config"] = {**current.models.model_dump(mode="json"), **given}
    llm = _llm_body({**current.model_dump(), **data}, llm_id, _policy(request))
    return reported(await rt.catalog.llms.edit(llm.model_copy(update={"version": current.version})))


async def delete_retell_llm(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    llm_id = id_forms.llm_id(request.match_info["llm_id"])
    await rt.catalog.llms.get(llm_id)
    ensure_writable(request, "retell llm", llm_id)
    users = [a.agent_id for a in await _latest_all(rt.catalog.agents)
             if a.response_engine is not None and a.response_engine.llm_id == llm_id]
    if users:
        raise Conflict(f"retell llm {llm_id!r} is the response engine of {', '.join(users)}: change those first")
    await rt.catalog.llms.delete(llm_id)
    return web.Response(status=204)


async def list_retell_llms(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    return model_response(await _latest_all(rt.catalog.llms))


async def list_retell_llms_v2(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    ids, more, key = page_of_ids(await rt.catalog.llms.ids(), read_query(request, PageQuery), str)
    items = [await rt.catalog.llms.get(i) for i in ids]
    return model_response(LLMListResponse(items=items, has_more=more, pagination_key=key))


async def get_mcp_tools(request: web.Request) -> web.Response:
    """``GET /get-mcp-tools/{agent_id}?mcp_id=``: the tools the agent's MCP server lists, asked now (the server's
    headers and query parameters rendered with the engine's ``default_dynamic_variables``). With
    ``component_id``, the server is one of that component's ``mcps``: a local component of the agent's flow
    (by name or id), else a shared one."""
    rt = request.app[RUNTIME]
    query = read_query(request, McpToolsQuery)
    agent = await rt.catalog.resolve(id_forms.agent_id(request.match_info["agent_id"]), query.version)
    engine = agent.engine
    servers, owner = engine.mcps, f"agent {agent.config.agent_id!r}"
    if query.component_id is not None:
        local = agent.flow.component(query.component_id) if agent.flow is not None else None
        component = local or await rt.catalog.get_component(id_forms.component_id(query.component_id))
        servers, owner = component.mcps, f"component {query.component_id!r}"
    server = next((s for s in servers if s.known_as(query.mcp_id)), None)
    if server is None:
        known = ", ".join(s.name for s in servers) or "none"
        raise NotFound(f"{owner} has no MCP server {query.mcp_id!r} (mcps: {known})")
    found = await mcp.list_tools(rt.http, server, engine.default_dynamic_variables)
    return model_response([McpToolDefinition(name=t.name, description=t.description, inputSchema=t.input_schema)
                           for t in found])


ROUTES = [
    Route("POST", "/create-chat-agent", create_chat_agent, "Create a chat agent", body=ChatAgent,
          response=ChatAgent, status=201, tag="chat agents", scope="admin", errors=(409,)),
    Route("GET", "/get-chat-agent/{agent_id}", get_chat_agent, "Get a chat agent (latest, or ?version=)",
          query=VersionQuery, response=ChatAgent, tag="chat agents", scope="read"),
    Route("PATCH", "/update-chat-agent/{agent_id}", update_chat_agent,
          "Update a draft version of a chat agent (the latest, or ?version=)", query=VersionQuery, body=ChatAgent,
          response=ChatAgent, tag="chat agents", scope="admin", errors=(409,)),
    Route("DELETE", "/delete-chat-agent/{agent_id}", delete_chat_agent, "Delete a chat agent", status=204,
          tag="chat agents", scope="admin", errors=(409,)),
    Route("GET", "/get-chat-agent-versions/{agent_id}", get_chat_agent_versions, "All versions of a chat agent",
          response=ChatAgent, many=True, tag="chat agents", scope="read"),
    Route("GET", "/list-chat-agents", list_chat_agents, "List chat agents (latest versions)", response=ChatAgent,
          many=True, tag="chat agents", scope="read"),
    Route("POST", "/v2/list-agents", list_agents_v2, "List agents, paginated", query=PageQuery,
          response=AgentListResponse, tag="chat agents", scope="read"),
    Route("POST", "/create-retell-llm", create_retell_llm, "Create a Retell LLM", body=RetellLLM,
          response=RetellLLM, status=201, tag="retell llms", scope="admin", errors=(409,)),
    Route("GET", "/get-retell-llm/{llm_id}", get_retell_llm, "Get a Retell LLM (latest, or ?version=)",
          query=VersionQuery, response=RetellLLM, tag="retell llms", scope="read"),
    Route("PATCH", "/update-retell-llm/{llm_id}", update_retell_llm,
          "Update a draft version of a Retell LLM (the latest, or ?version=)",
          query=VersionQuery, body=RetellLLM, response=RetellLLM, tag="retell llms", scope="admin", errors=(409,)),
    Route("DELETE", "/delete-retell-llm/{llm_id}", delete_retell_llm, "Delete a Retell LLM", status=204,
          tag="retell llms", scope="admin", errors=(409,)),
    Route("GET", "/list-retell-llms", list_retell_llms, "List Retell LLMs (latest versions)", response=RetellLLM,
          many=True, tag="retell llms", scope="read"),
    Route("GET", "/v2/list-retell-llms", list_retell_llms_v2, "List Retell LLMs, paginated", query=PageQuery,
          response=LLMListResponse, tag="retell llms", scope="read"),
    Route("GET", "/get-mcp-tools/{agent_id}", get_mcp_tools, "List the tools of an agent's MCP server",
          query=McpToolsQuery, response=McpToolDefinition, many=True, tag="chat agents", scope="read",
          errors=(404, 422, 502)),
]
