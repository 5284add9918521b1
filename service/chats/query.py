"""Listing chats: Retell's filters, sort order and opaque cursor, served from per-partition indexes.

Each partition keeps its chats' ids in sorted sets scored by start time (``storage.keys``): ``{S}:chats``
(every chat), ``{S}:chats:agent:<id>``, ``{S}:chats:type:<type>`` and ``{S}:chats:ongoing``, written in the
same transaction as the chat (``chats.store``). A page:

1. plans (``_plan``): a ``start_timestamp`` filter becomes the score range; the smallest index that serves a
   filter (agent, ongoing, one chat type) is read instead of ``{S}:chats``; ``chat_id eq`` is one lookup;
2. reads from every partition of that index only entries after the cursor (``ZRANGE BYSCORE ... LIMIT``; a run
   of chats that share a start time is skipped by offset, with the cursor's counts checked before they are
   trusted), merges them in order (``_Merge``, a k-way ``heapq.merge``) and stops once it has ``limit`` + 1;
3. loads the candidates (``HGETALL``) and checks the filters no index serves on them (``PER_CHAT``: cost,
   duration, custom analysis data, custom attributes, data storage setting; and ``ne``, versions, the end
   day's edges); where few pass, it reads their filterable fields first (``HMGET`` of ``PROBE_FIELDS``) and
   loads only those that pass. At most ``SCAN_BUDGET`` candidates a page: past that the page is short, with
   ``has_more`` and a key where the scan stopped. ``agent_tag`` matches no chat (Parley's agents have no
   environment tags): its page is empty, read from nothing.

So a page costs about ``limit`` index entries and hashes, however deep it is: for an unfiltered 50-item page,
16 ZRANGEs and 51 HGETALLs in 3 round trips. Chats whose data expired are dropped from the index they were
read from on the way. ``include_total`` is ``ZCOUNT``s (one per partition and index) when the indexes answer
the filter, else a count of at most ``TOTAL_SCAN_CAP`` candidates, else that index's count (an upper bound).
Chats written before the secondary indexes existed are indexed once per partition, the first time a page
needs them (``_ensure_indexed``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import heapq
import math
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis

from service.chats.model import Chat, ChatStatus, ChatType, Direction, EndReason, end_reason
from service.chats.store import SENTIMENTS, listing_indexes
from service.clock import now_ms
from service.errors import InvalidRequest
from service.retell.models import ADDRESS_RE
from service.retell.requests import (
    BooleanFilter,
    ChatFilter,
    EnumFilter,
    KeyedFilter,
    NumberFilter,
    PresentFilter,
    RangeFilter,
    StringFilter,
)
from service.storage import keys

SCAN_BUDGET = 5_000       # candidates a page checks against filters no index serves
TOTAL_SCAN_CAP = 10_000   # candidates counted one by one for include_total; past it, the index's count
MAX_BATCH = 1_000         # entries one ZRANGE reads from one partition's index
REINDEX_CHUNK = 500       # chats indexed by one script call (``_ensure_indexed``)
REINDEX_MARGIN_MS = 3_600_000   # chats this much newer than the first one indexed at creation are indexed too
PROBE_BELOW = 0.25        # below this pass rate, candidates' filterable fields are read before the whole chat
# Chat's required fields, and those the filters read: what a probe reads of a chat before loading all of it.
PROBE_FIELDS = ("chat_id", "agent_id", "version", "chat_type", "start_timestamp", "chat_status", "direction",
                "from_number", "to_number", "channel", "end_timestamp", "disconnection_reason", "analysis", "cost",
                "custom_attributes", "data_storage_setting")
DEFAULT_STORAGE = "everything"   # Retell's data_storage_setting when none is set (and what Parley keeps)
# Filters no index serves, checked chat by chat (``_served`` leaves them to ``matches``).
PER_CHAT = ("combined_cost", "duration_ms", "custom_analysis_data", "custom_attributes", "data_storage_setting")
DAY_MS = 86_400_000

Entry = tuple[int, str]   # an index entry: (start timestamp, chat id), the order of a listing


def _string_ok(f: StringFilter, value: str) -> bool:
    return {"eq": value == f.value, "ne": value != f.value, "sw": value.startswith(f.value),
            "ew": value.endswith(f.value), "co": f.value in value}[f.op]


def _number_ok(f: NumberFilter | RangeFilter, value: float) -> bool:
    if isinstance(f, RangeFilter):
        return f.value[0] <= value <= f.value[1]
    return {"eq": value == f.value, "ne": value != f.value, "gt": value > f.value, "ge": value >= f.value,
            "lt": value < f.value, "le": value <= f.value}[f.op]


def _enum_ok(f: EnumFilter | None, value: str | None) -> bool:
    return f is None or (value is not None and value in f.value)


def _optional_ok(f: Any, value: Any, check: Any) -> bool:
    """A filter on a field a chat may lack (numbers, end time): a chat without it passes no such filter."""
    return f is None or (value is not None and check(f, value))


def _keyed_ok(f: KeyedFilter, fields: dict[str, Any]) -> bool:
    """One ``custom_analysis_data`` / ``custom_attributes`` filter on ``fields[f.key]``: string and enum filters
    pass text values only, number and range filters numbers only, the boolean filter booleans only; ``pr`` a
    value that is set (not null), ``np`` none."""
    value = fields.get(f.key)
    if isinstance(f, PresentFilter):
        return (value is not None) == (f.op == "pr")
    if isinstance(f, StringFilter):
        return isinstance(value, str) and _string_ok(f, value)
    if isinstance(f, EnumFilter):
        return isinstance(value, str) and value in f.value
    if isinstance(f, BooleanFilter):
        return isinstance(value, bool) and value is f.value
    return isinstance(value, int | float) and not isinstance(value, bool) and _number_ok(f, value)


def _all_keyed(filters: list[KeyedFilter] | None, fields: Any) -> bool:
    return filters is None or all(_keyed_ok(k, fields if isinstance(fields, dict) else {}) for k in filters)


def matches(chat: Chat, f: ChatFilter | None) -> bool:
    """True when ``chat`` passes every filter that is set."""
    if f is None:
        return True
    analysis = chat.analysis or {}
    checks = [
        f.agent is None or any(a.agent_id == chat.agent_id and (not a.version or chat.version in a.version)
                               for a in f.agent),
        f.chat_id is None or (chat.chat_id in f.chat_id.value if isinstance(f.chat_id, EnumFilter)
                              else _string_ok(f.chat_id, chat.chat_id)),
        f.chat_status is None or chat.chat_status.value in f.chat_status.value,
        f.chat_type is None or chat.chat_type.value in f.chat_type.value,
        f.start_timestamp is None or _number_ok(f.start_timestamp, chat.start_timestamp),
        _optional_ok(f.end_timestamp, chat.end_timestamp, _number_ok),
        _optional_ok(f.user_number, chat.user_number, _string_ok),
        _optional_ok(f.agent_number, chat.agent_number, _string_ok),
        _enum_ok(f.direction, chat.direction.value if chat.direction is not None else None),
        _enum_ok(f.disconnection_reason, end_reason(chat.disconnection_reason)),
        f.chat_successful is None or analysis.get("chat_successful") is f.chat_successful.value,
        _enum_ok(f.user_sentiment, analysis.get("user_sentiment")),
        f.agent_tag is None,   # Parley's agents have no environment tags
        _optional_ok(f.combined_cost, (chat.cost or {}).get("combined_cost"), _number_ok),
        f.duration_ms is None or _number_ok(f.duration_ms, (chat.end_timestamp or now_ms()) - chat.start_timestamp),
        _all_keyed(f.custom_analysis_data, analysis.get("custom_analysis_data")),
        _all_keyed(f.custom_attributes, chat.custom_attributes),
        _enum_ok(f.data_storage_setting, chat.data_storage_setting or DEFAULT_STORAGE),
    ]
    return all(checks)


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page ended: the last chat's start time and id (ties broken by id). Hints for the next page,
    which checks them before it trusts them: the index read (``plan``) and, for each of its keys (a partition's,
    or an agent's in a partition) holding two or more chats at that start time up to the cursor, how many
    (``ties``: (the key's place in the plan, count))."""

    score: int
    chat_id: str
    plan: str = ""
    ties: tuple[tuple[int, int], ...] = ()

    def encode(self) -> str:
        # Without hints it is the format of the first release, so keys handed out before still decode.
        body: list[Any] = [self.score, self.chat_id]
        if self.plan:
            body += [self.plan, [list(t) for t in self.ties]]
        return base64.urlsafe_b64encode(orjson.dumps(body)).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            body = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
            if not isinstance(body, list) or len(body) not in (2, 4):
                raise ValueError(text)
            ties = tuple((int(i), int(t)) for i, t in body[3]) if len(body) == 4 else ()
            return cls(int(body[0]), str(body[1]), str(body[2]) if len(body) == 4 else "", ties)
        except (ValueError, TypeError, binascii.Error):   # orjson.JSONDecodeError is a ValueError
            raise InvalidRequest("pagination_key: not a key returned by a previous list call") from None

    def is_after(self, score: int, chat_id: str, descending: bool) -> bool:
        """True when (score, chat_id) comes after this cursor in the listing order."""
        key, mine = (score, chat_id), (self.score, self.chat_id)
        return key < mine if descending else key > mine


@dataclass
class Page:
    chats: list[Chat]
    has_more: bool
    cursor: Cursor | None
    total: int | None = None


@dataclass(frozen=True, slots=True)
class _Bound:
    """One end of the score range: a start time, and whether it is excluded."""

    value: float
    open: bool = False

    def arg(self) -> str:
        number = str(int(self.value)) if float(self.value).is_integer() else repr(float(self.value))
        return ("(" if self.open else "") + number


@dataclass(frozen=True, slots=True)
class _Order:
    """The listing's direction and score range, as ZRANGE arguments and entry comparisons."""

    descending: bool
    lo: _Bound | None = None
    hi: _Bound | None = None

    def before(self, a: Entry, b: Entry) -> bool:
        return a > b if self.descending else a < b

    def start(self) -> str:
        side = self.hi if self.descending else self.lo
        return side.arg() if side else ("+inf" if self.descending else "-inf")

    def end(self) -> str:
        side = self.lo if self.descending else self.hi
        return side.arg() if side else ("-inf" if self.descending else "+inf")

    def admits(self, cursor: Cursor) -> bool:
        """True when the cursor is inside the range's start, so reading after it is reading after the start."""
        side = self.hi if self.descending else self.lo
        if side is None:
            return True
        inside = cursor.score < side.value if self.descending else cursor.score > side.value
        return inside or (cursor.score == side.value and not side.open)


def _values(f: NumberFilter | RangeFilter) -> list[float]:
    return list(f.value) if isinstance(f, RangeFilter) else [f.value]


def _range(f: NumberFilter | RangeFilter | None) -> tuple[_Bound | None, _Bound | None]:
    """The score range a ``start_timestamp`` filter selects (``ne`` selects all: it is checked per chat)."""
    if f is None or (isinstance(f, NumberFilter) and f.op == "ne"):
        return None, None
    if isinstance(f, RangeFilter):
        return _Bound(f.value[0]), _Bound(f.value[1])
    v = f.value
    return {"eq": (_Bound(v), _Bound(v)), "gt": (_Bound(v, True), None), "ge": (_Bound(v), None),
            "lt": (None, _Bound(v, True)), "le": (None, _Bound(v))}[f.op]


class _Source:
    """One partition's index, read in growing batches from a position; a run of entries at one start time is
    skipped by ZRANGE's offset, checked by re-reading the entry just before it (the anchor)."""

    __slots__ = ("batch", "buffer", "done", "first_ties", "key", "origin", "pos", "read", "ties")

    def __init__(self, key: str, pos: Entry | None, ties: int, batch: int) -> None:
        self.key = key
        self.buffer: deque[Entry] = deque()     # read, not yet merged
        self.done = False                       # every entry in range was read
        self.batch = batch
        self.pos = pos           # the last entry read (at first, the page's cursor): reading goes on after it
        self.ties = ties         # entries at pos's start time up to pos (0: unknown; read them again)
        self.origin = pos
        self.first_ties = 0      # entries at the cursor's start time up to the cursor, once counted
        self.read: list[Entry] = []   # entries after the cursor read this page, in order

    def ties_at(self, at: Entry, order: _Order) -> int:
        """Entries of this index at ``at``'s start time up to ``at`` (``at`` not before the cursor)."""
        count = self.first_ties if self.origin is not None and self.origin[0] == at[0] else 0
        for entry in reversed(self.read):
            if entry[0] != at[0] and order.before(entry, at):
                break
            if entry[0] == at[0] and not order.before(at, entry):
                count += 1
        return count


class _Merge:
    """A k-way merge over the partitions' indexes, in listing order, from a cursor (excluded)."""

    def __init__(self, redis: aioredis.Redis, index: list[str], order: _Order, cursor: Cursor | None,
                 hints: dict[int, int], first_take: int) -> None:
        self._redis = redis
        self._order = order
        pos = (cursor.score, cursor.chat_id) if cursor is not None else None
        # Twice each partition's share, so the first round of reads rarely leaves one short of the frontier.
        batch = min(MAX_BATCH, -(-first_take // len(index)) * 2 + 4)
        self.sources = [_Source(key, pos, hints.get(i, 0), batch) for i, key in enumerate(index)]

    def exhausted(self) -> bool:
        return all(s.done and not s.buffer for s in self.sources)

    async def take(self, n: int) -> list[tuple[Entry, int]]:
        """The next ``n`` entries (fewer at the end), each with the index of the source it came from."""
        out: list[tuple[Entry, int]] = []
        order = self._order
        while len(out) < n:
            await self._fill()
            # An entry may be given only when no source still unread could hold one before it.
            frontier: Entry | None = None
            for s in self.sources:
                if not s.done and (frontier is None or order.before(s.buffer[-1], frontier)):
                    frontier = s.buffer[-1]
            runs = [[(entry, i) for entry in s.buffer] for i, s in enumerate(self.sources) if s.buffer]
            if not runs:
                break
            start = len(out)
            for entry, i in heapq.merge(*runs, key=lambda item: item[0], reverse=order.descending):
                if len(out) == n or (frontier is not None and order.before(frontier, entry)):
                    break
                out.append((entry, i))
            for _, i in out[start:]:
                self.sources[i].buffer.popleft()
        return out

    def ties(self, at: Entry) -> tuple[tuple[int, int], ...]:
        """The next page's tie hints: sources with two or more entries at ``at``'s start time up to it."""
        counts = ((i, s.ties_at(at, self._order)) for i, s in enumerate(self.sources))
        return tuple((i, t) for i, t in counts if t >= 2)

    async def _fill(self) -> None:
        """Read on in every source that is empty and not done, one round trip per round, until each has entries."""
        while True:
            empty = [s for s in self.sources if not s.buffer and not s.done]
            if not empty:
                return
            async with self._redis.pipeline(transaction=False) as pipe:
                reads = [self._read(pipe, s) for s in empty]
                replies: list[Any] = await pipe.execute()
            for source, (offset, count), rows in zip(empty, reads, replies, strict=True):
                self._took(source, offset, count, [(int(score), str(member)) for member, score in rows])

    def _read(self, pipe: Any, s: _Source) -> tuple[int, int]:
        order = self._order
        if s.pos is None:
            offset, count, start = 0, s.batch, order.start()
        else:
            # From the pos's start time, past the entries there up to pos, less one: that one (the anchor) must
            # come back at or before pos, or entries before pos were deleted and the offset would skip some.
            offset, count, start = max(s.ties - 1, 0), s.batch + (1 if s.ties else 0), str(s.pos[0])
        pipe.zrange(s.key, start, order.end(), desc=order.descending, byscore=True, offset=offset, num=count,
                    withscores=True)
        return offset, count

    def _took(self, s: _Source, offset: int, count: int, rows: list[Entry]) -> None:
        order = self._order
        s.batch = min(s.batch * 2, MAX_BATCH)
        if s.pos is not None and s.ties and (not rows or order.before(s.pos, rows[0])):
            s.ties = 0          # the anchor is gone: read this start time again from its first entry
            return
        # Rows at or before pos (same start time, smaller id) were listed already: skip them, but count them.
        seen = 0 if s.pos is None else next((k for k, row in enumerate(rows) if order.before(s.pos, row)), len(rows))
        new = rows[seen:]
        s.done = len(rows) < count
        if s.origin is not None and s.pos == s.origin:
            s.first_ties = offset + seen
        if not new:
            s.ties = offset + seen
            return
        last = new[-1]
        at_last = sum(1 for row in rows if row[0] == last[0])
        s.ties = offset + at_last if s.pos is not None and last[0] == s.pos[0] else at_last
        s.pos = last
        s.buffer.extend(new)
        s.read.extend(new)


@dataclass
class _Served:
    """What the indexes do for a filter: the indexes that serve part of it, by kind ("a" agent, "o" ongoing, "t"
    type; each key in every partition), the filters left for the chats' fields, and whether the status filter
    asks for ended chats only (counted as every chat less the ongoing ones)."""

    candidates: dict[str, list[str]] = field(default_factory=dict)
    left: set[str] = field(default_factory=set)
    ended_only: bool = False


def _every(key: Any, *args: Any) -> list[str]:
    """``key(shard, *args)`` in every partition."""
    return [key(s, *args) for s in range(keys.SHARDS)]


def _serve_enum(f: EnumFilter | None, known: set[str], kind: str, key: Any, served: _Served) -> bool:
    """Serve an enum filter from one index per value (``key(shard, value)``); False when no chat can pass it.
    Values Parley never stores match no chat, so they never reach a key."""
    if f is None:
        return True
    values = sorted(set(f.value) & known)
    served.candidates[kind] = [k for value in values for k in _every(key, value)]
    return bool(values)


def _serve_numbers(f: ChatFilter, served: _Served) -> bool:
    """``user_number`` / ``agent_number``: ``eq`` from the number's index, ``ne`` per chat."""
    for name, kind, key in (("user_number", "u", keys.chats_by_user), ("agent_number", "g", keys.chats_by_number)):
        nf = getattr(f, name)
        if nf is None:
            continue
        if nf.op == "ne":
            served.left.add(name)
        elif not ADDRESS_RE.fullmatch(nf.value):
            return False   # no chat has a number that is not one
        else:
            served.candidates[kind] = _every(key, nf.value)
    return True


def _serve_end(f: NumberFilter | RangeFilter | None, served: _Served, ttl_s: int) -> bool:
    """``end_timestamp``: the end-day indexes of the days the range spans (only those a kept chat can have ended
    on), each chat's end time checked too (the first and last day hold chats outside the range)."""
    if f is None:
        return True
    served.left.add("end_timestamp")
    if isinstance(f, NumberFilter) and f.op == "ne":
        return True
    lo, hi = _range(f)
    now = now_ms()
    first = max(lo.value if lo else -math.inf, now - ttl_s * 1000 - DAY_MS)
    last = min(hi.value if hi else math.inf, now + DAY_MS)
    if math.isnan(first) or math.isnan(last) or first > last:
        return False
    days = range(int(first) // DAY_MS, int(last) // DAY_MS + 1)
    served.candidates["e"] = [k for day in days for k in _every(keys.chats_ended_on, keys.end_day(day * DAY_MS))]
    return True


def _served(f: ChatFilter, ttl_s: int) -> _Served | None:
    """What the indexes do for ``f``; None when no chat can pass it."""
    served = _Served()
    if f.agent_tag is not None:
        return None   # no chat has a tag
    served.left |= {name for name in PER_CHAT if getattr(f, name) is not None}
    if f.chat_id is not None:
        served.left.add("chat_id")
    if isinstance(f.start_timestamp, NumberFilter) and f.start_timestamp.op == "ne":
        served.left.add("start_timestamp")
    if f.agent is not None:
        if not f.agent:
            return None
        agent_ids = sorted({a.agent_id for a in f.agent})
        served.candidates["a"] = [keys.chats_by_agent(s, a) for a in agent_ids for s in range(keys.SHARDS)]
        if any(a.version for a in f.agent):
            served.left.add("version")
    if f.chat_status is not None and not _serve_status(set(f.chat_status.value), served):
        return None
    if f.chat_type is not None:
        types = set(f.chat_type.value) & {t.value for t in ChatType}
        if not types:
            return None
        if len(types) < len(ChatType):
            (only,) = types
            served.candidates["t"] = [keys.chats_by_type(s, only) for s in range(keys.SHARDS)]
    reasons = {r.value for r in EndReason}
    ok = (_serve_numbers(f, served) and _serve_end(f.end_timestamp, served, ttl_s)
          and _serve_enum(f.direction, {d.value for d in Direction}, "d", keys.chats_by_direction, served)
          and _serve_enum(f.disconnection_reason, reasons, "r", keys.chats_by_reason, served)
          and _serve_enum(f.user_sentiment, set(SENTIMENTS), "f", keys.chats_by_sentiment, served))
    if f.chat_successful is not None:
        served.candidates["c"] = _every(keys.chats_by_success, f.chat_successful.value)
    return served if ok else None


def _serve_status(wanted: set[str], served: _Served) -> bool:
    """Serve a status filter (the ongoing index, or a check per chat); False when no chat can pass it."""
    statuses = wanted & {s.value for s in ChatStatus}
    if statuses == {ChatStatus.ONGOING.value}:
        served.candidates["o"] = [keys.chats_ongoing(s) for s in range(keys.SHARDS)]
    elif len(statuses) < len(ChatStatus):
        served.left.add("chat_status")
        served.ended_only = ChatStatus.ONGOING.value not in statuses and ChatStatus.ENDED.value in statuses
    return bool(statuses)


@dataclass
class _Plan:
    """How a page is served: ``kind`` names the index ("m" every chat, "a" by agent, "o" ongoing, "t" by type;
    "i" a lookup of ``chat_id``; "" nothing can match); ``index`` its key in every partition (and for every
    agent asked); ``checked`` whether a filter is left for the chats' fields; ``total`` how include_total counts
    ("index": ZCOUNT; "ended": every chat less the ongoing ones; "scan": one by one, bounded)."""

    kind: str
    index: list[str] = field(default_factory=list)
    order: _Order = field(default_factory=lambda: _Order(False))
    checked: bool = False
    total: str = "index"
    count: int | None = None     # the index's ZCOUNT over the range, when the plan needed it


@dataclass
class _Indexed:
    """Partitions known to have every chat in the secondary indexes (in this process, for one client)."""

    done: set[int] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


_INDEXED: weakref.WeakKeyDictionary[aioredis.Redis, _Indexed] = weakref.WeakKeyDictionary()


class ChatQuery:
    def __init__(self, redis: aioredis.Redis, *, ttl_s: int) -> None:
        self._redis = redis
        self._ttl_s = ttl_s

    async def page(
        self, f: ChatFilter | None, *, descending: bool, limit: int, cursor: Cursor | None, count_total: bool = False,
        skip: int = 0,
    ) -> Page:
        """Up to ``limit`` chats after ``cursor`` (or after the first ``skip`` chats) that pass ``f``, in start-time
        order."""
        plan = await self._plan(f, descending, cursor)
        if plan.kind == "":
            return Page([], False, None, 0 if count_total else None)
        if plan.kind == "i":
            return await self._lookup(f, descending, cursor, count_total, limit=limit, skip=skip)
        order = plan.order
        start = cursor if cursor is not None and order.admits(cursor) else None
        hints = dict(start.ties) if start is not None and start.plan == plan.kind else {}
        merge = _Merge(self._redis, plan.index, order, start, hints, skip + limit + 1)
        found: list[tuple[Entry, Chat]] = []
        scanned, last = await self._skip(plan, f, merge, skip) if skip else (0, None)
        while len(found) <= limit:
            want, rate = limit + 1 - len(found), 1.0
            if plan.checked:
                # Candidates may fail the filter: read as many as the pass rate so far says it takes, within the
                # budget. Where few pass, check the filterable fields of each before loading the whole chat: a command
                # more for those that pass, but much less read for the many that do not.
                rate = max(len(found), 1) / scanned if scanned else 1.0
                want = min(SCAN_BUDGET - scanned, MAX_BATCH, int(want / rate * 1.1) + 1 if scanned else want)
            if want <= 0:
                break
            batch = await merge.take(want)
            if not batch:
                break
            scanned += len(batch)
            last = batch[-1][0]
            found += await self._accept(plan, f, batch, probe=rate < PROBE_BELOW)
        at = found[limit - 1][0] if len(found) > limit else (last if not merge.exhausted() else None)
        next_cursor = Cursor(at[0], at[1], plan.kind, merge.ties(at)) if at is not None else None
        total = await self._total(plan, f) if count_total else None
        return Page([chat for _, chat in found[:limit]], at is not None, next_cursor, total)

    # ------------------------------------------------------------------------------------------- planning

    async def _plan(self, f: ChatFilter | None, descending: bool, cursor: Cursor | None) -> _Plan:
        """Which index serves the page, over which score range, and what is left to check per chat."""
        every = [keys.chats(s) for s in range(keys.SHARDS)]
        if f is None:
            return _Plan("m", every, _Order(descending))
        if f.chat_id is not None and f.chat_id.op in ("eq", "in"):
            return _Plan("i")
        if any(math.isnan(v) for t in (f.start_timestamp, f.end_timestamp) if t is not None for v in _values(t)):
            return _Plan("")     # no time compares with NaN
        order = _Order(descending, *_range(f.start_timestamp))
        served = _served(f, self._ttl_s)
        if served is None:
            return _Plan("")
        candidates, left = served.candidates, served.left
        if candidates or served.ended_only:
            await self._ensure_indexed()
        kind, count = await self._choose(candidates, order, cursor)
        left |= {name for name in candidates if name != kind}
        plan = _Plan(kind, candidates.get(kind, every), order, checked=bool(left), count=count)
        if left == {"chat_status"} and served.ended_only and kind == "m":
            plan.total = "ended"
        elif left:
            plan.total = "scan"
        return plan

    async def _choose(self, candidates: dict[str, list[str]], order: _Order,
                      cursor: Cursor | None) -> tuple[str, int | None]:
        """The index to read: the only one, the one the cursor's page read, or the one with the fewest entries in
        range (one round trip of ZCOUNTs)."""
        if not candidates:
            return "m", None
        if len(candidates) == 1:
            return next(iter(candidates)), None
        if cursor is not None and cursor.plan in candidates:
            return cursor.plan, None
        counts = {kind: await self._count(index, order) for kind, index in candidates.items()}
        kind = min(counts, key=lambda k: counts[k])
        return kind, counts[kind]

    async def _skip(self, plan: _Plan, f: ChatFilter | None, merge: _Merge, skip: int) -> tuple[int, Entry | None]:
        """Read past the first ``skip`` chats that pass ``f``: index entries only when the index answers the whole
        filter, else each candidate's filterable fields, within the page's ``SCAN_BUDGET`` (``InvalidRequest`` past
        it: a key from there would lose count of what is left to skip). Returns (candidates checked, last entry)."""
        skipped, scanned, last = 0, 0, None
        while skipped < skip:
            # Each candidate passes at most once, so reading what is left to skip never reads past it.
            batch = await merge.take(min(skip - skipped, MAX_BATCH))
            if not batch:
                break
            last = batch[-1][0]
            if not plan.checked:
                skipped += len(batch)
                continue
            scanned += len(batch)
            if scanned > SCAN_BUDGET:
                raise InvalidRequest(f"skip: {skip} chats cannot be skipped with this filter within one call (it is "
                                     f"checked chat by chat past the indexes); follow pagination_key instead")
            probes = await self._probe([entry[1] for entry, _ in batch])
            skipped += sum(1 for probe in probes if probe is not None and matches(probe, f))
        return scanned, last

    # ------------------------------------------------------------------------------------------- reading

    async def _accept(self, plan: _Plan, f: ChatFilter | None, batch: list[tuple[Entry, int]], *,
                      probe: bool) -> list[tuple[Entry, Chat]]:
        """The chats of ``batch`` that pass ``f``, loaded (with ``probe``, only those whose filterable fields pass
        first); expired ones leave the indexes."""
        gone: list[tuple[str, str]] = []
        if probe:
            kept = []
            probes = await self._probe([entry[1] for entry, _ in batch])
            for (entry, i), fields in zip(batch, probes, strict=True):
                if fields is None:
                    gone.append((plan.index[i], entry[1]))
                elif matches(fields, f):
                    kept.append((entry, i))
            batch = kept
        out = []
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry, _ in batch:
                pipe.hgetall(keys.chat(entry[1]))
            rows: list[Any] = await pipe.execute() if batch else []
        for (entry, i), row in zip(batch, rows, strict=True):
            if not row:
                gone.append((plan.index[i], entry[1]))
                continue
            chat = Chat.from_hash(row)   # the client decodes replies to str
            if matches(chat, f):   # the indexes are kept with the chat; this also holds if one lagged
                out.append((entry, chat))
        await self._forget(gone)
        return out

    async def _probe(self, chat_ids: list[str]) -> list[Chat | None]:
        """The chats' filterable fields (None: the chat expired), without their variables and metadata."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for chat_id in chat_ids:
                pipe.hmget(keys.chat(chat_id), PROBE_FIELDS)
            rows: list[Any] = await pipe.execute()
        return [Chat.from_hash({k: v for k, v in zip(PROBE_FIELDS, row, strict=True) if v is not None})
                if row[0] is not None else None for row in rows]

    async def _forget(self, gone: list[tuple[str, str]]) -> None:
        """Drop expired chats from the index they were read from and from ``{S}:chats``."""
        if not gone:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for index, chat_id in gone:
                pipe.zrem(index, chat_id)
                pipe.zrem(keys.chats(keys.shard_of(chat_id)), chat_id)
            await pipe.execute()

    async def _lookup(self, f: ChatFilter | None, descending: bool, cursor: Cursor | None, count_total: bool, *,
                      limit: int, skip: int) -> Page:
        """``chat_id`` eq, or in a list: the chats found by their ids (each id names its partition)."""
        assert f is not None and f.chat_id is not None
        given = f.chat_id.value if isinstance(f.chat_id, EnumFilter) else [f.chat_id.value]
        ids = [chat_id for chat_id in dict.fromkeys(given) if keys.is_chat_id(chat_id)]   # others name no chat
        async with self._redis.pipeline(transaction=False) as pipe:
            for chat_id in ids:
                pipe.zscore(keys.chats(keys.shard_of(chat_id)), chat_id)
                pipe.hgetall(keys.chat(chat_id))
            replies: list[Any] = await pipe.execute() if ids else []
        found: list[tuple[Entry, Chat]] = []
        gone = []
        for chat_id, score, row in zip(ids, replies[::2], replies[1::2], strict=True):
            if score is not None and not row:
                gone.append((keys.chats(keys.shard_of(chat_id)), chat_id))
            elif score is not None and matches(chat := Chat.from_hash(row), f):
                found.append(((int(score), chat_id), chat))
        await self._forget(gone)
        found.sort(key=lambda item: item[0], reverse=descending)
        after = [item for item in found if cursor is None or cursor.is_after(*item[0], descending)][skip:]
        has_more = len(after) > limit
        at = after[limit - 1][0] if has_more else None
        return Page([chat for _, chat in after[:limit]], has_more, Cursor(*at, "i") if at is not None else None,
                    len(found) if count_total else None)

    # ------------------------------------------------------------------------------------------- counting

    async def _count(self, index: list[str], order: _Order) -> int:
        lo, hi = (order.lo.arg() if order.lo else "-inf"), (order.hi.arg() if order.hi else "+inf")
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in index:
                pipe.zcount(key, lo, hi)
            return sum(await pipe.execute())

    async def _total(self, plan: _Plan, f: ChatFilter | None) -> int:
        """Chats that pass ``f``, whatever the cursor: see the module's docstring for what it costs."""
        count = plan.count if plan.count is not None else await self._count(plan.index, plan.order)
        if plan.total == "index":
            return count
        if plan.total == "ended":
            return count - await self._count([keys.chats_ongoing(s) for s in range(keys.SHARDS)], plan.order)
        if count > TOTAL_SCAN_CAP:
            return count   # an upper bound: counting one by one would cost more than a page may
        merge = _Merge(self._redis, plan.index, _Order(False, plan.order.lo, plan.order.hi), None, {}, MAX_BATCH)
        total = 0
        while batch := await merge.take(MAX_BATCH):
            probes = await self._probe([entry[1] for entry, _ in batch])
            total += sum(1 for probe in probes if probe is not None and matches(probe, f))
        return total

    # ------------------------------------------------------------------------------------------- indexing

    async def _ensure_indexed(self) -> None:
        """Index, once per partition, the chats written before the secondary indexes existed.

        ``keys.chats_indexed`` says how far that is done: ``Chats.create`` sets it (NX) to the start time of the
        first chat it indexed, so only older chats (and an hour's margin, for processes of the older release
        still running during an upgrade) are indexed here; then it is ``0``. Without it (a partition with no
        chat created for chat_ttl_s, or none since the upgrade) every chat of the partition is indexed. This
        process remembers done partitions per client, so a page asks Redis once. The work is idempotent: two
        processes doing it at once only waste it."""
        state = _INDEXED.setdefault(self._redis, _Indexed())
        if len(state.done) == keys.SHARDS:
            return
        async with state.lock:
            missing = [s for s in range(keys.SHARDS) if s not in state.done]
            async with self._redis.pipeline(transaction=False) as pipe:
                for shard in missing:
                    pipe.get(keys.chats_indexed(shard))
                marks: list[Any] = await pipe.execute()
            for shard, since in zip(missing, marks, strict=True):
                if since != "0":
                    await self._reindex(shard, None if since is None else int(since) + REINDEX_MARGIN_MS)
                    await self._redis.set(keys.chats_indexed(shard), 0, ex=self._ttl_s)
                state.done.add(shard)

    async def _reindex(self, shard: int, before: int | None) -> None:
        """Index the chats of ``{S}:chats`` that started before ``before`` (None: all), a chunk per script."""
        script = self._redis.register_script(_REINDEX)
        order = _Order(False, hi=_Bound(before, open=True) if before is not None else None)
        merge = _Merge(self._redis, [keys.chats(shard)], order, None, {}, REINDEX_CHUNK)
        while chunk := await merge.take(REINDEX_CHUNK):
            await self._reindex_chunk(script, shard, [entry for entry, _ in chunk])

    async def _reindex_chunk(self, script: Any, shard: int, chunk: list[Entry]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for _, chat_id in chunk:
                pipe.hmget(keys.chat(chat_id), PROBE_FIELDS)
            rows: list[Any] = await pipe.execute()
        script_keys, args = [keys.chats_ongoing(shard)], [str(self._ttl_s)]
        for (score, chat_id), row in zip(chunk, rows, strict=True):
            if row[0] is None:
                continue   # expired meanwhile
            chat = Chat.from_hash({k: v for k, v in zip(PROBE_FIELDS, row, strict=True) if v is not None})
            # The ongoing index is the script's to decide (from the status it reads); {S}:chats holds it already.
            indexes = [k for k in listing_indexes(chat)[1:] if k != keys.chats_ongoing(shard)]
            script_keys += [keys.chat(chat_id), *indexes]
            args += [chat_id, str(score), str(len(indexes))]
        if len(script_keys) > 1:
            await script(keys=script_keys, args=args)


# Indexes chats of one partition that ``{S}:chats`` holds, reading each one's status in the same script, so a
# chat that ends (or is deleted) meanwhile is not left in the ongoing index. (One that ends, or is analysed,
# between the read of its fields and this script is put in the reason, end-day and analysis indexes by that write.)
# KEYS[1]: the ongoing index; then for each chat: its hash, then its n indexes (Chats.create's, but the ongoing one).
# ARGV[1]: the indexes' TTL (s); then for each chat: its id, its start time, n.
_REINDEX = """
local expiring = {[KEYS[1]] = true}
local k, a = 2, 2
while k <= #KEYS do
  local status = redis.call('HGET', KEYS[k], 'chat_status')
  local chat_id, score, n = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  if status then
    for j = k + 1, k + n do
      redis.call('ZADD', KEYS[j], score, chat_id)
      expiring[KEYS[j]] = true
    end
    if status == 'ongoing' then redis.call('ZADD', KEYS[1], score, chat_id) end
  end
  k, a = k + 1 + n, a + 3
end
for key in pairs(expiring) do redis.call('EXPIRE', key, ARGV[1]) end
return 1
"""
