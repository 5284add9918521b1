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


def test_parley_check_names_a_conversation_flow_agent_it_cannot_run(tmp_path: Path) -> None:
    (tmp_path / "flow.yaml").write_text(yaml.safe_dump({
        "agent_name": "Flow", "response_engine": {"type": "conversation-flow", "conversation_flow_id": "cf_1"}}))
    (tmp_path / "phone-numbers.yaml").write_text("[]")
    done = run_check(tmp_path)
    assert done.returncode != 0
    assert ("flow.yaml: response_engine.type 'conversation-flow': conversation-flow agents (Retell's node graphs) "
            "do not run in Parley yet; only Retell LLM agents (an inline retell_llm) run") in done.stderr


async def test_the_api_refuses_an_engine_it_cannot_run_saying_why(make_parley: MakeParley) -> None:
    parley = await make_parley()
    refused = await parley.api("POST", "/create-chat-agent", json={
        "response_engine": {"type": "conversation-flow", "conversation_flow_id": "cf_1"}})
    assert refused.status == 422
    assert "'conversation-flow': conversation-flow agents (Retell's node graphs) do not run in Parley yet" in (
        await refused.json())["message"]


def test_a_language_other_than_the_default_is_named() -> None:
    assert unsupported(ChatAgent.model_validate(agent_file(language="es-ES"))) == [
        "language: 'es-ES' is not passed to the model: say in the prompt which language to write in"]
