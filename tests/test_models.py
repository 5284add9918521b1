"""Which model answers: Retell's ``model_config`` (primary, backup, temperature), the deprecated ``model`` and
``model_temperature``, and the names Retell uses mapped to the ones the LLM server knows."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from service.catalog import agent_files
from service.retell.models import RetellLLM
from service.retell.unsupported import unsupported

from .conftest import (
    DEFAULT_NUMBERS,
    MakeParley,
    Parley,
    agent_file,
    answered,
    api_json,
    build_settings,
    write_agents,
)
from .fakes.openai import Completion, FakeOpenAI, HttpError, last_user_text
from .fakes.twilio import FakeTwilio

CASCADING = {"type": "cascading", "primary": {"model": "claude-4.5-sonnet"}, "backup": {"model": "gpt-4.1"},
             "temperature": 0.4}


def answering(failing: set[str]) -> Any:
    """The fake LLM's answers: a 500 from every model in ``failing``, else which model answered."""
    def respond(body: dict[str, Any]) -> Completion | HttpError:
        if body["model"] in failing:
            return HttpError(500, f"{body['model']} is down")
        return Completion(content=f"{body['model']} says: {last_user_text(body)}")
    return respond


def models_asked(parley: Parley) -> list[str]:
    return [request["model"] for request in parley.llm.requests]


async def test_model_config_names_the_model_and_its_temperature(make_parley: MakeParley) -> None:
    parley = await make_parley(agent=agent_file(retell_llm={
        "model": "gpt-4o", "model_temperature": 0.9, "model_config": {"primary": {"model": "gpt-5"},
                                                                      "temperature": 0.25}}))
    parley.llm.respond = answering(set())
    assert await answered(parley, "hi") == "gpt-5 says: hi"
    request = parley.llm.requests[-1]
    assert (request["model"], request["temperature"]) == ("gpt-5", 0.25)


async def test_model_config_without_a_temperature_means_zero_as_in_retell(make_parley: MakeParley) -> None:
    parley = await make_parley(agent=agent_file(retell_llm={
        "model_temperature": 0.9, "model_config": {"type": "cascading", "primary": {"model": "gpt-5"}}}))
    parley.llm.respond = answering(set())
    await answered(parley, "hi")
    assert parley.llm.requests[-1]["temperature"] == 0.0


async def test_the_deprecated_model_fields_still_work(make_parley: MakeParley) -> None:
    parley = await make_parley(agent=agent_file(retell_llm={"model": "gpt-4o-mini", "model_temperature": 0.7}))
    parley.llm.respond = answering(set())
    await answered(parley, "hi")
    request = parley.llm.requests[-1]
    assert (request["model"], request["temperature"]) == ("gpt-4o-mini", 0.7)


async def test_the_backup_answers_when_the_primary_fails(make_parley: MakeParley) -> None:
    parley = await make_parley(agent=agent_file(retell_llm={"model_config": CASCADING}))
    parley.llm.respond = answering({"claude-4.5-sonnet"})
    assert await answered(parley, "are you open?") == "gpt-4.1 says: are you open?"
    assert models_asked(parley) == ["claude-4.5-sonnet", "gpt-4.1"]
    assert parley.llm.requests[-1]["temperature"] == 0.4   # the backup runs with the same temperature


async def test_the_fallback_text_only_when_the_backup_fails_too(make_parley: MakeParley) -> None:
    parley = await make_parley(agent=agent_file(retell_llm={"model_config": CASCADING},
                                                fallback_message="We'll get back to you."))
    parley.llm.respond = answering({"claude-4.5-sonnet", "gpt-4.1"})
    assert await answered(parley, "hello?") == "We'll get back to you."
    assert models_asked(parley) == ["claude-4.5-sonnet", "gpt-4.1"]


async def test_without_a_backup_a_failure_is_the_fallback_text(make_parley: MakeParley) -> None:
    parley = await make_parley(agent=agent_file(retell_llm={"model_config": {"primary": {"model": "gpt-5"}}},
                                                fallback_message="Try again soon."))
    parley.llm.respond = answering({"gpt-5"})
    assert await answered(parley, "hello?") == "Try again soon."
    assert models_asked(parley) == ["gpt-5"]


async def test_an_open_breaker_sends_the_turn_straight_to_the_backup(make_parley: MakeParley) -> None:
    parley = await make_parley(agent=agent_file(retell_llm={"model_config": CASCADING}),
                               llm_breaker_failures=1, llm_breaker_cooldown_s=60)
    parley.llm.respond = answering({"claude-4.5-sonnet"})
    assert await answered(parley, "one") == "gpt-4.1 says: one"
    assert await answered(parley, "two") == "gpt-4.1 says: two"
    # The primary's breaker opened on its first failure: the second turn did not ask it again, and the backup's
    # own breaker (another model) stayed closed.
    assert models_asked(parley) == ["claude-4.5-sonnet", "gpt-4.1", "gpt-4.1"]


async def test_retell_names_are_mapped_to_the_servers(make_parley: MakeParley) -> None:
    parley = await make_parley(
        agent=agent_file(retell_llm={"model_config": CASCADING}),
        llm_models={"claude-4.5-sonnet": "anthropic/claude-sonnet-4.5", "*": "llama3.1"},
    )
    parley.llm.respond = answering({"anthropic/claude-sonnet-4.5"})
    # The primary by its own entry, the backup (gpt-4.1, not listed) by "*".
    assert await answered(parley, "hi") == "llama3.1 says: hi"
    assert models_asked(parley) == ["anthropic/claude-sonnet-4.5", "llama3.1"]


async def test_an_agents_own_names_come_before_the_settings(make_parley: MakeParley) -> None:
    parley = await make_parley(
        agent=agent_file(retell_llm={"model_config": {"primary": {"model": "gemini-3.0-flash"}}},
                         llm_models={"gemini-3.0-flash": "gemini-on-vertex"}),
        llm_models={"gemini-3.0-flash": "google/gemini-3-flash", "*": "llama3.1"},
    )
    parley.llm.respond = answering(set())
    assert await answered(parley, "hi") == "gemini-on-vertex says: hi"


async def test_the_analysis_model_is_mapped_too(make_parley: MakeParley) -> None:
    parley = await make_parley(agent=agent_file(post_chat_analysis_model="gpt-4.1-mini"),
                               llm_models={"gpt-4.1-mini": "small-model"})
    parley.llm.respond = answering(set())
    await answered(parley, "hi")
    chat = await parley.chat_of()
    await api_json(parley, "PATCH", f"/end-chat/{chat['chat_id']}", status=204)
    async with asyncio.timeout(10):
        await parley.llm.analysed.wait()
    assert parley.llm.analyses[0]["model"] == "small-model"


def test_a_speech_to_speech_model_cannot_run_a_chat(
    tmp_path: Path, fake_twilio: FakeTwilio, fake_llm: FakeOpenAI,
) -> None:
    agent = agent_file(retell_llm={"model_config": {"type": "s2s", "primary": {"model": "gpt-realtime"}}})
    write_agents(tmp_path / "agents", {"frontdesk": agent}, DEFAULT_NUMBERS)
    with pytest.raises(Exception, match=r"model_config\.type[\s\S]*'s2s' is a speech-to-speech model"):
        agent_files.load(build_settings(None, tmp_path / "agents", fake_twilio, fake_llm))


def test_what_parley_does_not_use_is_said() -> None:
    llm = RetellLLM.model_validate({"model_config": {
        "primary": {"model": "gpt-5", "tier": "fast"}, "backup": {"model": "gpt-4.1", "kick_in_timeout_ms": 800}}})
    assert unsupported(llm) == [
        "model_config.primary.tier: 'fast' is a Retell capacity tier; Parley calls the configured LLM server the "
        "same way whatever the tier",
        "model_config.backup.kick_in_timeout_ms: not used: the backup model answers when the primary fails, not "
        "after a delay",
    ]
    assert unsupported(RetellLLM.model_validate({"model_config": {"primary": {"model": "gpt-5"}}})) == []


def test_model_config_keeps_retells_name_both_ways() -> None:
    llm = RetellLLM.model_validate({"model_config": CASCADING})
    dumped = llm.model_dump(mode="json")
    assert dumped["model_config"]["primary"] == {"model": "claude-4.5-sonnet", "tier": None}
    assert "models" not in dumped
    assert RetellLLM.model_validate(dumped) == llm
    with pytest.raises(ValidationError, match=r"model_config\.temperature"):
        RetellLLM.model_validate({"model_config": {"primary": {"model": "gpt-5"}, "temperature": 3}})


async def test_the_api_updates_model_config_key_by_key(make_parley: MakeParley) -> None:
    parley = await make_parley()
    parley.llm.respond = answering(set())
    llm = await api_json(parley, "POST", "/create-retell-llm", status=201,
                         json={"general_prompt": "p", "model_config": CASCADING})
    assert llm["model_config"]["backup"]["model"] == "gpt-4.1"
    path = f"/update-retell-llm/{llm['llm_id']}"
    # A key given replaces that key; the others stay (Retell's rule).
    updated = await api_json(parley, "PATCH", path, json={"model_config": {"temperature": 0.9}})
    assert updated["model_config"]["primary"]["model"] == "claude-4.5-sonnet"
    assert (updated["model_config"]["temperature"], updated["model_config"]["backup"]["model"]) == (0.9, "gpt-4.1")
    # backup: null removes the backup.
    updated = await api_json(parley, "PATCH", path, json={"model_config": {"backup": None}})
    assert "backup" not in updated["model_config"] and updated["model_config"]["temperature"] == 0.9
    # model_config: null removes it, and model/model_temperature answer again.
    updated = await api_json(parley, "PATCH", path, json={"model_config": None})
    assert "model_config" not in updated
    refused = await parley.api("PATCH", path, json={"model_config": {"type": "s2s"}})
    assert refused.status == 422
    assert "speech-to-speech" in (await refused.json())["message"]


async def test_the_sdk_writes_and_reads_model_config(make_parley: MakeParley) -> None:
    from retell import AsyncRetell

    from .conftest import API_KEY

    parley = await make_parley()
    async with AsyncRetell(api_key=API_KEY, base_url=str(parley.client.make_url("")).rstrip("/"),
                           max_retries=0) as retell:
        llm = await retell.llm.create(general_prompt="p", model_config={
            "type": "cascading", "primary": {"model": "gpt-5"}, "temperature": 0.3})
        assert llm.api_model_config is not None and llm.api_model_config.temperature == 0.3
        llm = await retell.llm.update(llm.llm_id, model_config={
            "type": "cascading", "primary": {"model": "claude-4.6-sonnet"}})
        config = llm.api_model_config
        assert config is not None and config.primary is not None
        assert (config.primary.model, config.temperature) == ("claude-4.6-sonnet", 0.3)
