"""Text helpers of the transfer set: the key near-duplicates share (`normalize_text`), looping output
(`is_degenerate`), reviews split into sentences, a sample cut where the generator wandered on (`clean_generation`), a
prompt's opening joined to its continuation, and the quality figures of the kept generated sentences (distinct-2 and
lengths against the training sentences)."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
_SPACES = re.compile(r"\s+")
_HTML_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")


def normalize_text(text: str) -> str:
    """Key for near-duplicate detection: case, accents, punctuation and spacing do not make a new sentence."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return _SPACES.sub(" ", _PUNCT.sub(" ", text.lower())).strip()


def is_degenerate(text: str, max_ngram_repeats: int = 2, n: int = 3) -> bool:
    """True for looping output: a word n-gram seen more than `max_ngram_repeats` times, or one word over half the text."""
    words = normalize_text(text).split()
    if len(words) >= 4 and Counter(words).most_common(1)[0][1] > len(words) / 2:
        return True
    grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return bool(grams) and grams.most_common(1)[0][1] > max_ngram_repeats


def split_sentences(text: str) -> list[str]:
    """Sentences of a review: HTML line breaks and runs of spaces removed, split after . ! or ? before a capital."""
    text = _SPACES.sub(" ", _HTML_BREAK.sub(" ", text)).strip()
    return [s for s in (part.strip() for part in _SENTENCE_END.split(text)) if s]


def clean_generation(text: str, separator: str, eos_token: str | None, stop_tokens: Sequence[str] = ()) -> str:
    """Cut at end-of-sequence (or any other special token), newline or a new label prompt, and strip."""
    for stop in (eos_token, *stop_tokens):
        if stop:
            text = text.split(stop, 1)[0]
    text = text.split("\n", 1)[0]
    if separator != " ":  # a tab or "<sep>" inside a sample starts a new label prompt; a space does not
        text = text.split(separator, 1)[0]
    return text.strip()


def join_opening(opening: str, continuation: str) -> str:
    """The prompt's opening words and the generator's continuation as one sentence."""
    if not opening:
        return continuation
    if not continuation or continuation[0] in ".,;:!?'" or continuation.startswith("n't"):
        return opening + continuation
    return f"{opening} {continuation}"


# ------------------------------------------------------------------------------------------------------- quality
def distinct_n(texts: Sequence[str], n: int = 2) -> float | None:
    """Distinct n-grams over all n-grams of `texts` (lower-cased words): the usual diversity measure of generated
    text. It falls as more text is pooled, so compare sets of the same size."""
    grams = [
        tuple(words[i : i + n]) for t in texts for words in [t.lower().split()] for i in range(len(words) - n + 1)
    ]
    return len(set(grams)) / len(grams) if grams else None


def _length_summary(texts: Sequence[str]) -> dict[str, float] | None:
    if not texts:
        return None
    words = np.array([len(t.split()) for t in texts])
    return {
        "mean_words": round(float(words.mean()), 2),
        **{f"p{q}_words": float(np.percentile(words, q)) for q in (10, 50, 90)},
    }


def generation_quality(generated: Sequence[str], training: Sequence[str], seed: int) -> dict[str, Any]:
    """Distinct-2 and the length distribution of the kept generated sentences against as many training sentences
    (drawn at random, so distinct-2 compares sets of one size)."""
    if not generated:
        return {}
    size = min(len(generated), len(training))
    rng = np.random.default_rng(seed)
    gen = [generated[i] for i in rng.permutation(len(generated))[:size]]
    train = [training[i] for i in rng.permutation(len(training))[:size]]
    return {
        "compared_sentences": size,
        "distinct_2": {"generated": distinct_n(gen), "training": distinct_n(train)},
        "length": {"generated": _length_summary(generated), "training": _length_summary(training)},
    }
