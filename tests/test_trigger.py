"""Trigger words: generated ones are made-up, pronounceable and unique; user-given ones are validated."""

import re

import pytest

from pipeline.intake.trigger import generate_trigger_word, is_known_word, known_words, validate_trigger_word


def test_clip_vocabulary_is_available_offline_and_knows_common_words():
    words = known_words()
    assert len(words) > 20_000  # open_clip's CLIP vocab, not just the fallback list
    for word in ("the", "person", "portrait", "smile", "ohwx", "sks"):  # ohwx/sks: known tokens, popular mistakes
        assert is_known_word(word), word


def test_generated_words_are_pronounceable_unknown_and_unique():
    existing: list[str] = []
    for _ in range(40):
        word = generate_trigger_word(existing)
        assert re.fullmatch(r"[a-z]{5,8}", word), word
        assert not is_known_word(word), word
        assert word not in existing
        # pronounceable: no run of more than two consonants and at least two vowels
        assert not re.search(r"[^aeiou]{3}", word), word
        assert len(re.findall(r"[aeiou]", word)) >= 2, word
        existing.append(word)


def test_generation_with_a_seed_is_repeatable_and_avoids_existing():
    first = generate_trigger_word(seed=7)
    assert generate_trigger_word(seed=7) == first
    other = generate_trigger_word([first.upper()], seed=7)  # uniqueness is case-insensitive
    assert other != first


def test_validate_normalises_and_accepts_a_made_up_word():
    assert validate_trigger_word("  ZorVik ") == "zorvik"
    assert validate_trigger_word("kalu9") == "kalu9"


@pytest.mark.parametrize(
    ("word", "problem"),
    [
        ("", "must not be empty"),
        ("ab", "characters"),
        ("x" * 30, "characters"),
        ("two words", "one word"),
        ("9lives", "starting with a letter"),
        ("zörvik", "one word"),
        ("portrait", "already knows"),
        ("ohwx", "already knows"),
    ],
)
def test_validate_rejects_with_a_message_naming_the_problem(word, problem):
    with pytest.raises(ValueError, match=problem) as info:
        validate_trigger_word(word)
    assert "trigger_word" in str(info.value)


def test_validate_rejects_a_word_already_in_the_library():
    with pytest.raises(ValueError, match="already used"):
        validate_trigger_word("Zorvik", ["zorvik", "kalumo"])


def test_known_words_can_be_allowed_explicitly():
    assert validate_trigger_word("ohwx", allow_known=True) == "ohwx"
