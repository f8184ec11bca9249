"""The unlabelled source of the transfer set: in-domain text (`augmentation.unlabeled_texts`: the packaged IMDB
reviews, a local file or folder, or a Hub id) split into sentences, offered in a seeded random order to fill what
generation leaves. Every process reads and orders it alike, so each keeps the same sentences."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from trainer_ext.data.loading import load_unlabeled_texts
from trainer_ext.data.transfer.sources import TransferSource
from trainer_ext.data.transfer.text import split_sentences


class UnlabeledSource(TransferSource):
    """Sentences of unlabelled texts; the teacher alone labels them (they carry no prompt label)."""

    kind = "unlabeled"

    def __init__(self, texts: list[str], origin: str | None) -> None:
        self.texts, self.origin = texts, origin  # origin: the unlabeled_texts setting the texts were read from

    @classmethod
    def read(cls, origin: str, text_column: str = "text") -> UnlabeledSource:
        """The texts of `origin` (`loading.load_unlabeled_texts`: a bad source fails here, before any long work)."""
        return cls(load_unlabeled_texts(origin, text_column), origin)

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.origin}"

    def candidates(self, labels: Sequence[int] | None, seed: int) -> list[str]:
        sentences = [sentence for text in self.texts for sentence in split_sentences(text)]
        order = np.random.default_rng(seed).permutation(len(sentences))
        return [sentences[i] for i in order]

    def record(self) -> dict[str, Any]:
        return {"source": self.origin, "texts": len(self.texts)}


__all__ = ["UnlabeledSource"]
