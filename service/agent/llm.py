"""The LLM: any OpenAI-compatible chat-completions endpoint, through ``agent.completions`` (the request and
the retries of the official ``openai`` client, without its per-call CPU).

408/409/429/5xx, timeouts and connection errors are retried as the client retries them (``PARLEY_LLM_MAX_RETRIES``);
what still fails becomes ``LLMError`` here. A 200 whose body is not a chat completion (an HTML proxy
page parses as a plain ``str``) is an ``LLMError`` too.

Models are named as Retell names them; ``LLM.served`` maps a name to the one the server knows (the agent's
``llm_models``, then ``PARLEY_LLM_MODELS``). Each served model has its own breaker, and a completion given a
``backup`` asks it when the primary fails (an error, a time-out, its breaker open).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson

from service.agent.completions import CompletionError, Completions
from service.errors import LLMError
from service.metrics import Metrics
from service.settings import Settings

# A reply longer than this is cut: an SMS is at most 1,600 characters, and a runaway model must not
# fill Redis or the worker's memory.
MAX_CONTENT_CHARS = 8_000
OPENAI_BASE_URL = "https://api.openai.com/v1"   # the openai client's default

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Completion:
    content: str
    tool_calls: tuple[ToolCall, ...]
    model: str = ""               # the model that answered, as the agent names it (the primary or the backup)
    prompt_tokens: int = 0        # the usage the LLM server reported
    completion_tokens: int = 0


class Breaker:
    """Fails fast while the LLM is down: after ``threshold`` failures in a row, calls are refused for
    ``cooldown_s``; then one call is let through, and its success closes the breaker again. So an outage
    costs each turn a fallback text at once instead of the SDK's retries and timeouts."""

    def __init__(self, threshold: int, cooldown_s: float) -> None:
        self.threshold, self.cooldown_s = threshold, cooldown_s
        self.failures = 0
        self.open_until = 0.0

    def check(self) -> None:
        now = time.monotonic()
        if self.failures >= self.threshold and now < self.open_until:
            raise LLMError(f"the model failed {self.failures} times in a row; not calling it for "
                           f"{self.open_until - now:.0f} s more")
        if self.failures >= self.threshold:
            self.open_until = now + self.cooldown_s   # half-open: this call is the trial, others wait

    def succeeded(self) -> None:
        self.failures = 0

    def failed(self) -> None:
        self.failures += 1
        if self.failures >= self.threshold:
            self.open_until = time.monotonic() + self.cooldown_s


class LLM:
    """Chat completions with tools."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._metrics = metrics
        self._names = settings.llm_models
        self._breaker_settings = (settings.llm_breaker_failures, settings.llm_breaker_cooldown_s)
        self._breakers: dict[str, Breaker] = {}   # by served model name
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
        self._client: Completions | None = None
        if key:
            self._client = Completions(api_key=key, base_url=settings.openai_base_url or OPENAI_BASE_URL,
                                       timeout_s=settings.llm_timeout_s, max_retries=settings.llm_max_retries)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    def served(self, model: str, names: Mapping[str, str] | None = None) -> str:
        """``model`` (a Retell name) as the LLM server knows it: ``names`` (an agent's ``llm_models``), then
        ``PARLEY_LLM_MODELS``, each by name and then by ``"*"``; else the name itself."""
        for table in (names or {}, self._names):
            if model in table:
                return table[model]
            if "*" in table:
                return table["*"]
        return model

    def breaker(self, served: str) -> Breaker:
        if served not in self._breakers:
            self._breakers[served] = Breaker(*self._breaker_settings)
        return self._breakers[served]

    async def complete(
        self, *, model: str, temperature: float, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
        allow_tools: bool = True, response_format: dict[str, Any] | None = None, backup: str | None = None,
        names: Mapping[str, str] | None = None, require: str | None = None,
    ) -> Completion:
        """One completion; with ``allow_tools=False`` the tools stay declared but the model must answer in text;
        ``require`` makes it call a tool: ``"any"`` one of them, else the one of that name (OpenAI's
        ``tool_choice``). When ``model`` fails and there is a ``backup`` model, the backup answers; ``names`` as in
        ``served``."""
        choice: str | dict[str, Any] = "auto" if allow_tools else "none"
        if require is not None:
            choice = "required" if require == "any" else {"type": "function", "function": {"name": require}}
        try:
            completion = await self._complete(self.served(model, names), temperature, messages, tools, choice,
                                              response_format)
            return replace(completion, model=model)
        except LLMError as exc:
            if backup is None:
                raise
            log.warning("the primary model failed; asking the backup", extra={
                "model": model, "backup": backup, "error": str(exc)})
        completion = await self._complete(self.served(backup, names), temperature, messages, tools, choice,
                                          response_format)
        return replace(completion, model=backup)

    async def _complete(
        self, model: str, temperature: float, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
        choice: str | dict[str, Any], response_format: dict[str, Any] | None,
    ) -> Completion:
        if self._client is None:
            raise LLMError("OPENAI_API_KEY is not set")
        breaker = self.breaker(model)
        kwargs: dict[str, Any] = {"model": model, "messages": messages, "temperature": temperature}
        if tools:
            kwargs["tools"] = tools
            kwargs["tool_choice"] = choice
        if response_format is not None:
            kwargs["response_format"] = response_format
        try:
            breaker.check()
        except LLMError:
            self._metrics.llm_calls.labels("breaker_open").inc()
            raise
        started = time.perf_counter()
        try:
            completion, usage = _completion(await self._client.create(kwargs))
        except CompletionError as exc:
            breaker.failed()
            self._metrics.llm_calls.labels(exc.kind).inc()
            self._metrics.tally.add("llm_errors")
            raise LLMError(f"LLM call failed: {exc.kind}: {exc}") from exc
        except LLMError:
            breaker.failed()
            self._metrics.llm_calls.labels("not_a_completion").inc()
            self._metrics.tally.add("llm_errors")
            raise
        finally:
            self._metrics.llm_seconds.observe(time.perf_counter() - started)
        breaker.succeeded()
        self._metrics.llm_calls.labels("ok").inc()
        self._metrics.llm_tokens.labels("prompt").inc(usage[0])
        self._metrics.llm_tokens.labels("completion").inc(usage[1])
        return completion


def _completion(body: bytes) -> tuple[Completion, tuple[int, int]]:
    """A chat completion's first choice and its token counts; ``LLMError`` for anything else (an HTML proxy
    page, a JSON error, a choice without a message)."""
    try:
        data = orjson.loads(body)
        message = data["choices"][0]["message"]
        content = message.get("content") or ""
        calls = tuple(
            ToolCall(id=str(call["id"]), name=str(call["function"]["name"]),
                     arguments=call["function"].get("arguments") or "{}")
            for call in message.get("tool_calls") or () if call.get("type", "function") == "function"
        )
        usage = data.get("usage") or {}
        tokens = (int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
        if not isinstance(content, str) or not all(isinstance(c.arguments, str) for c in calls):
            raise TypeError("content and arguments must be strings")
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
        raise LLMError(f"LLM answered with something that is not a chat completion ({exc.__class__.__name__}: "
                       f"{exc}): {body[:200]!r}") from exc
    return Completion(content=content[:MAX_CONTENT_CHARS], tool_calls=calls, prompt_tokens=tokens[0],
                      completion_tokens=tokens[1]), tokens
