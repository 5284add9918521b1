"""Twilio's REST API: sends over one aiohttp session, the rest through the official client, one per account.

``TwilioGateway.send`` is on every reply's path (one create per part), and the ``twilio`` client spends about
0.4 ms of CPU per create over the HTTP request itself (``bench.clients``: its ``MessageList``, ``Version``,
``Domain`` and ``ClientBase`` layers, its HTTP client, aiohttp's ``FormData``): about a tenth of a turn's. So
``send`` POSTs the create itself, ``{TWILIO_API_BASE_URL}/2010-04-01/Accounts/{sid}/Messages.json``, with the
form the client sends for ``messages.create_async(to=, from_=, body=, status_callback=)`` (``To``,
``StatusCallback``, ``From``, ``Body``, in that order), the same Basic auth, ``Accept`` and ``Content-Type``, the
same timeout, no redirects followed and, as the client's session, no proxy from the environment
(``tests/test_twilio_wire.py`` holds the two requests equal). Twilio's error JSON (``code``, ``message``,
``status``) is read as the client reads it.

Everything else (numbers, Messaging Services, A2P: ``TwilioGateway.client``) goes through the official client.
The stock ``AsyncTwilioHttpClient`` ignores its timeout and can only retry POSTs blindly (which double-sends
SMS); the subclass here applies the timeout to every call and rewrites ``*.twilio.com`` to
``TWILIO_API_BASE_URL`` (tests point it at a local fake).

Each create is one attempt. What Twilio did not take but may take later (a 429, a 5xx, a connection refused
before the request left) is a ``SendDeferred``, carrying Twilio's ``Retry-After`` when it sent one: the
conversation's outgoing queue tries it again (``conversations.outgoing``), durably and in order, instead of
this call sleeping while it holds the conversation. A timeout is not retried anywhere: the request may have
reached Twilio, which may have sent the message, and a second POST would send it twice. Other refusals are a
``SendError`` (``RecipientUnsubscribed`` for 21610), and so is a 2xx that is not a message (it may exist).

Twilio answers 429 (error 20429) when an account has too many REST requests in flight; it queues accepted
messages per sender itself. So the creates in flight are capped per account (``PARLEY_TWILIO_MAX_CONCURRENCY``),
in this process: N processes may have N times the cap in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import Any
from urllib.parse import quote_plus, urlsplit, urlunsplit

import aiohttp
import orjson
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from service import clock
from service.conversations.channel import Sent
from service.errors import InvalidRequest, RecipientUnsubscribed, SendDeferred, SendError
from service.metrics import Metrics
from service.settings import TWILIO_API_BASE_URL, Settings

UNSUBSCRIBED = 21610
MAX_RETRY_AFTER_S = 3_600.0   # a Retry-After beyond this is read as this (the send's own deadline comes first)
MAX_QUOTED = 300              # characters of an answer that is not Twilio's JSON quoted in the error
# The headers of the client's create that say anything to Twilio (``ClientBase.get_headers``; not its
# User-Agent and X-Twilio-Client).
HEADERS = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json",
           "Accept-Charset": "utf-8"}


def _retryable(status: int | None) -> bool:
    return status == 429 or (status is not None and status >= 500)


def retry_after_s(value: str | None, now: datetime | None = None) -> float | None:
    """A ``Retry-After`` header in seconds (delta-seconds or an HTTP date), between 0 and ``MAX_RETRY_AFTER_S``;
    None when absent or unreadable."""
    seconds = clock.retry_after_s(value, now.timestamp() if now is not None else None)
    return None if seconds is None else min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def message_form(*, to: str, from_: str, body: str, status_callback: str | None) -> bytes:
    """The create's body as the client encodes it: its fields in its order, none left empty, urlencoded."""
    callback = f"&StatusCallback={quote_plus(status_callback)}" if status_callback else ""
    # ``urlencode`` of those pairs, without quoting the names, which need none
    return f"To={quote_plus(to)}{callback}&From={quote_plus(from_)}&Body={quote_plus(body)}".encode()


def twilio_error(status: int, content: bytes) -> tuple[int | None, str]:
    """Twilio's error code and message in an error answer, as the client reads them (``Version.exception``):
    the legacy ``code``/``message`` or RFC 9457's ``code``/``detail``/``title``; the HTTP status as the code
    when the answer is not Twilio's JSON."""
    try:
        payload = orjson.loads(content)
    except orjson.JSONDecodeError:
        payload = None
    if not isinstance(payload, dict):
        return status, content[:MAX_QUOTED].decode(errors="replace") or "(no body)"
    message = payload.get("message") or payload.get("detail") or payload.get("title") or "(no message)"
    code = payload.get("code", status)
    return (code if isinstance(code, int) else None), str(message)


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
        # As ``_HttpClient.request`` rewrites the client's URL: the base's scheme and host, the client's path.
        root = urlsplit(base)
        self._creates = {sid: urlunsplit((root.scheme, root.netloc, f"/2010-04-01/Accounts/{sid}/Messages.json",
                                          "", "")) for sid in tokens}
        self._headers = {sid: HEADERS | {"Authorization": aiohttp.BasicAuth(sid, token.get_secret_value()).encode()}
                         for sid, token in tokens.items()}
        self._timeout = aiohttp.ClientTimeout(total=settings.twilio_timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _sends(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # As the client's session: aiohttp's defaults (100 connections; no proxy from the environment).
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
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
        url = self._creates.get(account_sid)
        if url is None:
            raise SendError(f"no auth token for Twilio account {account_sid}")
        form = message_form(to=to, from_=from_, body=body, status_callback=status_callback)
        async with self._slots[account_sid]:
            started = time.perf_counter()
            try:
                async with self._sends().post(url, data=form, headers=self._headers[account_sid],
                                              timeout=self._timeout, allow_redirects=False) as response:
                    status, content = response.status, await response.read()
                    retry_after = response.headers.get("Retry-After")
            except aiohttp.ClientConnectorError as exc:   # never reached Twilio: safe to try again
                self._metrics.twilio_sends.labels("unreachable", "").inc()
                raise SendDeferred(f"Twilio unreachable: {exc!r}") from exc
            except (TimeoutError, aiohttp.ClientError) as exc:   # may have been sent: not retried
                self._metrics.twilio_sends.labels("unreachable", "").inc()
                raise SendError(f"Twilio did not answer: {exc!r}") from exc
            finally:
                self._metrics.twilio_seconds.observe(time.perf_counter() - started)
        if not 200 <= status < 300:
            self._refused(status, content, retry_after)
        return self._created(status, content)

    def _refused(self, status: int, content: bytes, retry_after: str | None) -> None:
        code, message = twilio_error(status, content)
        self._metrics.twilio_sends.labels("refused", str(code)).inc()
        said = f"HTTP {status}, error {code}: {message}"
        if _retryable(status):
            raise SendDeferred(f"Twilio did not take the message for now: {said}", code=code, status=status,
                               retry_after_s=retry_after_s(retry_after))
        error = RecipientUnsubscribed if code == UNSUBSCRIBED else SendError
        raise error(f"Twilio refused the message: {said}", code=code, status=status)

    def _created(self, status: int, content: bytes) -> Sent:
        try:
            message = orjson.loads(content)
        except orjson.JSONDecodeError:
            message = None
        if not isinstance(message, dict) or not message.get("sid"):   # it may exist: not to be tried again
            self._metrics.twilio_sends.labels("refused", "").inc()
            raise SendError(f"Twilio answered HTTP {status} without a message: "
                            f"{content[:MAX_QUOTED].decode(errors='replace')}", status=status)
        self._metrics.twilio_sends.labels("sent", "").inc()
        return Sent(sid=str(message["sid"]), status=str(message.get("status") or "queued"))
