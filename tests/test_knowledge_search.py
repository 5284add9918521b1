"""Retrieval quality, with the fake embeddings server (hashed bags of concepts: deterministic but meaningful): the
right chunk wins for paraphrased questions, exact identifiers (SKUs, prices) are found by the keyword side,
questions about something the knowledge base does not hold retrieve nothing above ``filter_score``, and
``top_k`` bounds what comes back."""

from __future__ import annotations

from typing import Any

import pytest

from service.app_state import RUNTIME
from service.knowledge.search import Searcher

from .conftest import Parley, api_json
from .test_knowledge_api import until_done

OFFICE = [
    {"title": "Opening hours", "text": "Bright Smile Dental is open Monday to Friday from 8am to 6pm and on "
                                      "Saturday from 9am to 1pm. We are closed on Sunday and public holidays."},
    {"title": "Prices", "text": "A routine cleaning costs $120. Teeth whitening costs $350. A new-patient exam "
                               "with x-rays costs $95. Payment plans are available for larger treatments."},
    {"title": "Insurance", "text": "We accept Delta Dental, Aetna PPO and MetLife. Cigna HMO plans are not "
                                  "accepted. Bring your insurance card to your first appointment."},
    {"title": "Location", "text": "The office is at 42 Oak Street, second floor. Free parking behind the "
                                 "building; the 14 bus stops at the corner."},
    {"title": "Shop", "text": "Electric toothbrush SKU TB-4471 sells for $89. Replacement heads SKU RH-2210 "
                             "come in packs of four. Floss picks SKU FP-0932 are $6."},
]


@pytest.fixture
async def office(parley: Parley) -> tuple[Searcher, str]:
    created = await api_json(parley, "POST", "/create-knowledge-base", 201, json={
        "knowledge_base_name": "Bright Smile", "knowledge_base_texts": OFFICE})
    kb_id = created["knowledge_base_id"]
    assert (await until_done(parley, kb_id))["status"] == "complete"
    return parley.client.app[RUNTIME].searcher, kb_id


def titles(hits: list[Any]) -> list[str]:
    return [hit.title for hit in hits]


@pytest.mark.parametrize(("question", "expected"), [
    ("When are you open on the weekend?", "Opening hours"),
    ("What time do you close on Fridays?", "Opening hours"),
    ("How much is a cleaning?", "Prices"),
    ("Do you take my Aetna coverage?", "Insurance"),
    ("Is there parking near the office?", "Location"),
    ("What is your address?", "Location"),
])
async def test_the_right_chunk_wins_for_a_paraphrased_question(
        office: tuple[Searcher, str], question: str, expected: str) -> None:
    searcher, kb_id = office
    hits = await searcher.search([kb_id], question)
    assert hits, question
    assert hits[0].title == expected, [(h.title, h.score) for h in hits]
    assert hits[0].score >= 0.6


async def test_exact_identifiers_are_found_by_the_keyword_side(office: tuple[Searcher, str]) -> None:
    searcher, kb_id = office
    hits = await searcher.search([kb_id], "Is RH-2210 in stock?")
    assert titles(hits)[:1] == ["Shop"]
    assert hits[0].similarity < 0.6 <= hits[0].score   # the vectors alone would have left it out
    price = await searcher.search([kb_id], "what is the $350 for?")
    assert titles(price)[:1] == ["Prices"]


async def test_irrelevant_questions_retrieve_nothing(office: tuple[Searcher, str]) -> None:
    searcher, kb_id = office
    for question in ("What is the capital of France?", "Can you recommend a good pizza recipe?",
                     "Who won the football game last night?"):
        assert await searcher.search([kb_id], question) == [], question


async def test_top_k_and_filter_score_bound_the_answer(office: tuple[Searcher, str]) -> None:
    searcher, kb_id = office
    question = "prices, insurance and opening hours please"
    assert len(await searcher.search([kb_id], question, top_k=1, filter_score=0.0)) == 1
    assert len(await searcher.search([kb_id], question, top_k=5, filter_score=0.0)) == 5
    assert await searcher.search([kb_id], "How much is a cleaning?", filter_score=1.0) == []
    assert await searcher.search(["no_such_kb"], "How much is a cleaning?") == []


async def test_a_changed_knowledge_base_is_searched_as_it_is_now(parley: Parley,
                                                                 office: tuple[Searcher, str]) -> None:
    searcher, kb_id = office
    assert titles(await searcher.search([kb_id], "Do you do teeth whitening?"))[:1] == ["Prices"]
    await api_json(parley, "POST", f"/add-knowledge-base-sources/{kb_id}", json={"knowledge_base_texts": [
        {"title": "Whitening", "text": "Whitening takes one hour; results last about a year."}]})
    await until_done(parley, kb_id)
    assert "Whitening" in titles(await searcher.search([kb_id], "Do you do teeth whitening?"))
