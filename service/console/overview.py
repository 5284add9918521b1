"""The overview: texts in and out per hour and per day, segments and estimated cost per day by number, reply
latency p50/p95, opt-outs and errors, ongoing chats; as pictures (``charts``).

It reads the day hashes ``metrics.Tally`` keeps in Redis (``keys.stats``: bounded, 35 days), after adding what
this process counted since its last flush; other processes' last few seconds show at their next flush (5 s).
Dev-phone chats are not counted (``chats.lifecycle.count``).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

from aiohttp import web

from service.api.http import Handler
from service.app_state import METRICS, REDIS
from service.console.charts import Series, bars
from service.console.pages import phone, render
from service.metrics import LATENCY_BUCKETS_MS
from service.storage import keys

DAYS = 14


@dataclass
class Day:
    """One day's counters, by hour and by number."""

    hours: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    totals: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @classmethod
    def parse(cls, raw: dict[str, str]) -> Day:
        day = cls()
        for name, value in raw.items():
            hour, _, counter = name.partition(":")
            day.hours[hour][counter] += int(value)
            day.totals[counter] += int(value)
        return day

    def total(self, prefix: str) -> int:
        return sum(v for k, v in self.totals.items() if k == prefix or k.startswith(prefix + ":"))

    def by_number(self, prefix: str) -> dict[str, int]:
        return {k.partition(":")[2]: v for k, v in self.totals.items() if k.startswith(prefix + ":")}

    def percentile(self, q: float) -> float | None:
        """The reply latency (s) that ``q`` of replies were at or under (a bucket's upper bound)."""
        counts = {int(k.partition(":")[2]): v for k, v in self.totals.items() if k.startswith("lat:")}
        total = sum(counts.values())
        if not total:
            return None
        seen = 0
        for bucket in LATENCY_BUCKETS_MS:
            seen += counts.get(bucket, 0)
            if seen >= q * total:
                return bucket / 1000
        return LATENCY_BUCKETS_MS[-1] / 1000


def _day_names(now: float) -> list[str]:
    return [time.strftime("%Y-%m-%d", time.gmtime(now - 86_400 * back)) for back in range(DAYS - 1, -1, -1)]


async def _read(request: web.Request) -> tuple[list[str], list[Day], int]:
    redis = request.app[REDIS]
    await request.app[METRICS].tally.flush(redis)
    names = _day_names(time.time())
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hgetall(keys.stats(name))
        for shard in range(keys.SHARDS):
            pipe.zcard(keys.chats_ongoing(shard))
        replies = await pipe.execute()
    days = [Day.parse({str(k): str(v) for k, v in raw.items()}) for raw in replies[:DAYS]]
    return names, days, sum(replies[DAYS:])


def _last_24_hours(names: list[str], days: list[Day], now: float) -> tuple[list[str], list[int], list[int]]:
    labels, texts_in, texts_out = [], [], []
    for back in range(23, -1, -1):
        moment = time.gmtime(now - 3600 * back)
        day = days[names.index(time.strftime("%Y-%m-%d", moment))] if time.strftime(
            "%Y-%m-%d", moment) in names else Day()
        counters = day.hours.get(f"{moment.tm_hour:02d}", {})
        labels.append(f"{moment.tm_hour:02d}h")
        texts_in.append(sum(v for k, v in counters.items() if k.startswith("in:")))
        texts_out.append(sum(v for k, v in counters.items() if k.startswith("out:")))
    return labels, texts_in, texts_out


def _by_number(days: list[Day], prefix: str, scale: float = 1.0) -> list[Series]:
    numbers = sorted({n for d in days for n in d.by_number(prefix)})
    return [Series(phone(n), [d.by_number(prefix).get(n, 0) * scale for d in days]) for n in numbers] or [
        Series("all numbers", [0] * len(days))]


async def page(request: web.Request) -> web.Response:
    names, days, ongoing = await _read(request)
    now = time.time()
    labels = [n[5:] for n in names]   # MM-DD
    hour_labels, hour_in, hour_out = _last_24_hours(names, days, now)
    charts = {
        "Texts per hour (last 24 h, UTC)": bars("Texts in and out per hour", hour_labels, [
            Series("in", hour_in), Series("out", hour_out)]),
        "Texts per day": bars("Texts in and out per day", labels, [
            Series("in", [d.total("in") for d in days]), Series("out", [d.total("out") for d in days])]),
        "Segments per day, by number": bars("SMS segments sent per day, by number", labels,
                                            _by_number(days, "seg"), stacked=True),
        "Estimated cost per day, by number (cents)": bars("Estimated cost in cents per day, by number", labels,
                                                          _by_number(days, "cost", 1 / 1000), stacked=True,
                                                          unit="¢"),
        "Reply latency p50 / p95 (s)": bars("Reply latency p50 and p95 in seconds per day", labels, [
            Series("p50", [d.percentile(0.5) or 0 for d in days]),
            Series("p95", [d.percentile(0.95) or 0 for d in days])], unit=" s"),
        "Opt-outs and errors per day": bars("Opt-outs, LLM errors and Twilio errors per day", labels, [
            Series("opt-outs", [d.total("optouts") for d in days]),
            Series("LLM errors", [d.total("llm_errors") for d in days]),
            Series("Twilio errors", [d.total("twilio_errors") for d in days])]),
    }
    today = days[-1]
    return render(request, "overview.html", charts=charts, ongoing=ongoing, today_in=today.total("in"),
                  today_out=today.total("out"), today_cost=sum(today.by_number("cost").values()) / 1000)


ROUTES: list[tuple[str, str, Handler]] = [("GET", "/overview", page)]
