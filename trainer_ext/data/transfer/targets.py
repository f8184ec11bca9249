"""Filling the per-label targets from a prompted source (the generator), in this process: the source is asked for
every label still short, at the acceptance rate seen so far; every candidate passes the filter; the candidates are
written per shard (`shards.py`), and a re-run replays the finished shards first. Under several processes each fills
its share and `merge_process_shares` combines them."""

from __future__ import annotations

import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm
from transformers.utils import logging

from trainer_ext.data.transfer.shards import check_manifest, finished_shards, write_shard
from trainer_ext.data.transfer.sources import SentenceFilter, TransferSource
from trainer_ext.data.transfer.text import normalize_text

logger = logging.get_logger(__name__)


def fill_targets(
    source: TransferSource,
    check: SentenceFilter,
    targets: list[int],
    label_names: list[str],
    *,
    seed: int,
    shard_size: int,
    max_attempts_factor: float,
    shard_dir: Path | None = None,
    manifest: dict[str, Any] | None = None,
) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The candidates of `source` that pass `check`, as (text, prompt label), up to `targets` per label, and their
    statistics. Each call asks for up to a shard (`shard_size` candidates); generation stops after
    `max_attempts_factor` times the targets' sum. With `shard_dir`, shards are written there, guarded by `manifest`
    (`shards.sampling_manifest`)."""
    reasons = check.rejected
    kept: list[tuple[str, int]] = []
    per_label = Counter()
    shard_index = 0
    generated = 0

    def consider(text: str, label: int) -> None:
        if per_label[label] >= targets[label]:
            reasons["label_full"] += 1
        elif check.keep(text):
            kept.append((text, int(label)))
            per_label[label] += 1

    if shard_dir is not None:
        check_manifest(shard_dir, manifest)
    # Resume: finished shards are replayed through the same filters, in order, so the result is identical.
    for shard in finished_shards(shard_dir):
        for text, label in zip(shard["text"], shard["prompt_label"]):
            generated += 1
            consider(text, label)
        shard_index += 1
    if shard_index:
        logger.warning(f"Resumed augmentation from {shard_index} finished shard(s) in {shard_dir}.")
    max_candidates = int(math.ceil(sum(targets) * max_attempts_factor))
    progress = tqdm(total=sum(targets), initial=len(kept), desc="Accepted samples", unit="sample")
    start = time.perf_counter()
    while len(kept) < sum(targets) and generated < max_candidates:
        texts, labels = [], []
        while len(texts) < shard_size:
            missing = [i for i, t in enumerate(targets) if per_label[i] < t]
            if not missing:
                break
            # Ask for every label still short, as many as its shortfall needs at the acceptance rate seen so
            # far, at most a batch. A full batch for the last few sentences wasted most of it: 92 of 192
            # candidates were dropped as "label_full" at batch 96 (benchmarks/sampling.py).
            need = np.array([targets[i] - per_label[i] for i in missing], dtype=float)
            tried = generated + len(texts) - reasons["label_full"]
            acceptance = max(len(kept) / tried, 0.1) if tried else 1.0
            want = np.ceil(need / acceptance)
            room = shard_size - len(texts)  # one call samples up to a shard: slots refill across it
            if want.sum() > room:
                want = np.maximum(1, np.round(want / want.sum() * room))
            prompt_labels = [lab for lab, c in zip(missing, want.astype(int)) for _ in range(c)][:room]
            call_seed = seed * 1_000_003 + shard_index * 10_007 + len(texts)
            texts += source.candidates(prompt_labels, call_seed)
            labels += prompt_labels
            for text, label in zip(texts[-len(prompt_labels) :], prompt_labels):
                consider(text, label)
            progress.n = len(kept)
            progress.set_postfix(accepted_per_s=f"{(len(kept)) / max(time.perf_counter() - start, 1e-9):.2f}")
            progress.refresh()
        generated += len(texts)
        if shard_dir is not None and texts:
            write_shard(shard_dir, shard_index, texts, labels)
        shard_index += 1
    progress.close()
    stats = {
        "generated": generated,
        "kept": len(kept),
        "rejected": dict(reasons),
        "per_label_kept": {label_names[i]: per_label[i] for i in range(len(label_names))},
        "targets": {label_names[i]: targets[i] for i in range(len(label_names))},
    }
    if len(kept) < sum(targets):
        logger.warning(
            f"Only {len(kept)} of {sum(targets)} samples were kept after {generated} candidates "
            f"(rejections: {dict(reasons)})."
        )
    return kept, stats


def merge_process_shares(
    parts: list[list[tuple[str, int]]], stats: list[dict[str, Any]], label_names: list[str]
) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """One process's kept samples and statistics, or several processes' combined without cross-process duplicates
    (processes sample independently, so two can keep the same sentence)."""
    if len(parts) == 1:
        return parts[0], {**stats[0], "processes": 1}
    seen: set[str] = set()
    kept = []
    for text, label in (sample for part in parts for sample in part):
        if normalize_text(text) not in seen:
            seen.add(normalize_text(text))
            kept.append((text, label))
    combined = {
        key: {name: sum(s[key].get(name, 0) for s in stats) for name in label_names}
        for key in ("per_label_kept", "targets")
    }
    return kept, {
        "generated": sum(s["generated"] for s in stats),
        "kept": len(kept),
        "rejected": dict(sum((Counter(s["rejected"]) for s in stats), Counter())),
        **combined,
        "processes": len(parts),
        "kept_per_process": [len(p) for p in parts],
        "cross_process_duplicates": sum(len(p) for p in parts) - len(kept),
        "generation_seconds": max(s["generation_seconds"] for s in stats),
    }


__all__ = ["fill_targets", "merge_process_shares"]
