"""Agent and number files: what loads, and the errors that name the file, the field and what was expected."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

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
    ({"frontdesk.yaml": {"agent_name": "no llm"}}, "frontdesk.yaml: retell_llm: required"),
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
    assert "ok: 1 agent(s), 1 number(s)" in good.stdout
    bad = run_check(write(tmp_path / "bad", {"frontdesk.yaml": agent_file(max_reply_segments=0),
                                            "phone-numbers.yaml": NUMBERS}))
    assert bad.returncode != 0
    assert "frontdesk.yaml: max_reply_segments: Input should be greater than or equal to 1" in bad.stderr
