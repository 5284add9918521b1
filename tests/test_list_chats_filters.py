"""``POST /v3/list-chats`` with the filters no index serves, checked chat by chat within the page's scan budget:
``combined_cost``, ``duration_ms``, ``custom_analysis_data``, ``custom_attributes`` and
``data_storage_setting`` (the last two set with update-chat); and ``agent_tag``, which matches no chat. Driven
through retell-sdk, each filter against chats built so the expected ids are computed here, not by ``matches``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from retell import AsyncRetell

from service.chats import query as query_module
from service.chats.model import Chat, ChatType, EndReason, TurnResult
from service.chats.query import ChatQuery
from service.chats.store import Chats, Commit
from service.clock import now_ms
from service.retell.requests import ChatFilter
from service.storage import keys

from .conftest import Parley

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

HOUR, MINUTE = 3_600_000, 60_000
COUNT = 36


def ended(i: int) -> bool:
    return i % 3 != 0


def duration(i: int) -> int:
    return (i % 5 + 1) * MINUTE   # of an ended chat; an ongoing one started i + 1 hours ago


def cost(i: int) -> float | None:
    return i * 0.5 if i % 4 else None


def analysis_data(i: int) -> dict[str, Any] | None:
    """Chat i's custom_analysis_data (ended chats only); ``note`` is set on some, null on others."""
    if not ended(i):
        return None
    data: dict[str, Any] = {"score": i, "tier": "gold" if i % 2 else "silver", "resolved": i % 4 == 1}
    if i % 7 == 0:
        data["note"] = None
    elif i % 5 == 0:
        data["note"] = "called back"
    return data


def attributes(i: int) -> dict[str, Any]:
    return {"campaign": "spring" if i % 2 else "autumn", "priority": i % 3} if i % 6 else {}


def storage(i: int) -> str | None:
    return "basic_attributes_only" if i % 8 == 1 else None


async def seed(parley: Parley, retell: AsyncRetell) -> list[str]:
    """COUNT API chats, the newest first; custom attributes and storage settings set through the SDK's update."""
    chats = Chats(parley.redis, ttl_s=parley.settings.chat_ttl_s, lock_ttl_ms=30_000)
    now = now_ms()
    ids: list[str] = []
    for i in range(COUNT):
        chat = Chat(chat_id=keys.new_chat_id(), agent_id="frontdesk", version=0, chat_type=ChatType.API,
                    start_timestamp=now - (i + 1) * HOUR)
        price = cost(i)
        if price is not None:
            chat.cost = {"product_costs": [{"product": "llm", "cost": price}], "combined_cost": price}
        await chats.create(chat)
        if ended(i):
            await chats.commit(Commit(chat, None, TurnResult(end=EndReason.AGENT_ENDED,
                                                             end_timestamp=chat.start_timestamp + duration(i))))
            chat.analysis = {"chat_summary": "s", "custom_analysis_data": analysis_data(i)}
            await chats.store_analysis(chat)
        if attributes(i):
            await retell.chat.update(chat.chat_id, custom_attributes=attributes(i))
        if storage(i):
            await retell.chat.update(chat.chat_id, data_storage_setting="basic_attributes_only")
        ids.append(chat.chat_id)
    return ids


async def listed(retell: AsyncRetell, filter_criteria: Any) -> tuple[list[str], int | None]:
    """Every chat the filter lists, newest first, page by page (4 a page), and the first page's total."""
    page = await retell.chat.list(filter_criteria=filter_criteria, limit=4, include_total=True)
    total, got = page.total, [c.chat_id for c in page.items]
    while page.has_more and page.pagination_key:
        page = await retell.chat.list(filter_criteria=filter_criteria, limit=4, pagination_key=page.pagination_key)
        got += [c.chat_id for c in page.items]
    return got, total


def data(key: str, op: str, kind: str, value: Any = None) -> dict[str, Any]:
    return {"key": key, "op": op, "type": kind} | ({} if value is None else {"value": value})


CASES: list[tuple[dict[str, Any], Callable[[int], bool]]] = [
    ({"combined_cost": {"type": "number", "op": "ge", "value": 10}}, lambda i: (cost(i) or 0) >= 10),
    # A chat without an estimate passes no numeric comparison, ne included.
    ({"combined_cost": {"type": "number", "op": "ne", "value": 1.5}}, lambda i: cost(i) not in (None, 1.5)),
    ({"combined_cost": {"type": "range", "op": "bt", "value": [2, 4]}},
     lambda i: cost(i) is not None and 2 <= (cost(i) or 0) <= 4),
    ({"duration_ms": {"type": "number", "op": "le", "value": 2 * MINUTE}},
     lambda i: ended(i) and duration(i) <= 2 * MINUTE),
    # An ongoing chat's duration runs to now: it started hours ago.
    ({"duration_ms": {"type": "range", "op": "bt", "value": [HOUR, 100 * HOUR]}}, lambda i: not ended(i)),
    ({"custom_analysis_data": [data("tier", "eq", "string", "gold"), data("score", "gt", "number", 20)]},
     lambda i: ended(i) and i % 2 == 1 and i > 20),
    ({"custom_analysis_data": [data("resolved", "eq", "boolean", True)]}, lambda i: ended(i) and i % 4 == 1),
    ({"custom_analysis_data": [data("tier", "in", "enum", ["silver"]), data("score", "bt", "range", [4, 16])]},
     lambda i: ended(i) and i % 2 == 0 and 4 <= i <= 16),
    ({"custom_analysis_data": [data("note", "pr", "present")]}, lambda i: ended(i) and i % 7 != 0 and i % 5 == 0),
    ({"custom_analysis_data": [data("note", "np", "present")]}, lambda i: not (ended(i) and i % 7 and i % 5 == 0)),
    ({"custom_attributes": [data("campaign", "sw", "string", "spr")]}, lambda i: bool(i % 6) and i % 2 == 1),
    ({"custom_attributes": [data("priority", "eq", "number", 2), data("campaign", "in", "enum", ["autumn"])]},
     lambda i: bool(i % 6) and i % 3 == 2 and i % 2 == 0),
    ({"custom_attributes": [data("campaign", "np", "present")]}, lambda i: i % 6 == 0),
    ({"data_storage_setting": {"type": "enum", "op": "in", "value": ["basic_attributes_only"]}},
     lambda i: storage(i) is not None),
    # A chat without a setting has Retell's default.
    ({"data_storage_setting": {"type": "enum", "op": "in", "value": ["everything", "everything_except_pii"]}},
     lambda i: storage(i) is None),
    # Filters that match nothing here.
    ({"combined_cost": {"type": "number", "op": "gt", "value": 1_000}}, lambda i: False),
    ({"duration_ms": {"type": "number", "op": "lt", "value": 0}}, lambda i: False),
    ({"custom_analysis_data": [data("tier", "eq", "string", "platinum")]}, lambda i: False),
    ({"custom_analysis_data": [data("score", "eq", "string", "3")]}, lambda i: False),   # a number is not text
    ({"custom_attributes": [data("region", "pr", "present")]}, lambda i: False),
    ({"data_storage_setting": {"type": "enum", "op": "in", "value": ["everything_except_pii"]}}, lambda i: False),
    ({"agent_tag": {"type": "enum", "op": "in", "value": ["prod"]}}, lambda i: False),   # Parley has no tags
]


async def test_the_sdk_lists_by_each_filter_checked_chat_by_chat(parley: Parley, retell: AsyncRetell) -> None:
    ids = await seed(parley, retell)
    for filter_criteria, wanted in CASES:
        want = [chat_id for i, chat_id in enumerate(ids) if wanted(i)]
        got, total = await listed(retell, filter_criteria)
        assert got == want, filter_criteria
        assert total == len(want), filter_criteria
    lists = {name for f, wanted in CASES for name in f if any(wanted(i) for i in range(COUNT))}
    lists_none = {name for f, wanted in CASES for name in f if not any(wanted(i) for i in range(COUNT))}
    assert lists | {"agent_tag"} == lists_none == set(query_module.PER_CHAT) | {"agent_tag"}
    # ANDed with an index's filter, and in ascending order.
    both: Any = {"chat_status": {"type": "enum", "op": "in", "value": ["ended"]},
            "combined_cost": {"type": "number", "op": "lt", "value": 5}}
    page = await retell.chat.list(filter_criteria=both, sort_order="ascending", limit=50)
    assert [c.chat_id for c in page.items] == [ids[i] for i in reversed(range(COUNT))
                                               if ended(i) and cost(i) is not None and (cost(i) or 0) < 5]


async def test_update_chat_stores_custom_attributes_and_the_storage_setting(
    parley: Parley, retell: AsyncRetell,
) -> None:
    chat = await retell.chat.create(agent_id="frontdesk")
    await retell.chat.update(chat.chat_id, custom_attributes={"tier": "gold", "vip": True})
    updated = await retell.chat.update(chat.chat_id, custom_attributes={"score": 3})
    assert updated.custom_attributes == {"tier": "gold", "vip": True, "score": 3}   # merged
    assert (await retell.chat.retrieve(chat.chat_id)).custom_attributes == updated.custom_attributes
    response = await parley.api("PATCH", f"/update-chat/{chat.chat_id}",
                                json={"data_storage_setting": "basic_attributes_only"})
    assert response.status == 200
    assert (await response.json())["data_storage_setting"] == "basic_attributes_only"
    assert "not applied" in response.headers["X-Parley-Unsupported"]   # Parley still keeps everything
    back = await parley.api("PATCH", f"/update-chat/{chat.chat_id}", json={"data_storage_setting": "everything"})
    assert back.status == 422
    assert "data_storage_setting" in (await back.json())["message"]
    listed_ids, _ = await listed(retell, {"custom_attributes": [data("vip", "eq", "boolean", True)],
                                          "data_storage_setting": {"type": "enum", "op": "in",
                                                                   "value": ["basic_attributes_only"]}})
    assert listed_ids == [chat.chat_id]


async def test_the_per_chat_filters_keep_to_the_scan_budget(
    parley: Parley, retell: AsyncRetell, monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = await seed(parley, retell)
    monkeypatch.setattr(query_module, "SCAN_BUDGET", 10)
    f = ChatFilter.model_validate({"combined_cost": {"type": "number", "op": "ge", "value": 14}})
    q = ChatQuery(parley.redis, ttl_s=parley.settings.chat_ttl_s)
    short = await q.page(f, descending=True, limit=5, cursor=None)
    assert short.has_more and len(short.chats) < 5   # the budget spent: a short page, and a key to go on
    got, _ = await listed(retell, {"combined_cost": {"type": "number", "op": "ge", "value": 14}})
    assert got == [chat_id for i, chat_id in enumerate(ids) if (cost(i) or 0) >= 14]
    response = await parley.api("POST", "/v3/list-chats", json={
        "filter_criteria": {"duration_ms": {"type": "number", "op": "gt", "value": 0}}, "skip": 20})
    assert response.status == 422
    assert "skip: 20 chats cannot be skipped" in (await response.json())["message"]
