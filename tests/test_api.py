"""The REST API's edges: bearer auth, Retell's error envelope, health checks, get-chat."""

from __future__ import annotations

from .conftest import AGENT_NUMBER, API_KEY, USER, MakeParley


async def test_get_chat_needs_the_bearer_key(make_parley: MakeParley) -> None:
    parley = await make_parley()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {API_KEY}"}):
        response = await parley.client.get("/get-chat/chat_x", headers=headers)
        assert response.status == 401
        body = await response.json()
        assert body["status"] == "error" and "Bearer" in body["message"]


async def test_any_of_several_keys_is_accepted(make_parley: MakeParley) -> None:
    parley = await make_parley(api_keys=["first-key", API_KEY])
    response = await parley.client.get("/get-chat/nope", headers={"Authorization": "Bearer first-key"})
    assert response.status == 404


async def test_unknown_chat_is_404_in_retells_envelope(make_parley: MakeParley) -> None:
    parley = await make_parley()
    missing = "chat_" + "0" * 32
    response = await parley.api("GET", f"/get-chat/{missing}")
    assert response.status == 404
    assert await response.json() == {"status": "error", "message": f"chat '{missing}' not found"}


async def test_unknown_route_is_404_in_the_envelope(make_parley: MakeParley) -> None:
    parley = await make_parley()
    response = await parley.api("GET", "/no-such-route")
    assert response.status == 404
    assert (await response.json())["status"] == "error"


async def test_get_chat_returns_retells_chat_shape(make_parley: MakeParley) -> None:
    parley = await make_parley()
    await parley.text("hello there")
    await parley.twilio.wait_for(1)
    await parley.idle()
    chat = await parley.chat_of()
    assert set(chat) >= {"chat_id", "agent_id", "version", "chat_status", "chat_type", "start_timestamp",
                         "transcript", "message_with_tool_calls", "retell_llm_dynamic_variables", "metadata"}
    assert chat["agent_id"] == "frontdesk" and chat["version"] == 0
    assert chat["transcript"] == "User: hello there\nAgent: You said: hello there\n"
    assert chat["from_number"] == USER and chat["to_number"] == AGENT_NUMBER and chat["direction"] == "inbound"
    for message in chat["message_with_tool_calls"]:
        assert message["message_id"] and message["created_timestamp"] > 0


async def test_health_and_readiness(make_parley: MakeParley) -> None:
    parley = await make_parley()
    assert (await parley.client.get("/healthz")).status == 200
    ready = await parley.client.get("/readyz")
    assert ready.status == 200
    assert await ready.json() == {"status": "ok", "agents_loaded": True, "redis": True}
