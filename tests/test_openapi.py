"""``/openapi.json`` is generated from the handlers' models, and a schemathesis fuzz run against a live
Parley finds no 5xx and no response that breaks its own schema."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import schemathesis
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance

from service.api.openapi import document
from service.api.routes import routes
from service.app import create_app

from .conftest import API_KEY, DEFAULT_NUMBERS, MakeParley, agent_file, build_settings, write_agents
from .fakes.openai import FakeOpenAI
from .fakes.twilio import FakeTwilio

SPEC = document(routes())
schema = schemathesis.openapi.from_dict(SPEC)


async def test_the_document_covers_every_route(make_parley: MakeParley) -> None:
    parley = await make_parley()
    response = await parley.client.get("/openapi.json")
    assert response.status == 200
    served = await response.json()
    assert served["openapi"].startswith("3.1")
    registered = {(r.method, r.resource.canonical) for r in parley.client.app.router.routes()
                  if r.method != "HEAD" and r.resource is not None}
    documented = {(method.upper(), path) for path, ops in served["paths"].items() for method in ops}
    assert registered == documented
    create_chat = served["paths"]["/create-chat"]["post"]
    assert create_chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("CreateChatRequest")
    assert set(create_chat["responses"]) >= {"201", "400", "401", "422"}


class LiveParley:
    """Parley and its fakes on their own event loop in a thread, for a synchronous HTTP fuzzer."""

    def __init__(self, redis_url: str, agents_dir: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.redis_url, self.agents_dir = redis_url, agents_dir
        self.url = ""
        self._closers: list[Any] = []

    def __enter__(self) -> LiveParley:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    async def _serve(self, app: web.Application) -> str:
        server = TestServer(app)
        await server.start_server()
        self._closers.append(server.close)
        return str(server.make_url("/")).rstrip("/")

    async def _start(self) -> None:
        twilio, llm = FakeTwilio(accounts={}), FakeOpenAI()
        twilio.url = await self._serve(twilio.app())
        llm.url = await self._serve(llm.app()) + "/v1"
        write_agents(self.agents_dir, {"frontdesk": agent_file()}, DEFAULT_NUMBERS)
        runner = web.AppRunner(create_app(build_settings(self.redis_url, self.agents_dir, twilio, llm)))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self._closers.insert(0, runner.cleanup)
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}"

    async def _stop(self) -> None:
        for close in self._closers:
            await close()


@pytest.fixture(scope="module")
def live_parley(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    redis.Redis.from_url(redis_url).flushdb()
    with LiveParley(redis_url, tmp_path_factory.mktemp("fuzz") / "agents") as live:
        yield live.url


@schema.parametrize()
@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_fuzzed_requests_get_no_5xx_and_match_the_schema(case: Any, live_parley: str) -> None:
    case.call_and_validate(base_url=live_parley, headers={"Authorization": f"Bearer {API_KEY}"},
                           checks=[not_a_server_error, response_schema_conformance])
