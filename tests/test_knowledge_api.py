"""Retell's knowledge-base routes, driven with the official retell-sdk against a live Parley on the real Redis:
create (texts, files, URLs), get, list, add sources, delete a source, delete; Retell's shape with Parley's
additive fields; bad requests refused naming what was wrong; ingestion in the background."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from retell import APIStatusError, AsyncRetell, NotFoundError, UnprocessableEntityError

from .conftest import MakeParley, Parley, api_json

DENTAL_MD = b"""# Bright Smile Dental

## Opening hours

We are open Monday to Friday from 8am to 6pm, and on Saturday from 9am to 1pm. We are closed on Sunday.

## Prices

A routine cleaning costs $120. Teeth whitening costs $350. A new-patient exam with x-rays costs $95.
"""


@pytest.fixture
async def site() -> AsyncIterator[str]:
    """A web site with a page about insurance, served on 127.0.0.1 (allowed in the tests' outbound policy)."""
    app = web.Application()

    async def insurance(_: web.Request) -> web.Response:
        return web.Response(text="<html><body><h1>Insurance</h1><p>We accept Delta Dental and Aetna PPO plans. "
                                 "Cigna HMO is not accepted.</p><script>var x = 1;</script></body></html>",
                            content_type="text/html")

    app.router.add_get("/insurance", insurance)
    async with TestServer(app) as server:
        yield str(server.make_url(""))


async def until_done(parley: Parley, kb_id: str, within_s: float = 15.0) -> dict[str, Any]:
    """The knowledge base once no source is pending."""
    async with asyncio.timeout(within_s):
        while True:
            kb: dict[str, Any] = await api_json(parley, "GET", f"/get-knowledge-base/{kb_id}")
            if kb["status"] not in ("in_progress", "refreshing_in_progress"):
                return kb
            await asyncio.sleep(0.05)


async def test_the_sdk_creates_reads_lists_extends_and_deletes_a_knowledge_base(
        parley: Parley, retell: AsyncRetell, site: str) -> None:
    created = await retell.knowledge_base.create(
        knowledge_base_name="Bright Smile", knowledge_base_texts=[
            {"title": "Parking", "text": "Free parking is behind the building on Oak Street."}],
        knowledge_base_files=[("dental.md", DENTAL_MD, "text/markdown")],
        knowledge_base_urls=[f"{site}/insurance"], enable_auto_refresh=True)
    assert created.status == "in_progress"
    assert created.knowledge_base_name == "Bright Smile" and created.enable_auto_refresh is True
    assert (created.max_chunk_size, created.min_chunk_size) == (2000, 400)
    assert {s.type for s in created.knowledge_base_sources or []} == {"text", "document", "url"}

    done = await until_done(parley, created.knowledge_base_id)
    assert done["status"] == "complete", done
    assert done["embedding_model"] == "text-embedding-3-small"
    assert done["last_refreshed_timestamp"] > 0
    sources = {s["type"]: s for s in done["knowledge_base_sources"]}
    assert sources["document"]["filename"] == "dental.md" and sources["document"]["file_size"] == len(DENTAL_MD)
    assert sources["text"]["title"] == "Parking"
    assert sources["url"]["url"] == f"{site}/insurance"
    assert all(s["status"] == "complete" and s["chunk_count"] >= 1 for s in sources.values())
    assert done["chunk_count"] == sum(s["chunk_count"] for s in sources.values())
    assert "error_messages" not in done

    fetched = await retell.knowledge_base.retrieve(created.knowledge_base_id)   # the SDK reads Retell's shape
    assert fetched.status == "complete"
    assert len(fetched.knowledge_base_sources or []) == 3
    listed = await retell.knowledge_base.list()
    assert [kb.knowledge_base_id for kb in listed] == [created.knowledge_base_id]

    extended = await retell.knowledge_base.add_sources(
        created.knowledge_base_id, knowledge_base_texts=[{"title": "Emergencies", "text": "Call 555-0100 at night."}])
    assert len(extended.knowledge_base_sources or []) == 4
    assert extended.status == "refreshing_in_progress"    # the rest stays searchable meanwhile
    assert (await until_done(parley, created.knowledge_base_id))["status"] == "complete"

    parking = sources["text"]["source_id"]
    after = await retell.knowledge_base.delete_source(parking, knowledge_base_id=created.knowledge_base_id)
    assert parking not in {s.source_id for s in after.knowledge_base_sources or []}
    chunks = await parley.redis.hkeys(f"parley:{{kb:{created.knowledge_base_id}}}:chunks")
    assert chunks and not any(c.startswith(parking + ":") for c in chunks)

    await retell.knowledge_base.delete(created.knowledge_base_id)
    with pytest.raises(NotFoundError):
        await retell.knowledge_base.retrieve(created.knowledge_base_id)
    assert await retell.knowledge_base.list() == []
    assert not [k async for k in parley.redis.scan_iter(match=f"parley:{{kb:{created.knowledge_base_id}}}:*")]


async def test_bad_requests_are_refused_naming_what_was_wrong(parley: Parley, retell: AsyncRetell) -> None:
    with pytest.raises(UnprocessableEntityError, match="knowledge_base_name"):
        await retell.knowledge_base.create(knowledge_base_name="x" * 40, knowledge_base_texts=[
            {"title": "t", "text": "x"}])
    with pytest.raises(UnprocessableEntityError, match=r"min_chunk_size \(500\) must be less than"):
        await retell.knowledge_base.create(knowledge_base_name="kb", min_chunk_size=500, max_chunk_size=500)
    with pytest.raises(UnprocessableEntityError, match=r"knowledge_base_files\[0\].*\.pdf"):
        await retell.knowledge_base.create(knowledge_base_name="kb", knowledge_base_files=[("a.exe", b"MZ")])
    with pytest.raises(UnprocessableEntityError, match="at most 25"):
        await retell.knowledge_base.create(knowledge_base_name="kb", knowledge_base_files=[
            (f"{n}.txt", b"text") for n in range(26)])
    with pytest.raises(UnprocessableEntityError, match=r"knowledge_base_urls\[0\].*private address"):
        await retell.knowledge_base.create(knowledge_base_name="kb", knowledge_base_urls=["http://10.1.2.3/x"])
    with pytest.raises(NotFoundError):
        await retell.knowledge_base.retrieve("no_such_kb")
    with pytest.raises(NotFoundError):
        await retell.knowledge_base.add_sources("no_such_kb", knowledge_base_texts=[{"title": "t", "text": "x"}])
    response = await parley.api("POST", "/create-knowledge-base", data="not a form",
                                headers={"Content-Type": "text/plain"})
    assert response.status == 400 and "multipart/form-data" in (await response.json())["message"]
    assert await retell.knowledge_base.list() == []


async def test_a_json_body_is_taken_too(parley: Parley) -> None:
    created = await api_json(parley, "POST", "/create-knowledge-base", 201, json={
        "knowledge_base_name": "FAQ", "knowledge_base_texts": [{"title": "Hours", "text": "Open 9 to 5."}],
        "max_chunk_size": 1000, "min_chunk_size": 100})
    assert created["max_chunk_size"] == 1000
    assert (await until_done(parley, created["knowledge_base_id"]))["status"] == "complete"


async def test_an_upload_past_the_cap_is_a_413(make_parley: MakeParley) -> None:
    parley = await make_parley(knowledge_max_upload_bytes=4096)
    async with AsyncRetell(api_key="test-api-key", base_url=str(parley.client.make_url("")).rstrip("/"),
                           max_retries=0) as client:
        with pytest.raises(APIStatusError) as caught:
            await client.knowledge_base.create(knowledge_base_name="kb", knowledge_base_files=[
                ("big.txt", b"word " * 2000)])
    assert caught.value.status_code == 413
    assert "PARLEY_KNOWLEDGE_MAX_UPLOAD_BYTES" in json.dumps(caught.value.body)


async def test_read_keys_read_and_only_admin_keys_change(make_parley: MakeParley) -> None:
    parley = await make_parley(scoped_api_keys='{"reader": "read", "writer": "write"}')
    for key, status in (("reader", 403), ("writer", 403)):
        response = await parley.client.post("/create-knowledge-base", json={"knowledge_base_name": "kb"},
                                            headers={"Authorization": f"Bearer {key}"})
        assert response.status == status
    listed = await parley.client.get("/list-knowledge-bases", headers={"Authorization": "Bearer reader"})
    assert listed.status == 200 and await listed.json() == []


async def test_a_form_may_repeat_its_list_fields_as_curl_sends_them(parley: Parley, site: str) -> None:
    form = aiohttp.FormData()
    form.add_field("knowledge_base_name", "Curl")
    form.add_field("knowledge_base_urls", f"{site}/insurance")
    form.add_field("knowledge_base_texts", '{"title": "Hours", "text": "Open 9 to 5."}')
    form.add_field("knowledge_base_files", b"# Prices\n\nCleaning: $120.", filename="prices.md",
                   content_type="text/markdown")
    form.add_field("enable_auto_refresh", "false")
    created = await api_json(parley, "POST", "/create-knowledge-base", 201, data=form)
    assert sorted(s["type"] for s in created["knowledge_base_sources"]) == ["document", "text", "url"]
    assert created["enable_auto_refresh"] is False
    bad = aiohttp.FormData()
    bad.add_field("knowledge_base_name", "Curl")
    bad.add_field("knowledge_base_texts", "not json")
    response = await parley.api("POST", "/create-knowledge-base", data=bad)
    assert response.status == 422 and "knowledge_base_texts" in (await response.json())["message"]
