"""Agent and number files: what loads, and the errors that name the file, the field and what was expected."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, SecretStr
from retell.types import ConversationFlowResponse

from service.catalog import agent_files
from service.errors import ConfigError
from service.retell.models import CustomTool, EndChatTool
from service.settings import Settings

from .conftest import ACCOUNT_SID, AGENT_NUMBER, agent_file

REPO = Path(__file__).resolve().parent.parent


def settings_for(directory: Path) -> Settings:
    return Settings(agents_dir=directory, twilio_account_sid=ACCOUNT_SID, twilio_auth_token=SecretStr("t"))


def write(directory: Path, files: dict[str, Any]) -> Path:
    directory.mkdir(exist_ok=True)
    for name, data in files.items():
        text = data if isinstance(data, str) else (json.dumps(data) if name.endswith(".json") else yaml.safe_dump(data))
        (directory / name).write_text(text)
    return directory


NUMBERS = [{"phone_number": AGENT_NUMBER, "inbound_sms_agents": [{"agent_id": "frontdesk", "weight": 1}]}]


def test_the_example_agents_load() -> None:
    catalog = agent_files.load(settings_for(REPO / "agents"))
    agent = catalog.agents["receptionist"]
    assert agent.retell_llm is not None
    assert agent.retell_llm.general_tools and isinstance(agent.retell_llm.general_tools[0], EndChatTool)
    assert isinstance(agent.retell_llm.general_tools[1], CustomTool)
    assert list(catalog.numbers) == ["+15035550100"]
    assert catalog.warnings == [] and catalog.unsupported == {}


def _extra_fields(value: Any, path: str = "") -> list[str]:
    """Every field of a retell-sdk object that is not one of the SDK's (its models keep unknown fields)."""
    if isinstance(value, BaseModel):
        found = [f"{path}.{name}" for name in value.model_extra or {}]
        for name in type(value).model_fields:
            found += _extra_fields(getattr(value, name), f"{path}.{name}")
        return found
    if isinstance(value, list):
        return [f for index, item in enumerate(value) for f in _extra_fields(item, f"{path}.{index}")]
    return []


def test_the_example_flow_is_a_retell_flow_with_every_main_node_type() -> None:
    catalog = agent_files.load(settings_for(REPO / "agents"))
    flow = catalog.agents["booking"].conversation_flow
    assert flow is not None and flow.warnings() == []
    kinds = {node.type for node in flow.nodes}
    assert kinds == {"conversation", "extract_dynamic_variables", "branch", "function", "agent_swap", "end"}
    assert any(n.global_node_setting and n.global_node_setting.go_back_conditions for n in flow.nodes)
    # Written in Retell's field names: retell-sdk reads it with nothing left over.
    exported = yaml.safe_load((REPO / "agents" / "booking.yaml").read_text())["conversation_flow"]
    sdk = ConversationFlowResponse.model_validate(
        {**exported, "conversation_flow_id": "cf_booking", "version": 0, "last_modification_timestamp": 0})
    assert _extra_fields(sdk) == []
    assert [type(node).__name__.removeprefix("Node") for node in sdk.nodes or []] == [
        f"{''.join(part.title() for part in node.type.split('_'))}Node" for node in flow.nodes]


def test_defaults_and_agent_id_from_the_file_name(tmp_path: Path) -> None:
    directory = write(tmp_path / "a", {"frontdesk.json": {"retell_llm": {"general_prompt": "hi"}},
                                       "phone-numbers.yaml": NUMBERS})
    agent = agent_files.load(settings_for(directory)).agents["frontdesk"]
    assert agent.end_chat_after_silence_ms == 3_600_000 and agent.burst_window_ms == 1_500
    assert agent.max_reply_segments == 3 and agent.timezone == "America/Los_Angeles"
    assert agent.retell_llm is not None
    assert agent.retell_llm.begin_message is None


def test_retell_exports_with_extra_fields_drop_in(tmp_path: Path) -> None:
    exported = agent_file(version=3, is_published=True, webhook_events=["chat_started"],
                          retell_llm={"states": [], "knowledge_base_ids": [],
                                      "general_tools": [{"type": "transfer_call", "name": "transfer"}]})
    directory = write(tmp_path / "a", {"frontdesk.yaml": exported, "phone-numbers.yaml": NUMBERS})
    catalog = agent_files.load(settings_for(directory))
    assert catalog.unsupported[f"{directory / 'frontdesk.yaml'}: agent frontdesk"] == [
        "retell_llm.general_tools.0 (transfer): a transfer_call tool does not run in a chat: the model is not "
        "offered it",
    ]


def test_short_silence_is_allowed_with_a_warning(tmp_path: Path) -> None:
    directory = write(tmp_path / "a", {"frontdesk.yaml": agent_file(end_chat_after_silence_ms=5_000),
                                       "phone-numbers.yaml": NUMBERS})
    catalog = agent_files.load(settings_for(directory))
    assert any("below Retell's minimum" in w for w in catalog.warnings)


@pytest.mark.parametrize(("files", "expected"), [
    ({"frontdesk.yaml": agent_file(timezone="Mars/Olympus")}, "frontdesk.yaml: timezone: Value error, 'Mars/Olympus'"),
    ({"frontdesk.yaml": agent_file(burst_window_ms=-1)}, "frontdesk.yaml: burst_window_ms: Input should be greater"),
    ({"frontdesk.yaml": {"agent_name": "no llm"}}, "frontdesk.yaml: an agent file carries its engine inline, as a "
                                                   "mapping: retell_llm or conversation_flow (exactly one)"),
    ({"frontdesk.yaml": agent_file(retell_llm={"general_tools": [{"type": "custom", "name": "x", "url": "ftp://x"}]})},
     "retell_llm.general_tools.0.custom.url: String should match pattern"),
    ({"frontdesk.yaml": agent_file(retell_llm={"general_tools": [{"type": "teleport"}]})},
     "retell_llm.general_tools.0: Input tag 'teleport' found using 'type' does not match"),
    ({"frontdesk.yaml": "retell_llm: [unclosed"}, "frontdesk.yaml: not valid YAML"),
    ({"frontdesk.yaml": "- a list"}, "frontdesk.yaml: expected a mapping"),
    ({"phone-numbers.yaml": [{"phone_number": "5035550100"}]},
     "[0].phone_number: Value error, '5035550100' is not an E.164"),
    ({"phone-numbers.yaml": [{"phone_number": AGENT_NUMBER, "inbound_sms_agents": [
        {"agent_id": "frontdesk", "weight": 0.5}]}]}, "inbound_sms_agents weights must sum to 1, not 0.5"),
    ({"phone-numbers.yaml": [{"phone_number": AGENT_NUMBER, "inbound_sms_agents": [{"agent_id": "ghost"}]}]},
     "names agent 'ghost', which no file"),
])
def test_invalid_files_name_file_field_and_expectation(tmp_path: Path, files: dict[str, Any], expected: str) -> None:
    directory = write(tmp_path / "a", {"frontdesk.yaml": agent_file(), "phone-numbers.yaml": NUMBERS, **files})
    with pytest.raises(ConfigError) as caught:
        agent_files.load(settings_for(directory))
    assert expected in str(caught.value)


def test_legacy_single_agent_fields_are_accepted(tmp_path: Path) -> None:
    directory = write(tmp_path / "a", {"frontdesk.yaml": agent_file(), "phone-numbers.yaml": [
        {"phone_number": AGENT_NUMBER, "inbound_sms_agent_id": "frontdesk"}]})
    number = agent_files.load(settings_for(directory)).numbers[AGENT_NUMBER]
    assert [(a.agent_id, a.weight) for a in number.inbound_sms_agents] == [("frontdesk", 1.0)]


def test_numbers_without_a_known_account_warn(tmp_path: Path) -> None:
    directory = write(tmp_path / "a", {"frontdesk.yaml": agent_file(), "phone-numbers.yaml": NUMBERS})
    catalog = agent_files.load(Settings(agents_dir=directory))
    assert any("no twilio_account_sid and no TWILIO_ACCOUNT_SID" in w for w in catalog.warnings)


def run_check(directory: Path) -> subprocess.CompletedProcess[str]:
    env = {"PARLEY_AGENTS_DIR": str(directory), "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": "t",
           "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "service", "check"], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=60, check=False)


def test_parley_check_exits_non_zero_on_a_problem(tmp_path: Path) -> None:
    good = run_check(REPO / "agents")
    assert good.returncode == 0, good.stderr
    assert "ok: 2 agent(s), 1 number(s)" in good.stdout
    bad = run_check(write(tmp_path / "bad", {"frontdesk.yaml": agent_file(max_reply_segments=0),
                                            "phone-numbers.yaml": NUMBERS}))
    assert bad.returncode != 0
    assert "frontdesk.yaml: max_reply_segments: Input should be greater than or equal to 1" in bad.stderr


def flow_agent(**flow: Any) -> dict[str, Any]:
    """An agent file answering with an inline conversation flow: greet -> bye, and what ``flow`` sets."""
    greet = {"id": "greet", "type": "conversation", "instruction": {"type": "prompt", "text": "Greet."},
             "edges": [{"id": "done", "destination_node_id": "bye",
                        "transition_condition": {"type": "prompt", "prompt": "The user is done"}}]}
    bye = {"id": "bye", "type": "end"}
    nodes = flow.pop("nodes", [greet, bye])
    desk = {k: v for k, v in agent_file().items() if k != "retell_llm"}
    return {**desk, "conversation_flow": {"global_prompt": "You are the front desk.", "nodes": nodes, **flow}}


SWAP = {"id": "to_billing", "type": "agent_swap", "agent_id": "billing",
        "edge": {"id": "failed", "destination_node_id": "bye", "transition_condition": {"type": "prompt",
                                                                                      "prompt": "Swap failed"}}}
SHARED = {"id": "details", "type": "component", "component_id": "component_details", "component_type": "shared"}
CODE = {"id": "compute", "type": "code", "code": "return 1"}


def test_an_inline_conversation_flow_loads_with_its_warnings(tmp_path: Path) -> None:
    greet, bye = flow_agent()["conversation_flow"]["nodes"]
    directory = write(tmp_path / "a", {"frontdesk.yaml": flow_agent(nodes=[greet, bye, SWAP, SHARED, CODE]),
                                       "phone-numbers.yaml": NUMBERS})
    catalog = agent_files.load(settings_for(directory))
    flow = catalog.agents["frontdesk"].conversation_flow
    assert flow is not None and flow.conversation_flow_id == "cf_frontdesk"
    assert catalog.declared_in("conversation flow", "cf_frontdesk") == directory / "frontdesk.yaml"
    where = directory / "frontdesk.yaml"
    assert catalog.warnings == [
        f"{where}: conversation_flow.nodes: to_billing cannot be reached from the start node",
        f"{where}: conversation_flow.nodes: details cannot be reached from the start node",
        f"{where}: conversation_flow.nodes: compute cannot be reached from the start node",
        f"{where}: conversation_flow.nodes.3 (details).component_id: names the shared component 'component_details', "
        "which the API must have created (POST /create-conversation-flow-component): a file cannot check it",
        f"{where}: conversation_flow agent_swap node 'to_billing' names agent 'billing', which no file in "
        f"{directory} declares: the swap works only if the API created it (otherwise the node takes its edge)",
    ]
    assert catalog.unsupported[f"{where}: agent frontdesk"] == [
        "conversation_flow.nodes.4 (compute): code nodes (JavaScript) do not run in Parley: reached at run time, it "
        "takes its else edge (or its edge), else ends the chat"]


FUNCTION = {"id": "book", "type": "function", "tool_id": "book_visit"}


@pytest.mark.parametrize(("flow", "expected"), [
    ({"start_node_id": "hello"}, "frontdesk.yaml: conversation_flow.start_node_id: no node has the id 'hello'"),
    ({"nodes": [{"id": "greet", "type": "conversation", "instruction": {"type": "prompt", "text": "Hi"},
                 "edges": [{"id": "e", "destination_node_id": "nowhere",
                            "transition_condition": {"type": "prompt", "prompt": "p"}}]}]},
     "frontdesk.yaml: conversation_flow.nodes.0 (greet).edges.0.destination_node_id: no node has the id 'nowhere'"),
    ({"nodes": [FUNCTION]},
     "frontdesk.yaml: conversation_flow.nodes.0 (book).tool_id: no tool in tools has the id 'book_visit' (tools: "
     "none)"),
    ({"nodes": [{"id": "ask", "type": "mcp", "mcp_id": "crm", "mcp_tool_name": "lookup"}]},
     "frontdesk.yaml: conversation_flow.nodes.0 (ask).mcp_id: no server in mcps is named 'crm' (mcps: none)"),
    ({"nodes": [{"id": "split", "type": "branch", "else_edge": {"id": "e", "transition_condition": {
        "type": "equation", "equations": [{"left": "{{age}}", "operator": ">"}]}}}]},
     "frontdesk.yaml: conversation_flow.nodes.0 (split).else_edge.transition_condition.equation.equations.0: Value "
     "error, operator '>' needs a right side (only exists and not_exist take none)"),
    ({"nodes": [{"id": "greet", "type": "teleport"}]},
     "frontdesk.yaml: conversation_flow.nodes.0 (greet): Input tag 'teleport' found using 'type' does not match"),
    ({"nodes": [FUNCTION], "tools": [{"type": "custom", "name": "book_visit", "url": "http://10.0.0.9/book"}]},
     "frontdesk.yaml: conversation_flow.tools.0.url (tool 'book_visit'): http://10.0.0.9 is not allowed: 10.0.0.9 "
     "is a private"),
    ({"components": [{"name": "Details", "nodes": [{"id": "ask", "type": "mcp", "mcp_id": "crm",
                                                   "mcp_tool_name": "lookup"}],
                      "mcps": [{"name": "crm", "url": "http://192.168.1.4/mcp"}]}]},
     "frontdesk.yaml: conversation_flow.components.0 (Details).mcps.0.url (server 'crm'): http://192.168.1.4 is not "
     "allowed"),
])
def test_a_flow_file_that_does_not_hold_together_names_node_and_field(
        tmp_path: Path, flow: dict[str, Any], expected: str) -> None:
    directory = write(tmp_path / "a", {"frontdesk.yaml": flow_agent(**flow), "phone-numbers.yaml": NUMBERS})
    with pytest.raises(ConfigError) as caught:
        agent_files.load(settings_for(directory))
    assert expected in str(caught.value)


def test_parley_check_validates_flows(tmp_path: Path) -> None:
    greet, bye = flow_agent()["conversation_flow"]["nodes"]
    good = run_check(write(tmp_path / "good", {"frontdesk.yaml": flow_agent(nodes=[greet, bye, CODE]),
                                               "phone-numbers.yaml": NUMBERS}))
    assert good.returncode == 0, good.stderr
    assert "conversation_flow.nodes: compute cannot be reached from the start node" in good.stdout
    assert "  conversation_flow.nodes.2 (compute): code nodes (JavaScript) do not run in Parley" in good.stdout
    assert "ok: 1 agent(s), 1 number(s)" in good.stdout
    strict = subprocess.run([sys.executable, "-m", "service", "check", "--strict"], capture_output=True, text=True,
                            env={"PARLEY_AGENTS_DIR": str(tmp_path / "good"), "PATH": "/usr/bin:/bin"}, cwd=REPO,
                            timeout=60, check=False)
    assert strict.returncode != 0 and "--strict: 1 agent(s) hold fields Parley does not act on" in strict.stderr
    broken = flow_agent(nodes=[{**greet, "edges": [{**greet["edges"][0], "destination_node_id": "gone"}]}, FUNCTION])
    bad = run_check(write(tmp_path / "bad", {"frontdesk.yaml": broken, "phone-numbers.yaml": NUMBERS}))
    assert bad.returncode != 0
    lines = bad.stderr.splitlines()
    assert lines[0] == "invalid agent files:"
    assert lines[1:3] == [   # then the number naming the agent that did not load
        f"  {tmp_path / 'bad' / 'frontdesk.yaml'}: conversation_flow.nodes.0 (greet).edges.0.destination_node_id: no "
        "node has the id 'gone'",
        f"  {tmp_path / 'bad' / 'frontdesk.yaml'}: conversation_flow.nodes.1 (book).tool_id: no tool in tools has the "
        "id 'book_visit' (tools: none)"]
