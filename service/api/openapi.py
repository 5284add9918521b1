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

from service.retell.models import ErrorBody

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REF = "#/components/schemas/{model}"


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
    if route.body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": refs[(route.body, "validation")]}}}
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
        op["security"] = [{"bearer": []}]
        op["responses"]["401"] = {"description": "Missing or wrong API key", **error}
    if route.body is not None:
        op["responses"]["400"] = {"description": "The body is not JSON", **error}
        op["responses"]["422"] = {"description": "The body failed validation", **error}
    if "{" in route.path:
        op["responses"]["404"] = {"description": "No such object", **error}
    return op


def document(routes: list[Route]) -> dict[str, Any]:
    """The OpenAPI 3.1 document for ``routes``."""
    wanted: list[tuple[type[BaseModel], Any]] = [(ErrorBody, "serialization")]
    for route in routes:
        for model, mode in ((route.body, "validation"), (route.response, "serialization")):
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
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
