"""Phase 4, ``count``: Redis commands per inbound message, over plain turns (conversations with an ongoing chat),
from ``INFO commandstats``, split by a ``MONITOR`` into commands Parley sent and commands run inside Lua."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter
from typing import Any

import redis.asyncio as aioredis

from service.storage import keys

from ..driver import Driver
from ..plan import Plan
from ..stack import wakeup_streams
from .turns import turn_users

_MONITOR_LINE = re.compile(r'^\+[\d.]+ \[\d+ ([^\]]+)\] "([^"]+)"')


class Monitor:
    """Counts the commands Redis runs (``MONITOR``), split into those clients sent and those run by Lua."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.counts: Counter[tuple[bool, str]] = Counter()
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def start(self) -> None:
        reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._writer.write(b"MONITOR\r\n")
        await self._writer.drain()
        await asyncio.wait_for(reader.readline(), 5)   # +OK
        self._task = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            found = _MONITOR_LINE.match(line.decode(errors="replace"))
            if found:
                self.counts[(found.group(1) == "lua", found.group(2).lower())] += 1

    async def stop(self) -> None:
        await asyncio.sleep(0.2)      # let the last lines arrive
        if self._writer is not None:
            self._writer.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await self._task


def commandstats(info: dict[str, Any]) -> dict[str, int]:
    """``INFO commandstats`` as command -> calls, without the benchmark's own admin commands."""
    calls = {}
    for name, value in info.items():
        command = name.removeprefix("cmdstat_")
        if command.startswith(("config", "info", "monitor")):
            continue
        calls[command] = int(value["calls"])
    return calls


async def phase_count(driver: Driver, plan: Plan, redis: aioredis.Redis) -> dict[str, Any]:
    """Redis commands per inbound message, over plain turns (conversations with an ongoing chat)."""
    users = turn_users(plan, 0)[:plan.count_messages]   # conversations with an ongoing chat (turns run 1)
    batch = [driver.prepare(u, "count me") for u in users]
    await driver.reset_fakes()
    await asyncio.sleep(1.0)    # the previous phase's last commits
    await redis.config_resetstat()
    monitor = Monitor(driver.setup.redis_port)
    await monitor.start()
    try:
        started = time.perf_counter()
        await driver.flood(driver.setup.parley_url, batch)
        reached, _, _ = await driver.wait_replies(len(batch), within_s=60)
        await asyncio.sleep(0.5)    # commits and acks after the last reply
        elapsed = time.perf_counter() - started
    finally:
        await monitor.stop()
    calls = commandstats(await redis.info("commandstats"))
    pending = sum([(await redis.xpending(stream, keys.WORKER_GROUP))["pending"] for stream in wakeup_streams()])
    n = len(batch)
    total = sum(calls.values())
    lua = sum(c for (in_lua, _), c in monitor.counts.items() if in_lua)
    sent = sum(c for (in_lua, _), c in monitor.counts.items() if not in_lua)
    return {
        "messages": n, "all_answered": reached, "seconds": round(elapsed, 2),
        "pending_after": pending, "commands_total": total,
        "commands_per_msg": round(total / n, 2),
        "client_sent_per_msg": round(sent / n, 2), "in_lua_per_msg": round(lua / n, 2),
        "per_msg_by_command": {c: round(v / n, 2) for c, v in sorted(calls.items(), key=lambda kv: -kv[1])},
    }
