"""The fake Twilio REST server of ``tests/fakes/twilio.py`` as its own process, for the benchmark.

``python -m bench.fake_twilio --port P --account AC...:token``. By default it does not keep the messages
it receives: it counts them and keeps, per ``To`` number, the receive times (wall clock) of the last few,
so the benchmark can match replies to the texts it sent, and the bodies sent to it, to count repeats (a body sent
twice to one number: the benchmark's texts are all different and the fake LLM echoes them, so a repeat is a
reply sent twice). ``--keep-messages`` keeps them all (unbounded).

``GET /stats`` answers ``{"count": n, "numbers": k, "repeats": r}``; ``GET /replies`` the receive times by
``To``; ``POST /reset`` forgets all of it.
"""

from __future__ import annotations

import argparse
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.twilio import FakeTwilio, SentSms

MAX_NUMBERS = 200_000      # distinct To numbers whose receive times are kept
MAX_PER_NUMBER = 64        # receive times kept per To number


@dataclass
class ReplyLog:
    """Stands in for ``FakeTwilio.messages``: counts, and keeps bounded receive times per recipient."""

    count: int = 0
    untracked: int = 0
    repeats: int = 0
    times: dict[str, deque[float]] = field(default_factory=dict)
    bodies: dict[str, set[str]] = field(default_factory=dict)

    def append(self, message: SentSms) -> None:
        self.count += 1
        slot = self.times.get(message.to)
        if slot is None:
            if len(self.times) >= MAX_NUMBERS:
                self.untracked += 1
                return
            slot = self.times[message.to] = deque(maxlen=MAX_PER_NUMBER)
            self.bodies[message.to] = set()
        slot.append(time.time())
        sent = self.bodies[message.to]
        if message.body in sent:
            self.repeats += 1
        elif len(sent) < MAX_PER_NUMBER:
            sent.add(message.body)

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Any:
        return iter(())

    def clear(self) -> None:
        self.count = self.untracked = self.repeats = 0
        self.times.clear()
        self.bodies.clear()


class BenchTwilio(FakeTwilio):
    def app(self) -> web.Application:
        app = super().app()
        app.router.add_get("/stats", self._stats)
        app.router.add_get("/replies", self._replies)
        app.router.add_post("/reset", self._reset)
        return app

    async def _stats(self, _: web.Request) -> web.Response:
        log = self.messages
        numbers = len(log.times) if isinstance(log, ReplyLog) else len({m.to for m in log})
        repeats = log.repeats if isinstance(log, ReplyLog) else len(log) - len({(m.to, m.body) for m in log})
        return web.json_response({"count": len(log), "numbers": numbers, "repeats": repeats})

    async def _replies(self, _: web.Request) -> web.Response:
        log = self.messages
        if isinstance(log, ReplyLog):
            return web.json_response({to: list(times) for to, times in log.times.items()})
        return web.json_response({})

    async def _reset(self, _: web.Request) -> web.Response:
        self.messages.clear()
        return web.json_response({"count": 0})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--account", action="append", required=True, metavar="SID:TOKEN")
    parser.add_argument("--delay-s", type=float, default=0.0, help="slow every answer by this much")
    parser.add_argument("--keep-messages", action="store_true", help="keep every message in memory (unbounded)")
    args = parser.parse_args()
    accounts = dict(a.split(":", 1) for a in args.account)
    fake = BenchTwilio(accounts=accounts, delay_s=args.delay_s)
    if not args.keep_messages:
        fake.messages = ReplyLog()  # type: ignore[assignment]
    web.run_app(fake.app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
