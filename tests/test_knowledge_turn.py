"""Knowledge bases in the turn, end to end through texts: a Retell LLM agent's ``knowledge_base_ids`` and
``kb_config`` put the chunks relevant to this turn's texts into its prompt (a labelled section with their source
titles), nothing when the question is off topic; the chat records what each turn retrieved, and none of it is
texted; the ``chat_inbound`` webhook's ``agent_override`` may replace the knowledge bases; the example agent in
``agents/`` answers from the example office's knowledge base."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import yaml

from service.agent.retrieval import HEADING

from .conftest import AGENT_NUMBER, MakeParley, Parley, Receiver, agent_file, answered, api_json
from .fakes.openai import HttpError
from .test_flows import edge, flow_agent, model, say
from .test_knowledge_api import until_done
from .test_knowledge_search import OFFICE

REPO_AGENTS = Path(__file__).parent.parent / "agents"


def system_prompt(body: dict[str, Any]) -> str:
    return str(body["messages"][0]["content"])


async def office_kb(parley: Parley, name: str = "Bright Smile", texts: list[dict[str, str]] = OFFICE) -> str:
    created = await api_json(parley, "POST", "/create-knowledge-base", 201, json={
        "knowledge_base_name": name, "knowledge_base_texts": texts})
    return str(created["knowledge_base_id"])


async def answering(make_parley: MakeParley, retell_llm: dict[str, Any], **kwargs: Any) -> tuple[Parley, str]:
    """A Parley whose agent's LLM has ``retell_llm`` (``KB`` in its knowledge_base_ids: the office's knowledge
    base, created first through the API of an instance that runs no turns), once the knowledge base is ingested."""
    kb_id = await office_kb(await make_parley(run_workers=False))
    ids = [kb_id if i == KB else i for i in retell_llm.get("knowledge_base_ids", [])]
    parley = await make_parley(agent=agent_file(retell_llm={**retell_llm, "knowledge_base_ids": ids}), **kwargs)
    assert (await until_done(parley, kb_id))["status"] == "complete"
    return parley, kb_id


KB = "<the office>"


async def test_the_relevant_chunks_go_into_the_prompt_and_the_chat_records_them(make_parley: MakeParley) -> None:
    parley, kb_id = await answering(make_parley, {"knowledge_base_ids": [KB]})

    reply = await answered(parley, "How much is a cleaning?")
    prompt = system_prompt(parley.llm.requests[-1])
    assert f"{HEADING}\n" in prompt and "### Prices\nA routine cleaning costs $120." in prompt
    assert prompt.index("You are the front desk.") < prompt.index(HEADING)   # after the agent's own prompt
    assert "Opening hours" not in prompt and "$120" not in reply   # the fake echoes the user; nothing else sent
    chat = await parley.chat_of()
    (turn,) = chat["knowledge_base_retrieved_contents"]
    assert turn["query"] == "How much is a cleaning?" and turn["knowledge_base_ids"] == [kb_id]
    assert [c["title"] for c in turn["chunks"]] == ["Prices"] and turn["chunks"][0]["score"] >= 0.6
    assert all(m["role"] in ("user", "agent") for m in chat["message_with_tool_calls"])   # not a message

    await answered(parley, "What is the capital of France?")
    assert HEADING not in system_prompt(parley.llm.requests[-1])   # off topic: nothing retrieved
    chat = await parley.chat_of()
    assert chat["knowledge_base_retrieved_contents"][-1]["chunks"] == []
    assert all(HEADING not in m.body and "Prices" not in m.body for m in parley.twilio.messages)
    scraped = await (await parley.client.get("/metrics")).text()
    assert 'parley_knowledge_searches_total{outcome="hits"} 1.0' in scraped
    assert 'parley_knowledge_searches_total{outcome="nothing"} 1.0' in scraped
    assert 'parley_knowledge_sources_total{outcome="complete"} 5.0' in scraped
    assert 'parley_embedding_calls_total{outcome="ok"}' in scraped


async def test_top_k_bounds_what_is_retrieved(make_parley: MakeParley) -> None:
    parley, _ = await answering(make_parley, {"knowledge_base_ids": [KB],
                                              "kb_config": {"top_k": 1, "filter_score": 0.0}})
    await answered(parley, "Tell me about prices, insurance and your opening hours")
    assert system_prompt(parley.llm.requests[-1]).count("\n### ") == 1


async def test_filter_score_bounds_what_is_retrieved(make_parley: MakeParley) -> None:
    parley, _ = await answering(make_parley, {"knowledge_base_ids": [KB], "kb_config": {"filter_score": 1.0}})
    await answered(parley, "How much is a cleaning?")
    assert HEADING not in system_prompt(parley.llm.requests[-1])


async def test_the_prompt_section_keeps_within_its_budget(make_parley: MakeParley) -> None:
    parley, _ = await answering(make_parley, {"knowledge_base_ids": [KB],
                                              "kb_config": {"top_k": 5, "filter_score": 0.0}},
                                knowledge_prompt_max_chars=600)
    await answered(parley, "Tell me about prices, insurance and your opening hours")
    prompt = system_prompt(parley.llm.requests[-1])
    section = prompt[prompt.index(HEADING) - 2:]
    assert len(section) <= 600 and 1 <= section.count("\n### ") < 5
    recorded = (await parley.chat_of())["knowledge_base_retrieved_contents"][-1]["chunks"]
    assert len(recorded) == section.count("\n### ")   # the record says what the model saw


async def test_the_question_carries_the_exchange_before_it(make_parley: MakeParley) -> None:
    parley, _ = await answering(make_parley, {"knowledge_base_ids": [KB]})
    await answered(parley, "Do you do teeth whitening?")
    await answered(parley, "ok and how much is it")
    turn = (await parley.chat_of())["knowledge_base_retrieved_contents"][-1]
    assert turn["query"] == "Do you do teeth whitening?\nYou said: Do you do teeth whitening?\nok and how much is it"
    assert [c["title"] for c in turn["chunks"]][:1] == ["Prices"]


async def test_the_inbound_webhook_may_replace_the_knowledge_bases(make_parley: MakeParley,
                                                                  receiver: Receiver) -> None:
    creator = await make_parley(run_workers=False)
    office = await office_kb(creator)
    other = await office_kb(creator, "Other office", [
        {"title": "Prices", "text": "At the other office a cleaning costs $999."}])
    receiver.answers = [(200, {"chat_inbound": {"agent_override": {"retell_llm": {"knowledge_base_ids": [other]}}}})]
    numbers = [{"phone_number": AGENT_NUMBER, "inbound_sms_webhook_url": receiver.url,
                "inbound_sms_agents": [{"agent_id": "frontdesk", "weight": 1}]}]
    parley = await make_parley(agent=agent_file(retell_llm={"knowledge_base_ids": [office]}), numbers=numbers)
    await until_done(parley, office)
    await until_done(parley, other)
    await answered(parley, "How much is a cleaning?")
    prompt = system_prompt(parley.llm.requests[-1])
    assert "$999" in prompt and "$120" not in prompt
    chat = await parley.chat_of()
    assert chat.get("inbound_webhook_error") is None
    assert chat["knowledge_base_retrieved_contents"][0]["knowledge_base_ids"] == [other]


async def test_the_example_agent_answers_from_the_example_office_knowledge_base(
        make_parley: MakeParley, tmp_path: Path) -> None:
    shutil.copytree(REPO_AGENTS, tmp_path / "agents")   # make_parley writes the agent files there again
    receptionist = yaml.safe_load((REPO_AGENTS / "receptionist.yaml").read_text())
    numbers = yaml.safe_load((REPO_AGENTS / "phone-numbers.yaml").read_text())
    parley = await make_parley(agents={"receptionist": receptionist}, numbers=numbers)
    assert (await until_done(parley, "sunny-dental"))["status"] == "complete"
    await answered(parley, "Do you take Delta Dental insurance?")
    prompt = system_prompt(parley.llm.requests[-1])
    assert "### insurance.md › Insurance" in prompt and "Delta Dental PPO" in prompt
    await answered(parley, "How much is whitening?")
    assert "$395" in system_prompt(parley.llm.requests[-1])


async def test_a_failing_or_slow_embeddings_endpoint_leaves_the_keyword_side(make_parley: MakeParley) -> None:
    parley, _ = await answering(make_parley, {"knowledge_base_ids": [KB]}, embedding_query_timeout_s=0.3)
    parley.llm.embed_error = HttpError(500, "down")
    await answered(parley, "How much is a cleaning?")
    assert "### Prices" in system_prompt(parley.llm.requests[-1])
    parley.llm.embed_error, parley.llm.embed_delay_s = None, 2.0
    started = asyncio.get_running_loop().time()
    await answered(parley, "Which insurance plans do you accept, Aetna?")
    assert asyncio.get_running_loop().time() - started < 1.8   # the question's embedding was not waited for
    assert "### Insurance" in system_prompt(parley.llm.requests[-1])


async def test_a_flow_searches_its_knowledge_bases_and_a_node_its_own(make_parley: MakeParley) -> None:
    creator = await make_parley(run_workers=False)
    office = await office_kb(creator)
    billing = await office_kb(creator, "Billing", [
        {"title": "Invoices", "text": "Invoices for a cleaning are $999 at the billing desk."}])
    flow = {"global_prompt": "You are Sunny Dental's assistant.", "start_node_id": "front",
            "knowledge_base_ids": [office], "kb_config": {"top_k": 2},
            "nodes": [say("front", "Answer questions.", edge("e_bill", "billing", "The user asks about a bill.")),
                      say("billing", "Help with the bill.", knowledge_base_ids=[billing],
                          kb_config={"filter_score": 0.3})]}
    parley = await make_parley(agent=flow_agent(flow))
    parley.llm.respond = model(invoice="transition_to_billing")
    await until_done(parley, office)
    await until_done(parley, billing)

    await answered(parley, "How much is a cleaning?")
    prompt = system_prompt(parley.llm.requests[-1])
    assert "### Prices\nA routine cleaning costs $120." in prompt and "$999" not in prompt
    await answered(parley, "About my invoice: how much is a cleaning?")
    at_billing = system_prompt(parley.llm.requests[-1])
    assert "[billing]" in at_billing and "$999" in at_billing and "$120" not in at_billing
    retrieved = (await parley.chat_of())["knowledge_base_retrieved_contents"]
    assert [entry["knowledge_base_ids"] for entry in retrieved] == [[office], [office], [billing]]
