"""A source's text cut into chunks of ``min_size`` to ``max_size`` characters, as Retell's ``min_chunk_size`` and
``max_chunk_size`` say: cut at headings first, then between paragraphs, then between sentences, and only a
sentence longer than ``max_size`` is cut between words. A chunk shorter than ``min_size`` is merged with the
next (or the previous) one when the two fit in ``max_size``: a short section joins its neighbour instead of
standing alone with too little to match on.

Each chunk keeps the source's title and the heading it sits under (``Piece.title``: "Dental office › Hours"),
which is embedded with it and shown to the model with it. Headings are Markdown's (``# ...``); the parsers
write the headings of HTML and Word that way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.MULTILINE)
_PARAGRAPHS = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+(?=\S)")


@dataclass(frozen=True, slots=True)
class Piece:
    title: str
    text: str


def _sections(text: str) -> list[tuple[list[str], str]]:
    """(heading path, body) in order; the text before the first heading has no heading."""
    found: list[tuple[list[str], str]] = []
    path: list[str] = []
    last = 0
    level_of: dict[int, str] = {}
    for match in _HEADING.finditer(text):
        found.append((list(path), text[last:match.start()]))
        level = len(match.group(1))
        level_of = {k: v for k, v in level_of.items() if k < level}
        level_of[level] = match.group(2).strip()
        path = [level_of[k] for k in sorted(level_of)]
        last = match.end()
    found.append((list(path), text[last:]))
    return [(p, body.strip()) for p, body in found if body.strip() or p]


def _units(body: str, max_size: int) -> list[tuple[str, bool]]:
    """Paragraphs, or the sentences of a paragraph longer than ``max_size`` (a sentence longer still: cut
    between words); each with whether it continues the paragraph before it (then it is joined with a space)."""
    units: list[tuple[str, bool]] = []
    for paragraph in _PARAGRAPHS.split(body):
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        if len(paragraph) <= max_size:
            units.append((paragraph, False))
            continue
        first = True
        for sentence in _SENTENCE_END.split(paragraph):
            while len(sentence) > max_size:
                cut = sentence.rfind(" ", 0, max_size)
                cut = cut if cut > max_size // 2 else max_size
                units.append((sentence[:cut].strip(), not first))
                sentence, first = sentence[cut:].strip(), False
            if sentence:
                units.append((sentence, not first))
                first = False
    return units


def _pack(units: list[tuple[str, bool]], max_size: int) -> list[str]:
    packed: list[str] = []
    for unit, continues in units:
        joiner = " " if continues else "\n\n"
        if packed and len(packed[-1]) + len(joiner) + len(unit) <= max_size:
            packed[-1] = f"{packed[-1]}{joiner}{unit}"
        else:
            packed.append(unit)
    return packed


def _merge_small(pieces: list[tuple[str, str]], min_size: int, max_size: int) -> list[tuple[str, str]]:
    """Merge each piece under ``min_size`` into the next one (else the previous one) when both fit."""
    out: list[tuple[str, str]] = []
    carry: tuple[str, str] | None = None
    for title, text in pieces:
        if carry is not None:
            joined = f"{carry[1]}\n\n{text}"
            if len(joined) <= max_size:
                title, text = carry[0], joined
            else:
                out.append(carry)
            carry = None
        if len(text) < min_size:
            carry = (title, text)
        else:
            out.append((title, text))
    if carry is not None:
        if out and len(out[-1][1]) + 2 + len(carry[1]) <= max_size:
            out[-1] = (out[-1][0], f"{out[-1][1]}\n\n{carry[1]}")
        else:
            out.append(carry)
    return out


def chunk(text: str, title: str, *, min_size: int, max_size: int) -> list[Piece]:
    """``text`` (of the source titled ``title``) as chunks; see the module's docstring."""
    pieces: list[tuple[str, str]] = []
    for path, body in _sections(text):
        heading = path[-1] if path else ""
        label = " › ".join([title, *path]) if path else title
        # The heading line stays in the text: once a short section is merged with the next, its heading still
        # says what it is about.
        units = _units(body, max_size - len(heading) - 4) if body else []
        for n, packed in enumerate(_pack(units, max_size - len(heading) - 4) or [""]):
            shown = f"{'#' * len(path)} {heading}\n\n{packed}" if heading and n == 0 else packed
            if shown.strip():
                pieces.append((label, shown.strip()))
    return [Piece(t, x) for t, x in _merge_small(pieces, min_size, max_size)]
