"""``bench/sink.py``, the receiver of Parley's lifecycle events in ``bench.run``: it answers 200, counts events by
kind and repeats by event id, keeps each started chat's id by its texter's number, and forgets on reset."""

from __future__ import annotations

import orjson
from aiohttp.test_utils import TestClient, TestServer

from bench.sink import EVENT_ID_HEADER, app


def event(kind: str, chat_id: str, user: str) -> bytes:
    return orjson.dumps({"event": kind, "chat": {"chat_id": chat_id, "from_number": user, "chat_type": "sms_chat"}})


async def test_it_counts_events_and_repeats_and_keeps_the_started_chats() -> None:
    async with TestClient(TestServer(app())) as client:
        sent = [("e1", event("chat_started", "chat_a", "+14155550001")),
                ("e2", event("chat_started", "chat_b", "+14155550002")),
                ("e3", event("chat_ended", "chat_a", "+14155550001")),
                ("e3", event("chat_ended", "chat_a", "+14155550001")),     # delivered again
                ("e4", event("chat_analyzed", "chat_a", "+14155550001"))]
        for event_id, body in sent:
            response = await client.post("/events", data=body, headers={EVENT_ID_HEADER: event_id})
            assert response.status == 200
        stats = await (await client.get("/stats")).json()
        assert stats == {"count": 4, "by_event": {"chat_started": 2, "chat_ended": 1, "chat_analyzed": 1},
                         "repeats": 1}
        assert await (await client.get("/chats")).json() == {"+14155550001": "chat_a", "+14155550002": "chat_b"}
        await client.post("/reset")
        assert await (await client.get("/stats")).json() == {"count": 0, "by_event": {}, "repeats": 0}
        assert await (await client.get("/chats")).json() == {}
