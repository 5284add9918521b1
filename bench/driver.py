"""The benchmark's load and its meters: signed Twilio webhooks sent open or closed loop (``Driver``), the fakes'
and the event sink's counters, the CPU each process used (``CpuMeter``) and Parley's memory, per process."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp

from service.channels.twilio.signature import sign

from .procs import cpu_seconds, machine_busy_seconds, memory_kb
from .stack import ACCOUNT_SID, AGENT_NUMBER, API_KEY, AUTH_TOKEN, HOOK_PATH, PUBLIC_URL, Setup


def user_number(n: int) -> str:
    return f"+1415{n:07d}"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


@dataclass(slots=True)
class Shot:
    """One webhook sent: to whom, when (wall clock), how long the answer took, its status (0: no answer)."""

    user: str
    wall: float = 0.0
    latency_s: float = 0.0
    status: int = 0
    lag_s: float = 0.0      # how late the driver sent it against its schedule (open loop)


Prepared = tuple[str, bytes, dict[str, str]]


class Driver:
    """Sends inbound webhooks the way Twilio does (signed form POSTs), and reads the fakes' counters."""

    def __init__(self, session: aiohttp.ClientSession, setup: Setup) -> None:
        self.session = session
        self.setup = setup
        self.seq = 0
        self.url = PUBLIC_URL + HOOK_PATH

    def prepare(self, user: str, body: str, to: str = AGENT_NUMBER) -> Prepared:
        self.seq += 1
        sid = f"SM{os.getpid():08x}{self.seq:024x}"
        form = {"ToCountry": "US", "ToState": "OR", "SmsMessageSid": sid, "NumMedia": "0", "ToCity": "PORTLAND",
                "FromZip": "94105", "SmsSid": sid, "FromState": "CA", "SmsStatus": "received",
                "FromCity": "SAN FRANCISCO", "Body": body, "FromCountry": "US", "To": to,
                "ToZip": "97201", "NumSegments": "1", "MessageSid": sid, "AccountSid": ACCOUNT_SID, "From": user,
                "ApiVersion": "2010-04-01"}
        headers = {"Content-Type": "application/x-www-form-urlencoded", "User-Agent": "TwilioProxy/1.1",
                   "X-Twilio-Signature": sign(self.url, form, AUTH_TOKEN)}
        return user, urlencode(form).encode(), headers

    async def post(self, base: str, prepared: Prepared, shot: Shot) -> Shot:
        _, data, headers = prepared
        shot.wall = time.time()
        start = time.perf_counter()
        try:
            async with self.session.post(base + HOOK_PATH, data=data, headers=headers) as response:
                await response.read()
                shot.status = response.status
        except (aiohttp.ClientError, TimeoutError):
            shot.status = 0
        shot.latency_s = time.perf_counter() - start
        return shot

    async def open_loop(self, base: str, batch: list[Prepared], rate: float) -> list[Shot]:
        """Send ``batch`` at ``rate`` per second whatever the answers do; wait (bounded) for the answers."""
        tasks = []
        start = time.perf_counter()
        for i, prepared in enumerate(batch):
            due = start + i / rate
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
            shot = Shot(prepared[0], lag_s=max(0.0, time.perf_counter() - due))
            tasks.append(asyncio.create_task(self.post(base, prepared, shot)))
        await asyncio.wait(tasks, timeout=30)
        return [task.result() if task.done() else Shot(p[0]) for task, p in zip(tasks, batch, strict=True)]

    async def flood(self, base: str, batch: list[Prepared], concurrency: int = 64) -> list[Shot]:
        """Send ``batch`` as fast as ``concurrency`` requests at a time allow."""
        slots = asyncio.Semaphore(concurrency)

        async def one(prepared: Prepared) -> Shot:
            async with slots:
                return await self.post(base, prepared, Shot(prepared[0]))

        return await asyncio.wait_for(asyncio.gather(*(one(p) for p in batch)), timeout=120)

    async def json(self, method: str, url: str, body: dict[str, Any] | None = None) -> Any:
        async with self.session.request(method, url, json=body, timeout=aiohttp.ClientTimeout(total=10)) as r:
            r.raise_for_status()
            return await r.json()

    async def replies(self) -> int:
        return int((await self.json("GET", self.setup.twilio_url + "/stats"))["count"])

    async def reset_fakes(self) -> None:
        """Zero the fake Twilio's, the fake OpenAI's and the event sink's counts."""
        await self.json("POST", self.setup.twilio_url + "/reset")
        await self.json("POST", self.llm_base() + "/reset")
        await self.json("POST", self.setup.sink_url + "/reset")

    async def events(self) -> dict[str, Any]:
        """What the event sink received: ``count``, ``by_event`` (kind -> count), ``repeats``."""
        return dict(await self.json("GET", self.setup.sink_url + "/stats"))

    async def chat_ids(self) -> dict[str, str]:
        """The chat id of each chat the sink saw start, by its texter's number."""
        return dict(await self.json("GET", self.setup.sink_url + "/chats"))

    async def end_chat(self, chat_id: str) -> int:
        """``PATCH /end-chat/{chat_id}`` through Parley's API (its web tier); the HTTP status."""
        url = f"{self.setup.parley_url}/end-chat/{chat_id}"
        headers = {"Authorization": f"Bearer {API_KEY}"}
        try:
            async with self.session.patch(url, headers=headers) as response:
                await response.read()
                return response.status
        except (aiohttp.ClientError, TimeoutError):
            return 0

    def llm_base(self) -> str:
        return self.setup.llm_url.removesuffix("/v1")

    async def wait_replies(self, count: int, within_s: float, settle_s: float | None = None) -> tuple[bool, int, float]:
        """Wait (polling, bounded) until the fake Twilio received ``count`` messages, or (``settle_s``) until
        the count stopped moving for that long; (reached, seen, when the last one arrived)."""
        deadline = time.perf_counter() + within_s
        seen, moved = -1, time.perf_counter()
        while time.perf_counter() < deadline:
            now_seen = await self.replies()
            if now_seen != seen:
                seen, moved = now_seen, time.perf_counter()
            if seen >= count:
                return True, seen, moved
            if settle_s is not None and time.perf_counter() - moved > settle_s:
                break
            await asyncio.sleep(0.02)
        return False, seen, moved

    async def wait_events(self, wanted: dict[str, int], within_s: float) -> tuple[bool, dict[str, int]]:
        """Wait (polling, bounded) until the sink received at least ``wanted[kind]`` events of each kind;
        (reached, the counts by kind)."""
        deadline = time.perf_counter() + within_s
        seen: dict[str, int] = {}
        while time.perf_counter() < deadline:
            seen = (await self.events())["by_event"]
            if all(seen.get(kind, 0) >= n for kind, n in wanted.items()):
                return True, seen
            await asyncio.sleep(0.02)
        return False, seen


class CpuMeter:
    """CPU seconds each process used between ``start`` and ``stop``. With several Parley processes (``parley-web``,
    ``parley-worker-N``, the default layout's ``parley-serve``), ``parley`` is their sum."""

    def __init__(self, setup: Setup) -> None:
        self.pids = {name: proc.pid for name, proc in setup.procs.procs.items() if name not in setup.parley}
        self.pids.update(setup.parley_pids)
        self.before: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        used = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        times = os.times()
        used["driver"] = times.user + times.system
        used["machine"] = machine_busy_seconds()
        return used

    def start(self) -> None:
        self.before = self._now()

    def stop(self) -> dict[str, float]:
        """CPU seconds per process, and ``other``: what the rest of the machine (not this benchmark) used."""
        after = self._now()
        used = {name: round(after[name] - self.before.get(name, 0.0), 2) for name in after}
        machine = used.pop("machine")
        used["other"] = round(max(0.0, machine - sum(used.values())), 2)
        parts = [v for name, v in used.items() if name.startswith("parley-")]
        if parts:
            used["parley"] = round(sum(parts), 2)
        return used


def parley_peak_rss(setup: Setup) -> dict[str, Any]:
    """RSS and peak RSS (``VmHWM``) of each Parley process, in MB; ``parley_*_rss_mb`` is the largest of them
    (the target is per process), ``parley_rss_mb_total`` the sum."""
    memory = {name: memory_kb(pid) for name, pid in setup.parley_pids.items()}
    rss = {name: round(m.get("VmRSS", 0) / 1024, 1) for name, m in memory.items()}
    peak = {name: round(m.get("VmHWM", 0) / 1024, 1) for name, m in memory.items()}
    return {"parley_rss_mb": max(rss.values()), "parley_peak_rss_mb": max(peak.values()),
            "parley_rss_mb_total": round(sum(rss.values()), 1), "parley_rss_mb_by_process": rss,
            "parley_peak_rss_mb_by_process": peak}


def statuses(shots: list[Shot]) -> dict[str, int]:
    """How many webhooks got each HTTP status (0: no answer within the client's 15 s, or a connection error)."""
    return {str(k): v for k, v in sorted(Counter(s.status for s in shots).items())}
