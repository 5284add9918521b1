import itertools
import math
import random
import re
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.sms.segments import MAX_BODY_CHARS, Encoding, Measure, measure, sanitize, split

# Written out independently of the module, from the GSM 03.38 table (ESC at 0x1B is not a character).
GSM_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM_EXTENSION = "\f^{}\\[~]|€"
CYRILLIC = "ж"  # a BMP character outside GSM-7
EMOJI = "😀"  # outside the BMP: two UTF-16 code units


def squeeze(text: str) -> str:
    return re.sub(r"\s+", "", text)


def fits(part: str, max_segments: int) -> bool:
    return measure(part).segments <= max_segments and utf16_units(part) <= MAX_BODY_CHARS


def utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


# --- Hypothesis strategies ---------------------------------------------------------------------------

# Deterministic (CI must not flake), no example database written to disk, and no per-example deadline:
# splitting a 5,000-character text takes a few milliseconds. Sized so the whole file runs in a few seconds.
PROPERTY = settings(max_examples=300, deadline=None, derandomize=True, database=None)

GSM_ALL = GSM_BASIC + GSM_EXTENSION
gsm_basic_chars = st.sampled_from(GSM_BASIC)
gsm_extension_chars = st.sampled_from(GSM_EXTENSION)
# Any BMP character outside GSM-7, plus near misses that look like GSM-7 characters (lowercase ç, backtick,
# tab, curly quote, ellipsis, NBSP, combining acute, OHM SIGN, INCREMENT, bare ESC) and common scripts.
bmp_non_gsm_chars = st.one_of(
    st.sampled_from("ç`\t’…\u00a0\u0301\u2126\u2206\x1bжд中"),
    st.characters(max_codepoint=0xFFFF, exclude_categories=["Cs"], exclude_characters=GSM_ALL),
)
astral_chars = st.one_of(st.sampled_from("😀👋😘🎉🤟🏽"), st.characters(min_codepoint=0x10000))
gsm_chars = st.one_of(gsm_basic_chars, gsm_extension_chars)
bmp_chars = st.one_of(gsm_chars, bmp_non_gsm_chars)
any_chars = st.one_of(gsm_chars, bmp_non_gsm_chars, astral_chars)


def runs(chars: st.SearchStrategy[str], max_runs: int = 12, max_run: int = 200) -> st.SearchStrategy[str]:
    """Text made of single characters and runs of one repeated character, so it reaches the 70/160 limits."""
    run = st.tuples(chars, st.integers(1, max_run)).map(lambda pair: pair[0] * pair[1])
    return st.lists(st.one_of(chars, run), max_size=max_runs).map("".join)


def of_length(length: st.SearchStrategy[int], pattern: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Exactly ``length`` characters: a drawn pattern repeated and cut (so its first character is always in)."""
    return st.tuples(length, pattern).map(lambda pair: (pair[1] * pair[0])[: pair[0]])


# Lengths around every boundary (single segment, then each multiple of the per-segment capacity).
GSM_LENGTHS = st.one_of(st.integers(0, 1700), st.sampled_from([n + d for n in (160, 306, 1530) for d in (-1, 0, 1)]))
UCS2_LENGTHS = st.one_of(st.integers(1, 800), st.sampled_from([n + d for n in (70, 134, 670) for d in (-1, 0, 1)]))


# --- measure -----------------------------------------------------------------------------------------


def test_gsm_table_is_exact() -> None:
    assert len(GSM_BASIC) == len(set(GSM_BASIC)) == 127
    assert unicodedata.name("Δ") == "GREEK CAPITAL LETTER DELTA"
    assert unicodedata.name("Ω") == "GREEK CAPITAL LETTER OMEGA"
    for code in range(0x10000):
        char = chr(code)
        expected = (Encoding.GSM7, 2) if char in GSM_EXTENSION else (Encoding.GSM7, 1)
        if char not in GSM_BASIC + GSM_EXTENSION:
            expected = (Encoding.UCS2, 1)
        got = measure(char)
        assert (got.encoding, got.units, got.segments) == (*expected, 1), repr(char)


@pytest.mark.parametrize("char", ["ç", "`", "\t", "ã", "’", "\x1b", "\u0301", "\u2126", "\u2206"])
def test_near_misses_switch_to_ucs2(char: str) -> None:
    assert measure("a" * 20 + char).encoding is Encoding.UCS2


def test_empty_text() -> None:
    assert measure("") == Measure(Encoding.GSM7, 0, 0)


@pytest.mark.parametrize(
    ("length", "segments"),
    [(1, 1), (160, 1), (161, 2), (306, 2), (307, 3), (459, 3), (460, 4), (1530, 10), (1531, 11)],
)
def test_gsm7_boundaries(length: int, segments: int) -> None:
    assert measure("a" * length) == Measure(Encoding.GSM7, length, segments)


@pytest.mark.parametrize(("length", "segments"), [(1, 1), (70, 1), (71, 2), (134, 2), (135, 3), (201, 3)])
def test_ucs2_boundaries(length: int, segments: int) -> None:
    assert measure(CYRILLIC * length) == Measure(Encoding.UCS2, length, segments)


@pytest.mark.parametrize("char", list(GSM_EXTENSION))
def test_extension_chars_count_two_septets(char: str) -> None:
    assert measure(char * 80) == Measure(Encoding.GSM7, 160, 1)
    assert measure(char * 81) == Measure(Encoding.GSM7, 162, 2)
    assert measure("a" * 158 + char) == Measure(Encoding.GSM7, 160, 1)
    assert measure("a" * 159 + char) == Measure(Encoding.GSM7, 161, 2)


def test_one_non_gsm_char_switches_whole_message() -> None:
    assert measure("a" * 160) == Measure(Encoding.GSM7, 160, 1)
    assert measure("a" * 159 + "ç") == Measure(Encoding.UCS2, 160, 3)
    assert measure("€" * 10 + "ç") == Measure(Encoding.UCS2, 11, 1)  # € is one unit in UCS-2


def test_emoji_counts_two_units() -> None:
    assert measure(EMOJI) == Measure(Encoding.UCS2, 2, 1)
    assert measure(EMOJI * 35) == Measure(Encoding.UCS2, 70, 1)
    assert measure(EMOJI * 36) == Measure(Encoding.UCS2, 72, 2)
    assert measure("a" * 69 + EMOJI) == Measure(Encoding.UCS2, 71, 2)


def test_two_unit_char_is_not_split_across_segments() -> None:
    # 306 septets would be 2 segments, but the € cannot straddle the first boundary at 153.
    assert measure("a" * 152 + "€" + "a" * 152) == Measure(Encoding.GSM7, 306, 3)
    assert measure("a" * 151 + "€" + "a" * 153) == Measure(Encoding.GSM7, 306, 2)
    assert measure(CYRILLIC * 66 + EMOJI + CYRILLIC * 66) == Measure(Encoding.UCS2, 134, 3)
    assert measure(CYRILLIC * 65 + EMOJI + CYRILLIC * 67) == Measure(Encoding.UCS2, 134, 2)


# --- measure: properties -----------------------------------------------------------------------------


@PROPERTY
@given(of_length(GSM_LENGTHS, st.text(gsm_basic_chars, min_size=1, max_size=20)))
def test_basic_gsm_text_counts_160_then_153(text: str) -> None:
    # Only 1-septet characters, so nothing can straddle a boundary and the closed form is exact.
    n = len(text)
    expected = 0 if n == 0 else 1 if n <= 160 else math.ceil(n / 153)
    assert measure(text) == Measure(Encoding.GSM7, n, expected)


@PROPERTY
@given(runs(any_chars), st.one_of(bmp_non_gsm_chars, astral_chars), runs(any_chars))
def test_one_non_gsm_character_makes_it_ucs2_counted_in_utf16_units(before: str, char: str, after: str) -> None:
    text = before + char + after
    got = measure(text)
    assert got.encoding is Encoding.UCS2
    assert got.units == utf16_units(text)


@PROPERTY
@given(of_length(UCS2_LENGTHS, st.tuples(bmp_non_gsm_chars, st.text(bmp_chars, max_size=20)).map("".join)))
def test_ucs2_text_without_surrogate_pairs_counts_70_then_67(text: str) -> None:
    # Every character is one UTF-16 unit, so nothing can straddle a boundary and the closed form is exact.
    units = len(text)
    expected = 1 if units <= 70 else math.ceil(units / 67)
    assert measure(text) == Measure(Encoding.UCS2, units, expected)


def segments_by_bits(text: str) -> int:
    """Model of a segment as Twilio describes it, in bits, with no 160/153/70/67 constants.

    A segment is 140 octets (1,120 bits). A concatenated message spends 6 octets (48 bits) of every
    segment on the User Data Header. GSM-7 characters take 7 bits, extension characters 14 (ESC + char);
    UCS-2 characters 16 bits per UTF-16 code unit (32 for a surrogate pair). A character never straddles
    two segments (the TwilioDevEd message-segment-calculator moves it whole to the next segment).
    """
    if all(char in GSM_ALL for char in text):
        sizes = [14 if char in GSM_EXTENSION else 7 for char in text]
    else:
        sizes = [16 * utf16_units(char) for char in text]
    if sum(sizes) <= 1120:
        return 1 if sizes else 0
    segments, free = 1, 1120 - 48
    for size in sizes:
        if size > free:
            segments, free = segments + 1, 1120 - 48
        free -= size
    return segments


@PROPERTY
@given(st.one_of(runs(gsm_chars), runs(any_chars), runs(st.one_of(bmp_non_gsm_chars, astral_chars))))
def test_segments_match_a_bit_level_model(text: str) -> None:
    assert measure(text).segments == segments_by_bits(text)


@PROPERTY
@given(runs(any_chars), any_chars)
def test_appending_a_character_never_lowers_the_segment_count(text: str, char: str) -> None:
    # Also across the GSM-7 -> UCS-2 switch: GSM-7 fits at least 76 characters in a segment, UCS-2 at most 70.
    assert measure(text + char).segments >= measure(text).segments


# --- measure: worked examples ------------------------------------------------------------------------
#
# Every count below follows from these published rules; [live] marks texts whose count Twilio itself billed.
#  [R1] A segment is 140 octets and GSM-7 takes 7 bits a character: 140 * 8 / 7 = 160 characters. ("Messages
#       are still sent in 140 byte chunks known as message segments ... 140 bytes x 8 bits in a byte divided
#       7 bits leaves us with the 160 character message segment", twilio.com/blog/what-the-heck-is-a-segment)
#  [R2] A longer message is concatenated and every segment carries a 6-octet User Data Header, leaving
#       134 octets = 1,072 bits: 153 GSM-7 characters, or 67 UCS-2 ones. "Messages containing one or more
#       UCS-2 characters can contain up to 70 characters in a single, non-segmented message. UCS-2 messages
#       of more than 70 characters will be split into 67-character segments."
#       (twilio.com/docs/glossary/what-sms-character-limit)
#  [R3] GSM 03.38: one character outside the basic table and its extension makes the whole message UCS-2.
#       Extension characters ^ { } \ [ ~ ] | € and form feed are sent as ESC + code: 2 septets. Basic 0x09
#       is the capital Ç; lowercase ç, á, í, û are not GSM-7 (é è ù ì ò à are).
#  [R4] UCS-2 is counted in UTF-16 code units: a character outside the BMP (most emoji) is a surrogate pair.
#  [R5] A two-unit character (escape sequence, surrogate pair) is not split between segments; it moves whole
#       to the next one. Twilio's calculator (TwilioDevEd/message-segment-calculator) fills 1,120-bit segments
#       and starts a new one when a character's bits do not fit, and a user reports Twilio billed 153 "]" as
#       3 segments, not ceil(306 / 153) = 2 (message-segment-calculator issue #39).
#  [R6] "The Body parameter for an outgoing message can be up to 1,600 characters" (Twilio error 21617).
# [live] num_segments Twilio billed for the same text: message-segment-calculator issue #66 (a maintainer's
#       16 sends from a live account; its case ids are quoted) and issue #18 (a user's send).
EMOJI_WAVE = "\U0001f44b"  # 👋
EMOJI_KISS = "\U0001f618"  # 😘

WORKED_EXAMPLES = [
    # Nothing to bill (Twilio would reject an empty Body anyway).
    pytest.param("", Encoding.GSM7, 0, 0, id="empty"),
    # [R1] One full segment. [live #66 5a: 1]
    pytest.param("a" * 160, Encoding.GSM7, 160, 1, id="gsm-160"),
    # [R2] One more: concatenated, 153 + 8. [live #66 5b: 2]
    pytest.param("a" * 161, Encoding.GSM7, 161, 2, id="gsm-161"),
    # [R2] 2 x 153 fills two segments exactly; one more character needs a third.
    pytest.param("a" * 306, Encoding.GSM7, 306, 2, id="gsm-306"),
    pytest.param("a" * 307, Encoding.GSM7, 307, 3, id="gsm-307"),
    # [R2] 10 x 153. The 1,600-character maximum [R6] is 10 x 153 + 70: 11 segments.
    pytest.param("a" * 1530, Encoding.GSM7, 1530, 10, id="gsm-1530"),
    pytest.param("a" * 1600, Encoding.GSM7, 1600, 11, id="gsm-1600-max"),
    # [R1, R2] CR and LF are each a GSM-7 character: 80 + CRLF + 79 = 161 -> 2, 80 + LF + 79 = 160 -> 1,
    # 200 + CRLF + 105 = 307 -> 3. [live #66 1a: 2, 1b: 1, 1c: 3]
    pytest.param("a" * 80 + "\r\n" + "a" * 79, Encoding.GSM7, 161, 2, id="gsm-crlf-161"),
    pytest.param("a" * 80 + "\n" + "a" * 79, Encoding.GSM7, 160, 1, id="gsm-lf-160"),
    pytest.param("a" * 200 + "\r\n" + "a" * 105, Encoding.GSM7, 307, 3, id="gsm-crlf-307"),
    # [R3] é is GSM-7 0x05, one septet. [live #66 2a: 1] 160 of them are still one segment [R1].
    pytest.param("é" * 70, Encoding.GSM7, 70, 1, id="gsm-70-e-acute"),
    pytest.param("é" * 160, Encoding.GSM7, 160, 1, id="gsm-160-e-acute"),
    # [R3] û is not GSM-7, so the whole text is UCS-2 and its € costs 1 unit, not 2: 11 units.
    pytest.param("Ça coûte 5€", Encoding.UCS2, 11, 1, id="ucs2-euro-is-one-unit"),
    # [R3] A pipe is ESC + 0x40 = 2 septets [live #66 5e: 1]; "{}" is 4 septets.
    pytest.param("|", Encoding.GSM7, 2, 1, id="gsm-pipe"),
    pytest.param("{}", Encoding.GSM7, 4, 1, id="gsm-braces"),
    # [R1, R3] 80 € = 160 septets, one segment. 81 € = 162 septets: concatenated, and a segment holds 76 €
    # (152 septets; the 77th would need septets 153-154) [R5]: 76 + 5 -> 2.
    pytest.param("€" * 80, Encoding.GSM7, 160, 1, id="gsm-80-euro"),
    pytest.param("€" * 81, Encoding.GSM7, 162, 2, id="gsm-81-euro"),
    # [R1, R3] 152 a + € = 154 septets fit one 160-septet segment: no header, so no boundary at 153.
    pytest.param("a" * 152 + "€", Encoding.GSM7, 154, 1, id="gsm-euro-at-153-single"),
    # [R5] Concatenated, the € at septets 153-154 does not fit the one septet left and moves whole:
    # 152 | 2 + 151 | 1 -> 3, where ceil(306 / 153) would say 2. One septet earlier it fits: 151 + 2 | 153 -> 2.
    pytest.param("a" * 152 + "€" + "a" * 152, Encoding.GSM7, 306, 3, id="gsm-euro-straddles-153"),
    pytest.param("a" * 151 + "€" + "a" * 153, Encoding.GSM7, 306, 2, id="gsm-euro-ends-at-153"),
    # [R3, R5] 153 "]" = 306 septets, 76 per segment -> 3. [live #39: 3]
    pytest.param("]" * 153, Encoding.GSM7, 306, 3, id="gsm-153-brackets"),
    # [R2, R3] Lowercase ç is not GSM-7: 70 UCS-2 units fit one segment, 71 need 67 + 4, and 160 characters
    # that would be one GSM-7 segment are 67 + 67 + 26 = 3.
    pytest.param("ç" + "a" * 69, Encoding.UCS2, 70, 1, id="ucs2-70-c-cedilla"),
    pytest.param("ç" + "a" * 70, Encoding.UCS2, 71, 2, id="ucs2-71-c-cedilla"),
    pytest.param("a" * 159 + "ç", Encoding.UCS2, 160, 3, id="ucs2-160-c-cedilla"),
    # [R2, R3] U+0301 COMBINING ACUTE ACCENT is not GSM-7: 70 decomposed é are 140 units = 67 + 67 + 6.
    # [live #66 2b: 3, 2c: 1]
    pytest.param("e\u0301" * 70, Encoding.UCS2, 140, 3, id="ucs2-decomposed-accents"),
    pytest.param("e\u0301", Encoding.UCS2, 2, 1, id="ucs2-one-decomposed-accent"),
    # [R3] Curly quotes are not GSM-7. [live #66 3a: 1]
    pytest.param("“Hi”", Encoding.UCS2, 4, 1, id="ucs2-curly-quotes"),
    # [R2] 70 CJK characters fit one segment, 71 need two. [live #66 5c: 1, 5d: 2]
    pytest.param("中" * 70, Encoding.UCS2, 70, 1, id="ucs2-70-cjk"),
    pytest.param("中" * 71, Encoding.UCS2, 71, 2, id="ucs2-71-cjk"),
    # [R4] "Hello " is 6 units and U+1F44B a surrogate pair: 8 units.
    pytest.param("Hello " + EMOJI_WAVE, Encoding.UCS2, 8, 1, id="ucs2-hello-wave"),
    # [R3, R4] Once UCS-2, a pipe is 1 unit. [live #66 4: 1]
    pytest.param(EMOJI + "|", Encoding.UCS2, 3, 1, id="ucs2-emoji-pipe"),
    # [R2, R4] 35 emoji = 70 units, one segment. 36 = 72 units: concatenated, and as 67 is odd a segment holds
    # 33 emoji [R5]: 33 + 3 -> 2.
    pytest.param(EMOJI * 35, Encoding.UCS2, 70, 1, id="ucs2-35-emoji"),
    pytest.param(EMOJI * 36, Encoding.UCS2, 72, 2, id="ucs2-36-emoji"),
    # [R3, R4] Once UCS-2, "]" is 1 unit: 10 + 74 + 2 = 86 units = 67 + 19. [live #18: 2]
    pytest.param("this is a " + "]" * 74 + EMOJI_KISS, Encoding.UCS2, 86, 2, id="ucs2-brackets-and-emoji"),
    # [R4, R5, R6] 800 emoji are the 1,600-unit maximum: 33 per segment, so 25 segments, not ceil(1600/67) = 24.
    pytest.param(EMOJI * 800, Encoding.UCS2, 1600, 25, id="ucs2-800-emoji-max"),
    # [R4, R5] An emoji at units 67-68 moves whole: 66 | 2 + 65 | 1 -> 3. At units 66-67 it fits: 67 | 67 -> 2.
    pytest.param(CYRILLIC * 66 + EMOJI + CYRILLIC * 66, Encoding.UCS2, 134, 3, id="ucs2-emoji-straddles-67"),
    pytest.param(CYRILLIC * 65 + EMOJI + CYRILLIC * 67, Encoding.UCS2, 134, 2, id="ucs2-emoji-ends-at-67"),
]


@pytest.mark.parametrize(("text", "encoding", "units", "segments"), WORKED_EXAMPLES)
def test_worked_examples(text: str, encoding: Encoding, units: int, segments: int) -> None:
    assert measure(text) == Measure(encoding, units, segments)
    assert segments_by_bits(text) == segments  # the independent model agrees on every worked example


def test_measure_counts_past_the_1600_character_maximum() -> None:
    # measure reports what the text would cost; refusing over-long bodies is split's job (and Twilio's [R6]).
    assert measure("a" * 1601) == Measure(Encoding.GSM7, 1601, 11)
    assert measure(EMOJI * 801) == Measure(Encoding.UCS2, 1602, 25)


# --- sanitize ----------------------------------------------------------------------------------------


def test_curly_apostrophe_no_longer_forces_ucs2() -> None:
    reply = "Thanks for reaching out, we’re open from nine to five on weekdays. " + "Happy to help! " * 6
    reply = reply[:150]
    assert len(reply) == 150 and reply.count("’") == 1
    assert measure(reply) == Measure(Encoding.UCS2, 150, 3)
    clean = sanitize(reply)
    assert clean == reply.replace("’", "'")
    assert measure(clean) == Measure(Encoding.GSM7, 150, 1)


@pytest.mark.parametrize(
    ("chars", "replacement"),
    [
        ("‘’‚‛′", "'"),
        ("“”„‟″«»", '"'),
        ("–—‒―−‐‑", "-"),
        ("•", "-"),
        ("…", "..."),
        ("\u00a0\u2002\u2003\u2007\u2009\u200a\u202f\u205f\u3000\t", " "),
        ("\u200b\u00ad\ufeff\u2060", ""),
        ("\u200d\u200c", ""),  # between GSM characters
        ("\u2028\u2029", "\n"),
    ],
)
def test_lookalike_families(chars: str, replacement: str) -> None:
    for char in chars:
        text = f"x{char}y"
        assert sanitize(text) == f"x{replacement}y", f"U+{ord(char):04X}"
        assert measure(sanitize(text)).encoding is Encoding.GSM7


def test_every_unicode_space_separator_becomes_space() -> None:
    spaces = [chr(code) for code in range(0x10000) if unicodedata.category(chr(code)) == "Zs"]
    assert len(spaces) >= 17
    assert sanitize("".join(spaces)) == " " * len(spaces)


def test_line_endings() -> None:
    assert sanitize("one\r\ntwo\r\n\r\nthree") == "one\ntwo\n\nthree"
    assert sanitize("lone\rcarriage") == "lone\rcarriage"  # \r is GSM-7; only \r\n is normalised
    assert sanitize("one\r\u200b\ntwo") == "one\ntwo"
    assert sanitize("one\r\r\ntwo") == "one\ntwo"


def test_decomposed_accent_is_composed() -> None:
    assert sanitize("cafe\u0301") == "café"
    assert measure(sanitize("cafe\u0301")).encoding is Encoding.GSM7


@pytest.mark.parametrize(
    "text",
    [
        "Great 😀 see you 👍🏽",
        "你好，世界",
        "Ça va? São Paulo, Łódź, ç",
        "family: 👨\u200d👩\u200d👧",  # joiners inside an emoji sequence carry meaning
        "می\u200cخواهم",  # Persian zero-width non-joiner
        GSM_BASIC + GSM_EXTENSION,
    ],
)
def test_characters_without_lookalike_are_left_alone(text: str) -> None:
    assert sanitize(text) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # A joiner is kept only between two non-GSM characters: the one right before it and the one right after.
        pytest.param("ж\u200dab", "жab", id="non-gsm-then-gsm-word"),
        pytest.param("ж\u200da", "жa", id="non-gsm-then-gsm"),
        pytest.param("ab\u200cж", "abж", id="gsm-word-then-non-gsm"),
        pytest.param("ж\u200d", "ж", id="joiner-at-the-end"),
        pytest.param("\u200dж", "ж", id="joiner-at-the-start"),
        pytest.param("ж\u200dжa", "ж\u200dжa", id="kept-between-non-gsm"),
        pytest.param("aж\u200dж", "aж\u200dж", id="kept-after-a-gsm-word"),
        pytest.param("ж\u200d\u200cж", "ж\u200d\u200cж", id="run-of-joiners-kept"),
        pytest.param("ж\u200d\u200ca", "жa", id="run-of-joiners-removed"),
    ],
)
def test_joiners_between_gsm_and_non_gsm(text: str, expected: str) -> None:
    assert sanitize(text) == expected


def test_sanitize_keeps_ucs2_when_needed() -> None:
    clean = sanitize("It’s done 😀")
    assert clean == "It's done 😀"
    assert measure(clean).encoding is Encoding.UCS2


def test_sanitize_is_idempotent() -> None:
    rng = random.Random(7)
    alphabet = "ab .’“”–…•\u00a0\u200b\u200d\u200c\r\n😀жé€"
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        once = sanitize(text)
        assert sanitize(once) == once, repr(text)


# Look-alikes and invisibles sanitize handles, characters NFC composes (e + U+0301) or expands (U+0344, U+0958,
# the Hebrew presentation forms and U+1D15E decompose under NFC), line endings, and GSM-7 / UCS-2 / emoji text.
# Short clusters from a small alphabet make the interactions likely: an invisible character between a letter
# and its accent, a joiner next to an ellipsis or an emoji, "\r" + invisible + "\n".
sanitizable_chars = st.one_of(
    st.sampled_from("‘’‚“”«»–—−•…\u00a0\u2009\u3000\t\u200b\u00ad\ufeff\u2060\u200c\u200d\u2028\r\n"),
    st.sampled_from("e\u0301\u0344\u0958\ufb2c\U0001d15e"),
    st.text(st.sampled_from("e\u0301\u200b\u00ad\u200c\u200d\r\n…’ aж😀"), min_size=2, max_size=8),
    any_chars,
)


@PROPERTY
@given(runs(sanitizable_chars))
def test_sanitize_is_idempotent_and_never_costs_more_segments(text: str) -> None:
    clean = sanitize(text)
    assert sanitize(clean) == clean
    assert measure(clean).segments <= measure(text).segments


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # "…" is 1 UCS-2 unit and "..." 3: in text that stays UCS-2, expanding it would add a segment.
        pytest.param(CYRILLIC * 69 + "…", CYRILLIC * 69 + "…", id="ellipsis-kept-at-70-units"),
        pytest.param(
            "Great, see you at 5… " + EMOJI + " " + "x" * 45,
            "Great, see you at 5… " + EMOJI + " " + "x" * 45,
            id="ellipsis-kept-next-to-emoji",
        ),
        pytest.param("“See you at 5…” " + EMOJI, '"See you at 5..." ' + EMOJI, id="ellipsis-expanded-if-free"),
        pytest.param("…" * 70, "…" * 70, id="ellipses-kept"),  # 70 units: 1 segment; 210 septets would be 2
        pytest.param("…" * 53, "." * 159, id="ellipses-expanded-to-gsm"),  # 159 septets: still 1 segment
        # U+FB2C (Hebrew shin with dagesh and shin dot) is 3 code points after NFC: 24 units would become 72.
        pytest.param("\ufb2c" * 24, "\ufb2c" * 24, id="nfc-expansion-refused"),
        # An invisible character between a letter and its accent: NFC composes them once it is removed.
        pytest.param("cafe\u200b\u0301", "café", id="zwsp-inside-accent"),
        pytest.param("cafe\u200d\u0301", "café", id="zwj-inside-accent"),
        pytest.param("e\u200b\u0301\u200d" + EMOJI, "é" + EMOJI, id="joiner-next-to-composed-accent"),
    ],
)
def test_sanitize_never_costs_a_segment(text: str, expected: str) -> None:
    assert sanitize(text) == expected
    assert measure(expected).segments <= measure(text).segments


# --- split -------------------------------------------------------------------------------------------


def assert_valid_split(text: str, parts: list[str], max_segments: int) -> list[int]:
    """Every part fits, is stripped and non-empty, and the parts are the text in order minus whitespace.

    Returns where each part starts in ``text``.
    """
    cursor = 0
    starts = []
    for part in parts:
        assert part and part == part.strip()
        assert fits(part, max_segments), (len(part), measure(part))
        found = text.find(part, cursor)
        assert found >= 0 and not text[cursor:found].strip(), "text lost or reordered"
        starts.append(found)
        cursor = found + len(part)
    assert not text[cursor:].strip(), "text lost at the end"
    assert squeeze("".join(parts)) == squeeze(text)
    return starts


def test_split_rejects_non_positive_budget() -> None:
    for bad in (0, -1):
        with pytest.raises(ValueError, match=f"^max_segments must be >= 1, got {bad}$"):
            split("hello", bad)


def test_split_text_that_fits() -> None:
    assert split("", 1) == []
    assert split(" \n\t ", 3) == []
    assert split("  Hello there!  \n", 1) == ["Hello there!"]
    assert split("a" * 160, 1) == ["a" * 160]
    assert split("a" * 306, 2) == ["a" * 306]


def test_split_packs_sentences_greedily_in_order() -> None:
    rng = random.Random(1)
    sentences = [f"Sentence {i} " + "word " * rng.randint(2, 25) + rng.choice(".!?") for i in range(40)]
    text = " ".join(s.replace(" .", ".").replace(" !", "!").replace(" ?", "?") for s in sentences)
    for max_segments in (1, 2, 3):
        parts = split(text, max_segments)
        assert len(parts) > 1
        assert_valid_split(text, parts, max_segments)
        for part, following in itertools.pairwise(parts):
            assert part[-1] in ".!?"  # every sentence fits, so cuts are at sentence ends only
            first_next_sentence = re.split(r"(?<=[.!?])\s+", following)[0]
            assert not fits(part + " " + first_next_sentence, max_segments), "packing was not greedy"


def test_split_at_newlines_and_after_closing_quote() -> None:
    line = "x" * 100
    assert split(f"{line}\n{line}", 1) == [line, line]
    assert split(f'He said "{line}." Then {line}', 1) == [f'He said "{line}."', f"Then {line}"]


def test_long_sentence_is_split_at_words() -> None:
    words = [f"w{i:03d}" for i in range(200)]
    sentence = " ".join(words) + "."
    parts = split("Short intro. " + sentence + " Short outro.", 1)
    assert_valid_split("Short intro. " + sentence + " Short outro.", parts, 1)
    assert parts[0] == "Short intro."
    for part in parts[1:-1]:
        assert all(word in words or word == "w199." for word in part.split())  # no word cut in half
        assert len(part) > 150  # filled up, not one word per part
    assert parts[-1].endswith("Short outro.")


def test_huge_single_word_is_split_hard() -> None:
    assert split("x" * 1000, 1) == ["x" * 160] * 6 + ["x" * 40]
    assert split("x" * 1000, 3) == ["x" * 459] * 2 + ["x" * 82]
    assert split(EMOJI * 100, 1) == [EMOJI * 35] * 2 + [EMOJI * 30]
    assert split("€" * 100, 1) == ["€" * 80, "€" * 20]


def test_hard_split_never_breaks_a_two_unit_character() -> None:
    assert split("a" * 159 + "€" + "a" * 10, 1) == ["a" * 159, "€" + "a" * 10]
    assert split(CYRILLIC * 69 + EMOJI + CYRILLIC * 10, 1) == [CYRILLIC * 69, EMOJI + CYRILLIC * 10]


def test_each_part_is_measured_on_its_own() -> None:
    gsm = "Plain ascii sentence here. " * 8
    parts = split(gsm + "Emoji time 😀!", 1)
    assert_valid_split(gsm + "Emoji time 😀!", parts, 1)
    assert [measure(p).encoding for p in parts[:-1]] == [Encoding.GSM7] * (len(parts) - 1)
    assert measure(parts[-1]).encoding is Encoding.UCS2


def test_parts_respect_max_body_chars() -> None:
    assert split("a" * 3000, 100) == ["a" * MAX_BODY_CHARS, "a" * 1400]
    # 1,601 characters would be 11 segments, within budget, but Twilio rejects a body over 1,600 characters.
    assert split("a" * 1601, 11) == ["a" * MAX_BODY_CHARS, "a"]
    # The limit is counted in UTF-16 code units, which is never less than what Twilio counts: 800 emoji.
    assert split(EMOJI * 1000, 30) == [EMOJI * 800, EMOJI * 200]
    words = " ".join(["word"] * 700)  # 3,499 characters: parts end at a word, at most 1,600 characters
    assert [len(part) for part in split(words, 20)] == [1599, 1599, 299]


def test_split_random_texts_property() -> None:
    rng = random.Random(2024)
    vocabulary = ["ok", "hello", "price", "€5", "{x}", "naïve", "ж", "日本語", EMOJI, "😀👍🏽", "a" * 40]
    for _ in range(300):
        pieces: list[str] = []
        for _ in range(rng.randint(0, 120)):
            roll = rng.random()
            if roll < 0.02:
                pieces.append(rng.choice("ab€ж😀") * rng.randint(100, 700))  # huge word
            else:
                pieces.append(rng.choice(vocabulary) + rng.choice(["", "", "", ".", "!", "?", ","]))
            pieces.append(rng.choice([" ", " ", " ", "  ", "\n", " \n\n "]))
        text = "".join(pieces)
        max_segments = rng.choice([1, 1, 2, 3, 4, 12])
        parts = split(text, max_segments)
        starts = assert_valid_split(text, parts, max_segments)
        if fits(text.strip(), max_segments):
            assert parts == ([text.strip()] if text.strip() else [])
        for start, part, following in zip(starts, parts, parts[1:], strict=False):
            if text[start + len(part)] == following[0]:  # cut inside a word: the hard split filled its part
                assert not fits(part + following[0], max_segments)


# Words of any characters, whitespace of every kind split and strip know (NBSP and ideographic space are
# whitespace too), sentence ends, and the occasional huge word that has to be split hard.
split_texts = st.lists(
    st.one_of(
        st.text(any_chars, min_size=1, max_size=12),
        st.sampled_from([" ", " ", "  ", "\n", " \n\n ", "\t", "\u00a0", "\u3000", ". ", "! ", "? ", '." ']),
        st.tuples(st.one_of(st.sampled_from("a€ж😀"), any_chars), st.integers(50, 2000)).map(lambda p: p[0] * p[1]),
    ),
    max_size=40,
).map("".join)


@settings(PROPERTY, max_examples=150)  # each example splits up to tens of thousands of characters
@given(split_texts, st.sampled_from([1, 1, 2, 3, 4, 10, 30]))
def test_split_parts_fit_and_keep_every_visible_character_in_order(text: str, max_segments: int) -> None:
    parts = split(text, max_segments)
    for part in parts:
        assert part and part == part.strip()
        assert measure(part).segments <= max_segments
        assert utf16_units(part) <= MAX_BODY_CHARS
    assert squeeze("".join(parts)) == squeeze(text)
    if fits(text.strip(), max_segments):
        assert parts == ([text.strip()] if text.strip() else [])
