"""The ids the API takes from outside (path segments, bodies, queries), checked against the form Parley gives
them before any of them becomes part of a Redis key.

A malformed id names nothing, so it is "not found" (``NotFound``: 404, or the 422 a body field naming a missing
object gets), with the form that was expected. It never reaches Redis: there ``chat_x:messages`` would address
another key of the schema (a WRONGTYPE error, or another object's fields), and ``a:b`` would read a key no
object has. The forms: chat ids as ``storage.keys.new_chat_id`` draws them, agent, LLM, flow and component ids as
``retell.models`` accepts them, phone numbers in E.164.
"""

from __future__ import annotations

import re

from service.errors import NotFound
from service.retell.models import E164_RE, OBJECT_ID_PATTERN
from service.storage.keys import is_chat_id

OBJECT_ID_RE = re.compile(OBJECT_ID_PATTERN)
CHAT_ID_FORM = "a chat id is chat_ and 32 lowercase hex digits"
OBJECT_ID_FORM = "1 to 128 letters, digits, '_', '.' or '-'"


def chat_id(value: str) -> str:
    """``value`` when it can be a chat's id; else ``NotFound``."""
    if not is_chat_id(value):
        raise NotFound(f"chat {value!r} not found: {CHAT_ID_FORM}")
    return value


def is_object_id(value: object) -> bool:
    """True when ``value`` can be an agent's, a Retell LLM's, a conversation flow's or a component's id."""
    return isinstance(value, str) and OBJECT_ID_RE.fullmatch(value) is not None


def agent_id(value: str) -> str:
    """``value`` when it can be an agent's id; else ``NotFound``."""
    if not is_object_id(value):
        raise NotFound(f"agent {value!r} not found: an agent id is {OBJECT_ID_FORM}")
    return value


def llm_id(value: str) -> str:
    """``value`` when it can be a Retell LLM's id; else ``NotFound``."""
    if not is_object_id(value):
        raise NotFound(f"retell llm {value!r} not found: an LLM id is {OBJECT_ID_FORM}")
    return value


def flow_id(value: str) -> str:
    """``value`` when it can be a conversation flow's id; else ``NotFound``."""
    if not is_object_id(value):
        raise NotFound(f"conversation flow {value!r} not found: a conversation flow id is {OBJECT_ID_FORM}")
    return value


def component_id(value: str) -> str:
    """``value`` when it can be a shared conversation flow component's id; else ``NotFound``."""
    if not is_object_id(value):
        raise NotFound(f"conversation flow component {value!r} not found: a component id is {OBJECT_ID_FORM}")
    return value


def phone_number(value: str) -> str:
    """``value`` when it is an E.164 number; else ``NotFound``."""
    if not E164_RE.fullmatch(value):
        raise NotFound(f"phone number {value!r} not found: a phone number is E.164, like +14155550123")
    return value
