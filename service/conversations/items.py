"""What waits in a conversation's mailbox: a user's text, an opt-out, a silence deadline (``Item``).

Items are stored as JSON in the mailbox list, in arrival order. A turn takes the head of the mailbox
(``next_batch``): a run of texts, answered together, or one control item.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

MAX_TEXTS_PER_TURN = 20


class ItemKind(StrEnum):
    TEXT = "text"          # a user's SMS: goes to the LLM
    OPT_OUT = "opt_out"    # the user sent STOP: end the ongoing chat
    INACTIVITY = "inactivity"  # the chat's silence deadline passed: auto-close it


@dataclass(frozen=True, slots=True)
class Media:
    url: str
    content_type: str


@dataclass(frozen=True, slots=True)
class Item:
    """One thing for a conversation's worker to act on, in arrival order."""

    kind: ItemKind
    received_ms: int
    body: str = ""
    message_sid: str | None = None
    media: tuple[Media, ...] = ()
    chat_id: str | None = None       # INACTIVITY: the chat whose deadline passed
    timer_score: int | None = None   # INACTIVITY: the timer's score when it fired (leased)

    def to_json(self) -> str:
        data: dict[str, Any] = {"kind": self.kind, "received_ms": self.received_ms}
        if self.body:
            data["body"] = self.body
        if self.message_sid:
            data["message_sid"] = self.message_sid
        if self.media:
            data["media"] = [{"url": m.url, "content_type": m.content_type} for m in self.media]
        if self.chat_id:
            data["chat_id"] = self.chat_id
        if self.timer_score is not None:
            data["timer_score"] = self.timer_score
        return orjson.dumps(data).decode()

    @classmethod
    def from_json(cls, raw: str) -> Item:
        data = orjson.loads(raw)
        return cls(
            kind=ItemKind(data["kind"]),
            received_ms=int(data["received_ms"]),
            body=data.get("body", ""),
            message_sid=data.get("message_sid"),
            media=tuple(Media(m["url"], m["content_type"]) for m in data.get("media", ())),
            chat_id=data.get("chat_id"),
            timer_score=data.get("timer_score"),
        )


def next_batch(items: list[Item]) -> list[Item]:
    """The head of the mailbox that forms the next turn: a run of texts, or one control item."""
    if not items:
        return []
    if items[0].kind is not ItemKind.TEXT:
        return items[:1]
    batch = []
    for item in items[:MAX_TEXTS_PER_TURN]:
        if item.kind is not ItemKind.TEXT:
            break
        batch.append(item)
    return batch
