"""``/openapi.json`` is generated from the handlers' models, and a schemathesis fuzz run of every route against a
live Parley passes every check schemathesis has: no 5xx, every status and body documented, valid data taken,
invalid data refused, undeclared methods answered 405 with Allow."""

from __future__ import annotations

import asyncio
import os
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
from schemathesis.checks import CHECKS, is_check_class, load_all_checks

from service.api.openapi import document
from service.api.routes import routes
from service.app import create_app

from .conftest import API_KEY, DEFAULT_NUMBERS, MakeParley, agent_file, build_settings, write_agents
from .fakes.openai import FakeOpenAI
from .fakes.twilio import FakeTwilio

SPEC = document(routes())
# Routes whose schema-valid requests Parley may still refuse (422) for what no JSON schema can say, by operation
# id: the objects a body names must exist, a number must be one Parley sends from, weights must sum to 1, a
# cursor must be one Parley returned, two numbers must be on one channel, a URL must pass the outbound policy,
# Twilio must take the account's credentials (this fake knows no account) and have the number.
# The positive-data check accepts a 422 there; every other check holds as for any route.
STATEFUL_422 = ["create_chat", "create_sms_chat", "send_sms", "list_chats", "clear_opt_out", "create_chat_agent",
                "update_chat_agent", "create_retell_llm", "update_retell_llm", "import_phone_number",
                "update_phone_number", "create_phone_number", "draft_a2p_campaign", "create_a2p_registration",
                "create_conversation_flow", "update_conversation_flow", "create_conversation_flow_component",
                "update_conversation_flow_component", "create_knowledge_base", "add_knowledge_base_sources"]
POSITIVE = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]
# The coverage phase (every boundary and negative variant of every schema, deterministically: some 3,000 requests)
# takes about a minute and a half: PARLEY_TEST_FUZZ_COVERAGE=1 runs it too. By default the run is random
# generation alone, bounded by max_examples per route, so this file stays well under a minute.
COVERAGE = os.environ.get("PARLEY_TEST_FUZZ_COVERAGE") == "1"
CONFIG = schemathesis.Config.from_dict({"phases": {"coverage": {"enabled": COVERAGE}}, "operations": [
    {"include-operation-id": name, "checks": {"positive_data_acceptance": {"expected-statuses": POSITIVE}}}
    for name in STATEFUL_422]})
schema = schemathesis.openapi.from_dict(SPEC, config=CONFIG)
load_all_checks()
# Every check schemathesis has (``--checks all``): status codes, content types, headers and bodies against the
# document, positive data accepted, negative data rejected, missing headers, undeclared methods (405 with Allow),
# auth that is really checked, and the stateful ones that look for use after delete.
ALL_CHECKS = [check for check in CHECKS.get_all() if not is_check_class(check)]
assert len(ALL_CHECKS) >= 14, [check.__name__ for check in ALL_CHECKS]


async def test_the_document_covers_every_route(make_parley: MakeParley) -> None:
    parley = await make_parley()
    response = await parley.client.get("/openapi.json")
    assert response.status == 200
    served = await response.json()
    assert served["openapi"].startswith("3.1")
    registered = {(r.method, r.resource.canonical) for r in parley.client.app.router.routes()
                  if r.method != "HEAD" and r.resource is not None}
    documented = {(method.upper(), path) for path, ops in served["paths"].items() for method in ops}
    # The operator console's pages (service/console) are not API routes: served, not documented.
    console = {(method, path) for method, path in registered if path.startswith("/console")}
    assert console and not {path for _, path in documented if path.startswith("/console")}
    assert registered - console == documented
    create_chat = served["paths"]["/create-chat"]["post"]
    assert create_chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("CreateChatRequest")
    assert set(create_chat["responses"]) >= {"201", "400", "401", "422"}


def test_each_route_documents_the_errors_it_answers() -> None:
    paths = SPEC["paths"]
    sms = paths["/twilio/sms"]["post"]
    assert set(sms["responses"]) == {"200", "400", "403", "404", "408", "413", "503"}
    assert "text/plain" in sms["responses"]["413"]["content"]
    assert "application/x-www-form-urlencoded" in sms["requestBody"]["content"]
    assert {"name": "X-Twilio-Signature", "in": "header", "required": True, "schema": {"type": "string"}} in \
        sms["parameters"]
    assert set(paths["/create-chat-completion"]["post"]["responses"]) >= {"404", "408", "409", "413", "503"}
    assert set(paths["/send-sms"]["post"]["responses"]) >= {"409", "429", "502"}
    assert set(paths["/list-chat"]["get"]["responses"]) >= {"404", "422"}
    # An empty body is {}: it is required only where {} is not a valid body.
    assert paths["/create-chat"]["post"]["requestBody"]["required"] is True
    assert paths["/create-retell-llm"]["post"]["requestBody"]["required"] is False


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
@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_fuzzed_requests_pass_every_check(case: Any, live_parley: str) -> None:
    case.call_and_validate(base_url=live_parley, headers={"Authorization": f"Bearer {API_KEY}"}, checks=ALL_CHECKS)
