"""A2P 10DLC through the real twilio client against the fake Twilio: a campaign drafted from the agent and
checked, a registration walked pending -> approved and pending -> failed, with its events and limits."""

from __future__ import annotations

import asyncio
from typing import Any

from .conftest import AGENT_NUMBER, MakeParley, Parley, Receiver, agent_file, api_json

BRAND = "Sunny Dental"
AGENT = agent_file(agent_name="Visit desk", retell_llm={
    "general_prompt": "You confirm and reschedule dental cleaning appointments for Sunny Dental patients. "
                      "Offer the next free slot when a patient cannot come.",
    "begin_message": "Hi {{customer_name}}, this is Sunny Dental about your cleaning appointment tomorrow at 3pm."})
HELP = "Sunny Dental: for help call +15035550100 or visit https://sunny.example.com."
INBOUND = [{"phone_number": AGENT_NUMBER, "help_message": HELP,
            "inbound_sms_agents": [{"agent_id": "frontdesk", "weight": 1}]}]
OUTBOUND = [{**INBOUND[0], "outbound_sms_agents": [{"agent_id": "frontdesk", "weight": 1}]}]
BUSINESS = {"name": BRAND, "type": "Limited Liability Corporation", "registration_number": "12-3456789",
            "industry": "HEALTHCARE", "website": "https://sunny.example.com",
            "address": {"street": "1 Main St", "city": "Portland", "region": "OR", "postal_code": "97201"}}
CONTACT = {"first_name": "Ana", "last_name": "Lee", "email": "ana@sunny.example.com", "phone_number": "+15035550177",
           "title": "Owner", "job_position": "CEO"}


async def sunny(make_parley: MakeParley, numbers: list[dict[str, Any]] = INBOUND, **settings: Any) -> Parley:
    return await make_parley(agent=AGENT, numbers=numbers, a2p_poll_s=0.05, **settings)


async def registered(parley: Parley, brand_type: str = "standard") -> dict[str, Any]:
    registration: dict[str, Any] = await api_json(parley, "POST", "/create-a2p-registration", 201, json={
        "phone_numbers": [AGENT_NUMBER], "brand_type": brand_type, "business": BUSINESS, "contact": CONTACT})
    return registration


async def until(parley: Parley, registration_id: str, **wanted: Any) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            found: dict[str, Any] = await api_json(parley, "GET", f"/get-a2p-registration/{registration_id}")
            if all(found.get(k) == v for k, v in wanted.items()):
                return found
            await asyncio.sleep(0.02)


async def test_the_draft_comes_from_the_agent_and_passes_its_check(make_parley: MakeParley) -> None:
    parley = await sunny(make_parley)
    answer = await api_json(parley, "POST", "/draft-a2p-campaign", json={
        "phone_numbers": [AGENT_NUMBER], "brand_name": BRAND, "website": "https://sunny.example.com"})
    campaign = answer["campaign"]
    assert answer["findings"] == [] and answer["agents"] == ["frontdesk"]
    assert campaign["message_samples"][0] == ("Sunny Dental: Hi [customer_name], this is Sunny Dental about your "
                                              "cleaning appointment tomorrow at 3pm. Reply STOP to opt out.")
    assert campaign["message_samples"][1] == HELP and campaign["help_message"] == HELP
    assert "confirm and reschedule dental cleaning appointments" in campaign["description"]
    assert "texting Sunny Dental's number" in campaign["message_flow"]
    assert campaign["has_embedded_links"] and campaign["has_embedded_phone"]
    assert parley.twilio.numbers.brands == {} and parley.twilio.numbers.trust == {}


async def test_samples_that_mention_nothing_the_agent_does_are_flagged(make_parley: MakeParley) -> None:
    parley = await sunny(make_parley)
    drafted = (await api_json(parley, "POST", "/draft-a2p-campaign", json={
        "phone_numbers": [AGENT_NUMBER], "brand_name": BRAND}))["campaign"]
    drafted["message_samples"] = ["Sunny Dental: huge weekend sale on car insurance quotes! Reply STOP to opt out.",
                                  drafted["message_samples"][1]]
    answer = await api_json(parley, "POST", "/draft-a2p-campaign", json={
        "phone_numbers": [AGENT_NUMBER], "brand_name": BRAND, "campaign": drafted})
    assert [(f["field"], f["problem"]) for f in answer["findings"]] == [
        ("message_samples.0", "mentions nothing the agents on these numbers do (at most one word of their "
                              "prompts, begin messages or tools)")]


async def test_an_outbound_campaign_without_opt_in_brand_or_opt_out_is_flagged(make_parley: MakeParley) -> None:
    parley = await sunny(make_parley, OUTBOUND)
    answer = await api_json(parley, "POST", "/draft-a2p-campaign", json={
        "phone_numbers": [AGENT_NUMBER], "brand_name": BRAND, "campaign": {
            "description": "We send messages to people about things that matter to them.",
            "message_flow": "Numbers come from our database.",
            "message_samples": ["Your cleaning appointment is tomorrow.", "Reschedule your appointment today."],
            "opt_out_message": "Done.", "help_message": "Sunny Dental support."}})
    problems = {(f["field"], f["problem"]) for f in answer["findings"]}
    assert {("description", "does not name the brand"), ("message_flow", "does not describe how users opt in"),
            ("message_samples", "no sample names the brand"), ("message_samples", "no sample has opt-out language"),
            ("help_message", "gives no way to reach the business"),
            ("opt_out_message", "does not confirm the opt-out")} <= problems
    assert all(f["fix"] for f in answer["findings"])
    refused = await api_json(parley, "POST", "/create-a2p-registration", 422, json={
        "phone_numbers": [AGENT_NUMBER], "brand_type": "standard", "business": BUSINESS, "contact": CONTACT})
    assert "message_flow: still holds [say where and how customers agree to receive texts" in refused["message"]
    assert not any("CustomerProfiles" in path for _, path in parley.twilio.numbers.requests)


async def test_a_registration_walks_pending_to_approved(make_parley: MakeParley, receiver: Receiver) -> None:
    parley = await sunny(make_parley, webhook_url=receiver.url)
    fake = parley.twilio.numbers
    registration = await registered(parley)
    assert (registration["status"], registration["stage"], registration["brand_status"]) == ("pending", "brand",
                                                                                              "PENDING")
    assert registration["fees_usd"] == {"brand": 45, "campaign": 15}
    [profile] = [r for r in fake.trust.values() if r["kind"] == "CustomerProfiles"]
    assert profile["status"] == "pending-review" and len(profile["assigned"]) == 3
    [brand] = fake.brands.values()
    assert (brand["customer_profile_bundle_sid"], brand["skip_automatic_sec_vet"]) == (profile["sid"], False)

    fake.set_brand("APPROVED", brand_score=62)
    found = await until(parley, registration["registration_id"], stage="campaign")
    [campaign] = fake.campaigns.values()
    assert campaign["message_samples"] == registration["campaign"]["message_samples"]
    service = fake.services[found["messaging_service_sid"]]
    assert service["use_inbound_webhook_on_number"] is True
    assert service["numbers"] == [fake.owned["AC" + "a" * 32][AGENT_NUMBER]["sid"]]

    fake.set_campaign("VERIFIED")
    done = await until(parley, registration["registration_id"], status="approved")
    assert done["limits"] == {"daily_segments": 40_000, "t_mobile_daily_segments": 40_000, "per_number": 40_000}
    number = await api_json(parley, "GET", f"/get-phone-number/{AGENT_NUMBER}")
    assert number["daily_segment_limit"] == 40_000
    bodies = await receiver.wait_for(2)
    assert [(b["event"], b["registration"]["status"], b["registration"]["stage"]) for b in bodies] == [
        ("a2p_registration_updated", "pending", "campaign"), ("a2p_registration_updated", "approved", "done")]
    hosts = {path.split("/")[1] for _, path in fake.requests}
    assert hosts == {"2010-04-01", "v1"}   # api, trusthub and messaging paths, all through TWILIO_API_BASE_URL


async def test_a_low_volume_brand_skips_vetting_and_gets_its_caps(make_parley: MakeParley) -> None:
    parley = await sunny(make_parley)
    registration = await registered(parley, "low_volume_standard")
    [brand] = parley.twilio.numbers.brands.values()
    assert brand["skip_automatic_sec_vet"] is True and registration["fees_usd"]["brand"] == 4
    parley.twilio.numbers.set_brand("APPROVED")
    await until(parley, registration["registration_id"], stage="campaign")
    parley.twilio.numbers.set_campaign("VERIFIED")
    done = await until(parley, registration["registration_id"], status="approved")
    assert done["limits"] == {"daily_segments": 6_000, "t_mobile_daily_segments": 2_000, "per_number": 6_000}


async def test_a_failed_brand_shows_twilio_reason(make_parley: MakeParley, receiver: Receiver) -> None:
    parley = await sunny(make_parley, webhook_url=receiver.url)
    registration = await registered(parley)
    parley.twilio.numbers.set_brand("FAILED", failure_reason="Tax ID does not match the legal company name")
    failed = await until(parley, registration["registration_id"], status="failed")
    assert failed["failure_reasons"] == ["Tax ID does not match the legal company name"]
    assert parley.twilio.numbers.campaigns == {}
    [body] = await receiver.wait_for(1)
    assert body["registration"]["failure_reasons"] == failed["failure_reasons"]
    number = await api_json(parley, "GET", f"/get-phone-number/{AGENT_NUMBER}")
    assert "daily_segment_limit" not in number


async def test_a_failed_campaign_shows_twilio_errors(make_parley: MakeParley) -> None:
    parley = await sunny(make_parley)
    registration = await registered(parley)
    parley.twilio.numbers.set_brand("APPROVED", brand_score=90)
    await until(parley, registration["registration_id"], stage="campaign")
    parley.twilio.numbers.set_campaign("FAILED", errors=[{"code": 30896, "description": "Opt-in is unclear"}])
    failed = await until(parley, registration["registration_id"], status="failed")
    assert failed["failure_reasons"] == ["Opt-in is unclear"] and failed["campaign_status"] == "FAILED"
    listed = await api_json(parley, "GET", "/list-a2p-registrations")
    assert [r["registration_id"] for r in listed] == [registration["registration_id"]]


async def test_a_noncompliant_profile_is_refused_with_twilio_findings(make_parley: MakeParley) -> None:
    parley = await sunny(make_parley)
    parley.twilio.numbers.evaluation = [{"friendly_name": "Business Information", "passed": False,
                                         "failure_reason": "website_url is not reachable"}]
    refused = await api_json(parley, "POST", "/create-a2p-registration", 422, json={
        "phone_numbers": [AGENT_NUMBER], "brand_type": "standard", "business": BUSINESS, "contact": CONTACT})
    assert "customer profile incomplete: website_url is not reachable" in refused["message"]
    assert parley.twilio.numbers.brands == {}
    assert await api_json(parley, "GET", "/list-a2p-registrations") == []


async def test_numbers_without_agents_are_flagged_not_matched(make_parley: MakeParley) -> None:
    parley = await sunny(make_parley, [{"phone_number": AGENT_NUMBER, "help_message": HELP}])
    answer = await api_json(parley, "POST", "/draft-a2p-campaign", json={
        "phone_numbers": [AGENT_NUMBER], "brand_name": BRAND})
    problems = [(f["field"], f["problem"]) for f in answer["findings"]]
    assert ("description", "still holds [say what the conversations are about]") in problems
    assert problems[-1] == ("phone_numbers", "no agent answers or texts from these numbers")
    assert not any("mentions nothing" in problem for _, problem in problems)
    unknown = await api_json(parley, "POST", "/draft-a2p-campaign", 422, json={
        "phone_numbers": ["+15035550142"], "brand_name": BRAND})
    assert unknown["message"] == "phone_numbers: +15035550142 is not a Parley number (import it first)"
