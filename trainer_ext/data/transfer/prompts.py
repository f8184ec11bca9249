"""The generated source of the transfer set: prompts of a label's word and the separator (`prompt_names`), with the
opening words of a training sentence of that label when `prompt_opening_words` asks (`opening_pools`), continued by
the generator (`generation.TextGenerator`) and joined to their opening (`GeneratedSource`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from trainer_ext.data.transfer.arguments import AugmentationError
from trainer_ext.data.transfer.sources import TransferSource
from trainer_ext.data.transfer.text import join_opening, normalize_text


def prompt_names(prompt_label_names: str | None, label_names: list[str]) -> list[str]:
    """The words that stand for each label in the generator's lines: the label names, or `prompt_label_names` (one
    distinct word per label, comma-separated, in label-id order)."""
    if not prompt_label_names:
        return list(label_names)
    names = [n.strip() for n in prompt_label_names.split(",")]
    if len(names) != len(label_names) or len(set(names)) != len(names) or not all(names):
        raise AugmentationError(
            f"prompt_label_names={prompt_label_names!r} must give {len(label_names)} distinct words, one per label in "
            f"order {label_names}: the data has {len(label_names)} label{'s' if len(label_names) != 1 else ''}. "
            "Give one word per label, or leave it unset to use the label names."
        )
    return names


def opening_pools(
    texts: Sequence[str], labels: Sequence[int], num_labels: int, excluded: Iterable[str], n: int
) -> tuple[list[list[str]] | None, dict]:
    """Per label, the opening words of training sentences that prompts may carry (`prompt_opening_words` = `n`),
    and how many were dropped: an opening that begins a validation or test sentence (`excluded`) could lead the
    generator straight into it, and a sentence no longer than the opening has nothing left to continue. None and an
    empty record with `n` = 0 (label prompts alone)."""
    if n <= 0:
        return None, {}
    leaking = {" ".join(normalize_text(t).split()[:n]) for t in excluded if len(t.split()) >= n}
    pools: list[list[str]] = [[] for _ in range(num_labels)]
    counts = Counter()
    for text, label in zip(texts, labels):
        words = text.split()
        if len(words) <= n:
            counts["sentence_too_short"] += 1
            continue
        opening = " ".join(words[:n])
        if " ".join(normalize_text(opening).split()) in leaking:
            counts["leaks_validation_or_test"] += 1
            continue
        pools[label].append(opening)
    empty = [i for i, pool in enumerate(pools) if not pool]
    if empty:
        raise AugmentationError(
            f"prompt_opening_words={n}: no training sentence of label(s) {empty} is longer than {n} words without "
            f"beginning a validation or test sentence ({dict(counts)}). Use fewer words, or 0 for label prompts."
        )
    return pools, {"words": n, "openings": sum(len(p) for p in pools), "dropped": dict(counts)}


class GeneratedSource(TransferSource):
    """Candidates sampled from the generator: for each requested label, a prompt of its word and the separator (and
    an opening drawn from that label's pool), continued by `sample` and joined to the opening."""

    kind = "generated"

    def __init__(
        self,
        prompt_names: list[str],
        separator: str,
        openings: list[list[str]] | None,
        sample: Callable[[list[str], int], list[str]],
    ) -> None:
        self.prompt_names, self.separator, self.openings = prompt_names, separator, openings
        self.sample = sample  # prompts and a seed to one continuation per prompt (the augmenter's generate_batch)

    def candidates(self, labels: Sequence[int] | None, seed: int) -> list[str]:
        openings = self._draw_openings(labels, seed)
        prompts = [f"{self.prompt_names[i]}{self.separator}{o}" for i, o in zip(labels, openings)]
        return [join_opening(o, t) for o, t in zip(openings, self.sample(prompts, seed=seed))]

    def every_prompt(self) -> list[str]:
        """Each label's prompt, and each opening's (after the first label's word): the prompts whose length the
        generator's context must hold."""
        prompts = [f"{name}{self.separator}" for name in self.prompt_names]
        return prompts + [f"{self.prompt_names[0]}{self.separator}{o}" for pool in self.openings or [] for o in pool]

    def _draw_openings(self, labels: Sequence[int], seed: int) -> list[str]:
        if self.openings is None:
            return [""] * len(labels)
        rng = np.random.default_rng(seed)
        return [self.openings[label][rng.integers(len(self.openings[label]))] for label in labels]


__all__ = ["GeneratedSource", "opening_pools", "prompt_names"]
