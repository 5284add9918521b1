"""Routes as data, and the OpenAPI 3.1 document generated from the same pydantic models the handlers use.

Each route module lists its ``Route``s; ``api.routes`` gathers them, ``create_app`` registers them and
``GET /openapi.json`` serves ``document(routes)``. A route's ``body``, ``query`` and ``response`` models are
the ones its handler validates with, so the document cannot drift from the code.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from service.api.auth import roles_for
from service.retell.models import ErrorBody
from service.settings import Scope

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REF = "#/components/schemas/{model}"
SECURITY = (
    "An API key (`Authorization: Bearer <key>`) from PARLEY_API_KEYS, which gives each key a role, or "
    "PARLEY_API_KEY, whose keys are admin keys. Each operation's security names the least role it needs: "
    "`read` keys call the routes that only read (GET routes, and list routes that are POST by Retell's design); "
    "`write` keys also create chats, send texts and end chats; `admin` keys also manage agents, LLMs, numbers, "
    "delete chats and clear opt-outs. The `webhook` key calls no route: it signs what Parley sends "
    "(X-Retell-Signature). A missing or unknown key is 401; a known key whose role may not call the route is 403."
)


@dataclass(frozen=True)
class Route:
    """One HTTP route: what it takes and what it returns."""

    method: str
    path: str
    handler: Handler
    summary: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    many: bool = False           # the response is a JSON array of ``response``
    status: int = 200
    public: bool = False         # no bearer key (Twilio, health checks, this document)
    tag: str = "chats"
    # The least role a key needs (admin ⊃ write ⊃ read; ``service/api/auth.py``). Write unless the route only
    # reads: a new route is never open to read-only keys by accident.
    scope: Scope = "write"
    # Statuses the route answers beyond those its shape implies (``_implied``): a chat named in the body (404),
    # a state or a read-only object (409), a daily limit (429), Twilio refusing a send (502)...
    errors: tuple[int, ...] = ()
    # A Twilio webhook's form (application/x-www-form-urlencoded, signed with X-Twilio-Signature), documented from
    # this model; the handler reads it with ``twilio.form.read_form``.
    form: type[BaseModel] | None = None
    # A multipart/form-data body (file uploads: the knowledge-base routes), documented from this model; the handler
    # reads it itself (``api.knowledge``). A JSON body of the same fields is documented too.
    multipart: type[BaseModel] | None = None


# What each error status means, wherever it is answered.
ERRORS = {
    400: "The body is not JSON (a webhook: not the form expected; a delete: the object is still in use)",
    401: "Missing or wrong API key",
    403: "Forbidden (a webhook: invalid X-Twilio-Signature)", 404: "No such object",
    408: "The body did not arrive within PARLEY_BODY_TIMEOUT_S", 409: "The object is read-only or in the wrong state",
    413: "The body is too large", 422: "The body or the query failed validation",
    429: "The number's daily segment limit would be passed", 502: "Twilio refused or failed the send",
    503: "Storage (Redis) is unavailable: try again",
}
TEXT = {"content": {"text/plain": {"schema": {"type": "string"}}}}   # the webhooks' errors are plain text
SIGNATURE = {"name": "X-Twilio-Signature", "in": "header", "required": True, "schema": {"type": "string"}}


def _implied(route: Route) -> set[int]:
    """The error statuses a route answers because of its shape: its body, its query, its path, its bearer key."""
    implied = set() if route.public else {503}
    if route.body is not None or route.form is not None or route.multipart is not None:
        implied |= {400, 408, 413} if route.form is not None else {400, 408, 413, 422}
    if route.query is not None:
        implied.add(422)
    if "{" in route.path:
        implied.add(404)
    return implied


def _request_body(route: Route, refs: dict[Any, dict[str, Any]]) -> dict[str, Any] | None:
    if route.body is not None:   # an empty body is {}: required only when {} is not a valid body
        return {"required": bool(route.body.model_json_schema().get("required")),
                "content": {"application/json": {"schema": refs[(route.body, "validation")]}}}
    if route.form is not None:
        return {"required": True, "content": {"application/x-www-form-urlencoded": {
            "schema": refs[(route.form, "validation")]}}}
    if route.multipart is not None:
        schema = refs[(route.multipart, "validation")]
        return {"required": True, "content": {"multipart/form-data": {"schema": schema},
                                              "application/json": {"schema": schema}}}
    return None


def _operation(route: Route, refs: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": route.summary, "operationId": route.handler.__name__, "tags": [route.tag]}
    params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
              for name in re.findall(r"{(\w+)}", route.path)]
    if route.query is not None:
        properties = route.query.model_json_schema()["properties"]
        for name, field in route.query.model_fields.items():
            params.append({"name": name, "in": "query", "required": field.is_required(),
                           "schema": properties[name]})
    if params:
        op["parameters"] = params
    if (body := _request_body(route, refs)) is not None:
        op["requestBody"] = body
    if route.form is not None:
        op["parameters"] = [*op.get("parameters", []), SIGNATURE]
    if route.response is None:
        ok: dict[str, Any] = {"description": "Done (no content)" if route.status == 204 else "OK"}
    else:
        schema = refs[(route.response, "serialization")]
        if route.many:
            schema = {"type": "array", "items": schema}
        ok = {"description": "OK", "content": {"application/json": {"schema": schema}}}
    error = {"content": {"application/json": {"schema": refs[(ErrorBody, "serialization")]}}}
    op["responses"] = {str(route.status): ok}
    if not route.public:
        # OpenAPI 3.1 lets a bearer requirement name the roles it needs.
        op["security"] = [{"bearer": [route.scope]}]
        op["x-parley-scope"] = route.scope
        op["responses"]["401"] = {"description": "Missing or wrong API key", **error}
        roles = " or ".join(roles_for(route.scope))
        op["responses"]["403"] = {"description": f"The key's role may not call this route (it needs {roles})",
                                  **error}
    if route.body is not None or route.multipart is not None:
        op["responses"]["400"] = {"description": "The body is not JSON" if route.multipart is None
                                  else "The body is neither multipart/form-data nor JSON", **error}
        op["responses"]["422"] = {"description": "The body failed validation", **error}
    if "{" in route.path:
        op["responses"]["404"] = {"description": "No such object", **error}
    for status in sorted(_implied(route) | set(route.errors)):
        op["responses"].setdefault(str(status), {"description": ERRORS[status], **(TEXT if route.public else error)})
    return op


def document(routes: list[Route]) -> dict[str, Any]:
    """The OpenAPI 3.1 document for ``routes``."""
    wanted: list[tuple[type[BaseModel], Any]] = [(ErrorBody, "serialization")]
    for route in routes:
        for model, mode in ((route.body, "validation"), (route.form, "validation"), (route.multipart, "validation"),
                            (route.response, "serialization")):
            if model is not None and (model, mode) not in wanted:
                wanted.append((model, mode))
    refs, top = models_json_schema(wanted, ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, refs)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Parley", "version": "1", "description": "Retell-compatible SMS chat agent API."},
        "paths": paths,
        "components": {"schemas": top.get("$defs", {}),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": SECURITY}}},
    }
