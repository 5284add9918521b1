"""``parley numbers sync`` and ``parley a2p draft|register|status`` against the fake Twilio."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from service.app import create_app
from service.channels.twilio.campaign import Campaign
from service.channels.twilio.registration import REGISTRATIONS, DraftRequest, RegistrationRequest
from service.cli import commands, numbers
from service.cli.numbers import EXIT_FIX, EXIT_OK, within

from .conftest import ACCOUNT_SID, AGENT_NUMBER, PUBLIC_URL, build_settings, write_agents
from .fakes.openai import FakeOpenAI
from .fakes.twilio import FakeTwilio
from .test_a2p import AGENT, BUSINESS, CONTACT, HELP

FILES: list[dict[str, Any]] = [
    {"phone_number": AGENT_NUMBER, "help_message": HELP,
     "inbound_sms_agents": [{"agent_id": "frontdesk", "weight": 1}]},
    {"phone_number": "+15035550120", "twilio_webhooks": False},
    {"phone_number": "+15035559990"},   # not in the account
]


async def run(redis_url: str, tmp_path: Path, twilio: FakeTwilio, work: Any, **settings: Any) -> int:
    write_agents(tmp_path / "agents", {"frontdesk": AGENT}, FILES)
    llm = FakeOpenAI()
    app = create_app(build_settings(redis_url, tmp_path / "agents", twilio, llm, **settings), workers=False)
    return await within(app, work)


async def test_sync_sets_each_declared_number_and_says_which_failed(
    redis: Any, redis_url: str, tmp_path: Path, fake_twilio: FakeTwilio, capsys: pytest.CaptureFixture[str],
) -> None:
    assert await run(redis_url, tmp_path, fake_twilio, numbers.sync) == EXIT_FIX
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{AGENT_NUMBER}: texts go to {PUBLIC_URL}/twilio/sms",
                   "+15035550120: skipped (twilio_webhooks: false)",
                   f"+15035559990: failed: phone_number: Twilio account {ACCOUNT_SID} has no number +15035559990 "
                   "(its IncomingPhoneNumbers list none): buy it there, or name the account that owns it in "
                   "twilio_account_sid"]
    assert fake_twilio.numbers.owned[ACCOUNT_SID][AGENT_NUMBER]["sms_url"] == PUBLIC_URL + "/twilio/sms"
    assert fake_twilio.numbers.owned[ACCOUNT_SID]["+15035550120"]["sms_url"] == ""


async def test_sync_without_a_public_url_warns(
    redis: Any, redis_url: str, tmp_path: Path, fake_twilio: FakeTwilio, capsys: pytest.CaptureFixture[str],
) -> None:
    fake_twilio.numbers.own(ACCOUNT_SID, "+15035559990")
    assert await run(redis_url, tmp_path, fake_twilio, numbers.sync, public_url=None) == EXIT_FIX
    assert "warning: PARLEY_PUBLIC_URL is not set" in capsys.readouterr().out


async def test_draft_prints_the_campaign_and_what_to_fix(
    redis: Any, redis_url: str, tmp_path: Path, fake_twilio: FakeTwilio, capsys: pytest.CaptureFixture[str],
) -> None:
    wanted = DraftRequest(phone_numbers=[AGENT_NUMBER], brand_name="Sunny Dental", website="https://sunny.example.com")
    assert await run(redis_url, tmp_path, fake_twilio, numbers.draft(wanted)) == EXIT_OK
    captured = capsys.readouterr()
    assert '"use_case": "CUSTOMER_CARE"' in captured.out and "Reply STOP to opt out." in captured.out
    assert captured.err == "ok: nothing a reviewer is known to reject\n"
    campaign = Campaign.model_validate_json(captured.out)
    campaign.message_samples[0] = "Sunny Dental: our car insurance quotes beat everyone. Reply STOP to opt out."
    wanted = wanted.model_copy(update={"campaign": campaign})
    assert await run(redis_url, tmp_path, fake_twilio, numbers.draft(wanted)) == EXIT_FIX
    assert capsys.readouterr().err.startswith("fix: message_samples.0: mentions nothing the agents on these numbers")


async def test_register_then_status(
    redis: Any, redis_url: str, tmp_path: Path, fake_twilio: FakeTwilio, capsys: pytest.CaptureFixture[str],
) -> None:
    request = tmp_path / "registration.yaml"
    request.write_text(yaml.safe_dump({"phone_numbers": [AGENT_NUMBER], "brand_type": "low_volume_standard",
                                       "business": BUSINESS, "contact": CONTACT}))
    wanted = numbers.read_request(request, RegistrationRequest)
    assert await run(redis_url, tmp_path, fake_twilio, numbers.register(wanted)) == EXIT_OK
    assert '"status": "pending"' in capsys.readouterr().out
    assert await run(redis_url, tmp_path, fake_twilio, numbers.status(None)) == EXIT_OK
    assert capsys.readouterr().out.endswith(": pending (brand; brand PENDING, campaign -)\n")
    fake_twilio.numbers.set_brand("FAILED", failure_reason="Website not reachable")

    async def poll_then_status(app: web.Application) -> int:
        assert await app[REGISTRATIONS].tick() == 1
        return await numbers.status(None)(app)
    assert await run(redis_url, tmp_path, fake_twilio, poll_then_status) == EXIT_OK
    assert capsys.readouterr().out.endswith(": failed (done; brand FAILED, campaign -): Website not reachable\n")


def test_a_bad_request_file_names_the_field(tmp_path: Path) -> None:
    request = tmp_path / "registration.yaml"
    request.write_text(yaml.safe_dump({"phone_numbers": [], "brand_type": "huge"}))
    with pytest.raises(SystemExit) as exc:
        commands.main(["a2p", "register", str(request)])
    assert "phone_numbers" in str(exc.value) and "brand_type" in str(exc.value)

