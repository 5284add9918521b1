"""``POST /twilio/sms`` on its own (service/channels/twilio/messages.py and form.py): what the webhook stores and
answers for each form, with no workers running, so the mailbox is read as the webhook left it.

The clock of the webhook (``now_ms``) is fixed, and ``asyncio.timeout`` of form.py is watched, not replaced.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import StreamReader, web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.test_utils import TestClient, TestServer

from service.app_state import RUNTIME
from service.channels.twilio import form as form_module
from service.channels.twilio.form import EMPTY_TWIML, MAX_BODY_BYTES, _read_at_most, fail, read_form, twiml
from service.channels.twilio.signature import sign
from service.conversations import inbound
from service.conversations.items import Item, ItemKind, Media
from service.storage import keys

from .conftest import (
    ACCOUNT_SID,
    AGENT_NUMBER,
    AUTH_TOKEN,
    OTHER_ACCOUNT_SID,
    OTHER_AUTH_TOKEN,
    OTHER_NUMBER,
    PUBLIC_URL,
    USER,
    MakeParley,
    Parley,
    is_cluster,
)

NOW = 1_777_000_000_000
QUIET_NUMBER = "+15035550177"   # help_message "": HELP is left to Twilio
UNKNOWN_NUMBER = "+15035550111"
FRONTDESK = [{"agent_id": "frontdesk", "weight": 1}]
NUMBERS = [
    {"phone_number": AGENT_NUMBER, "nickname": "Front desk", "channels": ["sms", "whatsapp"],
     "inbound_sms_agents": FRONTDESK},
    {"phone_number": OTHER_NUMBER, "twilio_account_sid": OTHER_ACCOUNT_SID, "help_message": "Call 555-0100.",
     "inbound_sms_agents": FRONTDESK},
    {"phone_number": QUIET_NUMBER, "help_message": "", "inbound_sms_agents": FRONTDESK},
]
SMS = keys.Conversation(AGENT_NUMBER, USER)
WHATSAPP = keys.Conversation(AGENT_NUMBER, USER, "whatsapp")
SID = "SM" + "4" * 32


@pytest.fixture
async def parley(make_parley: MakeParley, monkeypatch: pytest.MonkeyPatch) -> Parley:
    monkeypatch.setattr(inbound, "now_ms", lambda: NOW)   # the received time of every item
    return await make_parley(numbers=NUMBERS, run_workers=False)


def twilio_form(body: str = "hi", **fields: str) -> dict[str, str]:
    return {"MessageSid": SID, "AccountSid": ACCOUNT_SID, "From": USER, "To": AGENT_NUMBER, "Body": body,
            "NumMedia": "0", **fields}


async def post(parley: Parley, form: dict[str, str], *, token: str | None = AUTH_TOKEN) -> tuple[int, str, str]:
    """POST the form as Twilio does, signed with ``token`` (None: unsigned); (status, content type, text)."""
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if token is not None:
        headers["X-Twilio-Signature"] = sign(PUBLIC_URL + "/twilio/sms", form, token)
    response = await parley.client.post("/twilio/sms", data=urlencode(form), headers=headers)
    return response.status, response.content_type, await response.text()


async def mailbox(parley: Parley, conv: keys.Conversation = SMS) -> list[Item]:
    return [Item.from_json(str(raw)) for raw in await parley.redis.lrange(keys.mailbox(conv), 0, -1)]


async def wakeups(parley: Parley) -> int:
    return sum([await parley.redis.xlen(keys.wakeups(s)) for s in range(keys.SHARDS)])


async def nothing_stored(parley: Parley) -> bool:
    conv_keys = [k async for k in parley.redis.scan_iter(match="parley:{*}:conv:*")]
    return conv_keys == [] and await wakeups(parley) == 0


async def opted_out(parley: Parley, conv: keys.Conversation = SMS) -> bool:
    return bool(await parley.client.app[RUNTIME].optouts.is_opted_out(conv))


# --- what is stored ----------------------------------------------------------------------------------------------


async def test_a_text_is_one_item_in_the_mailbox_and_one_wakeup(parley: Parley) -> None:
    status, content_type, text = await post(parley, twilio_form("are you open?"))
    assert (status, content_type, text.encode()) == (200, "text/xml", EMPTY_TWIML)
    assert await mailbox(parley) == [Item(ItemKind.TEXT, NOW, "are you open?", SID)]
    assert await wakeups(parley) == 1
    assert await parley.redis.exists(keys.seen(SMS, SID)) == 1
    assert await parley.redis.exists(keys.session(SMS)) == 0, "SMS has no session window"


async def test_smssid_stands_for_messagesid(parley: Parley) -> None:
    form = twilio_form("old style")
    del form["MessageSid"]
    form["SmsSid"] = "SM" + "5" * 32
    assert (await post(parley, form))[0] == 200
    assert [item.message_sid for item in await mailbox(parley)] == ["SM" + "5" * 32]


async def test_messagesid_wins_over_smssid(parley: Parley) -> None:
    assert (await post(parley, twilio_form(SmsSid="SM" + "5" * 32)))[0] == 200
    assert [item.message_sid for item in await mailbox(parley)] == [SID]


@pytest.mark.parametrize("missing", ["To", "From", "MessageSid"])
@pytest.mark.parametrize("how", ["absent", "empty"])
async def test_a_form_without_to_from_or_a_sid_is_400(parley: Parley, missing: str, how: str) -> None:
    form = twilio_form()
    if how == "absent":
        del form[missing]
    else:
        form[missing] = ""
    status, content_type, text = await post(parley, form)
    assert (status, content_type) == (400, "text/plain")
    assert text == "missing To, From or MessageSid: expected Twilio's inbound message form\n"
    assert await nothing_stored(parley)


async def test_a_repeated_sid_is_acknowledged_and_dropped(parley: Parley) -> None:
    assert (await post(parley, twilio_form("once")))[0] == 200
    status, _, text = await post(parley, twilio_form("once"))
    assert (status, text.encode()) == (200, EMPTY_TWIML)
    assert len(await mailbox(parley)) == 1 and await wakeups(parley) == 1


async def test_a_full_mailbox_is_503_and_forgets_the_sid(parley: Parley) -> None:
    filler = Item(ItemKind.TEXT, 1, "old", "SM-old").to_json()
    await parley.redis.rpush(keys.mailbox(SMS), *[filler] * keys.MAILBOX_CAP)
    status, content_type, text = await post(parley, twilio_form("one more"))
    assert (status, content_type) == (503, "text/plain")
    assert text == "this conversation has too many unanswered messages; try again later\n"
    assert await parley.redis.llen(keys.mailbox(SMS)) == keys.MAILBOX_CAP
    assert await parley.redis.exists(keys.seen(SMS, SID)) == 0, "Twilio's retry must land"


# --- media -------------------------------------------------------------------------------------------------------


async def test_media_are_kept_in_order_with_their_types(parley: Parley) -> None:
    form = twilio_form("look", NumMedia="3", MediaUrl0="https://m/0", MediaContentType0="image/png",
                       MediaUrl2="https://m/2")   # MediaUrl1 missing: skipped; MediaUrl2 has no type
    assert (await post(parley, form))[0] == 200
    [item] = await mailbox(parley)
    assert item.media == (Media("https://m/0", "image/png"), Media("https://m/2", "application/octet-stream"))


async def test_at_most_ten_media_are_kept(parley: Parley) -> None:
    urls = {f"MediaUrl{i}": f"https://m/{i}" for i in range(12)}
    assert (await post(parley, twilio_form("many", NumMedia="12", **urls)))[0] == 200
    [item] = await mailbox(parley)
    assert [m.url for m in item.media] == [f"https://m/{i}" for i in range(10)]


@pytest.mark.parametrize("num_media", ["", "two", None])
async def test_no_usable_nummedia_means_no_media(parley: Parley, num_media: str | None) -> None:
    form = twilio_form("hm", MediaUrl0="https://m/0")
    if num_media is None:
        del form["NumMedia"]
    else:
        form["NumMedia"] = num_media
    assert (await post(parley, form))[0] == 200
    assert [item.media for item in await mailbox(parley)] == [()]


# --- signature and routing ----------------------------------------------------------------------------------------


async def test_a_forged_signature_is_403_and_stores_nothing(parley: Parley) -> None:
    status, content_type, text = await post(parley, twilio_form(), token="forged")
    assert (status, content_type, text) == (403, "text/plain", "invalid X-Twilio-Signature\n")
    assert await nothing_stored(parley)
    assert (await post(parley, twilio_form(), token=None))[0] == 403
    assert await nothing_stored(parley)


async def test_a_number_is_verified_with_its_own_accounts_token(parley: Parley) -> None:
    form = twilio_form("hi", To=OTHER_NUMBER, AccountSid=OTHER_ACCOUNT_SID)
    assert (await post(parley, form, token=AUTH_TOKEN))[0] == 403
    assert (await post(parley, form, token=OTHER_AUTH_TOKEN))[0] == 200
    assert len(await mailbox(parley, keys.Conversation(OTHER_NUMBER, USER))) == 1


async def test_an_unknown_number_is_verified_with_the_account_the_form_names(parley: Parley) -> None:
    other = twilio_form("hi", To=UNKNOWN_NUMBER, AccountSid=OTHER_ACCOUNT_SID)
    status, _, text = await post(parley, other, token=OTHER_AUTH_TOKEN)
    assert (status, text) == (404, f"{UNKNOWN_NUMBER} is not a number Parley answers on: add it to "
                                   "phone-numbers.yaml\n")
    assert (await post(parley, other, token=AUTH_TOKEN))[0] == 403
    stranger = twilio_form("hi", To=UNKNOWN_NUMBER, AccountSid="AC" + "c" * 32)   # an account Parley does not know
    assert (await post(parley, stranger, token=AUTH_TOKEN))[0] == 404, "checked with the main account's token"
    assert (await post(parley, stranger, token="anything"))[0] == 403
    assert await nothing_stored(parley)


async def test_a_to_that_is_not_a_number_is_404(parley: Parley) -> None:
    status, _, text = await post(parley, twilio_form(To="front-desk"))
    assert status == 404 and text.startswith("front-desk is not a number Parley answers on")


async def test_a_to_that_is_not_a_number_is_not_looked_up(parley: Parley, redis_url: str) -> None:
    if is_cluster(redis_url):
        pytest.skip("MONITOR is per node")
    seen = []
    async with parley.redis.monitor() as monitor:
        assert (await post(parley, twilio_form(To="front-desk")))[0] == 404
        assert (await post(parley, twilio_form(To="+15035550122")))[0] == 404
        await parley.redis.echo("done")
        async with asyncio.timeout(5):
            while (command := (await monitor.next_command())["command"]) != "ECHO done":
                seen.append(command)
    assert any("+15035550122" in c for c in seen), "a number is looked up"
    assert not any("front-desk" in c for c in seen), seen


async def test_an_account_without_a_token_verifies_nothing(make_parley: MakeParley) -> None:
    parley = await make_parley(numbers=NUMBERS, run_workers=False, twilio_auth_token=None,
                               twilio_accounts={OTHER_ACCOUNT_SID: OTHER_AUTH_TOKEN})
    assert (await post(parley, twilio_form("hi"), token=AUTH_TOKEN))[0] == 403
    form = twilio_form("hi", To=OTHER_NUMBER, AccountSid=OTHER_ACCOUNT_SID)
    assert (await post(parley, form, token=OTHER_AUTH_TOKEN))[0] == 200


async def test_without_a_token_for_the_account_nothing_is_verified(make_parley: MakeParley) -> None:
    parley = await make_parley(numbers=NUMBERS, run_workers=False, twilio_account_sid=None, twilio_auth_token=None,
                               twilio_accounts={OTHER_ACCOUNT_SID: OTHER_AUTH_TOKEN})
    assert (await post(parley, twilio_form("hi", To=UNKNOWN_NUMBER, AccountSid="AC" + "c" * 32)))[0] == 403
    assert (await post(parley, twilio_form("hi")))[0] == 403, "the number's account is the main one: none"
    form = twilio_form("hi", To=OTHER_NUMBER, AccountSid=OTHER_ACCOUNT_SID)
    assert (await post(parley, form, token=OTHER_AUTH_TOKEN))[0] == 200


async def test_from_and_to_on_different_channels_is_400(parley: Parley) -> None:
    form = twilio_form(From="whatsapp:" + USER)
    status, _, text = await post(parley, form)
    assert (status, text) == (400, f"From whatsapp:{USER} and To {AGENT_NUMBER} are on different channels: "
                                   "expected the same prefix on both\n")
    assert await nothing_stored(parley)


async def test_a_channel_the_number_does_not_list_is_404(parley: Parley) -> None:
    form = twilio_form(From="whatsapp:" + USER, To="whatsapp:" + OTHER_NUMBER, AccountSid=OTHER_ACCOUNT_SID)
    status, _, text = await post(parley, form, token=OTHER_AUTH_TOKEN)
    assert (status, text) == (404, f"{OTHER_NUMBER} does not answer on whatsapp (its channels: sms): add it to the "
                                   "number's channels\n")
    assert await nothing_stored(parley)


async def test_a_channel_parley_does_not_run_is_404(parley: Parley, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(parley.client.app[RUNTIME].channels, "whatsapp")
    status, _, text = await post(parley, twilio_form(From="whatsapp:" + USER, To="whatsapp:" + AGENT_NUMBER))
    assert status == 404 and "does not answer on whatsapp (its channels: sms, whatsapp)" in text
    assert await nothing_stored(parley)


async def test_a_whatsapp_text_is_its_own_conversation_and_opens_the_window(parley: Parley) -> None:
    form = twilio_form("hola", From="whatsapp:" + USER, To="whatsapp:" + AGENT_NUMBER)
    assert (await post(parley, form))[0] == 200
    assert await mailbox(parley, WHATSAPP) == [Item(ItemKind.TEXT, NOW, "hola", SID)]
    assert await mailbox(parley, SMS) == []
    window = parley.client.app[RUNTIME].channels["whatsapp"].session_window_s
    assert window and window - 5 <= await parley.redis.ttl(keys.session(WHATSAPP)) <= window


# --- keywords ----------------------------------------------------------------------------------------------------


async def test_help_is_answered_with_the_numbers_help_message_and_nothing_is_stored(parley: Parley) -> None:
    status, content_type, text = await post(parley, twilio_form("HELP", To=OTHER_NUMBER,
                                                                AccountSid=OTHER_ACCOUNT_SID), token=OTHER_AUTH_TOKEN)
    assert (status, content_type) == (200, "text/xml")
    assert text == str(twiml("Call 555-0100.").text)
    assert "<Message>Call 555-0100.</Message>" in text
    assert await nothing_stored(parley)


async def test_help_without_a_help_message_names_the_number(parley: Parley) -> None:
    status, _, text = await post(parley, twilio_form("info"))
    assert status == 200 and "Front desk" in text and "<Message>" in text
    assert await nothing_stored(parley)


async def test_an_empty_help_message_leaves_help_to_twilio(parley: Parley) -> None:
    status, _, text = await post(parley, twilio_form("HELP", To=QUIET_NUMBER))
    assert (status, text.encode()) == (200, EMPTY_TWIML)
    assert await nothing_stored(parley)


async def test_help_from_an_opted_out_user_is_not_answered(parley: Parley) -> None:
    await parley.client.app[RUNTIME].optouts.record(SMS)
    status, _, text = await post(parley, twilio_form("HELP"))
    assert (status, text.encode()) == (200, EMPTY_TWIML)
    assert await mailbox(parley) == [] and await wakeups(parley) == 0


async def test_help_on_whatsapp_opens_the_window_and_stores_nothing_else(parley: Parley) -> None:
    status, _, text = await post(parley, twilio_form("HELP", From="whatsapp:" + USER, To="whatsapp:" + AGENT_NUMBER))
    assert status == 200 and "<Message>" in text
    assert await parley.redis.exists(keys.session(WHATSAPP)) == 1
    assert await mailbox(parley, WHATSAPP) == [] and await wakeups(parley) == 0


async def test_start_after_stop_clears_the_opt_out_and_stores_nothing(parley: Parley) -> None:
    await parley.client.app[RUNTIME].optouts.record(SMS)
    status, _, text = await post(parley, twilio_form("START"))
    assert (status, text.encode()) == (200, EMPTY_TWIML)
    assert not await opted_out(parley)
    assert await mailbox(parley) == [] and await wakeups(parley) == 0
    assert await parley.redis.exists(keys.session(SMS)) == 0


async def test_start_on_whatsapp_opens_the_window(parley: Parley) -> None:
    await parley.client.app[RUNTIME].optouts.record(WHATSAPP)
    form = twilio_form("START", From="whatsapp:" + USER, To="whatsapp:" + AGENT_NUMBER)
    assert (await post(parley, form))[0] == 200
    assert not await opted_out(parley, WHATSAPP)
    assert await parley.redis.exists(keys.session(WHATSAPP)) == 1
    assert await mailbox(parley, WHATSAPP) == []


async def test_start_from_a_user_who_never_opted_out_is_a_text(parley: Parley) -> None:
    assert (await post(parley, twilio_form("Start")))[0] == 200
    assert await mailbox(parley) == [Item(ItemKind.TEXT, NOW, "Start", SID)]


async def test_stop_records_the_opt_out_and_queues_an_opt_out_item(parley: Parley) -> None:
    form = twilio_form("STOP", NumMedia="1", MediaUrl0="https://m/0")
    status, _, text = await post(parley, form)
    assert (status, text.encode()) == (200, EMPTY_TWIML)
    assert await opted_out(parley)
    assert await mailbox(parley) == [Item(ItemKind.OPT_OUT, NOW, "STOP", SID)]
    assert await wakeups(parley) == 1


async def test_twilios_opt_out_type_makes_an_opt_out(parley: Parley) -> None:
    assert (await post(parley, twilio_form("please no more", OptOutType="STOP")))[0] == 200
    assert await opted_out(parley)
    assert [item.kind for item in await mailbox(parley)] == [ItemKind.OPT_OUT]


# --- form.py: the answers, and the webhook's deadlines -------------------------------------------------------------


def test_twiml_and_fail() -> None:
    empty = twiml()
    assert (empty.status, empty.content_type, empty.body) == (200, "text/xml", EMPTY_TWIML)
    assert EMPTY_TWIML == b'<?xml version="1.0" encoding="UTF-8"?><Response />'
    said = twiml("a < b & c")
    assert said.content_type == "text/xml"
    assert said.text == '<?xml version="1.0" encoding="UTF-8"?><Response><Message>a &lt; b &amp; c</Message></Response>'
    failed = fail(418, "short and stout")
    assert (failed.status, failed.content_type, failed.text) == (418, "text/plain", "short and stout\n")


class WatchedAsyncio:
    """form.py's ``asyncio``, recording the delay of every ``asyncio.timeout`` it opens."""

    def __init__(self) -> None:
        self.delays: list[float | None] = []

    def timeout(self, delay: float | None) -> asyncio.Timeout:
        self.delays.append(delay)
        return asyncio.timeout(delay)

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)


async def test_the_body_then_redis_are_each_given_their_own_deadline(
    make_parley: MakeParley, monkeypatch: pytest.MonkeyPatch,
) -> None:
    parley = await make_parley(numbers=NUMBERS, run_workers=False, body_timeout_s=7)
    watched = WatchedAsyncio()
    monkeypatch.setattr(form_module, "asyncio", watched)
    assert (await post(parley, twilio_form()))[0] == 200
    assert watched.delays == [5.0], "a body that came whole with the head has no timer; then Redis has 5 s"
    watched.delays.clear()
    # A body still on its way is given PARLEY_BODY_TIMEOUT_S (the 408 tests below hold it to it), then Redis 5 s.
    body = urlencode(twilio_form()).encode()
    url = f"http://{parley.client.host}:{parley.client.port}/twilio/sms"

    async def trickled() -> AsyncIterator[bytes]:
        yield body[:10]
        await asyncio.sleep(0.05)
        yield body[10:]

    async with aiohttp.ClientSession() as session, session.post(url, data=trickled(), headers={
            "Content-Type": "application/x-www-form-urlencoded"}) as answer:
        assert answer.status in (200, 403)   # the signature is the next check's business
    assert watched.delays[0] == 7
    watched.delays.clear()
    response = await parley.client.post("/twilio/sms", data=b"{}", headers={"Content-Type": "application/json"})
    assert response.status == 400 and watched.delays == [], "no form: the handler never runs"


# --- read_form on its own ------------------------------------------------------------------------------------------


@pytest.fixture
async def reader() -> AsyncIterator[TestClient[Any, Any]]:
    """A server whose one route answers what ``read_form`` read, as a list of pairs."""
    async def handle(request: web.Request) -> web.Response:
        form = await read_form(request, timeout_s=0.3)
        if isinstance(form, web.Response):
            if form.status == 413:   # how much of the body read_form left unread
                form.headers["X-Unread"] = str(len(await request.content.read()))
            return form
        return web.json_response(list(form.items()))

    app = web.Application()
    app.router.add_post("/form", handle)
    async with TestClient(TestServer(app)) as client:
        yield client


async def read(reader: TestClient[Any, Any], body: bytes | AsyncIterator[bytes],
               content_type: str = "application/x-www-form-urlencoded") -> tuple[int, Any]:
    response = await reader.post("/form", data=body, headers={"Content-Type": content_type})
    return response.status, await (response.json() if response.status == 200 else response.text())


def exactly(size: int) -> bytes:
    return b"Body=" + b"x" * (size - 5)


async def chunks(body: bytes, size: int = 10_000) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start:start + size]


async def test_a_body_of_exactly_the_cap_is_read(reader: TestClient[Any, Any]) -> None:
    assert MAX_BODY_BYTES == 64 * 1024
    status, pairs = await read(reader, exactly(MAX_BODY_BYTES))
    assert status == 200 and len(pairs[0][1]) == MAX_BODY_BYTES - 5
    status, pairs = await read(reader, chunks(exactly(MAX_BODY_BYTES)))
    assert status == 200 and len(pairs[0][1]) == MAX_BODY_BYTES - 5, "chunked, no length up front"


async def test_one_byte_over_the_cap_is_413(reader: TestClient[Any, Any]) -> None:
    assert await read(reader, exactly(MAX_BODY_BYTES + 1)) == (413, "body too large: at most 65536 bytes\n")
    assert await read(reader, chunks(exactly(MAX_BODY_BYTES + 1))) == (413, "body too large: at most 65536 bytes\n")


async def test_over_the_cap_at_most_one_byte_more_is_read(reader: TestClient[Any, Any]) -> None:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    response = await reader.post("/form", data=exactly(MAX_BODY_BYTES + 10), headers=headers)
    assert (response.status, response.headers["X-Unread"]) == (413, str(MAX_BODY_BYTES + 10)), "its length said so"
    response = await reader.post("/form", data=chunks(exactly(MAX_BODY_BYTES + 10)), headers=headers)
    assert (response.status, response.headers["X-Unread"]) == (413, "9"), "chunked: the cap and one byte were read"


async def test_what_is_not_a_form_is_400(reader: TestClient[Any, Any]) -> None:
    assert await read(reader, b'{"Body": "x"}', "application/json") == (
        400, "expected an application/x-www-form-urlencoded body, got 'application/json'\n")


async def test_a_body_that_does_not_arrive_in_time_is_408(reader: TestClient[Any, Any]) -> None:
    async def slow() -> AsyncIterator[bytes]:
        yield b"Body=sl"
        await asyncio.sleep(1)
        yield b"ow"

    assert await read(reader, slow()) == (408, "the body did not arrive within 0.3 s\n")


async def test_a_body_that_fails_to_decompress_is_400(reader: TestClient[Any, Any]) -> None:
    response = await reader.post("/form", data=b"Body=not gzip at all", headers={
        "Content-Type": "application/x-www-form-urlencoded", "Content-Encoding": "gzip"})
    assert response.status == 400
    assert (await response.text()).startswith("malformed body: ")


async def test_the_form_is_decoded_in_its_charset(reader: TestClient[Any, Any]) -> None:
    latin = "application/x-www-form-urlencoded; charset=latin-1"
    assert await read(reader, b"Body=%E9t%E9&To=\xe9", latin) == (200, [["Body", "été"], ["To", "é"]])
    assert await read(reader, b"Body=%C3%A9t%C3%A9") == (200, [["Body", "été"]]), "utf-8 by default"


@pytest.mark.parametrize("body", [b"Body=%FF", b"Body=\xff"])
async def test_bytes_the_charset_does_not_decode_are_400(reader: TestClient[Any, Any], body: bytes) -> None:
    status, text = await read(reader, body)
    assert status == 400 and text.startswith("malformed form body: 'utf-8' codec can't decode byte 0xff")


async def test_blank_values_repeats_and_a_trailing_newline(reader: TestClient[Any, Any]) -> None:
    assert await read(reader, b"Body=&MediaUrl0=a&MediaUrl0=b&To=%2B1\r\n") == (
        200, [["Body", ""], ["MediaUrl0", "a"], ["MediaUrl0", "b"], ["To", "+1"]])


async def test_at_most_a_thousand_fields(reader: TestClient[Any, Any]) -> None:
    status, pairs = await read(reader, "&".join(f"f{i}=1" for i in range(1_000)).encode())
    assert status == 200 and len(pairs) == 1_000
    status, text = await read(reader, "&".join(f"f{i}=1" for i in range(1_001)).encode())
    assert status == 400 and text.startswith("malformed form body: ")


# --- _read_at_most -------------------------------------------------------------------------------------------------


@pytest.fixture
async def stream() -> StreamReader:
    loop = asyncio.get_running_loop()
    protocol = BaseProtocol(loop)
    protocol.connection_made(asyncio.Transport())   # a connection that stays open until the test feeds EOF
    return StreamReader(protocol, 2**16, loop=loop)


async def test_read_at_most_stops_at_the_limit_across_chunks(stream: StreamReader) -> None:
    stream.feed_data(b"abc")

    async def later() -> None:
        await asyncio.sleep(0.01)
        stream.feed_data(b"defghijklmnop")
        stream.feed_eof()

    feeder = asyncio.ensure_future(later())
    assert await _read_at_most(stream, 10) == b"abcdefghij"
    await feeder
    assert await stream.read() == b"klmnop", "the rest is never read"


async def test_read_at_most_returns_a_short_body_at_its_end(stream: StreamReader) -> None:
    stream.feed_data(b"abc")
    stream.feed_eof()
    assert await _read_at_most(stream, 10) == b"abc"
