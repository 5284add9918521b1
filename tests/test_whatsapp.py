"""WhatsApp through Twilio: its own conversations beside SMS, text sent as written, the 24-hour customer
service window, opt-outs and delivery statuses per channel, and the numbers' ``channels`` field; against real
Redis, the fake Twilio (through ``TwilioGateway``, as Parley sends) and the fake OpenAI server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from pydantic import SecretStr
from retell import AsyncRetell

from service.catalog import agent_files
from service.channels.twilio.signature import sign
from service.errors import ConfigError
from service.settings import Settings
from service.sms.limits import pacific_day
from service.storage import keys

from .conftest import (
    ACCOUNT_SID,
    AGENT_NUMBER,
    API_KEY,
    AUTH_TOKEN,
    DEFAULT_NUMBERS,
    PUBLIC_URL,
    USER,
    MakeParley,
    Parley,
    Receiver,
    agent_file,
)
from .conftest import api_json as api
from .fakes.openai import Call, Completion, last_user_text

REPO = Path(__file__).resolve().parent.parent

WA_AGENT = "whatsapp:" + AGENT_NUMBER
WA_USER = "whatsapp:" + USER
WA_CONV = keys.Conversation(AGENT_NUMBER, USER, "whatsapp")
SMS_CONV = keys.Conversation(AGENT_NUMBER, USER)
FRONTDESK = [{"agent_id": "frontdesk", "weight": 1}]
NUMBERS = [{"phone_number": AGENT_NUMBER, "channels": ["sms", "whatsapp"], "inbound_sms_agents": FRONTDESK,
            "outbound_sms_agents": FRONTDESK}]
DAY_S = 24 * 3600
# Each character here would be rewritten (or would force UCS-2) on SMS.
FANCY = "We’re open today – “come by” anytime 😊 … see you!"


@pytest.fixture
async def parley(make_parley: MakeParley) -> Parley:
    return await make_parley(numbers=NUMBERS)



async def wa_text(parley: Parley, body: str, **kwargs: Any) -> None:
    """The user writes on WhatsApp; Twilio posts it to the same webhook, addresses prefixed."""
    response = await parley.text(body, user=WA_USER, to=WA_AGENT, **kwargs)
    assert response.status == 200, await response.text()


async def chat_of(parley: Parley, conv: keys.Conversation) -> dict[str, Any]:
    """The conversation's ongoing chat, through the API."""
    chat_id = cast(str | None, await parley.redis.get(keys.current_chat(conv)))
    assert chat_id is not None, f"no ongoing chat on {conv.channel}"
    chat: dict[str, Any] = await api(parley, "GET", f"/get-chat/{chat_id}", 200)
    return chat


async def written_in(parley: Parley) -> None:
    """The user wrote on WhatsApp (opening the window) and the agent's answer is done."""
    count = len(parley.twilio.messages)
    await wa_text(parley, "hi")
    await parley.twilio.wait_for(count + 1)
    await parley.idle()


async def status_callback(parley: Parley, sid: str, status: str, error: str | None = None) -> int:
    """Twilio reports a WhatsApp message's status to the StatusCallback URL Parley gave it."""
    form = {"MessageSid": sid, "SmsSid": sid, "MessageStatus": status, "SmsStatus": status,
            "AccountSid": ACCOUNT_SID, "From": WA_AGENT, "To": WA_USER, "ApiVersion": "2010-04-01"}
    if error:
        form["ErrorCode"] = error
    url = next(m.status_callback for m in parley.twilio.messages if m.sid == sid)
    assert url is not None and url.startswith(PUBLIC_URL + "/twilio/status")
    response = await parley.client.post(url.removeprefix(PUBLIC_URL), data=form,
                                        headers={"X-Twilio-Signature": sign(url, form, AUTH_TOKEN)})
    return response.status


def sentences(count: int) -> str:
    """``count`` sentences of 29 characters, one space apart."""
    return " ".join(f"This is sentence number {i:03d}." for i in range(count))


# Inbound: the webhook, the conversation, the chat.


async def test_a_whatsapp_text_is_answered_on_whatsapp_in_its_own_conversation(parley: Parley) -> None:
    await wa_text(parley, "hi on whatsapp")
    [reply] = await parley.twilio.wait_for(1)
    assert (reply.from_, reply.to, reply.body) == (WA_AGENT, WA_USER, "You said: hi on whatsapp")
    await parley.idle()
    assert not await parley.redis.exists(keys.current_chat(SMS_CONV)), "the WhatsApp text opened an SMS chat"

    assert (await parley.text("hi on sms")).status == 200
    await parley.twilio.wait_for(2)
    sms_reply = parley.twilio.messages[1]
    assert (sms_reply.from_, sms_reply.to, sms_reply.body) == (AGENT_NUMBER, USER, "You said: hi on sms")
    # The SMS turn's history holds none of the WhatsApp conversation.
    history = [m["content"] for m in parley.llm.requests[-1]["messages"][1:]]
    assert history == ["hi on sms"]
    await parley.idle()
    whatsapp, sms = await chat_of(parley, WA_CONV), await chat_of(parley, SMS_CONV)
    assert whatsapp["chat_id"] != sms["chat_id"]
    assert [m["content"] for m in whatsapp["message_with_tool_calls"]] == ["hi on whatsapp",
                                                                           "You said: hi on whatsapp"]
    assert [m["content"] for m in sms["message_with_tool_calls"]] == ["hi on sms", "You said: hi on sms"]


async def test_get_chat_tells_the_channel_and_writes_whatsapp_addresses(parley: Parley) -> None:
    await written_in(parley)
    await parley.text("hello")
    await parley.twilio.wait_for(2)
    await parley.idle()
    whatsapp = await chat_of(parley, WA_CONV)
    assert (whatsapp["chat_type"], whatsapp["channel"], whatsapp["direction"]) == ("sms_chat", "whatsapp", "inbound")
    assert (whatsapp["from_number"], whatsapp["to_number"]) == (WA_USER, WA_AGENT)
    sms = await chat_of(parley, SMS_CONV)
    assert (sms["chat_type"], sms["channel"]) == ("sms_chat", "sms")
    assert (sms["from_number"], sms["to_number"]) == (USER, AGENT_NUMBER)
    listed = await api(parley, "POST", "/v3/list-chats", 200, json={})
    assert {(c["chat_id"], c["channel"]) for c in listed["items"]} == {(whatsapp["chat_id"], "whatsapp"),
                                                                       (sms["chat_id"], "sms")}


async def test_whatsapp_to_a_number_not_on_whatsapp_is_404(make_parley: MakeParley) -> None:
    parley = await make_parley(numbers=DEFAULT_NUMBERS)    # channels: [sms] by default
    response = await parley.text("hi", user=WA_USER, to=WA_AGENT)
    assert response.status == 404
    text = await response.text()
    assert "whatsapp" in text and AGENT_NUMBER in text
    assert [k async for k in parley.redis.scan_iter(match="parley:{*}:conv:*")] == []
    assert sum([await parley.redis.xlen(keys.wakeups(s)) for s in range(keys.SHARDS)]) == 0
    assert (await parley.text("hi")).status == 200          # SMS still answers
    [reply] = await parley.twilio.wait_for(1)
    assert reply.to == USER


async def test_a_whatsapp_only_number_refuses_sms_and_mixed_addresses(make_parley: MakeParley) -> None:
    parley = await make_parley(numbers=[{**NUMBERS[0], "channels": ["whatsapp"]}])
    sms = await parley.text("hi")
    assert sms.status == 404 and "sms" in await sms.text()
    for user, to in ((WA_USER, AGENT_NUMBER), (USER, WA_AGENT)):
        mixed = await parley.text("hi", user=user, to=to)
        assert mixed.status == 400 and "different channels" in await mixed.text()
    assert [k async for k in parley.redis.scan_iter(match="parley:{*}:conv:*")] == []
    await wa_text(parley, "hi")
    [reply] = await parley.twilio.wait_for(1)
    assert (reply.from_, reply.to) == (WA_AGENT, WA_USER)


# Outbound text: as written, one message, no segments.


async def test_whatsapp_text_is_sent_as_written_not_rewritten_for_gsm7(parley: Parley) -> None:
    parley.llm.respond = lambda body: Completion(content=FANCY)
    await wa_text(parley, "are you open?")
    [reply] = await parley.twilio.wait_for(1)
    assert reply.body == FANCY
    await parley.idle()
    sent = await api(parley, "POST", "/send-sms", 200, json={
        "from_number": WA_AGENT, "to_number": WA_USER, "prompt": "Tell them the opening hours."})
    assert parley.twilio.messages[-1].body == FANCY == sent["content"]   # written by the LLM, still as is
    # The same reply on SMS is rewritten to GSM-7: the fake's text really is one SMS would change.
    await parley.text("are you open?")
    await parley.twilio.wait_for(3)
    assert parley.twilio.messages[-1].to == USER and parley.twilio.messages[-1].body != FANCY


async def test_a_long_whatsapp_reply_is_one_message_cut_at_a_sentence_end(parley: Parley) -> None:
    medium, long = sentences(33), sentences(80)          # 989 and 2,399 characters
    parley.llm.respond = lambda body: Completion(content=long if "long" in last_user_text(body) else medium)
    await wa_text(parley, "tell me everything")
    await parley.twilio.wait_for(1)
    await parley.idle()
    # Seven SMS segments' worth (max_reply_segments is 3): one WhatsApp message, whole.
    assert [m.body for m in parley.twilio.messages] == [medium]

    await wa_text(parley, "tell me even more, the long version")
    await parley.twilio.wait_for(2)
    await parley.idle()
    assert len(parley.twilio.messages) == 2
    cut = parley.twilio.messages[1].body
    assert long.startswith(cut) and cut.endswith(".")
    assert 1_600 - 30 < len(cut) <= 1_600, len(cut)        # at the last sentence end that fits
    stored = (await chat_of(parley, WA_CONV))["message_with_tool_calls"][-1]
    assert (stored["role"], stored["content"]) == ("agent", cut)


async def test_whatsapp_messages_carry_no_encoding_or_segments(parley: Parley) -> None:
    await written_in(parley)
    sent = await api(parley, "POST", "/send-sms", 200, json={
        "from_number": WA_AGENT, "to_number": WA_USER, "content": FANCY})
    assert "encoding" not in sent and "segments" not in sent
    assert (sent["from_number"], sent["to_number"], sent["status"]) == (WA_AGENT, WA_USER, "queued")
    agent_messages = [m for m in (await chat_of(parley, WA_CONV))["message_with_tool_calls"] if m["role"] == "agent"]
    assert [m["content"] for m in agent_messages] == ["You said: hi", FANCY]
    assert all("encoding" not in m and "segments" not in m and m["message_sid"] for m in agent_messages)
    # SMS messages do carry them.
    sms = await api(parley, "POST", "/send-sms", 200, json={
        "from_number": AGENT_NUMBER, "to_number": USER, "content": FANCY})
    assert (sms["encoding"], sms["segments"]) == ("UCS-2", 1)


async def test_whatsapp_does_not_count_against_the_daily_segment_limit(make_parley: MakeParley) -> None:
    parley = await make_parley(numbers=[{**NUMBERS[0], "daily_segment_limit": 2}])
    await written_in(parley)                                 # the agent's WhatsApp reply
    for i in range(3):
        await api(parley, "POST", "/send-sms", 200, json={
            "from_number": WA_AGENT, "to_number": WA_USER, "content": f"WhatsApp note {i}"})
    assert len(parley.twilio.messages) == 4
    assert await parley.redis.get(keys.segments(AGENT_NUMBER, pacific_day())) is None
    # The SMS budget is whole: two one-segment texts, then the limit.
    sms = {"from_number": AGENT_NUMBER, "to_number": USER, "content": "One segment"}
    await api(parley, "POST", "/send-sms", 200, json=sms)
    await api(parley, "POST", "/send-sms", 200, json=sms)
    refused = await api(parley, "POST", "/send-sms", 429, json=sms)
    assert "daily_segment_limit of 2 segments" in refused["message"]
    assert int(cast(str, await parley.redis.get(keys.segments(AGENT_NUMBER, pacific_day())))) == 2
    assert len(parley.twilio.messages) == 6


# The 24-hour customer service window.


async def test_a_user_message_opens_and_refreshes_the_24_hour_window(parley: Parley) -> None:
    await written_in(parley)
    session = keys.session(WA_CONV)
    assert DAY_S - 60 < await parley.redis.ttl(session) <= DAY_S
    assert int(cast(str, await parley.redis.get(session))) > 0
    await parley.redis.expire(session, 30)                # nearly closed
    await wa_text(parley, "still there?")
    await parley.twilio.wait_for(2)
    assert DAY_S - 60 < await parley.redis.ttl(session) <= DAY_S
    # SMS has no window: an SMS text leaves no session key.
    await parley.text("and on sms")
    await parley.twilio.wait_for(3)
    await parley.idle()
    assert not await parley.redis.exists(keys.session(SMS_CONV))


async def test_create_sms_chat_on_whatsapp_needs_the_window(parley: Parley) -> None:
    body = {"from_number": WA_AGENT, "to_number": WA_USER}
    refused = await api(parley, "POST", "/create-sms-chat", 422, json=body)
    assert "24 hours" in refused["message"] and "template" in refused["message"]
    assert parley.twilio.messages == [] and parley.llm.requests == [] and await parley.chat_ids() == []

    await written_in(parley)
    chat = await api(parley, "POST", "/create-sms-chat", 200, json=body)
    assert (chat["channel"], chat["direction"]) == ("whatsapp", "outbound")
    assert (chat["from_number"], chat["to_number"]) == (WA_AGENT, WA_USER)
    first = parley.twilio.messages[-1]
    assert (first.from_, first.to, first.body) == (WA_AGENT, WA_USER, "Hi, this is the front desk.")
    assert (await chat_of(parley, WA_CONV))["chat_id"] == chat["chat_id"]

    await parley.redis.delete(keys.session(WA_CONV))       # 24 hours later
    sent = len(parley.twilio.messages)
    refused = await api(parley, "POST", "/create-sms-chat", 422, json=body)
    assert "24 hours" in refused["message"]
    assert len(parley.twilio.messages) == sent
    assert (await chat_of(parley, WA_CONV))["chat_id"] == chat["chat_id"], "a refused chat replaced the ongoing one"


async def test_send_sms_on_whatsapp_needs_the_window(parley: Parley) -> None:
    body = {"from_number": WA_AGENT, "to_number": WA_USER, "content": "Your table is ready ✅"}
    refused = await api(parley, "POST", "/send-sms", 422, json=body)
    assert "24 hours" in refused["message"] and "template" in refused["message"]
    assert parley.twilio.messages == [] and await parley.chat_ids() == []

    await written_in(parley)
    sent = await api(parley, "POST", "/send-sms", 200, json=body)
    last = parley.twilio.messages[-1]
    assert (last.from_, last.to, last.body) == (WA_AGENT, WA_USER, "Your table is ready ✅")
    assert sent["message_sid"] == last.sid and sent["chat_id"] == (await chat_of(parley, WA_CONV))["chat_id"]

    await parley.redis.delete(keys.session(WA_CONV))
    refused = await api(parley, "POST", "/send-sms", 422, json=body)
    assert "24 hours" in refused["message"]
    assert len(parley.twilio.messages) == 2


@pytest.mark.parametrize("path", ["/send-sms", "/create-sms-chat"])
@pytest.mark.parametrize(("from_number", "to_number"), [(WA_AGENT, USER), (AGENT_NUMBER, WA_USER)])
async def test_both_numbers_must_carry_the_whatsapp_prefix(parley: Parley, path: str, from_number: str,
                                                          to_number: str) -> None:
    await written_in(parley)
    extra = {"content": "hi"} if path == "/send-sms" else {}
    refused = await api(parley, "POST", path, 422, json={"from_number": from_number, "to_number": to_number, **extra})
    assert "same channel prefix" in refused["message"]
    assert len(parley.twilio.messages) == 1


async def test_send_chat_message_into_a_whatsapp_chat_needs_the_window(parley: Parley) -> None:
    await written_in(parley)
    chat_id = (await chat_of(parley, WA_CONV))["chat_id"]
    sent = await api(parley, "POST", "/send-chat-message", 200, json={
        "chat_id": chat_id, "content": "Hi, this is Maya from the front desk.", "role": "human"})
    last = parley.twilio.messages[-1]
    assert (last.from_, last.to, last.body) == (WA_AGENT, WA_USER, "Hi, this is Maya from the front desk.")
    assert sent["message_sid"] == last.sid

    await parley.redis.delete(keys.session(WA_CONV))
    refused = await api(parley, "POST", "/send-chat-message", 422, json={"chat_id": chat_id, "content": "hello?"})
    assert "24 hours" in refused["message"] and "template" in refused["message"]
    assert len(parley.twilio.messages) == 2
    messages = (await chat_of(parley, WA_CONV))["message_with_tool_calls"]
    assert [m["content"] for m in messages] == ["hi", "You said: hi", "Hi, this is Maya from the front desk."]


async def test_send_chat_message_answers_with_whatsapp_addresses(parley: Parley) -> None:
    """Its answer writes the chat's numbers as ``/send-sms`` and ``/get-chat`` do: with the channel prefix."""
    await written_in(parley)
    chat_id = (await chat_of(parley, WA_CONV))["chat_id"]
    sent = await api(parley, "POST", "/send-chat-message", 200, json={"chat_id": chat_id, "content": "On my way."})
    assert (sent["from_number"], sent["to_number"]) == (WA_AGENT, WA_USER)


async def test_an_auto_close_message_is_not_sent_outside_the_window(make_parley: MakeParley,
                                                                    receiver: Receiver) -> None:
    agent = agent_file(end_chat_after_silence_ms=1_000, auto_close_message="Bye for now!",
                       webhook_url=receiver.url, webhook_events=["chat_ended"])
    parley = await make_parley(numbers=NUMBERS, agent=agent)
    await written_in(parley)
    chat_id = (await chat_of(parley, WA_CONV))["chat_id"]
    await parley.redis.delete(keys.session(WA_CONV))       # the window closes before the chat falls silent
    reports = await receiver.wait_for(2)      # the refused send is reported (transcript_updated), then the end
    assert [(r["event"], r["chat"]["chat_id"]) for r in reports] == [("transcript_updated", chat_id),
                                                                      ("chat_ended", chat_id)]
    await parley.idle()
    chat = await api(parley, "GET", f"/get-chat/{chat_id}", 200)
    assert (chat["chat_status"], chat["disconnection_reason"]) == ("ended", "inactivity")
    assert [m.body for m in parley.twilio.messages] == ["You said: hi"]
    closing = chat["message_with_tool_calls"][-1]
    assert closing["content"] == "Bye for now!" and closing["status"] == "failed"
    assert "24 hours" in closing["error"]


# Opt-outs and delivery statuses.


async def test_stop_on_whatsapp_opts_out_of_whatsapp_only(parley: Parley) -> None:
    await written_in(parley)
    await parley.text("hi")
    await parley.twilio.wait_for(2)
    await parley.idle()
    whatsapp_id, sms_id = (await chat_of(parley, WA_CONV))["chat_id"], (await chat_of(parley, SMS_CONV))["chat_id"]

    await wa_text(parley, "STOP")
    await parley.idle()
    assert await parley.redis.exists(keys.optout(WA_CONV))
    assert not await parley.redis.exists(keys.optout(SMS_CONV))
    ended = await api(parley, "GET", f"/get-chat/{whatsapp_id}", 200)
    assert (ended["chat_status"], ended["disconnection_reason"]) == ("ended", "user_requested_dnc")
    assert (await api(parley, "GET", f"/get-chat/{sms_id}", 200))["chat_status"] == "ongoing"

    await wa_text(parley, "are you there?")
    await parley.idle()
    assert len(parley.twilio.messages) == 2 and len(parley.llm.requests) == 2
    refused = await api(parley, "POST", "/send-sms", 422, json={
        "from_number": WA_AGENT, "to_number": WA_USER, "content": "hi"})
    assert "opted out" in refused["message"]

    await parley.text("still on sms")
    await parley.twilio.wait_for(3)
    last = parley.twilio.messages[-1]
    assert (last.from_, last.to, last.body) == (AGENT_NUMBER, USER, "You said: still on sms")


async def test_the_opt_out_list_writes_whatsapp_addresses(parley: Parley) -> None:
    await wa_text(parley, "STOP")
    await parley.idle()
    listed = await api(parley, "GET", "/list-opt-outs", 200)
    assert [(o["from_number"], o["to_number"]) for o in listed] == [(WA_AGENT, WA_USER)]
    by_number = await api(parley, "GET", f"/list-opt-outs?from_number=%2B{AGENT_NUMBER[1:]}", 200)
    assert [(o["from_number"], o["to_number"]) for o in by_number] == [(WA_AGENT, WA_USER)]
    consent = "Said yes again at the front desk, 11/27"
    await api(parley, "POST", "/clear-opt-out", 404, json={"from_number": AGENT_NUMBER, "to_number": USER,
                                                           "consent": consent})   # no SMS opt-out to clear
    mixed = await api(parley, "POST", "/clear-opt-out", 422, json={"from_number": AGENT_NUMBER, "to_number": WA_USER,
                                                                   "consent": consent})
    assert "same channel prefix" in mixed["message"]
    await api(parley, "POST", "/clear-opt-out", 204, json={"from_number": WA_AGENT, "to_number": WA_USER,
                                                           "consent": consent})
    assert await api(parley, "GET", "/list-opt-outs", 200) == []
    assert not await parley.redis.exists(keys.optout(WA_CONV))


@pytest.mark.parametrize("keyword", ["HELP", "START"])
async def test_a_keyword_that_takes_no_turn_still_opens_the_window(parley: Parley, keyword: str) -> None:
    await wa_text(parley, keyword)
    assert 86_000 < await parley.redis.ttl(keys.session(WA_CONV)) <= 86_400
    assert not await parley.redis.exists(keys.session(keys.Conversation(AGENT_NUMBER, USER)))


async def test_status_callbacks_with_whatsapp_addresses_update_delivery(parley: Parley) -> None:
    await written_in(parley)
    [sent] = parley.twilio.messages
    for status in ("sent", "delivered", "sending"):         # out of order: never moves back
        assert await status_callback(parley, sent.sid, status) == 204
    message = (await chat_of(parley, WA_CONV))["message_with_tool_calls"][-1]
    assert (message["message_sid"], message["status"]) == (sent.sid, "delivered")

    await wa_text(parley, "again")
    await parley.twilio.wait_for(2)
    await parley.idle()
    chat_id = (await chat_of(parley, WA_CONV))["chat_id"]
    second = parley.twilio.messages[1]
    assert await status_callback(parley, second.sid, "failed", "21610") == 204
    await parley.idle()
    failed = (await api(parley, "GET", f"/get-chat/{chat_id}", 200))
    assert (failed["message_with_tool_calls"][-1]["status"], failed["message_with_tool_calls"][-1]["error_code"]) \
        == ("failed", 21610)
    assert (failed["chat_status"], failed["disconnection_reason"]) == ("ended", "user_requested_dnc")
    assert await parley.redis.exists(keys.optout(WA_CONV))
    assert not await parley.redis.exists(keys.optout(SMS_CONV))


async def test_the_send_sms_tool_in_a_whatsapp_chat_writes_to_the_user_on_whatsapp(make_parley: MakeParley) -> None:
    tool = {"type": "send_sms", "name": "text_link", "description": "Text the booking link.",
            "sms_content": {"type": "predefined", "text": "Book here: https://sunny.example/book"}}
    parley = await make_parley(numbers=NUMBERS, agent=agent_file(retell_llm={"general_tools": [tool]}))

    def respond(body: dict[str, Any]) -> Completion:
        last_user = max(i for i, m in enumerate(body["messages"]) if m["role"] == "user")
        results = [m for m in body["messages"][last_user:] if m["role"] == "tool"]
        if results:
            return Completion(content=f"Tool said: {results[-1]['content']}")
        return Completion(tool_calls=[Call("text_link", "{}")])

    parley.llm.respond = respond
    await wa_text(parley, "send me the link")
    await parley.twilio.wait_for(2)
    await parley.idle()
    assert [(m.from_, m.to, m.body) for m in parley.twilio.messages] == [
        (WA_AGENT, WA_USER, "Book here: https://sunny.example/book"),
        (WA_AGENT, WA_USER, "Tool said: Sent successfully")]
    roles = [m["role"] for m in (await chat_of(parley, WA_CONV))["message_with_tool_calls"]]
    assert roles == ["user", "tool_call_invocation", "tool_call_result", "agent", "agent"]


# The numbers' channels field, and Retell's SDK.


def load(directory: Path, channels: Any) -> agent_files.Declared:
    directory.mkdir(exist_ok=True)
    (directory / "frontdesk.yaml").write_text(yaml.safe_dump(agent_file()))
    (directory / "phone-numbers.yaml").write_text(yaml.safe_dump([{**DEFAULT_NUMBERS[0], "channels": channels}]))
    return agent_files.load(Settings(agents_dir=directory, twilio_account_sid=ACCOUNT_SID,
                                     twilio_auth_token=SecretStr("t")))


@pytest.mark.parametrize(("channels", "expected"), [
    (["sms", "telegram"], "[0].channels.1: Input should be 'sms' or 'whatsapp'"),
    (["sms", "whatsapp", "sms"], "[0].channels: Value error, each channel once"),
    ([], "[0].channels: List should have at least 1 item"),
])
def test_a_number_with_a_bad_channels_list_fails_to_load(tmp_path: Path, channels: list[str], expected: str) -> None:
    assert load(tmp_path / "good", ["whatsapp", "sms"]).numbers[AGENT_NUMBER].channels == ["whatsapp", "sms"]
    with pytest.raises(ConfigError) as caught:
        load(tmp_path / "bad", channels)
    assert "phone-numbers.yaml: " + expected in str(caught.value)

    env = {"PARLEY_AGENTS_DIR": str(tmp_path / "bad"), "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": "t",
           "PATH": "/usr/bin:/bin"}
    check = subprocess.run([sys.executable, "-m", "service", "check"], capture_output=True, text=True, env=env,
                           cwd=REPO, timeout=60, check=False)
    assert check.returncode != 0
    assert expected in check.stderr


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_the_retell_sdk_reads_a_whatsapp_chat(parley: Parley) -> None:
    await written_in(parley)
    chat_id = (await chat_of(parley, WA_CONV))["chat_id"]
    client = AsyncRetell(api_key=API_KEY, base_url=str(parley.client.make_url("")).rstrip("/"), max_retries=0)
    try:
        chat = await client.chat.retrieve(chat_id)
    finally:
        await client.close()
    assert (chat.chat_id, chat.chat_type, chat.chat_status) == (chat_id, "sms_chat", "ongoing")
    assert [m.role for m in chat.message_with_tool_calls or []] == ["user", "agent"]
    extra = chat.model_extra or {}
    assert (extra["channel"], extra["from_number"], extra["to_number"]) == ("whatsapp", WA_USER, WA_AGENT)
