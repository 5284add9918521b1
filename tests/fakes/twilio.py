"""A local Twilio REST server: ``POST /2010-04-01/Accounts/{sid}/Messages.json``, as the real one answers.

It checks HTTP Basic auth against the accounts it knows, records every message, and has triggers:
``errors[to] = (http_status, twilio_code)`` makes sends to that number fail the way Twilio fails them
(21610 for an unsubscribed recipient), ``fail_next`` makes the next creates fail once each (a 429, a
503), ``throttle`` answers 429 (20429) with a ``Retry-After`` header to the next creates or until ``release``,
and ``delay_s`` slows every answer. ``creates`` lists every create request (accepted or not), ``wire`` the
latest as they came (path, raw body, headers), and ``max_in_flight`` is the most it ever had in flight at once.
``numbers`` serves the resources a number's onboarding touches (``tests/fakes/twilio_numbers.py``), on every
Twilio host's paths.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections import deque
from dataclasses import dataclass, field

from aiohttp import web

from .twilio_numbers import NumberResources


@dataclass
class SentSms:
    sid: str
    account_sid: str
    to: str
    from_: str
    body: str
    status_callback: str | None


@dataclass
class FakeTwilio:
    accounts: dict[str, str]                      # account SID -> auth token
    messages: list[SentSms] = field(default_factory=list)
    errors: dict[str, tuple[int, int]] = field(default_factory=dict)
    fail_next: list[tuple[int, int]] = field(default_factory=list)   # the next creates fail like this, once each
    delay_s: float = 0.0
    throttled: int = 0                            # creates still to answer 429 (-1: until ``release``)
    throttle_after: int = 0                       # creates still to accept before throttling starts
    retry_after: str | None = None                # the Retry-After header of those 429s
    in_flight: int = 0
    max_in_flight: int = 0
    refused: int = 0                              # creates answered with an error
    # The latest creates (accepted or not), as (monotonic time, To, Body); bounded for the benchmark's long runs.
    creates: deque[tuple[float, str, str]] = field(default_factory=lambda: deque(maxlen=10_000))
    wire: deque[tuple[str, bytes, dict[str, str]]] = field(default_factory=lambda: deque(maxlen=100))
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    requested: asyncio.Event = field(default_factory=asyncio.Event)   # a create call has started
    url: str = ""
    numbers: NumberResources = field(init=False)

    def __post_init__(self) -> None:
        self.numbers = NumberResources(self._authorized)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{account}/Messages.json", self._create)
        self.numbers.routes(app.router)
        return app

    def _authorized(self, request: web.Request, account: str) -> bool:
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Basic":
            return False
        user, _, password = base64.b64decode(encoded).decode().partition(":")
        return user == account and self.accounts.get(account) == password

    async def _create(self, request: web.Request) -> web.Response:
        account = request.match_info["account"]
        self.wire.append((request.path, await request.read(), dict(request.headers)))
        if not self._authorized(request, account):
            return web.json_response({"code": 20003, "message": "Authenticate", "status": 401}, status=401)
        self.requested.set()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(request, account)
        finally:
            self.in_flight -= 1

    def throttle(self, creates: int = -1, *, retry_after: str | None = "1", after: int = 0) -> None:
        """Answer the next ``creates`` creates (-1: every one until ``release``) with 429 / 20429, as Twilio
        answers too many concurrent requests, with ``Retry-After: retry_after`` (None: no header); ``after``:
        accept that many creates first."""
        self.throttled, self.retry_after, self.throttle_after = creates, retry_after, after

    def release(self) -> None:
        """Stop throttling."""
        self.throttled = 0

    async def _answer(self, request: web.Request, account: str) -> web.Response:
        form = await request.post()
        to, body = str(form["To"]), str(form.get("Body", ""))
        self.creates.append((time.monotonic(), to, body))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.throttle_after:
            self.throttle_after -= 1
        elif self.throttled:
            if self.throttled > 0:
                self.throttled -= 1
            self.refused += 1
            headers = {"Retry-After": self.retry_after} if self.retry_after is not None else None
            return web.json_response({"code": 20429, "message": "Too Many Requests", "status": 429,
                                      "more_info": "https://www.twilio.com/docs/errors/20429"}, status=429,
                                     headers=headers)
        if to in self.errors or self.fail_next:
            status, code = self.errors[to] if to in self.errors else self.fail_next.pop(0)
            self.refused += 1
            return web.json_response({"code": code, "message": f"error {code}", "status": status,
                                      "more_info": f"https://www.twilio.com/docs/errors/{code}"}, status=status)
        sid = "SM" + secrets.token_hex(16)
        self.messages.append(SentSms(sid, account, to, str(form.get("From", "")), body,
                                     str(form["StatusCallback"]) if "StatusCallback" in form else None))
        self.arrived.set()
        return web.json_response({
            "sid": sid, "account_sid": account, "to": to, "from": form.get("From"), "body": body,
            "status": "queued", "num_segments": "1", "direction": "outbound-api",
            "date_created": "Thu, 26 Nov 2026 20:12:31 +0000", "api_version": "2010-04-01",
            "uri": f"/2010-04-01/Accounts/{account}/Messages/{sid}.json",
        }, status=201)

    def to(self, number: str) -> list[str]:
        """Bodies sent to ``number``, in order."""
        return [m.body for m in self.messages if m.to == number]

    async def wait_for(self, count: int, within_s: float = 10.0) -> list[SentSms]:
        """Wait until at least ``count`` messages were sent."""
        async with asyncio.timeout(within_s):
            while len(self.messages) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.messages
