"""STOP / START / HELP are handled before the LLM, and nothing is sent to an opted-out user."""

from __future__ import annotations

import itertools

import pytest

from service.sms import keywords
from service.sms.keywords import Keyword
from service.storage import keys

from .conftest import AGENT_NUMBER, USER, MakeParley

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response />'


@pytest.mark.parametrize(("body", "expected"), [
    ("STOP", Keyword.OPT_OUT), (" stop ", Keyword.OPT_OUT), ("Unsubscribe", Keyword.OPT_OUT),
    ("stopall", Keyword.OPT_OUT), ("REVOKE", Keyword.OPT_OUT), ("optout", Keyword.OPT_OUT),
    ("start", Keyword.OPT_IN), ("UNSTOP", Keyword.OPT_IN), ("yes", Keyword.OPT_IN),
    ("help", Keyword.HELP), ("INFO", Keyword.HELP),
    ("please stop texting me", None), ("stop it", None), ("", None), ("helpful", None),
])
def test_only_whole_message_keywords_count(body: str, expected: Keyword | None) -> None:
    assert keywords.classify(body) is expected


# Each family written out here, independently of the module (Twilio's defaults, docs/architecture.md step 4):
# dropping or adding a keyword in service/sms/keywords.py fails a test below.
OPT_OUT_FAMILY = ["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "REVOKE"]
OPT_IN_FAMILY = ["START", "YES", "UNSTOP"]
HELP_FAMILY = ["HELP", "INFO"]
FAMILIES = [(word, Keyword.OPT_OUT) for word in OPT_OUT_FAMILY] + [
    (word, Keyword.OPT_IN) for word in OPT_IN_FAMILY] + [(word, Keyword.HELP) for word in HELP_FAMILY]


def test_the_keyword_families_are_exactly_twilios() -> None:
    assert sorted(keywords.OPT_OUT_WORDS) == sorted(OPT_OUT_FAMILY)
    assert sorted(keywords.OPT_IN_WORDS) == sorted(OPT_IN_FAMILY)
    assert sorted(keywords.HELP_WORDS) == sorted(HELP_FAMILY)


def forms(word: str) -> list[str]:
    """The ways a user types a keyword that still count as the keyword."""
    return [word, word.lower(), word.title(), f"{word}.", f"{word.title()}!", f"  {word.lower()}!!\n",
            f"\t{word}...", f"!{word}.", f"{word.lower()}.!", f" {word.title()}. "]


@pytest.mark.parametrize(("word", "expected"), FAMILIES)
def test_every_keyword_counts_in_any_case_and_with_end_punctuation(word: str, expected: Keyword) -> None:
    for body in forms(word):
        assert keywords.classify(body) is expected, repr(body)
        assert keywords.classify(body, None) is expected, repr(body)
        assert keywords.classify(body, "") is expected, repr(body)


@pytest.mark.parametrize(("word", "expected"), FAMILIES)
def test_a_keyword_inside_a_longer_message_is_no_keyword(word: str, expected: Keyword) -> None:
    for body in (f"{word} now", f"please {word.lower()}", f"{word}{word}", f"{word}s", f"X{word}", f"{word}X",
                 f"{word}?", f"{word},", f"'{word}'", f"{word[:-1]}"):
        assert keywords.classify(body) is None, repr(body)


def test_advanced_opt_out_type_wins() -> None:
    assert keywords.classify("arrête", "STOP") is Keyword.OPT_OUT
    assert keywords.classify("stop", "HELP") is Keyword.HELP
    assert keywords.classify("hi", "START") is Keyword.OPT_IN
    assert keywords.classify("help", "START") is Keyword.OPT_IN
    assert keywords.classify("ayuda", "help") is Keyword.HELP   # case-insensitive
    assert keywords.classify("basta", "Stop") is Keyword.OPT_OUT
    assert keywords.classify("vuelvo", "start") is Keyword.OPT_IN


def test_an_unknown_or_empty_opt_out_type_falls_back_to_the_body() -> None:
    assert keywords.classify("hello", "UNKNOWN") is None
    assert keywords.classify("STOP", "UNKNOWN") is Keyword.OPT_OUT
    assert keywords.classify("info", "") is Keyword.HELP
    assert keywords.classify("hello", "") is None
    assert keywords.classify("start", None) is Keyword.OPT_IN


def test_default_help_names_the_number() -> None:
    tail = ": automated text assistant. Reply STOP to opt out. Msg & data rates may apply."
    assert keywords.default_help("Sunny Dental") == "Sunny Dental" + tail
    assert keywords.default_help(None) == "This number" + tail
    assert keywords.default_help("") == "This number" + tail


async def test_stop_ends_the_chat_and_silences_everything_until_start(make_parley: MakeParley) -> None:
    parley = await make_parley()
    await parley.text("hi")
    await parley.twilio.wait_for(1)
    await parley.idle()
    chat_id = (await parley.chat_of())["chat_id"]

    assert (await parley.text("STOP")).status == 200
    await parley.idle()
    ended = await (await parley.api("GET", f"/get-chat/{chat_id}")).json()
    assert ended["chat_status"] == "ended" and ended["disconnection_reason"] == "user_requested_dnc"
    assert ended["message_with_tool_calls"][-1]["content"] == "STOP"

    await parley.text("are you there?")
    await parley.idle()
    assert len(parley.llm.requests) == 1, "an opted-out user's text reached the LLM"
    assert len(parley.twilio.messages) == 1, "something was sent to an opted-out user"
    assert await parley.redis.exists(keys.optout(keys.Conversation(AGENT_NUMBER, USER)))

    help_reply = await parley.text("HELP")
    assert help_reply.status == 200
    assert await help_reply.text() == EMPTY_TWIML, "an opted-out user is sent nothing, not even HELP"

    await parley.text("START")
    await parley.idle()
    assert len(parley.llm.requests) == 1, "START itself went to the LLM"
    await parley.text("back again")
    await parley.twilio.wait_for(2)
    assert parley.twilio.messages[-1].body == "You said: back again"
    assert (await parley.chat_of())["chat_id"] != chat_id


async def test_yes_is_an_ordinary_answer_when_not_opted_out(make_parley: MakeParley) -> None:
    parley = await make_parley()
    await parley.text("YES")
    await parley.twilio.wait_for(1)
    assert parley.llm.user_texts() == ["YES"]


async def test_help_answers_with_the_numbers_help_text_without_the_llm(make_parley: MakeParley) -> None:
    numbers = [{"phone_number": AGENT_NUMBER, "help_message": "Sunny Dental: call 503-555-0100 & reply STOP.",
                "inbound_sms_agents": [{"agent_id": "frontdesk", "weight": 1}]}]
    parley = await make_parley(numbers=numbers)
    response = await parley.text("help")
    assert response.status == 200
    assert "<Message>Sunny Dental: call 503-555-0100 &amp; reply STOP.</Message>" in await response.text()
    await parley.idle()
    assert parley.llm.requests == []


async def test_an_empty_help_message_leaves_help_to_twilio(make_parley: MakeParley) -> None:
    numbers = [{"phone_number": AGENT_NUMBER, "help_message": "",
                "inbound_sms_agents": [{"agent_id": "frontdesk", "weight": 1}]}]
    parley = await make_parley(numbers=numbers)
    response = await parley.text("INFO")
    assert response.status == 200
    assert await response.text() == EMPTY_TWIML
    await parley.idle()
    assert parley.llm.requests == []


async def test_twilio_21610_on_send_records_the_opt_out(make_parley: MakeParley) -> None:
    parley = await make_parley()
    parley.twilio.errors[USER] = (400, 21610)
    await parley.text("hi")
    await parley.idle()
    assert await parley.redis.exists(keys.optout(keys.Conversation(AGENT_NUMBER, USER)))
    chat = await parley.chat_of()
    agent_message = chat["message_with_tool_calls"][-1]
    assert agent_message["status"] == "failed" and agent_message["error_code"] == 21610
    await parley.text("hello?")
    await parley.idle()
    assert len(parley.llm.requests) == 1


async def test_every_keyword_through_the_webhook(make_parley: MakeParley) -> None:
    parley = await make_parley()   # DEFAULT_NUMBERS: nickname "Front desk", no help_message
    users = [f"+1415555{i:04d}" for i in range(len(OPT_OUT_FAMILY))]
    for user, word in zip(users, OPT_OUT_FAMILY, strict=True):
        response = await parley.text(f"{word.title()}!", user=user)
        assert (response.status, await response.text()) == (200, EMPTY_TWIML), word
        assert await parley.redis.exists(keys.optout(keys.Conversation(AGENT_NUMBER, user))), word
    for user, word in zip(users, itertools.cycle(OPT_IN_FAMILY), strict=False):
        response = await parley.text(f" {word.lower()}. ", user=user)
        assert (response.status, await response.text()) == (200, EMPTY_TWIML), word
        assert not await parley.redis.exists(keys.optout(keys.Conversation(AGENT_NUMBER, user))), word
    default_help = ("<Message>Front desk: automated text assistant. Reply STOP to opt out. "
                    "Msg &amp; data rates may apply.</Message>")
    for word in HELP_FAMILY:
        response = await parley.text(f"{word.title()}.")
        assert response.status == 200
        assert await response.text() == f'<?xml version="1.0" encoding="UTF-8"?><Response>{default_help}</Response>'
    await parley.idle()
    assert parley.llm.requests == [], "a keyword reached the LLM"
    assert parley.twilio.messages == [], "a keyword was answered by a send"
