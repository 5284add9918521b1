"""Carrier keywords, handled before the LLM (docs/architecture.md, "The path of one text", step 4).

A keyword counts only when it is the whole message (case-insensitive, surrounding whitespace and
punctuation ignored), as Twilio matches them. Twilio's Advanced Opt-Out adds ``OptOutType`` for the
business's custom keywords; it is honoured too.
"""

from __future__ import annotations

from enum import StrEnum


class Keyword(StrEnum):
    OPT_OUT = "opt_out"
    OPT_IN = "opt_in"
    HELP = "help"


OPT_OUT_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "REVOKE"})
OPT_IN_WORDS = frozenset({"START", "YES", "UNSTOP"})
HELP_WORDS = frozenset({"HELP", "INFO"})

_OPT_OUT_TYPES = {"STOP": Keyword.OPT_OUT, "START": Keyword.OPT_IN, "HELP": Keyword.HELP}


def classify(body: str, opt_out_type: str | None = None) -> Keyword | None:
    """The keyword ``body`` is, or None for an ordinary message."""
    if opt_out_type and opt_out_type.upper() in _OPT_OUT_TYPES:
        return _OPT_OUT_TYPES[opt_out_type.upper()]
    word = body.strip().strip(".!").upper()
    if word in OPT_OUT_WORDS:
        return Keyword.OPT_OUT
    if word in OPT_IN_WORDS:
        return Keyword.OPT_IN
    if word in HELP_WORDS:
        return Keyword.HELP
    return None


def default_help(nickname: str | None) -> str:
    """The HELP answer for a number that has no ``help_message``."""
    sender = nickname or "This number"
    return f"{sender}: automated text assistant. Reply STOP to opt out. Msg & data rates may apply."
