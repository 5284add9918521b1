"""The fake OpenAI server of ``tests/fakes/openai.py`` as its own process, for the benchmark.

``python -m bench.fake_openai --port P [--delay-s 1.5]``. It answers like the test fake (echoing the
user's last text), after ``delay_s``, except that it takes a conversation flow's transition when the user's last
text holds ``[move]`` (``move_or_echo``: the first ``transition_to_*`` tool offered, so a flow's walk is the same
on every run). By default it does not keep the request bodies, only counts them
(``--keep-messages`` keeps them, unbounded).

``GET /stats`` answers the counts and the concurrency seen; ``POST /config {"delay_s": 1.5}`` changes the
latency; ``POST /reset`` zeroes the counts.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakes.openai import Call, Completion, FakeOpenAI, echo, last_user_text

MOVE = "[move]"


def move_or_echo(body: dict[str, Any]) -> Completion:
    """With ``[move]`` in the user's last text and a conversation flow's transition offered, call the first one;
    otherwise echo, as the test fake does."""
    if MOVE in last_user_text(body):
        for tool in body.get("tools", []):
            if tool["function"]["name"].startswith("transition_to_"):
                return Completion(tool_calls=[Call(tool["function"]["name"], "{}")])
    return echo(body)


@dataclass
class Count:
    """Stands in for ``FakeOpenAI.requests``/``analyses``: counts what is appended, keeps nothing."""

    count: int = 0

    def append(self, _: Any) -> None:
        self.count += 1

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Any:
        return iter(())

    def clear(self) -> None:
        self.count = 0


class BenchOpenAI(FakeOpenAI):
    def app(self) -> web.Application:
        app = super().app()
        app.router.add_get("/stats", self._stats)
        app.router.add_post("/config", self._config)
        app.router.add_post("/reset", self._reset)
        return app

    async def _stats(self, _: web.Request) -> web.Response:
        return web.json_response({"count": len(self.requests), "analyses": len(self.analyses),
                                  "in_flight": self.in_flight, "max_in_flight": self.max_in_flight,
                                  "delay_s": self.delay_s})

    async def _config(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.delay_s = float(body.get("delay_s", self.delay_s))
        return web.json_response({"delay_s": self.delay_s})

    async def _reset(self, _: web.Request) -> web.Response:
        self.requests.clear()
        self.analyses.clear()
        self.max_in_flight = self.in_flight
        return web.json_response({"count": 0})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-s", type=float, default=0.0, help="answer after this long (the LLM's latency)")
    parser.add_argument("--keep-messages", action="store_true", help="keep every request body (unbounded)")
    args = parser.parse_args()
    fake = BenchOpenAI(respond=move_or_echo, delay_s=args.delay_s)
    if not args.keep_messages:
        fake.requests = Count()  # type: ignore[assignment]
        fake.analyses = Count()  # type: ignore[assignment]
        fake.wire = Count()  # type: ignore[assignment]
    web.run_app(fake.app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
