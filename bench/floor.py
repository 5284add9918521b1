"""The floor: the least a webhook + worker process can do for one SMS turn, with the same outside I/O as Parley.

``python -m bench.floor --port P --redis-url ... --llm-url ... --twilio-url ...``. One aiohttp process:

- ``POST /twilio/sms`` reads the form and makes one Redis round trip (a Lua script: ``SET NX`` dedupe,
  ``RPUSH`` to the conversation's history, ``XADD`` a wake-up), then answers empty TwiML. No signature
  check, no routing, no keywords.
- a worker reads wake-ups (``XREADGROUP``) and, for each, at most ``--workers`` at once: reads the history
  (``LRANGE``), makes one LLM call and one Twilio call (plain aiohttp, the same fakes), writes the reply to
  the history (``RPUSH`` + ``LTRIM``, one pipeline) and acknowledges (``XACK``). Nothing else: no lock, no
  ordering, no chat object, no opt-out or segment checks.

``GET /readyz`` answers 200 once Redis answers.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import ResponseError

from service.cli.commands import new_event_loop

PREFIX = "floor:"
WAKEUPS = PREFIX + "wakeups"
GROUP = "workers"
HISTORY_WINDOW = 40
HISTORY_CAP = 2_000
EMPTY_TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response />'
SYSTEM_PROMPT = ("You are the front desk. The user is {user}.\n\n## Channel\nYou are texting with the user by "
                 "SMS. Reply in plain text. Keep each reply short, at most about 459 characters.")
TOOLS = [{"type": "function", "function": {"name": "end_chat", "description": "End the chat.",
                                           "parameters": {"type": "object", "properties": {}}}}]

# KEYS: seen, history, wakeups.  ARGV: user message JSON, conversation.
_ENQUEUE = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', 86400) then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', 100000, '*', 'conv', ARGV[2])
return 1
"""

REDIS: web.AppKey[aioredis.Redis] = web.AppKey("redis", aioredis.Redis)
ENQUEUE: web.AppKey[Any] = web.AppKey("enqueue")
ARGS: web.AppKey[argparse.Namespace] = web.AppKey("args", argparse.Namespace)


def history_key(conv: str) -> str:
    return f"{PREFIX}history:{{{conv}}}"


async def webhook(request: web.Request) -> web.Response:
    form = await request.post()
    to, user, sid = str(form["To"]), str(form["From"]), str(form["MessageSid"])
    conv = f"{to}:{user}"
    message = orjson.dumps({"role": "user", "content": str(form.get("Body", ""))}).decode()
    await request.app[ENQUEUE](keys=[f"{PREFIX}seen:{{{conv}}}:{sid}", history_key(conv), WAKEUPS],
                               args=[message, conv])
    return web.Response(body=EMPTY_TWIML, content_type="text/xml")


async def readyz(request: web.Request) -> web.Response:
    await request.app[REDIS].ping()
    return web.json_response({"ok": True})


class Worker:
    def __init__(self, redis: aioredis.Redis, http: aiohttp.ClientSession, args: argparse.Namespace) -> None:
        self.redis = redis
        self.http = http
        self.args = args
        self.slots = asyncio.Semaphore(args.workers)
        self.tasks: set[asyncio.Task[None]] = set()
        self.llm_url = args.llm_url.rstrip("/") + "/chat/completions"
        self.twilio_url = f"{args.twilio_url.rstrip('/')}/2010-04-01/Accounts/{args.account_sid}/Messages.json"
        credentials = base64.b64encode(f"{args.account_sid}:{args.auth_token}".encode()).decode()
        self.twilio_headers = {"Authorization": "Basic " + credentials}

    async def run(self) -> None:
        with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists
            await self.redis.xgroup_create(WAKEUPS, GROUP, id="0", mkstream=True)
        while True:
            await self.slots.acquire()
            free = 1
            while free < 100 and not self.slots.locked():  # take as many free slots as are there
                await self.slots.acquire()
                free += 1
            reply: Any = await self.redis.xreadgroup(GROUP, "floor", {WAKEUPS: ">"}, count=free, block=1000)
            entries = [entry for _stream, batch in reply or [] for entry in batch]
            for _ in range(free - len(entries)):
                self.slots.release()
            for entry_id, fields in entries:
                task = asyncio.create_task(self.turn(entry_id, fields["conv"]))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def turn(self, entry_id: str, conv: str) -> None:
        try:
            to, user = conv.split(":", 1)
            key = history_key(conv)
            history = [orjson.loads(raw) for raw in await self.redis.lrange(key, -HISTORY_WINDOW, -1)]
            body = {"model": "gpt-test", "temperature": 0.0, "tools": TOOLS, "tool_choice": "auto",
                    "messages": [{"role": "system", "content": SYSTEM_PROMPT.format(user=user)}, *history]}
            async with self.http.post(self.llm_url, data=orjson.dumps(body), headers={
                    "Authorization": "Bearer sk-test", "Content-Type": "application/json"}) as response:
                completion = orjson.loads(await response.read())
            text = completion["choices"][0]["message"]["content"] or ""
            form = {"To": user, "From": to, "Body": text, "StatusCallback": "http://bench.local/twilio/status"}
            async with self.http.post(self.twilio_url, data=form, headers=self.twilio_headers) as response:
                await response.read()
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.rpush(key, orjson.dumps({"role": "assistant", "content": text}).decode())
                pipe.ltrim(key, -HISTORY_CAP, -1)
                await pipe.execute()
            await self.redis.xack(WAKEUPS, GROUP, entry_id)
        finally:
            self.slots.release()


async def resources(app: web.Application) -> AsyncIterator[None]:
    args = app[ARGS]
    redis = aioredis.from_url(args.redis_url, decode_responses=True, max_connections=max(64, args.workers * 2),
                              socket_timeout=5.0)
    connector = aiohttp.TCPConnector(limit=args.workers)
    async with aiohttp.ClientSession(connector=connector) as http:
        app[REDIS] = redis
        app[ENQUEUE] = redis.register_script(_ENQUEUE)
        worker = Worker(redis, http, args)
        loop = asyncio.create_task(worker.run())
        try:
            yield
        finally:
            loop.cancel()
            for task in list(worker.tasks):
                task.cancel()
            await asyncio.gather(loop, *worker.tasks, return_exceptions=True)
            await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--llm-url", required=True, help="OpenAI base URL, e.g. http://127.0.0.1:9001/v1")
    parser.add_argument("--twilio-url", required=True, help="Twilio REST base URL")
    parser.add_argument("--account-sid", required=True)
    parser.add_argument("--auth-token", required=True)
    parser.add_argument("--workers", type=int, default=512, help="turns in flight at most")
    args = parser.parse_args()
    app = web.Application()
    app[ARGS] = args
    app.cleanup_ctx.append(resources)
    app.router.add_post("/twilio/sms", webhook)
    app.router.add_get("/readyz", readyz)
    # The same event loop as Parley's (``service.cli.commands.new_event_loop``): the floor differs only in what it does.
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None, loop=new_event_loop())


if __name__ == "__main__":
    main()
