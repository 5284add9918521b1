"""``parley chat AGENT_ID``: talk to an agent in the terminal, the quickest way to try a prompt.

Parley is built by ``create_app`` as usual (no workers: an ``api_chat`` needs none) and served on a free
loopback port under a fresh API key that is never shown. The conversation then goes over HTTP through the
API's own routes, exactly as a client's would: ``POST /create-chat``, one ``POST /create-chat-completion``
per line typed, ``PATCH /end-chat`` at the end. No Twilio is involved.

stdout carries only the conversation; the JSON log lines and errors go to stderr. Exit status: 0 when the
chat ended (``/end``, end of input, or the agent ended it), 1 on a configuration or storage problem, 2
when the API answered with an error, 130 on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
import threading
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import SecretStr
from redis.exceptions import RedisError

from service import logs
from service.app import create_app
from service.errors import ConfigError
from service.settings import Settings

END_COMMAND = "/end"
PROMPT = "you> "
RESULT_CHARS = 200
EXIT_OK, EXIT_CONFIG, EXIT_API, EXIT_INTERRUPTED = 0, 1, 2, 130


class ApiError(Exception):
    """The API answered with a non-2xx status; the message is Retell's ``message``."""


def run(settings: Settings, agent_id: str, version: int | None = None) -> int:
    """Chat with ``agent_id`` (its latest version, or ``version``) on stdin/stdout; the exit status."""
    # The terminal is the conversation: only warnings and errors unless a level is asked for.
    logs.configure("WARNING" if settings.log_level.upper() == "INFO" else settings.log_level)
    key = "key_" + secrets.token_hex(24)
    settings = settings.model_copy(update={"api_keys": [SecretStr(key)]})
    try:
        app = create_app(settings, workers=False)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    try:
        return asyncio.run(_serve_and_chat(app, key, agent_id, version))
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED


async def _serve_and_chat(app: web.Application, key: str, agent_id: str, version: int | None) -> int:
    runner = web.AppRunner(app, access_log=None)
    try:
        try:
            await runner.setup()   # connects to Redis and publishes the agents
        except RedisError as exc:
            print(f"cannot reach Redis: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        headers = {"Authorization": f"Bearer {key}"}
        async with aiohttp.ClientSession(base_url=f"http://{host}:{port}", headers=headers) as http:
            try:
                return await _converse(_Api(http), agent_id, version)
            except ApiError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return EXIT_API
    finally:
        await runner.cleanup()


class _Api:
    """The few API calls a terminal chat makes; a non-2xx answer raises ``ApiError``."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self._http = http

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        async with self._http.request(method, path, json=body) as response:
            if response.status == 204:
                return None
            try:
                data = await response.json(content_type=None)
            except ValueError:
                data = None
            if response.status >= 300:
                message = data.get("message") if isinstance(data, dict) else None
                raise ApiError(message or f"HTTP {response.status} from {method} {path}")
            return data

    async def create_chat(self, agent_id: str, version: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {"agent_id": agent_id}
        if version is not None:
            body["agent_version"] = version
        chat: dict[str, Any] = await self._call("POST", "/create-chat", body)
        return chat

    async def complete(self, chat_id: str, content: str) -> list[dict[str, Any]]:
        answer = await self._call("POST", "/create-chat-completion", {"chat_id": chat_id, "content": content})
        messages: list[dict[str, Any]] = answer["messages"]
        return messages

    async def get_chat(self, chat_id: str) -> dict[str, Any]:
        chat: dict[str, Any] = await self._call("GET", f"/get-chat/{chat_id}")
        return chat

    async def end_chat(self, chat_id: str) -> None:
        await self._call("PATCH", f"/end-chat/{chat_id}")


async def _converse(api: _Api, agent_id: str, version: int | None) -> int:
    chat = await api.create_chat(agent_id, version)
    chat_id = chat["chat_id"]
    _show(chat.get("message_with_tool_calls", []))
    lines = _stdin_lines()
    interactive = sys.stdin.isatty()
    try:
        while True:
            if interactive:
                print(PROMPT, end="", flush=True)
            line = await lines.get()
            if line is None or line.strip() == END_COMMAND:
                await api.end_chat(chat_id)
                return EXIT_OK
            if not line.strip():
                continue
            _show(await api.complete(chat_id, line.strip()))
            if (await api.get_chat(chat_id))["chat_status"] != "ongoing":
                print("(chat ended)", flush=True)
                return EXIT_OK
    except asyncio.CancelledError:   # Ctrl-C: end the chat rather than leave it ongoing
        with contextlib.suppress(ApiError, aiohttp.ClientError):
            await api.end_chat(chat_id)
        raise


def _show(messages: list[dict[str, Any]]) -> None:
    for message in messages:
        line = _format(message)
        if line is not None:
            print(line, flush=True)


def _format(message: dict[str, Any]) -> str | None:
    role = message.get("role")
    if role == "agent":
        return f"agent> {message.get('content', '')}"
    if role == "tool_call_invocation":
        return f"  [tool {message.get('name', '?')} {message.get('arguments', '')}]"
    if role == "tool_call_result":
        return f"  [result: {_shorten(str(message.get('content', '')))}]"
    if role == "state_transition":
        return f"  [state {message.get('former_state_name') or '-'} -> {message.get('new_state_name', '?')}]"
    if role == "node_transition":   # a conversation flow moved: where the chat is now, how it got there, and why
        how = {"global": " (global)", "global_go_back": " (back)"}.get(message.get("transition_type") or "", "")
        former = message.get("former_node_name") or message.get("former_node_id") or "-"
        new = message.get("new_node_name") or message.get("new_node_id") or "the end"
        why = f": {message['content']}" if message.get("content") else ""
        return f"  [node {former} -> {new}{how}{why}]"
    return None


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= RESULT_CHARS else text[:RESULT_CHARS - 1] + "…"


def _stdin_lines() -> asyncio.Queue[str | None]:
    """stdin's lines as they arrive (``None`` at its end), read by a daemon thread.

    A daemon thread rather than the loop's executor: a ``readline`` blocked on a terminal cannot be
    interrupted, and the executor would keep the process alive after Ctrl-C until Enter was pressed.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def put(line: str | None) -> bool:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, line)
        except RuntimeError:   # the loop has closed: nobody is listening any more
            return False
        return True

    def read(put: Callable[[str | None], bool]) -> None:
        for line in iter(sys.stdin.readline, ""):
            if not put(line):
                return
        put(None)

    threading.Thread(target=read, args=(put,), name="parley-chat-stdin", daemon=True).start()
    return queue
