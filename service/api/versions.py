"""Retell's agent-version routes, for chat agents: a new draft from a version, publishing a draft, deleting
a version, listing them (paginated). The rules are ``catalog.store``'s; agents from files are read-only (409).

A version a phone number routes to (by number, ``latest`` or no version: the highest, ``latest_published``:
the newest published) cannot be deleted while it does (409 naming the numbers), nor an agent's only version.
"""

from __future__ import annotations

from aiohttp import web

from service.api import id_forms
from service.api.http import ensure_writable, model_response, page_of_ids, read_body, read_query
from service.api.openapi import Route
from service.app_state import RUNTIME
from service.catalog.store import Catalog
from service.errors import Conflict, InvalidRequest, NotFound
from service.retell.models import ChatAgent
from service.retell.requests import (
    AgentVersionItem,
    AgentVersionListResponse,
    CreateAgentVersionRequest,
    DeleteVersionQuery,
    PageQuery,
    PublishAgentVersionRequest,
)


async def _writable(request: web.Request) -> str:
    """The agent id of the path, of an agent that exists and is not declared in a file."""
    agent_id = id_forms.agent_id(request.match_info["agent_id"])
    await request.app[RUNTIME].catalog.agents.get(agent_id)
    ensure_writable(request, "agent", agent_id)
    return agent_id


async def create_agent_version(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    agent_id = await _writable(request)
    body = await read_body(request, CreateAgentVersionRequest)
    try:
        draft = await rt.catalog.draft_from(agent_id, body.base_version)
    except NotFound as exc:
        raise InvalidRequest(f"base_version: {exc}") from None
    return model_response(draft, status=201)


async def publish_agent_version(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    agent_id = await _writable(request)
    body = await read_body(request, PublishAgentVersionRequest)
    try:
        await rt.catalog.publish_version(agent_id, body.version, title=body.version_title,
                                         description=body.version_description)
    except NotFound as exc:
        raise InvalidRequest(f"version: {exc}") from None
    return web.Response(status=204)


async def delete_agent_version(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    agent_id = await _writable(request)
    version = read_query(request, DeleteVersionQuery).version
    users = await _routed_to(rt.catalog, agent_id, version)
    if users:
        raise Conflict(f"agent {agent_id!r} version {version} answers on {', '.join(users)}: point those numbers at "
                       "another version first")
    await rt.catalog.agents.delete_version(agent_id, version)
    return web.Response(status=204)


async def _routed_to(catalog: Catalog, agent_id: str, version: int) -> list[str]:
    """The numbers (and their listings) whose agent reference resolves to ``version`` of ``agent_id``."""
    users = []
    for number in await catalog.numbers():
        for listing in ("inbound_sms_agents", "outbound_sms_agents"):
            for ref in getattr(number, listing):
                if ref.agent_id != agent_id:
                    continue
                try:
                    routed = (await catalog.agents.find(agent_id, ref.agent_version)).version
                except NotFound:
                    continue
                if routed == version:
                    users.append(f"{number.phone_number} ({listing})")
    return users


async def list_agent_versions(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    agent_id = id_forms.agent_id(request.match_info["agent_id"])
    versions = {v.version: v for v in await rt.catalog.agents.versions(agent_id)}
    if not versions:
        raise NotFound(f"agent {agent_id!r} not found")
    page, more, key = page_of_ids(list(versions), read_query(request, PageQuery), _version_cursor)
    items = [_item(versions[v]) for v in page]
    return model_response(AgentVersionListResponse(items=items, has_more=more, pagination_key=key))


def _item(agent: ChatAgent) -> AgentVersionItem:
    return AgentVersionItem(version=agent.version, is_published=agent.is_published,
                            last_modification_timestamp=agent.last_modification_timestamp,
                            base_version=agent.base_version, version_title=agent.version_title,
                            version_description=agent.version_description)


def _version_cursor(key: str) -> int:
    if not key.isdigit():
        raise InvalidRequest(f"pagination_key: {key!r} is not a key this list handed out (a version number)")
    return int(key)


ROUTES = [
    Route("POST", "/create-agent-version/{agent_id}", create_agent_version,
          "Create a draft version of a chat agent from a base version (its Retell LLM version gets a draft too)",
          body=CreateAgentVersionRequest, response=ChatAgent, status=201, tag="chat agents", scope="admin",
          errors=(404, 409)),
    Route("POST", "/publish-agent-version/{agent_id}", publish_agent_version,
          "Publish a draft version of a chat agent in place, with its Retell LLM version",
          body=PublishAgentVersionRequest, status=204, tag="chat agents", scope="admin", errors=(404, 409)),
    Route("DELETE", "/delete-agent-version/{agent_id}", delete_agent_version, "Delete a version of a chat agent",
          query=DeleteVersionQuery, status=204, tag="chat agents", scope="admin", errors=(404, 409)),
    Route("GET", "/list-agent-versions/{agent_id}", list_agent_versions,
          "List a chat agent's versions, paginated", query=PageQuery, response=AgentVersionListResponse,
          tag="chat agents", scope="read", errors=(404,)),
]
