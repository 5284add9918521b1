import itertools
import random
import re
import unicodedata

import pytest

from service.segments import MAX_BODY_CHARS, Encoding, Measure, measure, sanitize, split

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
    return measure(part).segments <= max_segments and len(part) <= MAX_BODY_CHARS


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
        with pytest.raises(ValueError):
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
