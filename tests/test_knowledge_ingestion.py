"""Ingestion in the background, on the real Redis: failing URL sources (refused by the outbound policy, a 404, too
large, the wrong content type) mark the knowledge base ``error`` with their reasons while the other sources stay
searchable; a process that stops mid-ingestion leaves the rest to the next one; two processes never ingest one
source twice; a new embedding model re-embeds the stored chunks instead of mixing vector spaces; a failing
embeddings endpoint leaves the sources pending and is tried again."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from service.app_state import RUNTIME

from .conftest import MakeParley, Parley, api_json
from .fakes.openai import HttpError
from .test_knowledge_api import until_done

TEXTS = [{"title": f"Topic {n}", "text": f"Fact number {n}: the {word} policy is explained here in full."}
         for n, word in enumerate(["refund", "parking", "holiday", "uniform", "badge", "locker"])]


async def kb_where(parley: Parley, kb_id: str, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The knowledge base once ``wanted`` holds of it."""
    async with asyncio.timeout(10):
        while True:
            kb: dict[str, Any] = await api_json(parley, "GET", f"/get-knowledge-base/{kb_id}")
            if wanted(kb):
                return kb
            await asyncio.sleep(0.02)


@pytest.fixture
async def bad_site() -> AsyncIterator[str]:
    app = web.Application()

    async def missing(_: web.Request) -> web.Response:
        return web.Response(status=404, text="no such page")

    async def big(_: web.Request) -> web.Response:
        return web.Response(text="word " * 5_000, content_type="text/plain")

    async def image(_: web.Request) -> web.Response:
        return web.Response(body=b"\x89PNG\r\n\x1a\n" + b"\0" * 64, content_type="image/png")

    async def inward(request: web.Request) -> web.Response:
        # A public page that sends the fetch to this machine by name: the policy refuses the redirect.
        raise web.HTTPFound(f"http://localhost:{request.url.port}/secret")

    app.router.add_get("/missing", missing)
    app.router.add_get("/big", big)
    app.router.add_get("/image.png", image)
    app.router.add_get("/inward", inward)
    async with TestServer(app) as server:
        yield str(server.make_url(""))


async def test_failing_urls_mark_the_knowledge_base_error_and_leave_the_rest_usable(
        make_parley: MakeParley, bad_site: str) -> None:
    parley = await make_parley(outbound_allow=["127.0.0.1"], knowledge_url_max_bytes=2_048)
    urls = [f"{bad_site}/missing", f"{bad_site}/big", f"{bad_site}/image.png", f"{bad_site}/inward"]
    created = await api_json(parley, "POST", "/create-knowledge-base", 201, json={
        "knowledge_base_name": "Mixed", "knowledge_base_urls": urls,
        "knowledge_base_texts": [{"title": "Refunds", "text": "Refunds are paid within 14 days of a return."}]})
    kb = await until_done(parley, created["knowledge_base_id"])
    assert kb["status"] == "error"
    by_url = {s.get("url"): s for s in kb["knowledge_base_sources"]}
    assert "answered HTTP 404" in by_url[urls[0]]["error_message"]
    assert "larger than 2048 bytes" in by_url[urls[1]]["error_message"]
    assert "'image/png'" in by_url[urls[2]]["error_message"]
    assert "redirect" in by_url[urls[3]]["error_message"] and "localhost" in by_url[urls[3]]["error_message"]
    assert all(by_url[u]["status"] == "error" and by_url[u]["chunk_count"] == 0 for u in urls)
    assert len(kb["error_messages"]) == 4
    assert by_url[None]["status"] == "complete"
    hits = await parley.client.app[RUNTIME].searcher.search([kb["knowledge_base_id"]], "When are refunds paid?")
    assert [h.title for h in hits] == ["Refunds"]


async def test_a_process_that_stops_mid_ingestion_leaves_the_rest_to_the_next(
        make_parley: MakeParley) -> None:
    first = await make_parley(knowledge_lease_ms=1_000)
    fake = first.llm
    fake.embed_delay_s = 0.3
    created = await api_json(first, "POST", "/create-knowledge-base", 201, json={
        "knowledge_base_name": "Handbook", "knowledge_base_texts": TEXTS})
    kb_id = created["knowledge_base_id"]
    await kb_where(first, kb_id, lambda kb: any(s["status"] == "complete" for s in kb["knowledge_base_sources"]))
    await first.client.close()   # the process stops: its ingestion loop is cancelled mid-source
    stopped = await api_json(await make_parley(run_workers=False), "GET", f"/get-knowledge-base/{kb_id}")
    done_before = {s["title"] for s in stopped["knowledge_base_sources"] if s["status"] == "complete"}
    assert stopped["status"] == "in_progress" and 0 < len(done_before) < len(TEXTS)

    fake.embed_delay_s = 0.0
    second = await make_parley(knowledge_lease_ms=1_000)
    kb = await until_done(second, kb_id)
    assert kb["status"] == "complete"
    assert all(s["chunk_count"] == 1 for s in kb["knowledge_base_sources"])
    embedded = Counter(text.split("\n")[0] for text in fake.embedded)
    assert all(embedded[title] == 1 for title in done_before), embedded   # finished work is not redone


async def test_two_processes_never_ingest_one_source_twice(make_parley: MakeParley) -> None:
    first = await make_parley()
    await make_parley()   # a second process on the same Redis, its ingestion loop running too
    first.llm.embed_delay_s = 0.05
    created = await api_json(first, "POST", "/create-knowledge-base", 201, json={
        "knowledge_base_name": "Handbook", "knowledge_base_texts": TEXTS})
    assert (await until_done(first, created["knowledge_base_id"]))["status"] == "complete"
    embedded = Counter(text.split("\n")[0] for text in first.llm.embedded)
    assert embedded == Counter({t["title"]: 1 for t in TEXTS})


async def test_a_new_embedding_model_re_embeds_the_stored_chunks(make_parley: MakeParley) -> None:
    first = await make_parley(embedding_model="fake-embed-a")
    created = await api_json(first, "POST", "/create-knowledge-base", 201, json={
        "knowledge_base_name": "Handbook", "knowledge_base_texts": TEXTS})
    kb_id = created["knowledge_base_id"]
    assert (await until_done(first, kb_id))["embedding_model"] == "fake-embed-a"
    await first.client.close()
    first.llm.embedded.clear()

    second = await make_parley(embedding_model="fake-embed-b", embedding_dimensions=128)
    await kb_where(second, kb_id, lambda kb: kb.get("embedding_model") == "fake-embed-b@128")
    assert sorted(t.split("\n")[0] for t in second.llm.embedded) == sorted(t["title"] for t in TEXTS)
    vectors = await second.redis.execute_command(  # type: ignore[no-untyped-call]
        "HGETALL", f"parley:{{kb:{kb_id}}}:vectors", NEVER_DECODE=True)
    assert {len(v) for v in vectors.values()} == {128 * 4}    # every vector is the new model's
    hits = await second.client.app[RUNTIME].searcher.search([kb_id], "What is the locker policy?")
    assert hits[0].title == "Topic 5" and hits[0].similarity > 0.3   # ~0 if model a's vectors were compared


async def test_a_failing_embeddings_endpoint_leaves_sources_pending_and_is_tried_again(parley: Parley) -> None:
    parley.llm.embed_error = HttpError(400, "model not found")   # not retried by the client
    created = await api_json(parley, "POST", "/create-knowledge-base", 201, json={
        "knowledge_base_name": "Handbook", "knowledge_base_texts": TEXTS[:1]})
    kb_id = created["knowledge_base_id"]
    kb = await kb_where(parley, kb_id, lambda kb: "model not found" in (
        kb["knowledge_base_sources"][0].get("error_message") or ""))
    source = kb["knowledge_base_sources"][0]
    assert kb["status"] == "in_progress" and source["status"] == "pending"
    parley.llm.embed_error = None
    await parley.redis.zadd("parley:{knowledge}:due", {kb_id: 0})   # the retry's time, brought forward
    assert (await until_done(parley, kb_id))["status"] == "complete"


async def test_a_knowledge_base_deleted_mid_ingestion_stays_deleted(parley: Parley) -> None:
    parley.llm.embed_delay_s = 0.2
    created = await api_json(parley, "POST", "/create-knowledge-base", 201, json={
        "knowledge_base_name": "Handbook", "knowledge_base_texts": TEXTS[:3]})
    kb_id = created["knowledge_base_id"]
    await kb_where(parley, kb_id, lambda kb: any(s["status"] == "complete" for s in kb["knowledge_base_sources"]))
    await api_json(parley, "DELETE", f"/delete-knowledge-base/{kb_id}", 204)
    await asyncio.sleep(0.8)   # the ingestion under way finishes its source, then finds the knowledge base gone
    assert not [k async for k in parley.redis.scan_iter(match=f"parley:{{kb:{kb_id}}}:*")]
    assert (await parley.api("GET", f"/get-knowledge-base/{kb_id}")).status == 404
    assert await parley.redis.zscore("parley:{knowledge}:due", kb_id) is None
    parley.llm.embed_delay_s = 0.0
    later = await api_json(parley, "POST", "/create-knowledge-base", 201, json={
        "knowledge_base_name": "Later", "knowledge_base_texts": TEXTS[3:4]})
    assert (await until_done(parley, later["knowledge_base_id"]))["status"] == "complete"   # the loop goes on


async def test_auto_refresh_fetches_url_sources_again_a_day_later(parley: Parley) -> None:
    page = {"text": "Opening hours: 9 to 5."}
    app = web.Application()

    async def hours(_: web.Request) -> web.Response:
        return web.Response(text=page["text"], content_type="text/plain")

    app.router.add_get("/hours", hours)
    async with TestServer(app) as server:
        created = await api_json(parley, "POST", "/create-knowledge-base", 201, json={
            "knowledge_base_name": "Site", "knowledge_base_urls": [str(server.make_url("/hours"))],
            "enable_auto_refresh": True})
        kb_id = created["knowledge_base_id"]
        first = await until_done(parley, kb_id)
        due = await parley.redis.zscore("parley:{knowledge}:due", kb_id)
        assert due == first["last_refreshed_timestamp"] + 86_400_000   # the next refresh, a day later
        page["text"] = "Opening hours: 7 to 7, every day."
        assert await parley.redis.zadd("parley:{knowledge}:due", {kb_id: 0}) == 0   # due early: nothing to do
        await asyncio.sleep(0.3)
        assert (await api_json(parley, "GET", f"/get-knowledge-base/{kb_id}")) == first
        stored = await parley.redis.hget(f"parley:{{kb:{kb_id}}}:kb", "record")
        assert stored is not None
        record = orjson.loads(stored)
        record["last_refreshed_timestamp"] -= 86_400_000   # the day has passed
        await parley.redis.hset(f"parley:{{kb:{kb_id}}}:kb", "record", orjson.dumps(record))
        await parley.redis.zadd("parley:{knowledge}:due", {kb_id: 0})
        kb = await kb_where(parley, kb_id, lambda kb: kb["last_refreshed_timestamp"] > first["last_refreshed_timestamp"]
                            and kb["status"] == "complete")
    chunks = await parley.redis.hvals(f"parley:{{kb:{kb_id}}}:chunks")
    assert len(chunks) == 1 and "every day" in chunks[0]
    assert kb["knowledge_base_sources"][0]["status"] == "complete"
