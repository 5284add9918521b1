"""The campaign draft and check as pure functions: a flow agent's opening becomes a sample, and each rejection
reason is its own finding."""

from __future__ import annotations

from service.catalog.store import Agent
from service.channels.twilio.campaign import Campaign, Context, check, draft
from service.retell.flows import ConversationFlow
from service.retell.models import ChatAgent

FLOW = ConversationFlow.model_validate({
    "global_prompt": "You book haircuts and beard trims for Clip Salon customers.", "start_speaker": "agent",
    "nodes": [{"id": "start", "type": "conversation", "edges": [], "instruction": {
        "type": "static_text", "text": "Hi {{name}}, Clip Salon here: want to book a haircut?"}}]})
SALON = Agent(config=ChatAgent.model_validate({"agent_id": "salon", "agent_name": "Clip desk", "response_engine": {
    "type": "conversation-flow", "conversation_flow_id": "cf_salon"}}), flow=FLOW)
CONTEXT = Context(brand_name="Clip Salon", website="https://clip.example.com")


def test_a_flow_agent_drafts_from_its_start_node_and_passes() -> None:
    campaign = draft(CONTEXT, [SALON], [], use_case="CUSTOMER_CARE")
    assert campaign.message_samples == [
        "Clip Salon: Hi [name], Clip Salon here: want to book a haircut? Reply STOP to opt out.",
        "Clip Salon: for help, visit https://clip.example.com."]
    assert '"You book haircuts and beard trims for Clip Salon customers."' in campaign.description
    assert check(campaign, CONTEXT, [SALON]) == []


def test_each_problem_is_one_finding_naming_field_and_fix() -> None:
    good = draft(CONTEXT, [SALON], [], use_case="CUSTOMER_CARE")
    cases = {
        "message_samples.1": good.model_copy(update={"message_samples": [   # "book" alone is no match
            good.message_samples[0], "Clip Salon: cheap flights to Lisbon, book now at https://clip.example.com"]}),
        "has_embedded_links": good.model_copy(update={"has_embedded_links": False}),
        "opt_out_message": good.model_copy(update={"opt_out_message": "Clip Salon: ok, noted. Thanks for texting."}),
        "description": good.model_copy(update={"description": "Texts to people about stuff they asked about, ok."}),
    }
    for field, campaign in cases.items():
        findings = check(campaign, CONTEXT, [SALON])
        assert [f.field for f in findings] == [field] * len(findings) and findings, (field, findings)
        assert all(f.problem and f.fix for f in findings)


def test_an_outbound_opt_in_message_must_disclose_rates_frequency_and_stop() -> None:
    context = CONTEXT.model_copy(update={"outbound": True, "opt_in": "customers tick an unchecked SMS box when "
                                         "booking at https://clip.example.com/book"})
    campaign = draft(context, [SALON], [], use_case="CUSTOMER_CARE")
    assert "tick an unchecked SMS box" in campaign.message_flow and check(campaign, context, [SALON]) == []
    bare = campaign.model_copy(update={"opt_in_message": "Clip Salon: you are subscribed to booking texts."})
    assert [(f.field, f.problem) for f in check(bare, context, [SALON])] == [
        ("opt_in_message", "lacks 'Reply STOP to opt out'"), ("opt_in_message", "lacks 'Msg & data rates may apply'"),
        ("opt_in_message", "lacks how often you text ('Message frequency varies')")]
    assert Campaign().use_case == "CUSTOMER_CARE"
