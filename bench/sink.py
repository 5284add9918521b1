"""The benchmark's receiver of Parley's lifecycle events (``PARLEY_WEBHOOK_URL``), as its own process.

``python -m bench.sink --port P``. ``POST /events`` answers 200 at once, and counts: events by kind, and repeats
(an ``X-Parley-Event-Id`` seen before). It keeps the chat id of each ``chat_started`` by the chat's
``from_number`` (the texter of an inbound chat), so the benchmark can end the chats it opened; at most
``MAX_CHATS`` of them, and at most ``MAX_EVENT_IDS`` event ids (then repeats are no longer counted).

``GET /stats`` answers ``{"count": n, "by_event": {...}, "repeats": r}``; ``GET /chats`` the chat ids by number;
``POST /reset`` forgets everything.
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass, field

import orjson
from aiohttp import web

EVENT_ID_HEADER = "X-Parley-Event-Id"
MAX_CHATS = 200_000
MAX_EVENT_IDS = 1_000_000


@dataclass
class Received:
    """What the sink was sent."""

    by_event: Counter[str] = field(default_factory=Counter)
    repeats: int = 0
    event_ids: set[str] = field(default_factory=set)
    chats: dict[str, str] = field(default_factory=dict)

    def add(self, event_id: str, body: bytes) -> None:
        if event_id in self.event_ids:
            self.repeats += 1
            return
        if len(self.event_ids) < MAX_EVENT_IDS:
            self.event_ids.add(event_id)
        payload = orjson.loads(body)
        kind = str(payload.get("event"))
        self.by_event[kind] += 1
        chat = payload.get("chat") or {}
        if kind == "chat_started" and len(self.chats) < MAX_CHATS and chat.get("from_number"):
            self.chats[chat["from_number"]] = chat["chat_id"]

    def clear(self) -> None:
        self.by_event.clear()
        self.repeats = 0
        self.event_ids.clear()
        self.chats.clear()


def app() -> web.Application:
    received = Received()

    async def events(request: web.Request) -> web.Response:
        received.add(request.headers.get(EVENT_ID_HEADER, ""), await request.read())
        return web.Response()

    async def stats(_: web.Request) -> web.Response:
        return web.json_response({"count": sum(received.by_event.values()), "by_event": dict(received.by_event),
                                  "repeats": received.repeats})

    async def chats(_: web.Request) -> web.Response:
        return web.json_response(received.chats)

    async def reset(_: web.Request) -> web.Response:
        received.clear()
        return web.json_response({"count": 0})

    application = web.Application()
    application.router.add_post("/events", events)
    application.router.add_get("/stats", stats)
    application.router.add_get("/chats", chats)
    application.router.add_post("/reset", reset)
    return application


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
