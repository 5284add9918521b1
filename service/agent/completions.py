"""OpenAI's chat-completions endpoint over one aiohttp session: the request the ``openai`` client sends, with
its retry policy, for a fraction of its CPU.

Every turn makes at least one completion, and the official client spends about three times the CPU of the HTTP
request itself on each (``bench.clients``; building and validating its request options, httpx2's request and
response models, its auth and redirect layers, over the same aiohttp transport): about a sixth of a turn's
CPU. ``Completions.create`` sends the same JSON body to the same URL with the same ``Authorization`` (a test
holds the two bodies equal: ``tests/test_llm_wire.py``), and follows the client's rules:

- a request is tried ``1 + max_retries`` times while it fails with a connection error, a time-out, or a
  status the client retries (408, 409, 429, 5xx; ``x-should-retry: true``/``false`` overrides; a
  ``Retry-After`` over ``MAX_RETRY_AFTER_S`` is not waited for);
- between tries it waits what ``retry-after-ms`` / ``retry-after`` asks (up to ``MAX_RETRY_AFTER_S``), else
  0.5 s doubling up to 8 s, less up to a quarter at random;
- ``timeout_s`` bounds each try;
- what still fails is a ``CompletionError`` named as the client names its errors (``RateLimitError``,
  ``InternalServerError``, ``APIConnectionError``, ``APITimeoutError``...), with the status and the start of
  the server's answer. The body of a 2xx is returned as bytes, for the caller to read.

The embeddings of knowledge bases (``service/knowledge/embeddings.py``) still use the ``openai`` client: they
are not on a turn's path.
"""

from __future__ import annotations

import asyncio
import math
import random
import urllib.request
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from service import clock

INITIAL_RETRY_DELAY_S = 0.5
MAX_RETRY_DELAY_S = 8.0
MAX_RETRY_AFTER_S = 120.0
RETRIED = frozenset({408, 409, 429})
# The openai client's exception for each status (``openai._client.AsyncOpenAI._make_status_error``).
STATUS_ERRORS = {400: "BadRequestError", 401: "AuthenticationError", 403: "PermissionDeniedError",
                 404: "NotFoundError", 409: "ConflictError", 422: "UnprocessableEntityError", 429: "RateLimitError"}


class CompletionError(Exception):
    """A completion that failed for good. ``kind``: the openai client's name for the failure."""

    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind, self.status = kind, status


def status_error(status: int) -> str:
    return STATUS_ERRORS.get(status) or ("InternalServerError" if status >= 500 else "APIStatusError")


def retry_after_s(headers: Any) -> float | None:
    """The server's wish, in seconds: ``retry-after-ms``, then ``retry-after`` (seconds, or an HTTP date); an
    infinite one is read as just over ``MAX_RETRY_AFTER_S`` (not waited for)."""
    delay: float | None
    try:
        delay = float(headers.get("retry-after-ms")) / 1000
    except (TypeError, ValueError):
        delay = clock.retry_after_s(headers.get("retry-after"))
    return MAX_RETRY_AFTER_S + 1 if delay is not None and math.isinf(delay) else delay


def should_retry(status: int, headers: Any) -> bool:
    wish = retry_after_s(headers)
    if wish is not None and math.isfinite(wish) and wish > MAX_RETRY_AFTER_S:
        return False
    told = headers.get("x-should-retry")
    if told in ("true", "false"):
        return bool(told == "true")
    return status in RETRIED or status >= 500


def retry_delay_s(retries_taken: int, headers: Any | None) -> float:
    wish = retry_after_s(headers) if headers is not None else None
    if wish is not None and math.isfinite(wish) and 0 < wish <= MAX_RETRY_AFTER_S:
        return wish
    backoff = min(INITIAL_RETRY_DELAY_S * 2.0 ** min(retries_taken, 1000), MAX_RETRY_DELAY_S)
    return backoff * (1 - 0.25 * random.random())


def env_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``), as the
    client's ``trust_env`` would use it; read once (aiohttp's ``trust_env`` reads it, and ``.netrc``, in a thread
    on every request)."""
    parts = urlsplit(url)
    if parts.hostname is None or urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies_environment().get(parts.scheme)


class Completions:
    """``POST {base_url}/chat/completions``; one per process (``LLM``)."""

    def __init__(self, *, api_key: str, base_url: str, timeout_s: float, max_retries: int) -> None:
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json",
                         "Accept": "application/json"}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_retries = max_retries
        self._proxy = env_proxy(self._url)
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # As the client's: up to 1,000 connections.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def create(self, body: dict[str, Any]) -> bytes:
        """The answer's body; ``CompletionError`` when every try failed."""
        data = orjson.dumps(body)
        for retries_taken in range(self._max_retries + 1):
            last = retries_taken == self._max_retries
            headers: Any = None
            try:
                async with self._http().post(self._url, data=data, headers=self._headers, proxy=self._proxy,
                                             timeout=self._timeout) as response:
                    content = await response.read()
                    if response.status < 300:
                        return content
                    headers = response.headers
                    if last or not should_retry(response.status, headers):
                        raise CompletionError(status_error(response.status), f"Error code: {response.status} - "
                                              f"{content[:300].decode(errors='replace')}", response.status)
            except TimeoutError as exc:
                if last:
                    raise CompletionError("APITimeoutError", "Request timed out.") from exc
            except aiohttp.ClientError as exc:
                if last:
                    raise CompletionError("APIConnectionError", f"Connection error: {exc!r}") from exc
            await asyncio.sleep(retry_delay_s(retries_taken, headers))
        raise AssertionError("unreachable: the last try returns or raises")
