"""A whole SMS conversation through the inbound webhook, the workers, the LLM and Twilio."""

from __future__ import annotations

from .conftest import AGENT_NUMBER, USER, MakeParley


async def test_two_turns_share_history(make_parley: MakeParley) -> None:
    parley = await make_parley()
    response = await parley.text("Hi, are you open Saturday?")
    assert response.status == 200
    assert await response.text() == '<?xml version="1.0" encoding="UTF-8"?><Response />'
    await parley.twilio.wait_for(1)
    await parley.text("And Sunday?")
    sent = await parley.twilio.wait_for(2)
    assert [m.body for m in sent] == ["You said: Hi, are you open Saturday?", "You said: And Sunday?"]
    assert all(m.to == USER and m.from_ == AGENT_NUMBER for m in sent)
    second = parley.llm.requests[1]["messages"]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    assert USER in second[0]["content"]
    await parley.idle()
    chat = await parley.chat_of()
    assert chat["chat_type"] == "sms_chat" and chat["chat_status"] == "ongoing"
    assert chat["from_number"] == USER and chat["to_number"] == AGENT_NUMBER
    assert [m["role"] for m in chat["message_with_tool_calls"]] == ["user", "agent", "user", "agent"]
    assert chat["message_with_tool_calls"][1]["message_sid"] == sent[0].sid
