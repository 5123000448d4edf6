"""Trigger words: the made-up word that calls a person's LoRA into a prompt, and putting it into prompts.

A good trigger word is short, pronounceable and means nothing yet to the text encoders: a word the encoders
already know (a real word, a name, ``ohwx``) drags its old meaning into every image. We check against the
CLIP BPE vocabulary that open_clip ships (a dependency of clip-interrogator, so it is here offline): every
whole-word token in it is a word CLIP has its own embedding for, and together they cover common English
words and names. Where that file is missing we fall back to a short built-in list and log a warning.
"""

from __future__ import annotations

import gzip
import importlib.util
import logging
import random
import re
from collections.abc import Iterable
from functools import cache
from pathlib import Path

logger = logging.getLogger(__name__)

MIN_LENGTH = 3
MAX_LENGTH = 24
_WORD_RE = re.compile(r"^[a-z][a-z0-9]*$")
TRIGGER_PLACEHOLDER = "{trigger}"
# What "{trigger}" becomes when there is no LoRA (the bare base model): the prompts stay grammatical.
NO_TRIGGER_SUBJECT = "a person"

# Soft consonants and plain vowels keep generated words easy to say and type; no 'q'/'x'/'c' whose sound
# depends on the next letter.
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "tr", "st")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "", "n", "r", "l", "k", "s", "x")

# Only used where open_clip's vocabulary file cannot be found.
_FALLBACK_WORDS = frozenset(
    "the be to of and a in that have it for not on with he as you do at this but his by from they we say her "
    "she or an will my one all would there their what so up out if about who get which go me when make can "
    "like time no just him know take people into year your good some could them see other than then now look "
    "only come its over think also back after use two how our work first well way even new want because any "
    "these give day most us man woman person photo portrait face smile girl boy men women".split()
)

# CLIP's merges: the first 49152 - 256 - 2 lines after the header make its vocabulary.
_CLIP_MERGES = 49152 - 256 - 2


def _open_clip_vocab_file() -> Path | None:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"
    return path if path.is_file() else None


@cache
def known_words() -> frozenset[str]:
    """Words the text encoder already has a whole-word token for (lowercase)."""
    path = _open_clip_vocab_file()
    if path is None:
        logger.warning("open_clip's CLIP vocabulary not found; checking trigger words against a short word list")
        return _FALLBACK_WORDS
    lines = gzip.open(path, "rt", encoding="utf-8").read().split("\n")[1 : _CLIP_MERGES + 1]
    words = set()
    for line in lines:
        token = line.replace(" ", "")
        if token.endswith("</w>"):
            words.add(token[: -len("</w>")])
    return frozenset(words) | _FALLBACK_WORDS


def is_known_word(word: str) -> bool:
    """True when ``word`` is a single whole-word token of CLIP's vocabulary (or a common English word)."""
    return word.lower() in known_words()


def validate_trigger_word(word: str, existing: Iterable[str] = (), *, allow_known: bool = False) -> str:
    """Return ``word`` normalised (stripped, lowercase) or raise ValueError saying what is wrong and how to fix it.

    ``existing`` are the trigger words already in the library (compared case-insensitively).
    ``allow_known`` accepts a word the text encoder already knows (some users want ``ohwx``).
    """
    if not isinstance(word, str):
        raise ValueError(f"trigger_word: must be text, got {type(word).__name__}")
    normalised = word.strip().lower()
    if not normalised:
        raise ValueError("trigger_word: must not be empty; leave it blank to have one generated")
    if not MIN_LENGTH <= len(normalised) <= MAX_LENGTH:
        raise ValueError(
            f"trigger_word: {word!r} has {len(normalised)} characters; use {MIN_LENGTH} to {MAX_LENGTH}"
        )
    if not _WORD_RE.match(normalised):
        raise ValueError(
            f"trigger_word: {word!r} must be one word of letters a-z and digits, starting with a letter "
            "(no spaces, punctuation or accents)"
        )
    if not allow_known and is_known_word(normalised):
        raise ValueError(
            f"trigger_word: {word!r} is a word the text encoder already knows, so its meaning would mix with "
            "the person's; choose a made-up word (e.g. one generated for you)"
        )
    taken = {w.strip().lower() for w in existing if w}
    if normalised in taken:
        raise ValueError(f"trigger_word: {normalised!r} is already used by another model in the library; pick another")
    return normalised


def insert_trigger(prompt: str, trigger_word: str) -> str:
    """Put the trigger word into a prompt: in place of "{trigger}", or in front when the prompt lacks it.

    An empty trigger word (the bare base model) turns "{trigger}" into "a person" and leaves other prompts alone.
    """
    trigger_word = trigger_word.strip()
    if TRIGGER_PLACEHOLDER in prompt:
        return prompt.replace(TRIGGER_PLACEHOLDER, trigger_word or NO_TRIGGER_SUBJECT)
    if not trigger_word or re.search(rf"(?<!\w){re.escape(trigger_word)}(?!\w)", prompt, flags=re.IGNORECASE):
        return prompt
    return f"{trigger_word}, {prompt}" if prompt.strip() else trigger_word


def _candidate(rng: random.Random) -> str:
    syllables = rng.choice((2, 2, 3))
    parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)]
    return "".join(parts) + rng.choice(_CODAS)


def generate_trigger_word(existing: Iterable[str] = (), *, seed: int | None = None) -> str:
    """A short, pronounceable made-up word, unknown to the text encoder and not in ``existing``.

    With a ``seed`` the same word comes back for the same ``existing``; without, each call differs.
    """
    rng = random.Random(seed)
    taken = {w.strip().lower() for w in existing if w}
    for _ in range(10_000):
        word = _candidate(rng)
        if not 5 <= len(word) <= 8 or word in taken:  # short enough to type, long enough to be rare
            continue
        try:
            return validate_trigger_word(word, taken)
        except ValueError:
            continue
    raise RuntimeError("could not generate an unused trigger word in 10,000 tries")  # ~1e5 candidates exist
