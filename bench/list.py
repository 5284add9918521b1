"""List latency at 100k chats: ``.venv/bin/python -m bench.list`` from the repository root (about a minute).

Starts a redis-server of its own on a free port (``--save "" --appendonly no``) and writes ``--chats``
(100,000) chats with exactly the keys Parley's ``Chats.create`` writes (hashes, the partition indexes, the
conversation pointers), on one connection (``write_chats``; ``tests/test_bench_list.py`` holds the two equal).
Then starts Parley (``python -m service serve --web-only``: the REST API, no workers) on that Redis and
measures ``POST /v3/list-chats`` from this process, one call at a time (except the line that says
concurrent), for 50-item pages: the first page, every page of the listing following the keys (so the middle
and the end), filtered by agent (its own index), by status and type, by retell-sdk's newer filters (direction,
disconnection reason, end day, one user), and with filters no index serves. Each line gives p50 / p99 / max
over its calls, the Redis commands a call cost (``INFO commandstats``; Parley is
the only client meanwhile) and Parley's CPU per call. The first filtered call is reported apart: once per
partition it makes sure chats written before the secondary indexes existed are indexed (here, as in a
deployment that always ran them, that is only the chats of the first hour). ``--reindex`` measures an
upgrade's worst case instead: the markers are deleted first, so every chat is indexed again. Prints one
table with the target line, and writes ``bench/results-list.json`` (``--out``). Every process is stopped on
exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from functools import partial
from itertools import chain
from pathlib import Path
from typing import Any

import aiohttp
import hiredis
import orjson
import redis.asyncio as aioredis
import yaml

from service.chats.model import Chat, ChatStatus, ChatType, Direction, EndReason
from service.chats.store import listing_indexes
from service.clock import now_ms
from service.storage import keys

from .procs import ROOT, Procs, cpu_seconds, free_port, python_module, start_redis, wait_http

API_KEY = "bench-api-key"
AGENT_NUMBER = "+15035550100"
TARGET_MS = 50.0
TARGET = f"p99 < {TARGET_MS:g} ms for a 50-item page"
OUT = ROOT / "bench" / "results-list.json"
AGENTS = [f"agent_{i:02d}" for i in range(20)]      # agent_00 has a tenth of the chats, the others share the rest
RARE_AGENT = "agent_rare"                            # 0.1 % of the chats
TTL_S = 30 * 86_400                                  # Parley's default chat_ttl_s
SPREAD_MS = 7 * 86_400_000                           # chats started over the last week


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def a_chat(n: int, rng: random.Random, now: int) -> Chat:
    """Chat ``n``: 80 % SMS (in its conversation's partition, as Parley draws it), 5 % still ongoing."""
    roll = rng.random()
    agent = RARE_AGENT if roll < 0.001 else AGENTS[0] if roll < 0.1 else rng.choice(AGENTS[1:])
    sms = rng.random() < 0.8
    user = f"+1415{n:07d}"
    conv = keys.Conversation(AGENT_NUMBER, user)
    start = now - rng.randrange(SPREAD_MS)
    ongoing = rng.random() < 0.05
    return Chat(chat_id=keys.new_chat_id(conv.shard if sms else None), agent_id=agent, version=rng.randrange(3),
                chat_type=ChatType.SMS if sms else ChatType.API, start_timestamp=start,
                chat_status=ChatStatus.ONGOING if ongoing else ChatStatus.ENDED,
                from_number=user if sms else None, to_number=AGENT_NUMBER if sms else None,
                direction=Direction.INBOUND if sms else None,
                end_timestamp=None if ongoing else start + rng.randrange(60_000, 3_600_000),
                disconnection_reason=None if ongoing else EndReason.INACTIVITY.value,
                dynamic_variables={"user_number": user}, metadata={"campaign": "bench", "n": n})


async def write_chats(port: int, chats: list[Chat], *, host: str = "127.0.0.1", db: int = 0,
                      ttl_s: int = TTL_S) -> None:
    """Write ``chats`` with the keys ``Chats.create`` writes (``tests/test_bench_list.py`` holds them equal): the
    hash (TTL), the conversation's pointer (TTL), the partition's indexed-since marker and each index's members,
    then each index's TTL once. Trims are
    left out: every chat here starts within chat_ttl_s. The commands are encoded by hiredis and sent on one
    connection (database ``db`` of ``host``:``port``), 2,000 chats at a time; through redis-py's pipelines they
    would take most of the run."""
    reader, writer = await asyncio.open_connection(host, port)
    replies = hiredis.Reader()
    indexes: set[str] = set()

    async def send(commands: list[tuple[Any, ...]]) -> None:
        writer.write(b"".join(hiredis.pack_command(c) for c in commands))
        await writer.drain()
        for _ in commands:
            reply = replies.gets()
            while reply is False:
                replies.feed(await reader.read(1 << 16))
                reply = replies.gets()
            if isinstance(reply, hiredis.ReplyError):
                raise RuntimeError(f"Redis refused a write: {reply}")

    try:
        await send([("SELECT", db)])
        for first in range(0, len(chats), 2_000):
            commands: list[tuple[Any, ...]] = []
            members: dict[str, list[Any]] = {}
            for chat in chats[first:first + 2_000]:
                chat.touched_ms = chat.start_timestamp
                commands.append(("HSET", keys.chat(chat.chat_id), *chain.from_iterable(chat_hash(chat).items())))
                commands.append(("EXPIRE", keys.chat(chat.chat_id), ttl_s))
                if chat.conversation is not None:
                    commands.append(("SET", keys.current_chat(chat.conversation), chat.chat_id, "EX", ttl_s))
                for index in chat_indexes(chat):
                    members.setdefault(index, []).extend((chat.start_timestamp, chat.chat_id))
                marker = keys.chats_indexed(keys.shard_of(chat.chat_id))
                commands += [("SET", marker, chat.start_timestamp, "NX"), ("EXPIRE", marker, ttl_s)]
            await send(commands + [("ZADD", index, *scored) for index, scored in members.items()])
            indexes |= members.keys()
            if first % 20_000 == 0:
                print(f"  {first:,} chats written", file=sys.stderr)
        await send([("EXPIRE", index, ttl_s) for index in indexes - {keys.chats(s) for s in range(keys.SHARDS)}])
    finally:
        writer.close()
        await writer.wait_closed()


CHAT_FIELDS = [f.name for f in fields(Chat)]


def chat_hash(chat: Chat) -> dict[str, str]:
    """``chat.to_hash()``, without ``dataclasses.asdict``'s deep copies (which cost more than the write)."""
    return {name: orjson.dumps(value).decode() if isinstance(value, dict | list) else str(value)
            for name in CHAT_FIELDS if (value := getattr(chat, name)) is not None and value != []}


def chat_indexes(chat: Chat) -> list[str]:
    """The listing indexes ``Chats.create`` puts ``chat`` in."""
    return listing_indexes(chat)


def make_chats(count: int, seed: int = 11) -> list[Chat]:
    """``count`` chats, oldest first (the order Parley creates them in)."""
    rng, now = random.Random(seed), now_ms()
    return sorted((a_chat(n, rng, now) for n in range(count)), key=lambda chat: chat.start_timestamp)


@dataclass
class Line:
    """One measured scenario."""

    name: str
    latencies_ms: list[float] = field(default_factory=list)
    items: int = 0
    commands: int = 0
    parley_cpu_s: float = 0.0
    concurrency: int = 1

    def summary(self) -> dict[str, Any]:
        calls = len(self.latencies_ms)
        return {"name": self.name, "calls": calls, "concurrency": self.concurrency,
                "p50_ms": round(percentile(self.latencies_ms, 50), 2),
                "p99_ms": round(percentile(self.latencies_ms, 99), 2),
                "max_ms": round(max(self.latencies_ms), 2),
                "items_per_call": round(self.items / calls, 1),
                "redis_cmds_per_call": round(self.commands / calls, 1),
                "parley_cpu_ms_per_call": round(self.parley_cpu_s * 1000 / calls, 2),
                "meets_target": percentile(self.latencies_ms, 99) < TARGET_MS}


class Client:
    """Calls Parley's list route and counts the Redis commands it made (Parley is Redis's only other client)."""

    def __init__(self, session: aiohttp.ClientSession, base: str, redis: aioredis.Redis, parley_pid: int) -> None:
        self._session, self._url, self._redis = session, base + "/v3/list-chats", redis
        self._pid = parley_pid

    async def call(self, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        started = time.perf_counter()
        async with self._session.post(self._url, json=body,
                                      headers={"Authorization": f"Bearer {API_KEY}"}) as response:
            page: dict[str, Any] = await response.json()
            if response.status != 200:
                raise RuntimeError(f"list-chats answered {response.status}: {page}")
        return (time.perf_counter() - started) * 1000, page

    async def commands(self) -> int:
        stats: dict[str, Any] = await self._redis.info("commandstats")
        return sum(int(v["calls"]) for k, v in stats.items() if k not in ("cmdstat_info", "cmdstat_config"))

    async def measure(self, line: Line, run: Callable[[Line], Awaitable[None]]) -> dict[str, Any]:
        await self._redis.config_resetstat()
        cpu = cpu_seconds(self._pid)
        await run(line)
        line.parley_cpu_s = cpu_seconds(self._pid) - cpu
        line.commands = await self.commands()
        result = line.summary()
        print(f"  {line.name}: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms", file=sys.stderr)
        return result

    async def walk(self, line: Line, *, body: dict[str, Any], pages: int) -> None:
        """Up to ``pages`` pages following the keys, again from the start when the listing ends."""
        key: str | None = None
        for _ in range(pages):
            ms, page = await self.call({**body, **({"pagination_key": key} if key else {})})
            line.latencies_ms.append(ms)
            line.items += len(page["items"])
            key = page.get("pagination_key") if page["has_more"] else None

    async def repeat(self, line: Line, body: dict[str, Any], calls: int) -> None:
        for _ in range(calls):
            ms, page = await self.call(body)
            line.latencies_ms.append(ms)
            line.items += len(page["items"])


def agent_filter(*agent_ids: str) -> dict[str, Any]:
    return {"agent": [{"agent_id": a} for a in agent_ids]}


def enum(*values: str) -> dict[str, Any]:
    return {"type": "enum", "op": "in", "value": list(values)}


async def scenarios(client: Client, chats: int, calls: int) -> list[dict[str, Any]]:
    page: dict[str, Any] = {"limit": 50}
    pages = chats // 50
    walk = Line(f"every page, following keys ({pages:,} pages)")
    results = [await client.measure(Line("first page (newest 50)"), lambda line: client.repeat(line, page, calls)),
               await client.measure(walk, partial(client.walk, body=page, pages=pages))]
    # The same walk, by depth: a page's cost must not depend on how far in it is.
    for name, part in (("pages 1-100", slice(0, 100)), (f"pages {pages // 2 - 49:,}-{pages // 2 + 50:,} (middle)",
                                                       slice(pages // 2 - 50, pages // 2 + 50)),
                       ("the last 100 pages", slice(pages - 100, pages))):
        # Commands and CPU are counted per line, not per page: these parts of the walk show none.
        results.append(Line(f"  {name}", walk.latencies_ms[part], 50 * 100).summary() | {
            "redis_cmds_per_call": "-", "parley_cpu_ms_per_call": "-"})
    by_agent = {**page, "filter_criteria": agent_filter(AGENTS[7])}
    walks = [
        ("ascending, following keys", {**page, "sort_order": "ascending"}),
        (f"agent filter ({AGENTS[7]}, ~4.7 %), following keys", by_agent),
        ("agent filter, rare agent (0.1 %), following keys", {**page, "filter_criteria": agent_filter(RARE_AGENT)}),
        ("status ongoing (~5 %), following keys", {**page, "filter_criteria": {"chat_status": enum("ongoing")}}),
        ("type api_chat (~20 %), following keys", {**page, "filter_criteria": {"chat_type": enum("api_chat")}}),
        ("status ended (no index: checked per chat)", {**page, "filter_criteria": {"chat_status": enum("ended")}}),
        ("agent + version (no index for the version)",
         {**page, "filter_criteria": {"agent": [{"agent_id": AGENTS[7], "version": [1]}]}}),
        # retell-sdk's newer filters, each from its own index.
        ("direction inbound (~80 %), following keys", {**page, "filter_criteria": {"direction": enum("inbound")}}),
        ("disconnection_reason inactivity (~95 %), following keys",
         {**page, "filter_criteria": {"disconnection_reason": enum(EndReason.INACTIVITY.value)}}),
        ("end_timestamp in the last day (~14 %), following keys", {**page, "filter_criteria": {"end_timestamp": {
            "type": "number", "op": "ge", "value": now_ms() - 86_400_000}}}),
        ("user_number eq (one user's chat)", {**page, "filter_criteria": {
            "user_number": {"type": "string", "op": "eq", "value": "+14150000007"}}}),
    ]
    for name, body in walks:
        results.append(await client.measure(Line(name), partial(client.walk, body=body, pages=calls)))
    results.append(await client.measure(Line("agent filter + include_total (first page)"), lambda line: client.repeat(
        line, {**by_agent, "include_total": True}, calls)))

    async def concurrent(line: Line) -> None:
        await asyncio.gather(*(client.walk(line, body=page, pages=calls) for _ in range(3)))
    results.append(await client.measure(Line("3 concurrent walkers, following keys", concurrency=3), concurrent))
    return results


def write_agents(directory: Path) -> None:
    directory.mkdir()
    agent = {"agent_name": "Bench", "retell_llm": {"model": "gpt-test", "general_prompt": "You are the front desk."}}
    (directory / "bench.yaml").write_text(yaml.safe_dump(agent))
    (directory / "phone-numbers.yaml").write_text(yaml.safe_dump([
        {"phone_number": AGENT_NUMBER, "inbound_sms_agents": [{"agent_id": "bench", "weight": 1}]}]))


def parley_env(work_dir: Path, redis_port: int, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "TWILIO_", "OPENAI_", "REDIS_"))}
    env.update({
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "PARLEY_HOST": "127.0.0.1", "PARLEY_PORT": str(port),
        "PARLEY_API_KEY": API_KEY, "PARLEY_AGENTS_DIR": str(work_dir / "agents"),
        "PARLEY_DATA_DIR": str(work_dir / "var"), "PARLEY_LOG_LEVEL": "WARNING",
        "PARLEY_PUBLIC_URL": "http://bench.local", "OPENAI_API_KEY": "sk-test",
        "TWILIO_ACCOUNT_SID": "AC" + "be" * 16, "TWILIO_AUTH_TOKEN": "bench-auth-token",
    })
    return env


def table(results: dict[str, Any]) -> str:
    lines = [f"Parley list latency: {results['chats']:,} chats, 50-item pages, POST /v3/list-chats "
             f"(written in {results['write_s']} s)", ""]
    lines.append(f"{'scenario':<52} {'calls':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'items':>6} "
                 f"{'cmds':>6} {'cpu ms':>7}")
    for r in results["lines"]:
        name = r["name"] + (f" x{r['concurrency']}" if r["concurrency"] > 1 else "")
        lines.append(f"{name:<52} {r['calls']:>6} {r['p50_ms']:>8} {r['p99_ms']:>8} {r['max_ms']:>8} "
                     f"{r['items_per_call']:>6} {r['redis_cmds_per_call']:>6} {r['parley_cpu_ms_per_call']:>7}")
    first = results["first_filtered_call"]
    what = (f"re-indexing all {results['chats']:,} chats, as after an upgrade" if results["reindex"]
            else "the once-per-partition index check")
    lines += ["", f"first filtered call ({what}): {first['ms']} ms, {first['redis_cmds']:,} Redis commands"]
    single = [r for r in results["lines"] if r["concurrency"] == 1]
    worst = max(single, key=lambda r: r["p99_ms"])
    verdict = "met" if all(r["meets_target"] for r in single) else "NOT met"
    lines.append(f"target: {TARGET}: {verdict} (worst single-caller p99 {worst['p99_ms']} ms: {worst['name']})")
    lines.append(f"(items: per call; cmds: Redis commands per call; cpu ms: Parley's CPU per call; load average "
                 f"{results['load']})")
    return "\n".join(lines)


async def drive(redis_port: int, base: str, parley_pid: int, chats: int, calls: int,
                reindex: bool) -> dict[str, Any]:
    redis = aioredis.Redis(host="127.0.0.1", port=redis_port, decode_responses=True)
    try:
        if reindex:
            await redis.delete(*(keys.chats_indexed(s) for s in range(keys.SHARDS)))
        async with aiohttp.ClientSession() as session:
            client = Client(session, base, redis, parley_pid)
            await client.call({"limit": 50})      # warm-up: connections, the first request's imports
            await redis.config_resetstat()
            ms, _ = await client.call({"limit": 50, "filter_criteria": agent_filter(AGENTS[1])})
            first = {"ms": round(ms, 1), "redis_cmds": await client.commands()}
            print(f"  first filtered call: {first['ms']} ms", file=sys.stderr)
            lines = await scenarios(client, chats, calls)
        return {"first_filtered_call": first, "lines": lines}
    finally:
        await redis.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.list", description=__doc__.split("\n")[0])
    parser.add_argument("--chats", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=200, help="calls per scenario")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--reindex", action="store_true", help="time the first filtered call re-indexing every chat")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="parley-bench-list-") as tmp:
        work_dir = Path(tmp)
        procs = Procs(work_dir)
        procs.handle_signals()
        try:
            redis_port = start_redis(procs, "redis", work_dir)
            print(f"writing {args.chats:,} chats (the keys Chats.create writes)", file=sys.stderr)
            write_s = asyncio.run(_write(redis_port, args.chats))
            write_agents(work_dir / "agents")
            port = free_port()
            procs.start("parley", python_module("service", "serve", "--web-only"),
                        env=parley_env(work_dir, redis_port, port))
            base = f"http://127.0.0.1:{port}"
            wait_http(procs, "parley", base + "/readyz")
            print("measuring", file=sys.stderr)
            measured = asyncio.run(drive(redis_port, base, procs.pid("parley"), args.chats, args.calls,
                                         args.reindex))
            procs.check("parley")
        finally:
            procs.stop_all(first=["parley"])
    results = {"chats": args.chats, "calls_per_scenario": args.calls, "write_s": round(write_s, 1),
               "reindex": args.reindex,
               "load": " ".join(f"{v:.2f}" for v in os.getloadavg()), "cpus": os.cpu_count(),
               "target": TARGET, **measured}
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return 0


async def _write(port: int, count: int) -> float:
    started = time.perf_counter()
    await write_chats(port, make_chats(count))
    return time.perf_counter() - started


if __name__ == "__main__":
    sys.exit(main())
