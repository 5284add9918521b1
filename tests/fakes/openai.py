"""A local OpenAI-compatible server: ``POST /v1/chat/completions``, with tool calls, as the real one answers, and
``POST /v1/embeddings``.

Its answer comes from ``respond(body)`` (conversation turns) or ``analyze(body)`` (post-chat analyses, asked
with a ``json_schema`` response format), functions a test may set; by default the first echoes the last
user message and the second fills the schema with plausible values. Either may return a ``Completion``
(text and/or tool calls), or an ``HttpError`` to make the endpoint fail the way OpenAI fails. Every request
body is recorded: conversation turns in ``requests``, post-chat analyses in ``analyses``.

Embeddings are deterministic but meaningful: a text's vector is its bag of *concepts*, hashed into
``dimensions`` (256 unless the request asks) and normalised. A concept is a word, lowercased, stopwords left out,
a plural's ``s`` cut, or the name of the small synonym group it belongs to (``SYNONYMS``: "open", "hours" and
"closed" are one concept), so a paraphrase lands near the text it paraphrases and an unrelated question lands
nowhere near. The hash is seeded with the model's name: two models' vectors are unrelated, as real models' are.
Texts embedded are recorded in ``embedded``; ``embed_error`` makes the endpoint fail.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass
class Call:
    name: str
    arguments: str
    id: str = ""


@dataclass
class Completion:
    content: str | None = None
    tool_calls: list[Call] = field(default_factory=list)


@dataclass
class HttpError:
    status: int
    message: str = "server error"
    delay_s: float = 0.0
    should_retry: bool | None = None   # sets x-should-retry; None leaves the SDK's own policy
    retry_after_ms: int | None = None  # sets retry-after-ms (the wait the client is asked for)


@dataclass
class Raw:
    """A 200 whose body is not a chat completion (a captive proxy's page, a broken gateway)."""

    body: str
    content_type: str = "application/json"


Responder = Callable[[dict[str, Any]], Completion | HttpError | Raw]


def last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body["messages"]):
        if message["role"] == "user":
            content = message["content"]
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if p.get("type") == "text")
            return str(content)
    return ""


def analysis_for(schema: dict[str, Any]) -> dict[str, Any]:
    """A plausible answer to a post-chat analysis schema: the first allowed value of each field."""
    def value(prop: dict[str, Any]) -> Any:
        if "enum" in prop:
            return prop["enum"][0]
        kind = prop["type"][0] if isinstance(prop["type"], list) else prop["type"]
        return {"string": "something", "boolean": True, "number": 1, "object": None}[kind]

    custom = schema["properties"]["custom_analysis_data"]["properties"]
    return {"chat_summary": "The user asked a question and the agent answered.", "user_sentiment": "Neutral",
            "chat_successful": True, "custom_analysis_data": {name: value(p) for name, p in custom.items()}}


def plausible_analysis(body: dict[str, Any]) -> Completion:
    return Completion(content=json.dumps(analysis_for(body["response_format"]["json_schema"]["schema"])))


def echo(body: dict[str, Any]) -> Completion:
    """Repeats the user's last message; opens with a greeting when there is none yet."""
    if not any(m["role"] == "user" for m in body["messages"]):
        return Completion(content="Hi, this is the front desk.")
    return Completion(content=f"You said: {last_user_text(body)}")


SYNONYMS = {
    "hours": "open opening hour close closed closing schedule time when",
    "price": "price cost fee charge much pay expensive cheap afford dollar",
    "insurance": "insurance insurer coverage cover covered plan network accept accepted take ppo hmo",
    "appointment": "appointment book booking visit reschedule slot available availability",
    "cleaning": "cleaning clean hygiene checkup exam polish",
    "weekend": "saturday sunday weekend",
    "location": "where address located location parking park street",
    "whitening": "whitening whiten white bleach bleaching",
}
CONCEPT = {word: concept for concept, words in SYNONYMS.items() for word in words.split()}
FAKE_STOPWORDS = frozenset(" ".join((
    "a an the and or of to in on at for is are was be do does did you your we our us i me my it its this that",
    "what how can could would will with from by as if any there have has about please hi hello",
)).split())


def concepts(text: str) -> list[str]:
    out = []
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        if word in FAKE_STOPWORDS:
            continue
        if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]
        out.append(CONCEPT.get(word, word))
    return out


def fake_embedding(text: str, model: str, dimensions: int) -> list[float]:
    """``text``'s hashed bag of concepts, normalised (see the module's docstring)."""
    vector = [0.0] * dimensions
    for concept in concepts(text):
        digest = hashlib.blake2b(f"{model}|{concept}".encode(), digest_size=8).digest()
        slot = int.from_bytes(digest[:4], "little") % dimensions
        vector[slot] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


@dataclass
class FakeOpenAI:
    respond: Responder = echo
    analyze: Responder = plausible_analysis
    requests: list[dict[str, Any]] = field(default_factory=list)
    analyses: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    delay_s: float = 0.0
    url: str = ""
    called: asyncio.Event = field(default_factory=asyncio.Event)
    analysed: asyncio.Event = field(default_factory=asyncio.Event)
    embedded: list[str] = field(default_factory=list)
    wire: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)   # each completion's raw body, headers
    embed_error: HttpError | None = None
    embed_delay_s: float = 0.0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._complete)
        app.router.add_post("/v1/embeddings", self._embed)
        return app

    async def _embed(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer sk-test":
            return web.json_response({"error": {"message": "bad key", "type": "invalid_request_error"}}, status=401)
        body = await request.json()
        if self.embed_delay_s:
            await asyncio.sleep(self.embed_delay_s)
        if self.embed_error is not None:
            return web.json_response({"error": {"message": self.embed_error.message, "type": "server_error"}},
                                     status=self.embed_error.status)
        texts = [body["input"]] if isinstance(body["input"], str) else body["input"]
        self.embedded += texts
        dimensions = int(body.get("dimensions") or 256)
        data = [{"object": "embedding", "index": i, "embedding": fake_embedding(t, body["model"], dimensions)}
                for i, t in enumerate(texts)]
        return web.json_response({"object": "list", "data": data, "model": body["model"],
                                  "usage": {"prompt_tokens": sum(len(t.split()) for t in texts),
                                            "total_tokens": sum(len(t.split()) for t in texts)}})

    async def _complete(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer sk-test":
            return web.json_response({"error": {"message": "bad key", "type": "invalid_request_error"}}, status=401)
        raw = await request.read()
        self.wire.append((raw, dict(request.headers)))
        body = orjson.loads(raw)
        analysis = (body.get("response_format") or {}).get("type") == "json_schema"
        if analysis:
            self.analyses.append(body)      # post-chat analyses are kept apart from conversation turns
            self.analysed.set()
        else:
            self.requests.append(body)
            self.called.set()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            answer = self.analyze(body) if analysis else self.respond(body)
        finally:
            self.in_flight -= 1
        if isinstance(answer, HttpError):
            await asyncio.sleep(answer.delay_s)
            headers = {} if answer.should_retry is None else {"x-should-retry": str(answer.should_retry).lower()}
            if answer.retry_after_ms is not None:
                headers["retry-after-ms"] = str(answer.retry_after_ms)
            return web.json_response({"error": {"message": answer.message, "type": "server_error", "code": None}},
                                     status=answer.status, headers=headers)
        if isinstance(answer, Raw):
            return web.Response(text=answer.body, content_type=answer.content_type)
        message: dict[str, Any] = {"role": "assistant", "content": answer.content, "refusal": None}
        if answer.tool_calls:
            message["tool_calls"] = [
                {"id": c.id or f"call_{i}_{len(self.requests)}", "type": "function",
                 "function": {"name": c.name, "arguments": c.arguments}}
                for i, c in enumerate(answer.tool_calls)
            ]
        return web.json_response({
            "id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion", "created": int(time.time()),
            "model": body["model"],
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": "tool_calls" if answer.tool_calls else "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        })

    def user_texts(self) -> list[str]:
        """The last user message of every request, in order."""
        return [last_user_text(body) for body in self.requests]
