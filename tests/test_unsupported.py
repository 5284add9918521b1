"""Nothing silent: what an agent or a Retell LLM holds that Parley stores but does not act on is named by
``parley check`` (``--strict`` fails on it), in the API's create and update answers, and in the startup log."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from retell import AsyncRetell

from service.retell.flows import ConversationFlow
from service.retell.models import ChatAgent, RetellLLM
from service.retell.unsupported import NOT_USED, unsupported

from .conftest import ACCOUNT_SID, DEFAULT_NUMBERS, MakeParley, agent_file, api_json

REPO = Path(__file__).resolve().parent.parent

# Shaped as Retell's API returns them: voice settings, a code tool (it needs Retell's sandbox), PII scrubbing.
EXPORTED_LLM = {
    "general_prompt": "Hi", "model_high_priority": True, "tool_call_strict_mode": True,
    "knowledge_base_ids": ["kb_1"], "kb_config": {"top_k": 2},   # acted on: not reported
    "general_tools": [
        {"type": "end_call", "name": "end_chat", "description": "End.", "speak_during_execution": False},
        {"type": "code", "name": "compute", "code": "return 1", "response_variables": {"x": "x"}},
        {"type": "transfer_call", "name": "to_human", "transfer_destination": {"type": "predefined",
                                                                              "number": "+14155550100"}},
    ],
    "model_config": {"primary": {"model": "gpt-5", "tier": "fast"}},
}


def test_every_field_not_acted_on_is_named() -> None:
    llm = RetellLLM.model_validate(EXPORTED_LLM)
    assert unsupported(llm) == [
        f"model_high_priority: {NOT_USED}",
        f"tool_call_strict_mode: {NOT_USED}",
        "model_config.primary.tier: 'fast' is a Retell capacity tier; Parley calls the configured LLM server the "
        "same way whatever the tier",
        f"general_tools.0 (end_chat).speak_during_execution: {NOT_USED}",
        "general_tools.1 (compute): a code tool does not run in a chat: the model is not offered it",
        "general_tools.2 (to_human): a transfer_call tool does not run in a chat: the model is not offered it",
    ]
    agent = ChatAgent.model_validate({**agent_file(retell_llm=EXPORTED_LLM), "pii_config": {"mode": "post_call"},
                                      "response_engine": {"type": "retell-llm", "llm_id": "llm_1"}})
    report = unsupported(agent)
    assert f"pii_config: {NOT_USED}" in report
    assert f"retell_llm.model_high_priority: {NOT_USED}" in report


def test_an_agent_parley_runs_whole_reports_nothing() -> None:
    assert unsupported(ChatAgent.model_validate(agent_file())) == []


def run_check(directory: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    env = {"PARLEY_AGENTS_DIR": str(directory), "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": "t",
           "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "service", "check", *flags], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=60, check=False)


def test_parley_check_lists_them_and_strict_fails(tmp_path: Path) -> None:
    (tmp_path / "frontdesk.yaml").write_text(yaml.safe_dump(agent_file(retell_llm=EXPORTED_LLM)))
    (tmp_path / "phone-numbers.yaml").write_text(yaml.safe_dump(DEFAULT_NUMBERS))
    lenient = run_check(tmp_path)
    assert lenient.returncode == 0, lenient.stderr
    assert f"unsupported: {tmp_path / 'frontdesk.yaml'}: agent frontdesk: \n" in lenient.stdout
    assert "  retell_llm.general_tools.1 (compute): a code tool does not run in a chat" in lenient.stdout
    strict = run_check(tmp_path, "--strict")
    assert strict.returncode != 0
    assert "--strict: 1 agent(s) hold fields Parley does not act on" in strict.stderr
    assert run_check(REPO / "agents", "--strict").returncode == 0   # the example agent runs whole


async def test_the_api_answers_say_what_is_not_acted_on(make_parley: MakeParley) -> None:
    parley = await make_parley()
    llm = await api_json(parley, "POST", "/create-retell-llm", status=201, json=EXPORTED_LLM)
    assert "general_tools.1 (compute): a code tool does not run in a chat: the model is not offered it" in llm[
        "unsupported"]
    updated = await api_json(parley, "PATCH", f"/update-retell-llm/{llm['llm_id']}", json={
        "general_tools": [], "model_config": None, "model_high_priority": None})
    # An unknown field set to null is still stored: Retell's null clears a value; the key stays reported.
    assert updated["unsupported"] == [f"model_high_priority: {NOT_USED}", f"tool_call_strict_mode: {NOT_USED}"]
    agent = await api_json(parley, "POST", "/create-chat-agent", status=201, json={
        "response_engine": {"type": "retell-llm", "llm_id": llm["llm_id"]}, "voice_id": "11labs-Adrian"})
    assert agent["unsupported"] == [f"voice_id: {NOT_USED}"]
    agent = await api_json(parley, "PATCH", f"/update-chat-agent/{agent['agent_id']}", json={"agent_name": "x"})
    assert agent["unsupported"] == [f"voice_id: {NOT_USED}"]
    plain = await api_json(parley, "GET", f"/get-chat-agent/{agent['agent_id']}")
    assert "unsupported" not in plain   # reads keep Retell's shape exactly


async def test_startup_logs_one_warning_per_agent(make_parley: MakeParley, caplog: pytest.LogCaptureFixture) -> None:
    agents: dict[str, dict[str, Any]] = {"frontdesk": agent_file(retell_llm=EXPORTED_LLM), "plain": agent_file()}
    with caplog.at_level(logging.WARNING, logger="service.app"):
        await make_parley(agents=agents)
    found = [r for r in caplog.records if r.getMessage() == "agent holds fields Parley stores but does not act on"]
    assert len(found) == 1
    assert str(found[0].agent).endswith("frontdesk.yaml: agent frontdesk")   # type: ignore[attr-defined]
    assert len(found[0].fields) == 6   # type: ignore[attr-defined]


@pytest.mark.parametrize(("honor", "header"), [
    (True, None), (None, None),
    (False, "honor_internal_dnc=false: opted-out numbers are always refused"),
])
async def test_honor_internal_dnc_is_accepted_and_said_when_not_obeyed(
    make_parley: MakeParley, honor: bool | None, header: str | None,
) -> None:
    numbers = [{**DEFAULT_NUMBERS[0], "outbound_sms_agents": [{"agent_id": "frontdesk", "weight": 1}]}]
    parley = await make_parley(numbers=numbers)
    body: dict[str, Any] = {"from_number": numbers[0]["phone_number"], "to_number": "+14155550123"}
    if honor is not None:
        body["honor_internal_dnc"] = honor
    response = await parley.api("POST", "/create-sms-chat", json=body)
    assert response.status == 200, await response.text()
    assert response.headers.get("X-Parley-Unsupported") == header


def test_parley_check_asks_a_file_to_carry_its_flow_inline(tmp_path: Path) -> None:
    (tmp_path / "flow.yaml").write_text(yaml.safe_dump({
        "agent_name": "Flow", "response_engine": {"type": "conversation-flow", "conversation_flow_id": "cf_1"}}))
    (tmp_path / "phone-numbers.yaml").write_text("[]")
    done = run_check(tmp_path)
    assert done.returncode != 0
    assert ("flow.yaml: an agent file carries its engine inline, as a mapping: retell_llm or conversation_flow "
            "(exactly one); response_engine cannot name a Retell LLM or conversation flow kept by the API: files are "
            "read on their own (parley check reads no store), so put it in the file under retell_llm or "
            "conversation_flow") in done.stderr


async def test_the_api_refuses_an_engine_it_cannot_run_saying_why(make_parley: MakeParley) -> None:
    parley = await make_parley()
    refused = await parley.api("POST", "/create-chat-agent", json={
        "response_engine": {"type": "custom-llm", "llm_websocket_url": "wss://example.com/llm"}})
    assert refused.status == 422
    assert ("'custom-llm': custom-llm agents (your own LLM websocket) do not run in Parley; retell-llm and "
            "conversation-flow agents run") in (await refused.json())["message"]


def test_a_language_other_than_the_default_is_named() -> None:
    assert unsupported(ChatAgent.model_validate(agent_file(language="es-ES"))) == [
        "language: 'es-ES' is not passed to the model: say in the prompt which language to write in"]


# Shaped as Retell exports a flow: its canvas, defaults spelled out, voice settings, nodes a chat cannot run.
EXPORTED_FLOW: dict[str, Any] = {
    "start_speaker": "agent", "start_node_id": "greet", "flex_mode": False, "is_transfer_cf": False,
    "tool_call_strict_mode": True, "begin_tag_display_position": {"x": 0, "y": 0}, "notes": [],
    "knowledge_base_ids": ["kb_1"], "kb_config": {"top_k": 3, "filter_score": 0.6},
    "backup_model": {"type": "cascading", "model": "gpt-4o"},
    "tools": [{"type": "integration_app", "name": "hubspot", "tool_id": "t_app"}],
    "nodes": [
        {"id": "greet", "type": "conversation", "instruction": {"type": "prompt", "text": "Hi"},
         "display_position": {"x": 10, "y": 20}, "interruption_sensitivity": 0.8, "finetune_transition_examples": [],
         "edges": [{"id": "e1", "destination_node_id": "to_human",
                    "transition_condition": {"type": "prompt", "prompt": "Wants a human"}}]},
        {"id": "to_human", "type": "transfer_call", "transfer_destination": {"type": "predefined", "number": "+1"},
         "edge": {"id": "e2", "destination_node_id": "book", "transition_condition": {"type": "prompt",
                                                                                     "prompt": "Transfer failed"}}},
        {"id": "book", "type": "function", "tool_id": "t_shared", "tool_type": "shared",
         "speak_during_execution": True,
         "else_edge": {"id": "e3", "destination_node_id": "js", "transition_condition": {"type": "prompt",
                                                                                        "prompt": "Else"}}},
        {"id": "js", "type": "code", "code": "return 1"},
    ],
}
FLOW_REPORT = [   # knowledge_base_ids and kb_config are acted on (service.agent.retrieval): not named
    "tool_call_strict_mode: not passed to the model: Parley does not ask it for strict tool calls",
    "backup_model: Retell does not let chat agents use an engine with a backup_model; Parley does not use it "
    "(model_config.backup is the backup it uses)",
    "nodes.0 (greet).interruption_sensitivity: a voice-call setting: nothing in a chat uses it",
    "nodes.1 (to_human): transfer_call nodes are for voice calls and do nothing in a chat: reached at run time, it "
    "takes its else edge (or its edge), else ends the chat",
    "nodes.2 (book).tool_type: shared tools are kept in Retell's tool store, which Parley does not have: the node "
    "cannot call 't_shared'",
    "nodes.2 (book).speak_during_execution: the node has no instruction: there is nothing to say while it runs",
    "nodes.3 (js): code nodes (JavaScript) do not run in Parley: reached at run time, it takes its else edge (or its "
    "edge), else ends the chat",
    "tools.0 (hubspot): an integration_app tool (Retell's app marketplace) does not run in Parley",
]


def test_what_a_flow_keeps_without_acting_on_is_named_but_not_its_canvas() -> None:
    # Not named: the canvas (display_position, notes, begin_tag_display_position), settings left false or empty
    # (flex_mode, is_transfer_cf, finetune_transition_examples).
    assert unsupported(ConversationFlow.model_validate(EXPORTED_FLOW)) == FLOW_REPORT
    runs_whole = {**EXPORTED_FLOW, "knowledge_base_ids": [], "tool_call_strict_mode": False, "backup_model": None,
                  "tools": [], "nodes": [{**EXPORTED_FLOW["nodes"][0], "interruption_sensitivity": None,
                                          "edges": []}]}
    assert unsupported(ConversationFlow.model_validate(runs_whole)) == []


async def test_the_flow_routes_answer_what_is_not_acted_on(retell: AsyncRetell) -> None:
    created = await retell.conversation_flow.create(**EXPORTED_FLOW)   # the SDK sends its fields in its own order
    assert sorted((created.model_extra or {})["unsupported"]) == sorted(FLOW_REPORT)
    updated = await retell.conversation_flow.update(created.conversation_flow_id, knowledge_base_ids=[])
    assert sorted((updated.model_extra or {})["unsupported"]) == sorted(FLOW_REPORT)   # acted on either way
    component = await retell.conversation_flow_component.create(name="Wrap up", nodes=EXPORTED_FLOW["nodes"][3:])
    assert (component.model_extra or {})["unsupported"] == [FLOW_REPORT[6].replace("nodes.3", "nodes.0")]
