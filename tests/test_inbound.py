"""``POST /twilio/sms``: signature, routing, dedupe, body checks (docs/architecture.md, steps 1 to 5)."""

from __future__ import annotations

from urllib.parse import urlencode

from service.channels.twilio.signature import sign
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
    agent_file,
)


async def stored_keys(parley_redis: object) -> list[str]:
    return sorted([k async for k in parley_redis.scan_iter(match="parley:{*}:conv:*")])  # type: ignore[attr-defined]


async def test_forged_signature_is_403_and_stores_nothing(make_parley: MakeParley) -> None:
    parley = await make_parley()
    response = await parley.text("hello", token="not-the-auth-token")
    assert response.status == 403
    assert "X-Twilio-Signature" in await response.text()
    assert await stored_keys(parley.redis) == []
    assert sum([await parley.redis.xlen(keys.wakeups(s)) for s in range(keys.SHARDS)]) == 0


async def test_missing_signature_is_403_and_stores_nothing(make_parley: MakeParley) -> None:
    parley = await make_parley()
    form = {"MessageSid": "SM" + "7" * 32, "AccountSid": ACCOUNT_SID, "From": USER, "To": AGENT_NUMBER,
            "Body": "unsigned"}
    response = await parley.client.post("/twilio/sms", data=form)
    assert response.status == 403
    assert "X-Twilio-Signature" in await response.text()
    assert await stored_keys(parley.redis) == [], "no mailbox, no dedupe marker, no chat pointer"
    assert sum([await parley.redis.xlen(keys.wakeups(s)) for s in range(keys.SHARDS)]) == 0, "no wake-up"
    # A signed text after it is answered: by then the unsigned one would have been too, had it been stored.
    assert (await parley.text("signed")).status == 200
    sent = await parley.twilio.wait_for(1)
    await parley.idle()
    assert [m.body for m in sent] == ["You said: signed"] and parley.llm.user_texts() == ["signed"]
    assert len(await parley.chat_ids()) == 1
    chat = await parley.chat_of()
    assert [m["content"] for m in chat["message_with_tool_calls"]] == ["signed", "You said: signed"]


async def test_signature_uses_public_url_not_the_internal_one(make_parley: MakeParley) -> None:
    parley = await make_parley()
    form = {"MessageSid": "SM" + "1" * 32, "AccountSid": ACCOUNT_SID, "From": USER, "To": AGENT_NUMBER, "Body": "hi"}
    internal = str(parley.client.make_url("/twilio/sms"))
    response = await parley.client.post("/twilio/sms", data=form,
                                        headers={"X-Twilio-Signature": sign(internal, form, AUTH_TOKEN)})
    assert response.status == 403
    # Twilio's validator also accepts the URL signed with the default port.
    with_port = PUBLIC_URL + ":443/twilio/sms"
    response = await parley.client.post("/twilio/sms", data=form,
                                        headers={"X-Twilio-Signature": sign(with_port, form, AUTH_TOKEN)})
    assert response.status == 200


async def test_each_number_is_verified_with_its_own_accounts_token(make_parley: MakeParley) -> None:
    numbers = [
        {"phone_number": AGENT_NUMBER, "inbound_sms_agents": [{"agent_id": "frontdesk", "weight": 1}]},
        {"phone_number": OTHER_NUMBER, "twilio_account_sid": OTHER_ACCOUNT_SID,
         "inbound_sms_agents": [{"agent_id": "frontdesk", "weight": 1}]},
    ]
    parley = await make_parley(numbers=numbers)
    assert (await parley.text("hi", to=OTHER_NUMBER, token=AUTH_TOKEN)).status == 403
    assert (await parley.text("hi", to=OTHER_NUMBER, token=OTHER_AUTH_TOKEN)).status == 200
    sent = await parley.twilio.wait_for(1)
    assert sent[0].account_sid == OTHER_ACCOUNT_SID and sent[0].from_ == OTHER_NUMBER


async def test_unknown_number_is_404(make_parley: MakeParley) -> None:
    parley = await make_parley()
    response = await parley.text("hi", to="+15035550111")
    assert response.status == 404
    assert "+15035550111" in await response.text()


async def test_duplicate_message_sid_is_acknowledged_and_dropped(make_parley: MakeParley) -> None:
    parley = await make_parley(agent=agent_file(burst_window_ms=300))
    first = await parley.text("hello", sid="SM" + "d" * 32)
    again = await parley.text("hello", sid="SM" + "d" * 32)
    assert first.status == again.status == 200
    await parley.twilio.wait_for(1)
    await parley.idle()
    assert len(parley.llm.requests) == 1
    assert len(parley.twilio.messages) == 1
    chat = await parley.chat_of()
    assert [m["role"] for m in chat["message_with_tool_calls"]] == ["user", "agent"]


async def test_malformed_bodies_are_400(make_parley: MakeParley) -> None:
    parley = await make_parley()
    response = await parley.client.post("/twilio/sms", data=b'{"From": "x"}',
                                        headers={"Content-Type": "application/json"})
    assert response.status == 400
    assert "x-www-form-urlencoded" in await response.text()
    form = {"AccountSid": ACCOUNT_SID, "From": USER, "To": AGENT_NUMBER, "Body": "no sid"}
    response = await parley.client.post("/twilio/sms", data=urlencode(form), headers={
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Twilio-Signature": sign(PUBLIC_URL + "/twilio/sms", form, AUTH_TOKEN)})
    assert response.status == 400
    assert "MessageSid" in await response.text()


async def test_oversized_body_is_413(make_parley: MakeParley) -> None:
    parley = await make_parley()
    response = await parley.text("x" * 70_000)
    assert response.status == 413
    assert await stored_keys(parley.redis) == []


async def test_mms_media_reach_a_vision_model_as_image_parts(make_parley: MakeParley) -> None:
    parley = await make_parley(agent=agent_file(model_accepts_images=True))
    media = {"NumMedia": "2", "MediaUrl0": "https://api.twilio.com/media/ME1", "MediaContentType0": "image/jpeg",
             "MediaUrl1": "https://api.twilio.com/media/ME2", "MediaContentType1": "application/pdf"}
    await parley.text("what is this?", extra=media)
    await parley.twilio.wait_for(1)
    user = parley.llm.requests[0]["messages"][-1]
    assert user["content"][0]["type"] == "text" and "what is this?" in user["content"][0]["text"]
    assert "application/pdf" in user["content"][0]["text"]
    assert user["content"][1] == {"type": "image_url", "image_url": {"url": "https://api.twilio.com/media/ME1"}}
    await parley.idle()
    chat = await parley.chat_of()
    assert chat["message_with_tool_calls"][0]["media"][1] == {
        "url": "https://api.twilio.com/media/ME2", "content_type": "application/pdf"}


async def test_mms_to_a_text_model_is_described_not_attached(make_parley: MakeParley) -> None:
    parley = await make_parley()
    await parley.text("look", extra={"NumMedia": "1", "MediaUrl0": "https://api.twilio.com/m/ME1",
                                     "MediaContentType0": "image/png"})
    await parley.twilio.wait_for(1)
    content = parley.llm.requests[0]["messages"][-1]["content"]
    assert isinstance(content, str) and "image/png" in content and "https://" not in content


async def test_status_callbacks_are_signature_checked(make_parley: MakeParley) -> None:
    parley = await make_parley()
    form = {"MessageSid": "SM" + "5" * 32, "MessageStatus": "delivered", "AccountSid": ACCOUNT_SID,
            "From": AGENT_NUMBER, "To": USER}
    signed = {"X-Twilio-Signature": sign(PUBLIC_URL + "/twilio/status", form, AUTH_TOKEN)}
    assert (await parley.client.post("/twilio/status", data=form, headers=signed)).status == 204
    forged = {"X-Twilio-Signature": sign(PUBLIC_URL + "/twilio/status", form, "wrong")}
    assert (await parley.client.post("/twilio/status", data=form, headers=forged)).status == 403
