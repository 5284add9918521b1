"""Agents, numbers and opt-outs: see them, publish an agent's draft, clear an opt-out.

Editing agents stays in their files and the API. An agent's page shows it as Parley runs it (its JSON, the engine
it names, what Parley keeps without acting on: ``retell.unsupported``) and which numbers route to it. Publishing
and clearing call what the API's handlers call (``Catalog.publish_version``, ``OptOuts.clear_by_operator``), with
the API routes' scope (admin) and refusals (an agent declared in a file is read-only here too).
"""

from __future__ import annotations

import orjson
from aiohttp import web

from service.api.http import Handler, status_of
from service.app_state import FILES, RUNTIME
from service.console.pages import render
from service.console.sessions import require, session_of
from service.errors import Conflict, InvalidRequest, NotFound, ParleyError
from service.retell.unsupported import unsupported


async def agents_page(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    agents = [await rt.catalog.agents.get(agent_id) for agent_id in sorted(await rt.catalog.agents.ids())]
    return render(request, "agents.html", agents=agents)


async def agent_page(request: web.Request, *, error: str = "", status: int = 200) -> web.Response:
    rt = request.app[RUNTIME]
    agent_id = request.match_info["agent_id"]
    try:
        versions = await rt.catalog.agents.versions(agent_id)
    except NotFound:
        versions = []
    if not versions:
        raise web.HTTPNotFound(text=f"agent {agent_id!r} not found")
    latest = versions[-1]
    engine_problems: list[str] = []
    try:
        engine = (await rt.catalog.resolve(agent_id, latest.version)).engine
        engine_json = orjson.dumps(engine.model_dump(mode="json", exclude_none=True), option=orjson.OPT_INDENT_2)
        engine_problems = unsupported(engine)
    except ParleyError as exc:
        engine_json, engine_problems = b"", [f"engine: {exc}"]
    numbers = [n for n in await rt.catalog.numbers()
               if agent_id in {a.agent_id for a in [*n.inbound_sms_agents, *n.outbound_sms_agents]}]
    return render(request, "agent.html", status=status, agent=latest, versions=versions, numbers=numbers,
                  agent_json=orjson.dumps(latest.model_dump(mode="json", exclude_none=True),
                                          option=orjson.OPT_INDENT_2).decode(),
                  engine_json=engine_json.decode(), report=unsupported(latest) + engine_problems,
                  declared=request.app[FILES].declared_in("agent", agent_id), error=error,
                  may_publish=session_of(request).may("admin"))


async def publish(request: web.Request) -> web.Response:
    """``POST /console/agents/{agent_id}/publish``: ``POST /publish-agent-version``'s act (scope admin)."""
    require(request, "admin")
    rt, agent_id = request.app[RUNTIME], request.match_info["agent_id"]
    try:
        version = int(str((await request.post()).get("version", "")))
        declared = request.app[FILES].declared_in("agent", agent_id)
        if declared is not None:
            raise Conflict(f"agent {agent_id!r} is declared in {declared}: edit the file (it is read-only here)")
        await rt.catalog.publish_version(agent_id, version)
    except ValueError:
        return await agent_page(request, error="version: expected a version number", status=422)
    except ParleyError as exc:
        return await agent_page(request, error=str(exc), status=status_of(exc))
    raise web.HTTPSeeOther(f"/console/agents/{agent_id}")


async def numbers_page(request: web.Request) -> web.Response:
    numbers = sorted(await request.app[RUNTIME].catalog.numbers(), key=lambda n: n.phone_number)
    return render(request, "numbers.html", numbers=numbers)


async def optouts_page(request: web.Request, *, error: str = "", status: int = 200) -> web.Response:
    search = request.query.get("q", "").strip()
    digits = "".join(c for c in search if c.isdigit())
    rows = await request.app[RUNTIME].optouts.all()
    if digits:
        rows = [o for o in rows if digits in o.user_number or digits in o.agent_number]
    return render(request, "optouts.html", status=status, rows=list(reversed(rows)), search=search, error=error,
                  may_clear=session_of(request).may("admin"))


async def clear_optout(request: web.Request) -> web.Response:
    """``POST /console/opt-outs/clear``: ``POST /clear-opt-out``'s act (scope admin), with the stated consent."""
    require(request, "admin")
    form = await request.post()
    from_number, to_number, consent = (str(form.get(name, "")).strip() for name in ("from_number", "to_number",
                                                                                       "consent"))
    try:
        if not consent:
            raise InvalidRequest("consent: required; say how the user agreed to get texts again")
        await request.app[RUNTIME].optouts.clear_by_operator(from_number, to_number, consent)
    except ParleyError as exc:
        return await optouts_page(request, error=str(exc), status=status_of(exc))
    raise web.HTTPSeeOther("/console/opt-outs")


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/agents", agents_page),
    ("GET", "/agents/{agent_id}", agent_page),
    ("POST", "/agents/{agent_id}/publish", publish),
    ("GET", "/numbers", numbers_page),
    ("GET", "/opt-outs", optouts_page),
    ("POST", "/opt-outs/clear", clear_optout),
]
