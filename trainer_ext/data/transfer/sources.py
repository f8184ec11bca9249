"""Where the transfer set's sentences come from, and the one filter they all pass.

A source (`TransferSource`) only proposes candidate sentences: the generator (`prompts.GeneratedSource`) and
unlabelled in-domain text (`unlabeled.UnlabeledSource`) today. The augmenter (`augmentation.TextGenerationAugmenter`)
puts every candidate of every source through one `SentenceFilter` (length, emptiness, leakage of training, validation
or test text, duplicates, looping text), has the teacher label the kept ones once (`labelling.relabel`), and counts
each source in augmentation_stats.json's `sources`.

A *prompted* source is asked for sentences of given labels and fills the per-label targets (`num_samples`); the
generator is the one prompted source. The other sources are read whole, in a seeded order, and fill what the prompted
one leaves up to `max_transfer_samples`, in the order `TextGenerationAugmenter.filling_sources` lists them: a new
source implements `TransferSource` and is added there.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar

from trainer_ext.data.transfer.text import is_degenerate, normalize_text


class TransferSource(ABC):
    """One source of candidate sentences for the transfer set."""

    kind: ClassVar[str]  # the `source` column of its rows ("generated", "unlabeled"); its statistics' key

    @property
    def name(self) -> str:
        """How augmentation_stats.json's `sources` (and so results.json and the card) name it."""
        return self.kind

    @abstractmethod
    def candidates(self, labels: Sequence[int] | None, seed: int) -> list[str]:
        """A prompted source: one candidate for each of `labels`, in order, drawn with `seed`. Any other source
        (`labels` None): all its candidates, in an order drawn with `seed`."""

    def record(self) -> dict[str, Any]:
        """What the statistics say about the source before its candidates are filtered."""
        return {}


class SentenceFilter:
    """The filter every candidate of every source passes, with its count of what it dropped, by reason.

    `excluded` holds the normalized sentences a candidate must not repeat: the training, validation and test text (a
    leak), and what earlier sources kept. A candidate kept joins `seen`, so no later one repeats it.
    """

    def __init__(self, min_words: int, max_words: int, excluded: set[str]) -> None:
        self.min_words, self.max_words, self.excluded = min_words, max_words, excluded
        self.seen: set[str] = set()
        self.rejected: Counter = Counter()

    def rejection(self, text: str) -> str | None:
        """Why a candidate sentence is dropped, or None when it is kept (then it joins `seen`)."""
        n_words = len(text.split())
        key = normalize_text(text)
        if n_words < self.min_words:
            return "too_short"
        if n_words > self.max_words:
            return "too_long"
        if not key:
            return "empty"
        if key in self.excluded:
            return "in_train_or_eval"
        if key in self.seen:
            return "duplicate"
        if is_degenerate(text):
            return "degenerate"
        self.seen.add(key)
        return None

    def keep(self, text: str) -> bool:
        """Whether `text` passes; a dropped one is counted under its reason."""
        reason = self.rejection(text)
        if reason:
            self.rejected[reason] += 1
        return reason is None

    def take(self, candidates: Sequence[str], cap: int | None) -> list[str]:
        """The candidates that pass, in order, at most `cap`; those left unread are counted as `over_cap`."""
        kept: list[str] = []
        for text in candidates:
            if cap is not None and len(kept) >= cap:
                self.rejected["over_cap"] = len(candidates) - sum(self.rejected.values()) - len(kept)
                break
            if self.keep(text):
                kept.append(text)
        return kept


__all__ = ["SentenceFilter", "TransferSource"]
