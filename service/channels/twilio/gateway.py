"""Twilio's REST API through the official client, one per account, sharing one aiohttp session.

The stock ``AsyncTwilioHttpClient`` ignores its timeout and can only retry POSTs blindly (which
double-sends SMS); the subclass here applies the timeout to every call and rewrites ``*.twilio.com``
to ``TWILIO_API_BASE_URL`` (tests point it at a local fake). Twilio's errors become ``SendError``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from twilio.base.exceptions import TwilioException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from service.conversations.channel import Sent
from service.errors import RecipientUnsubscribed, SendError
from service.metrics import Metrics
from service.settings import TWILIO_API_BASE_URL, Settings

UNSUBSCRIBED = 21610
ATTEMPTS = 3
BACKOFF_S = 0.5


def _retryable(status: int | None) -> bool:
    return status == 429 or (status is not None and status >= 500)


class _HttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]
    def __init__(self, base_url: str | None, timeout_s: float) -> None:
        super().__init__(timeout=timeout_s)
        self._base = urlsplit(base_url) if base_url else None

    # The client formats every request's and response's headers for its INFO log whether or not that log is
    # on: only do it when it is.
    def log_request(self, kwargs: dict[str, Any]) -> None:
        if self.logger.isEnabledFor(logging.INFO):
            super().log_request(kwargs)

    def log_response(self, status_code: int, response: Any) -> None:
        if self.logger.isEnabledFor(logging.INFO):
            super().log_response(status_code, response)

    async def request(
        self, method: str, url: str, params: Any = None, data: Any = None, headers: Any = None,
        auth: Any = None, timeout: float | None = None, allow_redirects: bool = False,  # noqa: ASYNC109
    ) -> Any:
        if self._base is not None:
            parts = urlsplit(url)
            if parts.hostname and parts.hostname.endswith(".twilio.com"):
                url = urlunsplit((self._base.scheme, self._base.netloc, parts.path, parts.query, ""))
        return await super().request(
            method, url, params=params, data=data, headers=headers, auth=auth,
            timeout=timeout if timeout is not None else self.timeout, allow_redirects=allow_redirects,
        )


class TwilioGateway:
    """Sends SMS through the account that owns the sending number."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._metrics = metrics
        base = settings.twilio_api_base_url.rstrip("/")
        self._http = _HttpClient(None if base == TWILIO_API_BASE_URL else base, settings.twilio_timeout_s)
        # A non-empty environment mapping keeps the client from reading TWILIO_REGION/EDGE from os.environ.
        self._clients = {
            sid: Client(sid, token.get_secret_value(), http_client=self._http, environment={"_": ""})
            for sid, token in settings.twilio_tokens().items()
        }

    async def close(self) -> None:
        await self._http.close()

    async def send(self, *, account_sid: str, from_: str, to: str, body: str, status_callback: str | None) -> Sent:
        """Create one message. A 429 or a 5xx (Twilio created nothing) and a refused connection are tried
        again with backoff and jitter; a timeout is not (the message may exist: a second POST could send it
        twice); any other error (21211, 21610, 21614, 30003-30007...) is final."""
        client = self._clients.get(account_sid)
        if client is None:
            raise SendError(f"no auth token for Twilio account {account_sid}")
        kwargs: dict[str, Any] = {"to": to, "from_": from_, "body": body}
        if status_callback:
            kwargs["status_callback"] = status_callback
        for attempt in range(ATTEMPTS):
            if attempt:
                await asyncio.sleep(BACKOFF_S * 2 ** (attempt - 1) * (0.5 + random.random()))
            started = time.perf_counter()
            try:
                message = await client.messages.create_async(**kwargs)
            except TwilioException as exc:
                code, status = getattr(exc, "code", None), getattr(exc, "status", None)
                self._metrics.twilio_sends.labels("refused", str(code)).inc()
                if _retryable(status) and attempt + 1 < ATTEMPTS:
                    continue
                error = RecipientUnsubscribed if code == UNSUBSCRIBED else SendError
                raise error(f"Twilio refused the message: {exc}", code=code, status=status) from exc
            except aiohttp.ClientConnectorError as exc:   # never reached Twilio: safe to try again
                self._metrics.twilio_sends.labels("unreachable", "").inc()
                if attempt + 1 < ATTEMPTS:
                    continue
                raise SendError(f"Twilio unreachable: {exc!r}") from exc
            except (TimeoutError, aiohttp.ClientError) as exc:   # may have been sent: not retried
                self._metrics.twilio_sends.labels("unreachable", "").inc()
                raise SendError(f"Twilio did not answer: {exc!r}") from exc
            finally:
                self._metrics.twilio_seconds.observe(time.perf_counter() - started)
            self._metrics.twilio_sends.labels("sent", "").inc()
            return Sent(sid=str(message.sid), status=str(message.status or "queued"))
        raise AssertionError("unreachable")  # pragma: no cover
