"""Retell's knowledge-base routes. Create and add-sources take ``multipart/form-data`` as Retell's SDK sends it (a
JSON body or a urlencoded form with the same fields is also taken, for texts and URLs): texts and URLs are stored
and the knowledge base scheduled; reading, chunking and embedding happen in the background (``knowledge.ingestion``),
so the answer is ``in_progress`` and ``GET /get-knowledge-base/{id}`` shows the progress.

A request's body, files included, is at most ``PARLEY_KNOWLEDGE_MAX_UPLOAD_BYTES`` (50 MiB by default; 413
beyond, counted as it arrives whatever the headers say) and must arrive within ``PARLEY_BODY_TIMEOUT_S`` plus a
second per MiB of that cap. Knowledge bases declared as folders (``agents/knowledge/``) are read-only here (409).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import orjson
from aiohttp import BodyPartReader, web

from service.api.http import json_response, model_response, read_object, validated
from service.api.openapi import Route
from service.app_state import RUNTIME, SETTINGS
from service.errors import Conflict, InvalidRequest, MalformedRequest, NotFound, RequestTimeout, TooLarge
from service.knowledge.bases import KnowledgeBases, Upload
from service.knowledge.models import MAX_FILES, AddSources, CreateKnowledgeBase, KnowledgeBaseResponse
from service.knowledge.store import Snapshot
from service.retell.models import OBJECT_ID_PATTERN

_ID = re.compile(OBJECT_ID_PATTERN)
_LISTS = ("knowledge_base_texts", "knowledge_base_urls")
MIB = 1024 * 1024


def _kb_id(request: web.Request) -> str:
    value = request.match_info["knowledge_base_id"]
    if not _ID.fullmatch(value):
        raise NotFound(f"knowledge base {value!r} not found: an id is 1 to 128 letters, digits, '_', '.' or '-'")
    return value


def _bases(request: web.Request) -> KnowledgeBases:
    return request.app[RUNTIME].knowledge


async def _read_part(part: BodyPartReader, budget: list[int], cap: int) -> bytes:
    data = bytearray()
    while chunk := await part.read_chunk(256 * 1024):
        budget[0] += len(chunk)
        if budget[0] > cap:
            raise TooLarge(f"the body is larger than {cap} bytes (PARLEY_KNOWLEDGE_MAX_UPLOAD_BYTES)")
        data += chunk
    return bytes(data)


def _list_field(name: str, values: list[str]) -> list[Any]:
    """A list field as Retell's SDK sends it (one part holding a JSON array), or as forms repeat it (one value a
    part: a URL, or a JSON object for a text)."""
    out: list[Any] = []
    for value in values:
        try:
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError:
            if name == "knowledge_base_texts":
                raise InvalidRequest(f"{name}: expected a JSON array of {{\"title\", \"text\"}} objects") from None
            parsed = value
        out += parsed if isinstance(parsed, list) else [parsed]
    return out


async def _multipart(request: web.Request) -> tuple[dict[str, Any], list[Upload]]:
    cap = request.app[SETTINGS].knowledge_max_upload_bytes
    fields: dict[str, list[str]] = {}
    files: list[Upload] = []
    budget = [0]
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise MalformedRequest("a nested multipart part is not taken")
        data = await _read_part(part, budget, cap)
        if part.filename is not None or part.name == "knowledge_base_files":
            if part.name != "knowledge_base_files":
                raise InvalidRequest(f"{part.name}: a file part must be named knowledge_base_files")
            files.append(Upload(part.filename or "upload.txt", data))
        else:
            fields.setdefault(part.name or "", []).append(data.decode("utf-8", "replace"))
    return _body_of(fields), files


async def _form(request: web.Request) -> tuple[dict[str, Any], list[Upload]]:
    if request.content_type == "multipart/form-data":
        return await _multipart(request)
    fields: dict[str, list[str]] = {}   # urlencoded (curl -d): no files, and within the app's 1 MiB body limit
    for name, value in (await request.post()).items():
        fields.setdefault(name, []).append(str(value))
    return _body_of(fields), []


def _body_of(fields: dict[str, list[str]]) -> dict[str, Any]:
    """A form's fields as the body's: list fields gathered, the boolean read, the others as given (the model
    converts numbers)."""
    body: dict[str, Any] = {}
    for name, values in fields.items():
        if name in _LISTS:
            body[name] = _list_field(name, values)
        elif name == "enable_auto_refresh":
            body[name] = {"true": True, "false": False}.get(values[-1].strip().lower(), values[-1])
        else:
            body[name] = values[-1]
    return body


async def _read(request: web.Request, model: type[CreateKnowledgeBase] | type[AddSources]) -> tuple[Any, list[Upload]]:
    """The body as ``model`` and its files: 413 past the cap, 408 when it does not arrive in time, 422 naming
    each wrong field, 400 for a body that is neither multipart nor JSON."""
    settings = request.app[SETTINGS]
    cap = settings.knowledge_max_upload_bytes
    if request.content_length is not None and request.content_length > cap:
        raise TooLarge(f"the body is {request.content_length} bytes; at most {cap} (PARLEY_KNOWLEDGE_MAX_UPLOAD_BYTES)")
    if request.content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        timeout_s = settings.body_timeout_s + cap / MIB
        try:
            async with asyncio.timeout(timeout_s):
                data, files = await _form(request)
        except TimeoutError:
            raise RequestTimeout(f"the body did not arrive within {timeout_s:g} s") from None
        except (ValueError, AssertionError, web.RequestPayloadError) as exc:   # aiohttp's multipart errors
            raise MalformedRequest(f"the form could not be read: {exc}") from None
    elif request.content_type in ("application/json", "application/octet-stream", ""):
        data, files = await read_object(request), []
    else:
        raise MalformedRequest(f"expected multipart/form-data (as Retell's SDK sends it), a urlencoded form or JSON, "
                               f"got {request.content_type}")
    if len(files) > MAX_FILES:
        raise InvalidRequest(f"knowledge_base_files: {len(files)} files; at most {MAX_FILES}")
    data.pop("knowledge_base_files", None)
    return validated(model, data, strict=False), files


def _writable(snap: Snapshot) -> None:
    if snap.record.declared_in:
        raise Conflict(f"knowledge base {snap.record.knowledge_base_id!r} is declared in {snap.record.declared_in}: "
                       "edit its files (it is read-only here)")


async def create_knowledge_base(request: web.Request) -> web.Response:
    body, files = await _read(request, CreateKnowledgeBase)
    return model_response(await _bases(request).create(body, files), status=201)


async def get_knowledge_base(request: web.Request) -> web.Response:
    return model_response(await _bases(request).store.response(_kb_id(request)))


async def list_knowledge_bases(request: web.Request) -> web.Response:
    store = _bases(request).store
    found = []
    for kb_id in await store.ids():
        try:
            found.append(await store.response(kb_id))
        except NotFound:   # deleted between the two reads
            continue
    return model_response(found)


async def delete_knowledge_base(request: web.Request) -> web.Response:
    store = _bases(request).store
    kb_id = _kb_id(request)
    _writable(await store.snapshot(kb_id))
    await store.delete(kb_id)
    return web.Response(status=204)


async def add_knowledge_base_sources(request: web.Request) -> web.Response:
    bases = _bases(request)
    kb_id = _kb_id(request)
    _writable(await bases.store.snapshot(kb_id))
    body, files = await _read(request, AddSources)
    return model_response(await bases.add(kb_id, body.knowledge_base_texts, body.knowledge_base_urls, files))


async def delete_knowledge_base_source(request: web.Request) -> web.Response:
    store = _bases(request).store
    kb_id = _kb_id(request)
    source_id = request.match_info["source_id"]
    snap = await store.snapshot(kb_id)
    _writable(snap)
    if source_id not in snap.sources:
        raise NotFound(f"knowledge base {kb_id!r} has no source {source_id!r}")
    await store.delete_source(kb_id, source_id)
    return json_response((await store.response(kb_id)).model_dump(mode="json", exclude_none=True))


ROUTES = [
    Route("POST", "/create-knowledge-base", create_knowledge_base,
          "Create a knowledge base (multipart/form-data: texts, URLs and files; ingested in the background)",
          multipart=CreateKnowledgeBase, response=KnowledgeBaseResponse, status=201, tag="knowledge bases",
          scope="admin"),
    Route("GET", "/get-knowledge-base/{knowledge_base_id}", get_knowledge_base,
          "Get a knowledge base: its status and sources", response=KnowledgeBaseResponse, tag="knowledge bases",
          scope="read"),
    Route("GET", "/list-knowledge-bases", list_knowledge_bases, "List knowledge bases",
          response=KnowledgeBaseResponse, many=True, tag="knowledge bases", scope="read"),
    Route("DELETE", "/delete-knowledge-base/{knowledge_base_id}", delete_knowledge_base, "Delete a knowledge base",
          status=204, tag="knowledge bases", scope="admin", errors=(409,)),
    Route("POST", "/add-knowledge-base-sources/{knowledge_base_id}", add_knowledge_base_sources,
          "Add sources to a knowledge base (multipart/form-data; ingested in the background)",
          multipart=AddSources, response=KnowledgeBaseResponse, tag="knowledge bases", scope="admin",
          errors=(409,)),
    Route("DELETE", "/delete-knowledge-base-source/{knowledge_base_id}/source/{source_id}",
          delete_knowledge_base_source, "Delete a source of a knowledge base", response=KnowledgeBaseResponse,
          tag="knowledge bases", scope="admin", errors=(409,)),
]
