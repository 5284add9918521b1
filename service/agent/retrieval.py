"""Knowledge-base retrieval in the turn: the question asked of the agent's knowledge bases, the section their
chunks make in the prompt, and what the chat records of it.

The question is this turn's texts (the user messages after the agent last wrote), at most ``QUESTION_CHARS``; a
follow-up without a topical word ("yes, how much is it?") is searched with the exchange before it (the user's
last text and the agent's answer), so "it" is found; a question on a new topic is searched alone, so the last
topic's chunks do not follow it. The chunks found go into the system prompt as Retell puts them,
a labelled section (``## Related knowledge base contexts``) with each chunk under its source's title, after the
agent's own prompt; the section is at most ``PARLEY_KNOWLEDGE_PROMPT_MAX_CHARS`` (its share of the prompt budget:
chunks that would pass it are left out, best kept), and the model is told to use them only when they answer.
The chat records each turn's retrieval (``Chat.knowledge_retrieved``, Parley's ``knowledge_base_retrieved_contents``
on the chat object: the question, and each chunk's knowledge base, id, title and score); the model does not see
that record and nothing of it is texted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.chats.model import Message, Role
from service.knowledge.index import terms
from service.knowledge.search import DEFAULT_FILTER_SCORE, DEFAULT_TOP_K, Hit, Searcher

QUESTION_CHARS = 1_000
EXCERPT_CHARS = 200
HEADING = "## Related knowledge base contexts"
GUIDANCE = ("Excerpts from the business's knowledge base that may help answer the user's latest message. Use them "
            "when they answer it; do not mention them, and do not make up what they do not say.")


@dataclass(frozen=True, slots=True)
class KnowledgeUse:
    """Which knowledge bases a turn searches, and how: Retell's ``knowledge_base_ids`` and ``kb_config``."""

    kb_ids: tuple[str, ...]
    top_k: int = DEFAULT_TOP_K
    filter_score: float = DEFAULT_FILTER_SCORE

    @classmethod
    def of(cls, kb_ids: list[str] | None, top_k: int | None, filter_score: float | None) -> KnowledgeUse | None:
        """None when there is nothing to search; Retell's defaults for what ``kb_config`` leaves out."""
        if not kb_ids:
            return None
        k = DEFAULT_TOP_K if top_k is None else min(max(top_k, 1), 10)
        score = DEFAULT_FILTER_SCORE if filter_score is None else min(max(filter_score, 0.0), 1.0)
        return cls(tuple(dict.fromkeys(kb_ids)), k, score)


def question(history: list[Message]) -> str:
    """What to search for: this turn's texts; a follow-up without a topical word ("ok, how much is it?") is
    searched with the exchange before it (the user's last text and the agent's answer)."""
    spoken = [m for m in history if m.role in (Role.USER, Role.AGENT) and m.content]
    turn: list[str] = []
    while spoken and spoken[-1].role is Role.USER:
        turn.insert(0, spoken.pop().content)
    before = [m.content for m in spoken[-2:]] if not terms(" ".join(turn)) else []
    text = "\n".join([*before, *turn]).strip()
    return text[-QUESTION_CHARS:]


def section(hits: list[Hit], max_chars: int) -> tuple[str, list[Hit]]:
    """The prompt's knowledge section (empty without hits) and the hits it holds, best first, within
    ``max_chars``."""
    text = f"\n\n{HEADING}\n{GUIDANCE}\n"
    used: list[Hit] = []
    for hit in hits:
        block = f"\n### {hit.title}\n{hit.text}\n"
        if len(text) + len(block) > max_chars:
            continue
        text += block
        used.append(hit)
    return (text if used else ""), used


def record(query: str, use: KnowledgeUse, hits: list[Hit], now_ms: int) -> dict[str, Any]:
    """What the chat keeps of one turn's retrieval."""
    return {"created_timestamp": now_ms, "query": query, "knowledge_base_ids": list(use.kb_ids),
            "chunks": [{"knowledge_base_id": h.kb_id, "chunk_id": h.chunk_id, "title": h.title,
                        "score": h.score, "excerpt": h.text[:EXCERPT_CHARS]} for h in hits]}


class Retriever:
    """The turn's side of knowledge-base search."""

    def __init__(self, searcher: Searcher, max_chars: int) -> None:
        self._searcher = searcher
        self._max_chars = max_chars

    async def context(self, use: KnowledgeUse | None, history: list[Message],
                      now_ms: int) -> tuple[str, dict[str, Any] | None]:
        """The prompt section for this turn and the chat's record of it (``("", None)`` when nothing is searched).
        A search that finds nothing is recorded too: it says the knowledge bases were asked."""
        if use is None:
            return "", None
        query = question(history)
        if not query:
            return "", None
        hits = await self._searcher.search(use.kb_ids, query, top_k=use.top_k, filter_score=use.filter_score)
        text, used = section(hits, self._max_chars)
        return text, record(query, use, used, now_ms)
