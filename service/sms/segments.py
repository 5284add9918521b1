"""SMS length accounting: encoding, segment count, look-alike sanitising and splitting.

Rules (GSM 03.38 / 3GPP TS 23.038, as applied by Twilio):

* A message is sent as GSM-7 when every character is in the GSM 03.38 basic character set or its
  extension table; a single character outside both switches the *whole* message to UCS-2.
* GSM-7 is counted in septets. Extension characters (``^ { } \\ [ ~ ] | €`` and form feed) are sent as
  ESC + character, so they cost 2 septets. One segment holds 160 septets; a concatenated message holds
  153 per segment (the rest of each segment is the concatenation header).
* UCS-2 is counted in UTF-16 code units, so a character outside the Basic Multilingual Plane (most emoji)
  costs 2. One segment holds 70 units; a concatenated message holds 67 per segment.
* A two-unit character is never split across segments: if it does not fit in the room left in a
  segment it moves whole to the next one. This can cost one segment more than ``ceil(units / 153)``
  (or ``/ 67``); :func:`measure` counts that, so it never under-reports.
* Twilio rejects bodies longer than :data:`MAX_BODY_CHARS` characters. We count UTF-16 code units for
  that limit, which is never less than the number of code points, so it errs on the safe side.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

MAX_BODY_CHARS = 1600

_GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXTENSION = frozenset("\f^{}\\[~]|€")
_GSM = _GSM_BASIC | _GSM_EXTENSION

_GSM_SINGLE, _GSM_MULTI = 160, 153
GSM_SEGMENT_CHARS = _GSM_MULTI   # what one segment of a long GSM-7 text holds
_UCS2_SINGLE, _UCS2_MULTI = 70, 67


class Encoding(StrEnum):
    GSM7 = "GSM-7"
    UCS2 = "UCS-2"


@dataclass(frozen=True, slots=True)
class Measure:
    encoding: Encoding
    units: int  # septets for GSM-7 (extension chars count 2), UTF-16 code units for UCS-2
    segments: int  # 0 for empty text


def measure(text: str) -> Measure:
    """Return the encoding, length in units and number of SMS segments Twilio will bill for ``text``."""
    if _GSM.issuperset(text):
        encoding, single, multi = Encoding.GSM7, _GSM_SINGLE, _GSM_MULTI
        units = len(text) + sum(text.count(char) for char in _GSM_EXTENSION)
    else:
        encoding, single, multi = Encoding.UCS2, _UCS2_SINGLE, _UCS2_MULTI
        units = len(text.encode("utf-16-le", "surrogatepass")) // 2
    if units <= single:
        return Measure(encoding, units, 1 if units else 0)
    if units == len(text):   # no two-unit character: nothing moves to the next segment
        return Measure(encoding, units, -(-units // multi))
    if encoding is Encoding.GSM7:
        costs = [2 if char in _GSM_EXTENSION else 1 for char in text]
    else:
        costs = [2 if ord(char) > 0xFFFF else 1 for char in text]
    return Measure(encoding, units, _count_segments(costs, units, single, multi))


def not_gsm(text: str) -> list[str]:
    """The characters of ``text`` that GSM-7 cannot carry (any one makes the whole text UCS-2), each once."""
    return list(dict.fromkeys(char for char in text if char not in _GSM))


def _count_segments(costs: list[int], units: int, single: int, multi: int) -> int:
    if units <= single:
        return 1 if units else 0
    segments, used = 1, 0
    for cost in costs:  # a two-unit character that does not fit moves whole to the next segment
        if used + cost > multi:
            segments, used = segments + 1, 0
        used += cost
    return segments


_LOOKALIKES: dict[int, str] = {
    **dict.fromkeys(map(ord, "‘’‚‛′"), "'"),
    **dict.fromkeys(map(ord, "“”„‟″«»"), '"'),
    **dict.fromkeys(map(ord, "‐‑‒–—―−•"), "-"),
    ord("…"): "...",
    # Every Unicode space separator (category Zs) other than the ASCII space, plus tab (not in GSM-7).
    **dict.fromkeys(map(ord, "\t\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"), " "),
    **dict.fromkeys(map(ord, "\u2009\u200a\u202f\u205f\u3000"), " "),
    **dict.fromkeys(map(ord, "\u2028\u2029"), "\n"),  # line / paragraph separator
    # Invisible: zero-width space, word joiner, BOM / zero-width no-break space, soft hyphen.
    **dict.fromkeys(map(ord, "\u200b\u2060\ufeff\u00ad"), ""),
}
_KEEP_ELLIPSIS = {**_LOOKALIKES, ord("…"): "…"}
_JOINERS = re.compile("[\u200c\u200d]+")  # zero-width non-joiner / joiner
_CRLF = re.compile(r"\r+\n")  # "\r\r\n" too: one pass normalises every line ending


def sanitize(text: str) -> str:
    """Replace characters that have a GSM-7 look-alike, so one curly quote does not force UCS-2.

    Curly quotes, primes and guillemets become ``'`` or ``"``; dashes, minus, non-breaking hyphen and
    bullet become ``-``; ``…`` becomes ``...``; Unicode spaces and tab become a space; line/paragraph
    separators and ``\\r\\n`` become ``\\n``; zero-width spaces, soft hyphens and BOMs are removed.
    The text is NFC-normalised, so a decomposed ``e`` + combining accent becomes the GSM-7 ``é``.

    Zero-width (non-)joiners are removed unless they sit between two non-GSM characters (emoji sequences
    such as man-ZWJ-woman-ZWJ-girl, Persian text), where they carry meaning and the text is UCS-2 anyway.
    Characters with no look-alike (emoji, CJK, accented letters outside GSM-7) are left alone.

    Sanitising never costs segments and is idempotent. ``…`` is one UCS-2 unit but three GSM-7 characters,
    so if expanding it would add a segment (the text stays UCS-2 anyway, or holds many of them) it is kept.
    If even then the result costs more than ``text`` (NFC expands a few characters, such as Hebrew
    presentation forms and Devanagari QA), ``text`` is returned unchanged.
    """
    segments = measure(text).segments
    for table in (_LOOKALIKES, _KEEP_ELLIPSIS):
        clean = text
        # Repeat to a fixed point: removing an invisible character or a joiner can bring a combining accent
        # next to its base (so NFC composes them), or a joiner next to a newly composed GSM-7 character.
        while (again := _clean(clean, table)) != clean:
            clean = again
        if measure(clean).segments <= segments:
            return clean
    return text


def _clean(text: str, table: dict[int, str]) -> str:
    text = unicodedata.normalize("NFC", text).translate(table)

    def joiner(match: re.Match[str]) -> str:
        before, after = text[match.start() - 1 : match.start()], text[match.end() : match.end() + 1]
        joins_non_gsm = before and after and before not in _GSM and after not in _GSM
        return match.group() if joins_non_gsm else ""

    # Line endings last, since removing an invisible character can bring a \r and a \n together.
    return _CRLF.sub("\n", _JOINERS.sub(joiner, text))


_GAP = re.compile(r"\s+")
# Whitespace after a sentence end (optionally behind one closing quote/bracket), or containing a newline.
_SENTENCE_GAP = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][)\]\"'’”»]))\s+|\s*\n\s*")


def split(text: str, max_segments: int) -> list[str]:
    """Split ``text`` into parts that each measure at most ``max_segments`` segments and MAX_BODY_CHARS.

    Sentences (ending in ``.``, ``!`` or ``?``, optionally followed by a closing quote or bracket, then
    whitespace; or ending at a newline) are packed greedily in order. A sentence too long for one part is
    split at word boundaries, and a word too long for one part is split between code points (so never
    inside a surrogate pair or a GSM-7 escape). Each part is measured on its own, so one emoji only makes
    its own part UCS-2. Parts are stripped and never empty; joining them with whitespace loses no other
    character. Text that already fits is returned as ``[text.strip()]``; blank text gives ``[]``.
    Run :func:`sanitize` first if look-alikes should not force UCS-2.
    """
    if max_segments < 1:
        raise ValueError(f"max_segments must be >= 1, got {max_segments}")
    text = text.strip()
    if not text:
        return []
    if _fits(text, max_segments):
        return [text]
    sentence_ends = [m.start() for m in _SENTENCE_GAP.finditer(text)] + [len(text)]
    word_ends = [m.start() for m in _GAP.finditer(text)] + [len(text)]
    parts: list[str] = []
    start = 0
    while start < len(text):
        end = _farthest_fit(text, start, sentence_ends, max_segments)
        if end is None:  # the next sentence alone is too long: split it at words
            end = _farthest_fit(text, start, word_ends, max_segments)
        if end is None:  # the next word alone is too long: split it hard
            end = _hard_cut(text, start, max_segments)
        parts.append(text[start:end])
        gap = _GAP.match(text, end)
        start = gap.end() if gap else end
    return parts


def _hard_cut(text: str, start: int, max_segments: int) -> int:
    """The farthest cut of ``text[start:]`` between code points that fits: never None, as one code point always
    fits (at most 2 units, and ``max_segments >= 1``)."""
    # Equivalent mutants: _farthest_fit skips every cut <= start, and a cut past the end is the same slice as
    # len(text), which the word search already found too long.
    cuts = range(start + 1, len(text) + 1)  # pragma: no mutate (equivalent: see the line above)
    end = _farthest_fit(text, start, cuts, max_segments)
    assert end is not None   # one code point always fits
    return end


def _fits(part: str, max_segments: int) -> bool:
    # UTF-16 is always an even number of bytes, so / and // give the same count.
    chars = len(part.encode("utf-16-le", "surrogatepass")) // 2  # pragma: no mutate (equivalent: / and //)
    return chars <= MAX_BODY_CHARS and measure(part).segments <= max_segments


def _farthest_fit(text: str, start: int, ends: Sequence[int], max_segments: int) -> int | None:
    """Largest end in ``ends`` (sorted) with ``text[start:end]`` fitting, or None if even the first does not.

    Binary search is valid because fitting is monotone: appending a character never lowers the segment
    count (GSM-7 packs at least 76 characters per segment, UCS-2 at most 67, so switching encoding cannot
    help either).
    """
    lo = bisect.bisect_right(ends, start)
    hi = bisect.bisect_right(ends, start + MAX_BODY_CHARS)  # no part can be longer than this
    if lo == hi or not _fits(text[start : ends[lo]], max_segments):
        return None
    while hi - lo > 1:  # invariant: ends[lo] fits, ends[hi] (if any) does not
        mid = (lo + hi) // 2
        if _fits(text[start : ends[mid]], max_segments):
            lo = mid
        else:
            hi = mid
    return ends[lo]
