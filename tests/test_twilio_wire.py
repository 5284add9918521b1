"""Parley's message create (``TwilioGateway.send``) against the official ``twilio`` client's: the same path, form
and credentials on the wire, Twilio's errors read as the client reads them, against the fake Twilio."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl

import pytest
from aiohttp.test_utils import unused_port
from twilio.base.exceptions import TwilioRestException

from service.channels.twilio.gateway import TwilioGateway, twilio_error
from service.errors import RecipientUnsubscribed, SendDeferred, SendError
from service.metrics import Metrics
from service.settings import Settings

from .conftest import ACCOUNT_SID, AGENT_NUMBER, AUTH_TOKEN, OTHER_ACCOUNT_SID, OTHER_AUTH_TOKEN, OTHER_NUMBER, USER
from .fakes.twilio import FakeTwilio

CALLBACK = "https://parley.example/twilio/status?chat_id=chat_0123456789abcdef&x=a b+c"
BODY = "Hi Ünïcode ✓ 🙂 — 50% off & more: a=b+c?\nSee https://example.com/?q=1&r=2 #deal"


def settings(url: str, timeout_s: float = 5.0) -> Settings:
    return Settings.model_validate({"twilio_account_sid": ACCOUNT_SID, "twilio_auth_token": AUTH_TOKEN,
                                    "twilio_accounts": {OTHER_ACCOUNT_SID: OTHER_AUTH_TOKEN},
                                    "twilio_api_base_url": url, "twilio_timeout_s": timeout_s})


@pytest.fixture
async def gateway(fake_twilio: FakeTwilio) -> AsyncIterator[TwilioGateway]:
    gateway = TwilioGateway(settings(fake_twilio.url), Metrics())
    yield gateway
    await gateway.close()


def sent(metrics: Metrics, outcome: str, code: str) -> float:
    return metrics.registry.get_sample_value("parley_twilio_sends_total", {"outcome": outcome, "code": code}) or 0.0


@pytest.mark.parametrize(("account", "from_", "callback"), [
    (ACCOUNT_SID, AGENT_NUMBER, CALLBACK), (ACCOUNT_SID, AGENT_NUMBER, None), (OTHER_ACCOUNT_SID, OTHER_NUMBER, "")])
async def test_the_create_on_the_wire_is_the_twilio_clients(fake_twilio: FakeTwilio, gateway: TwilioGateway,
                                                            account: str, from_: str, callback: str | None) -> None:
    kwargs: dict[str, Any] = {"to": USER, "from_": from_, "body": BODY}
    if callback:
        kwargs["status_callback"] = callback
    official = await gateway.client(account).messages.create_async(**kwargs)
    ours = await gateway.send(account_sid=account, from_=from_, to=USER, body=BODY, status_callback=callback)
    (their_path, theirs, their_headers), (our_path, body, our_headers) = fake_twilio.wire
    assert our_path == their_path == f"/2010-04-01/Accounts/{account}/Messages.json"
    assert parse_qsl(body.decode(), keep_blank_values=True) == parse_qsl(theirs.decode(), keep_blank_values=True)
    assert body == theirs
    for header in ("Authorization", "Content-Type", "Accept", "Accept-Charset"):
        assert our_headers[header] == their_headers[header], header
    first, second = fake_twilio.messages
    assert (second.account_sid, second.to, second.from_, second.body, second.status_callback) == (
        first.account_sid, first.to, first.from_, first.body, first.status_callback)
    assert (ours.sid, ours.status) == (second.sid, official.status)


@pytest.mark.parametrize(("trigger", "error", "status", "code", "wait_s"), [
    ("throttle", SendDeferred, 429, 20429, 7.0),
    ("fail 503", SendDeferred, 503, 20503, None),
    ("fail 500", SendDeferred, 500, 20500, None),
    ("invalid number", SendError, 400, 21211, None),
    ("unsubscribed", RecipientUnsubscribed, 400, 21610, None),
])
async def test_twilios_errors_are_read_as_the_client_reads_them(
        fake_twilio: FakeTwilio, trigger: str, error: type[SendError], status: int, code: int,
        wait_s: float | None) -> None:
    def arm() -> None:
        if trigger == "throttle":
            fake_twilio.throttle(1, retry_after="7")
        elif trigger.startswith("fail"):
            fake_twilio.fail_next.append((status, code))
        else:
            fake_twilio.errors[USER] = (status, code)

    metrics = Metrics()
    gateway = TwilioGateway(settings(fake_twilio.url), metrics)
    try:
        arm()
        with pytest.raises(TwilioRestException) as official:
            await gateway.client(ACCOUNT_SID).messages.create_async(to=USER, from_=AGENT_NUMBER, body="hi")
        arm()
        with pytest.raises(SendError) as caught:
            await gateway.send(account_sid=ACCOUNT_SID, from_=AGENT_NUMBER, to=USER, body="hi", status_callback=None)
    finally:
        await gateway.close()
    refused = caught.value
    assert type(refused) is error
    assert (refused.status, refused.code) == (official.value.status, official.value.code) == (status, code)
    start = "Twilio did not take the message for now" if error is SendDeferred else "Twilio refused the message"
    assert str(refused) == f"{start}: HTTP {status}, error {code}: " + (
        "Too Many Requests" if trigger == "throttle" else f"error {code}")
    assert getattr(refused, "retry_after_s", None) == wait_s
    assert sent(metrics, "refused", str(code)) == 1


async def test_a_refused_connection_is_deferred_and_a_timeout_is_final(fake_twilio: FakeTwilio) -> None:
    metrics = Metrics()
    gone = TwilioGateway(settings(f"http://127.0.0.1:{unused_port()}"), metrics)
    try:
        with pytest.raises(SendDeferred, match=r"^Twilio unreachable: ClientConnectorError"):
            await gone.send(account_sid=ACCOUNT_SID, from_=AGENT_NUMBER, to=USER, body="hi", status_callback=None)
    finally:
        await gone.close()
    fake_twilio.delay_s = 1.0
    slow = TwilioGateway(settings(fake_twilio.url, timeout_s=0.2), metrics)
    try:
        with pytest.raises(SendError, match=r"^Twilio did not answer") as caught:
            await slow.send(account_sid=ACCOUNT_SID, from_=AGENT_NUMBER, to=USER, body="hi", status_callback=None)
    finally:
        await slow.close()
    assert not isinstance(caught.value, SendDeferred)   # it may have been sent
    assert len(fake_twilio.creates) == 1 and sent(metrics, "unreachable", "") == 2


async def test_an_account_without_a_token_sends_nothing(fake_twilio: FakeTwilio, gateway: TwilioGateway) -> None:
    with pytest.raises(SendError, match="no auth token for Twilio account AC0"):
        await gateway.send(account_sid="AC0", from_=AGENT_NUMBER, to=USER, body="hi", status_callback=None)
    assert not fake_twilio.wire


async def test_the_environments_proxy_is_not_used_as_the_client_does_not_use_it(
        fake_twilio: FakeTwilio, gateway: TwilioGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    nowhere = f"http://127.0.0.1:{unused_port()}"
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, nowhere)
    await gateway.client(ACCOUNT_SID).messages.create_async(to=USER, from_=AGENT_NUMBER, body="hi")
    await gateway.send(account_sid=ACCOUNT_SID, from_=AGENT_NUMBER, to=USER, body="hi", status_callback=None)
    assert len(fake_twilio.messages) == 2


def test_an_answer_that_is_not_twilios_json_is_quoted_with_the_status_as_its_code() -> None:
    assert twilio_error(502, b"<html>Bad Gateway</html>") == (502, "<html>Bad Gateway</html>")
    assert twilio_error(503, b"") == (503, "(no body)")
    assert twilio_error(400, b'{"code": 21211, "message": "Invalid To", "status": 400}') == (21211, "Invalid To")
    assert twilio_error(400, b'{"type": "https://www.twilio.com/docs/errors/21211", "title": "Invalid To",'
                             b' "status": 400, "code": 21211, "detail": "+1 is not a number"}') == (
        21211, "+1 is not a number")
    assert twilio_error(401, b'{"message": "Authenticate"}') == (401, "Authenticate")
