"""Twilio's REST API through the official client, one per account, sharing one aiohttp session.

The stock ``AsyncTwilioHttpClient`` ignores its timeout and can only retry POSTs blindly (which
double-sends SMS); the subclass here applies the timeout to every call and rewrites ``*.twilio.com``
to ``TWILIO_API_BASE_URL`` (tests point it at a local fake). Twilio's errors become ``SendError``.

Each create is one attempt. What Twilio did not take but may take later (a 429, a 5xx, a connection refused
before the request left) is a ``SendDeferred``, carrying Twilio's ``Retry-After`` when it sent one: the
conversation's outgoing queue tries it again (``conversations.outgoing``), durably and in order, instead of
this call sleeping while it holds the conversation. A timeout is not retried anywhere: the request may have
reached Twilio, which may have sent the message, and a second POST would send it twice.

Twilio answers 429 (error 20429) when an account has too many REST requests in flight; it queues accepted
messages per sender itself. So the creates in flight are capped per account (``PARLEY_TWILIO_MAX_CONCURRENCY``),
in this process: N processes may have N times the cap in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextvars import ContextVar
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from twilio.base.exceptions import TwilioException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from service.conversations.channel import Sent
from service.errors import InvalidRequest, RecipientUnsubscribed, SendDeferred, SendError
from service.metrics import Metrics
from service.settings import TWILIO_API_BASE_URL, Settings

UNSUBSCRIBED = 21610
MAX_RETRY_AFTER_S = 3_600.0   # a Retry-After beyond this is read as this (the send's own deadline comes first)

# The Retry-After of the response to the request this task is making, if any: the twilio client raises its
# exception without the response's headers, and one ``_HttpClient`` serves every concurrent send, so its
# ``_test_only_last_response`` may be another task's by then. A context variable is this task's own.
_retry_after: ContextVar[list[str] | None] = ContextVar("twilio_retry_after", default=None)


def _retryable(status: int | None) -> bool:
    return status == 429 or (status is not None and status >= 500)


def retry_after_s(value: str | None, now: datetime | None = None) -> float | None:
    """A ``Retry-After`` header in seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


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
        response = await super().request(
            method, url, params=params, data=data, headers=headers, auth=auth,
            timeout=timeout if timeout is not None else self.timeout, allow_redirects=allow_redirects,
        )
        sink = _retry_after.get()
        if sink is not None and response.headers is not None and (value := response.headers.get("Retry-After")):
            sink.append(str(value))
        return response


class TwilioGateway:
    """Sends SMS through the account that owns the sending number, at most ``twilio_max_concurrency`` creates
    in flight per account."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._metrics = metrics
        base = settings.twilio_api_base_url.rstrip("/")
        self._http = _HttpClient(None if base == TWILIO_API_BASE_URL else base, settings.twilio_timeout_s)
        # A non-empty environment mapping keeps the client from reading TWILIO_REGION/EDGE from os.environ.
        tokens = settings.twilio_tokens()
        self._clients = {
            sid: Client(sid, token.get_secret_value(), http_client=self._http, environment={"_": ""})
            for sid, token in tokens.items()
        }
        self._slots = {sid: asyncio.Semaphore(settings.twilio_max_concurrency) for sid in tokens}

    async def close(self) -> None:
        await self._http.close()

    def client(self, account_sid: str | None) -> Client:
        """The official client of ``account_sid`` (every Twilio host through this gateway's HTTP client, so
        ``TWILIO_API_BASE_URL`` serves them all), for setting up numbers and registrations."""
        client = self._clients.get(account_sid or "")
        if client is None:
            raise InvalidRequest(f"twilio_account_sid: Parley has no auth token for {account_sid or '(none)'} "
                                 "(set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN, or PARLEY_TWILIO_ACCOUNTS)")
        return client

    async def send(self, *, account_sid: str, from_: str, to: str, body: str, status_callback: str | None) -> Sent:
        """Create one message, once. ``SendDeferred`` when Twilio created nothing and may later (a 429 or a
        5xx; a refused connection); ``SendError`` for a timeout (the message may exist: not to be tried again)
        and for any other error (21211, 30003-30007...), ``RecipientUnsubscribed`` for 21610."""
        client = self._clients.get(account_sid)
        if client is None:
            raise SendError(f"no auth token for Twilio account {account_sid}")
        kwargs: dict[str, Any] = {"to": to, "from_": from_, "body": body}
        if status_callback:
            kwargs["status_callback"] = status_callback
        async with self._slots[account_sid]:
            retry_after: list[str] = []
            reset = _retry_after.set(retry_after)
            started = time.perf_counter()
            try:
                message = await client.messages.create_async(**kwargs)
            except TwilioException as exc:
                code, status = getattr(exc, "code", None), getattr(exc, "status", None)
                self._metrics.twilio_sends.labels("refused", str(code)).inc()
                if _retryable(status):
                    raise SendDeferred(f"Twilio did not take the message for now: {exc}", code=code, status=status,
                                       retry_after_s=retry_after_s(retry_after[-1] if retry_after else None)
                                       ) from exc
                error = RecipientUnsubscribed if code == UNSUBSCRIBED else SendError
                raise error(f"Twilio refused the message: {exc}", code=code, status=status) from exc
            except aiohttp.ClientConnectorError as exc:   # never reached Twilio: safe to try again
                self._metrics.twilio_sends.labels("unreachable", "").inc()
                raise SendDeferred(f"Twilio unreachable: {exc!r}") from exc
            except (TimeoutError, aiohttp.ClientError) as exc:   # may have been sent: not retried
                self._metrics.twilio_sends.labels("unreachable", "").inc()
                raise SendError(f"Twilio did not answer: {exc!r}") from exc
            finally:
                _retry_after.reset(reset)
                self._metrics.twilio_seconds.observe(time.perf_counter() - started)
        self._metrics.twilio_sends.labels("sent", "").inc()
        return Sent(sid=str(message.sid), status=str(message.status or "queued"))
