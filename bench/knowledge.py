"""Knowledge-base retrieval: ``.venv/bin/python -m bench.knowledge`` from the repository root (a minute or two).

Starts a redis-server of its own on a free port and the fake OpenAI server of ``tests/fakes/openai.py`` in this
process (its ``/v1/embeddings``: hashed bags of words, ``--dimensions`` long), then, for each size of
``--chunks`` (1,000 and 20,000), creates a knowledge base of synthetic but realistic product pages (a heading, a
SKU, a price, a paragraph of Zipf-distributed words: one chunk each) through ``KnowledgeBases.create`` and runs
``Ingestion.tick`` until it is complete, as ``parley serve`` would. It reports:

- ingestion time (read, chunk, embed through the local fake, store), and chunks per second;
- Redis memory per chunk (``INFO memory`` ``used_memory`` before and after: chunk text, term counts, vector);
- retrieval per question over ``--queries`` questions (half paraphrases of a page, half a SKU): p50 and p99 of
  the search as ``Searcher.search`` runs it once it has the question's vector (the version check in Redis, one
  round trip, and the ranking), the CPU of the ranking alone (``search.rank`` and ``search.top``: what a turn
  adds besides its round trips), the embeddings call for the question (to the local fake: a real endpoint's
  latency replaces it), and how often the page asked about came first;
- the first search after ingestion (loading the index into the process) and the process's resident memory it adds.

Prints one table and writes ``bench/results-knowledge.json`` (``--out``). Targets: p99 under 10 ms at 20,000
chunks, ranking CPU under 2 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web
from pydantic import SecretStr

from service.knowledge.bases import KnowledgeBases
from service.knowledge.embeddings import Embedder
from service.knowledge.index import terms
from service.knowledge.ingestion import Ingestion
from service.knowledge.models import CreateKnowledgeBase, KnowledgeBaseText
from service.knowledge.search import Searcher, rank, top
from service.knowledge.store import KnowledgeStore
from service.metrics import Metrics
from service.outbound import OutboundPolicy
from service.settings import Settings
from tests.fakes.openai import FakeOpenAI

from .procs import Procs, free_port, start_redis

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ta", "vo", "zi", "pe", "do", "sa", "gu", "fi", "be", "ho", "ly"]
KINDS = ["toothbrush", "floss", "mouthwash", "toothpaste", "retainer", "aligner", "whitening kit", "scaler",
         "mirror", "night guard", "water flosser", "brush head"]


def rss_kb() -> int:
    """This process's resident memory now (kB), from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def vocabulary(size: int, rng: random.Random) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def page(n: int, words: list[str], rng: random.Random) -> tuple[str, str]:
    """Product page ``n``: its SKU and its text (about 900 characters, one chunk)."""
    sku = f"SKU-{n:06d}"
    kind = KINDS[n % len(KINDS)]
    body = " ".join(words[min(int(rng.paretovariate(1.1)) - 1, len(words) - 1)] for _ in range(110))
    text = (f"## {kind.title()} model {n}\n\nThe {kind} model {n} ({sku}) costs ${10 + n % 190}.99 and ships in "
            f"{1 + n % 5} days. {body}.")
    return sku, text


async def measure(size: int, queries: int, dimensions: int, redis: aioredis.Redis, fake: FakeOpenAI,
                  settings: Settings) -> dict[str, Any]:
    rng = random.Random(size)
    words = vocabulary(5_000, rng)
    pages = [page(n, words, rng) for n in range(size)]
    store = KnowledgeStore(redis)
    metrics = Metrics()
    embedder = Embedder(settings, metrics)
    bases = KnowledgeBases(store, OutboundPolicy())
    await redis.flushdb()
    before = int((await redis.info("memory"))["used_memory"])
    per_source = 100
    texts = [KnowledgeBaseText(title=f"Catalogue part {s}", text="\n\n".join(t for _, t in pages[s:s + per_source]))
             for s in range(0, size, per_source)]
    started = time.perf_counter()
    async with aiohttp.ClientSession() as http:
        created = await bases.create(CreateKnowledgeBase(knowledge_base_name=f"bench {size}",
                                                         knowledge_base_texts=texts), [])
        ingestion = Ingestion(settings, store, embedder, http, metrics)
        while await ingestion.tick():
            pass
    ingest_s = time.perf_counter() - started
    kb_id = created.knowledge_base_id
    described = await store.response(kb_id)
    after = int((await redis.info("memory"))["used_memory"])
    assert described.status == "complete", described
    chunks = described.chunk_count

    searcher = Searcher(store, embedder, metrics)
    gc.collect()
    rss_before = rss_kb()
    first = time.perf_counter()
    await searcher.search([kb_id], "warm up")
    load_s = time.perf_counter() - first
    gc.collect()
    rss_after = rss_kb()

    wall: list[float] = []
    embed: list[float] = []
    cpu: list[float] = []
    right = 0
    for q in range(queries):
        n = rng.randrange(size)
        sku = pages[n][0]
        kind = KINDS[n % len(KINDS)]
        question = (f"how much is the {kind} model {n} and when does it ship?" if q % 2 == 0
                    else f"do you have {sku} in stock?")
        e0 = time.perf_counter()
        vector = (await embedder.embed([question]))[0]
        embed.append(time.perf_counter() - e0)
        # What Searcher.search does once it has the question's vector: the version check (one round trip), then
        # the ranking, timed in CPU too.
        t0 = time.perf_counter()
        (_, current), = await searcher.indexes([kb_id])
        c0 = time.process_time()
        hits = top(current, rank(current, vector, terms(question)), 3, 0.6, kb_id)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - t0)
        right += bool(hits) and sku in hits[0].text
    await embedder.close()
    wall.sort()
    cpu.sort()
    embed.sort()

    def pct(values: list[float], q: float) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 3)

    return {"chunks": chunks, "dimensions": dimensions, "ingest_s": round(ingest_s, 2),
            "chunks_per_s": round(chunks / ingest_s), "redis_bytes_per_chunk": round((after - before) / chunks),
            "first_search_load_ms": round(load_s * 1000, 1),
            "process_rss_mb_for_index": round((rss_after - rss_before) / 1024, 1),
            "search_p50_ms": pct(wall, 0.5), "search_p99_ms": pct(wall, 0.99),
            "embed_question_p50_ms": pct(embed, 0.5), "embed_question_p99_ms": pct(embed, 0.99),
            "rank_cpu_p50_ms": pct(cpu, 0.5), "rank_cpu_p99_ms": pct(cpu, 0.99),
            "right_page_first": round(right / queries, 3), "queries": queries}


async def run(args: argparse.Namespace, redis_port: int) -> list[dict[str, Any]]:
    fake = FakeOpenAI()
    runner = web.AppRunner(fake.app())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    settings = Settings(openai_api_key=SecretStr("sk-test"), openai_base_url=f"http://127.0.0.1:{port}/v1",
                        embedding_dimensions=args.dimensions, embedding_batch=256, knowledge_max_chunks=100_000)
    redis = aioredis.Redis(host="127.0.0.1", port=redis_port, decode_responses=True)
    try:
        results = []
        for size in args.chunks:
            results.append(await measure(size, args.queries, args.dimensions, redis, fake, settings))
            fake.embedded.clear()
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
        return results
    finally:
        await redis.aclose()
        await runner.cleanup()


def table(results: list[dict[str, Any]]) -> str:
    lines = ["chunks  dims  ingest s  chunks/s  Redis B/chunk  load ms  RSS MB  search p50/p99 ms  rank CPU p50/p99 ms"
             "  embed p50 ms  right first"]
    for r in results:
        lines.append(f"{r['chunks']:>6}  {r['dimensions']:>4}  {r['ingest_s']:>8}  {r['chunks_per_s']:>8}  "
                     f"{r['redis_bytes_per_chunk']:>13}  {r['first_search_load_ms']:>7}  "
                     f"{r['process_rss_mb_for_index']:>6}  {r['search_p50_ms']:>8} / {r['search_p99_ms']:<7}  "
                     f"{r['rank_cpu_p50_ms']:>9} / {r['rank_cpu_p99_ms']:<7}  {r['embed_question_p50_ms']:>12}  "
                     f"{r['right_page_first']:>10}")
    lines.append("targets: search p99 < 10 ms at 20,000 chunks; rank CPU (the turn's added CPU) < 2 ms")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.knowledge", description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, nargs="+", default=[1_000, 20_000])
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--dimensions", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results-knowledge.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        procs = Procs(Path(work))
        try:
            procs.handle_signals()
            redis_port = start_redis(procs, "redis", Path(work))
            results = asyncio.run(run(args, redis_port))
        finally:
            procs.stop_all()
    print(table(results))
    args.out.write_text(json.dumps({"command": "python -m bench.knowledge " + " ".join(argv or sys.argv[1:]),
                                    "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
