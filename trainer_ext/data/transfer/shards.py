"""The generator's candidates on disk, per process (`output_dir/shards/process_<rank>`): each shard written whole as
it is sampled, the finished ones replayed in order by a re-run (which so reaches the same result), and a manifest of
the settings they were sampled with, so that a run with other settings never resumes from them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from datasets import Dataset

from trainer_ext.data.transfer.arguments import AugmentationArguments, AugmentationError
from trainer_ext.data.transfer.sampling import SamplerChoice
from trainer_ext.files import write_atomic, write_json

SHARD_DIR = "shards"
# The settings that change which candidates a seed samples.
MANIFEST_SETTINGS = (
    "separator",
    "fine_tune",
    "fine_tune_epochs",
    "fine_tune_max_samples",
    "fine_tune_learning_rate",
    "freeze_layers",
    "generation_batch_size",
    "top_p",
    "top_k",
    "temperature",
    "repetition_penalty",
    "shard_size",
    "generator_name_or_path",
    "gguf_file",
    "prompt_opening_words",
)


def sampling_manifest(
    args: AugmentationArguments,
    sampler_choice: SamplerChoice | None,
    prompt_names: list[str],
    targets: list[int],
    seed: int,
    max_new_tokens: int | None,
) -> dict[str, Any]:
    """Everything that decides the candidates of a process's shards."""
    manifest = {k: getattr(args, k) for k in MANIFEST_SETTINGS}
    if sampler_choice is not None:  # another engine or precision samples other sentences from the same seed
        manifest["sampling"] = [sampler_choice.engine, sampler_choice.precision]
    manifest.update(prompt_names=prompt_names, targets=targets, seed=seed, max_new_tokens=max_new_tokens)
    return manifest


def check_manifest(shard_dir: Path, manifest: dict[str, Any]) -> None:
    """Shards only resume a run with the same sampling settings; anything else would mix two different runs."""
    path = shard_dir / "manifest.json"
    if path.exists():
        previous = json.loads(path.read_text())
        changed = sorted(k for k in set(previous) | set(manifest) if previous.get(k) != manifest.get(k))
        if changed:
            raise AugmentationError(
                f"{shard_dir} holds shards generated with other settings ({', '.join(changed)} differ). Use a new "
                "output_dir, or delete that folder to start over."
            )
        return
    write_json(path, manifest)


def _shard_path(shard_dir: Path, index: int) -> Path:
    return shard_dir / f"shard-{index:05d}.parquet"


def finished_shards(shard_dir: Path | None) -> Iterator[Dataset]:
    """The shards an earlier run finished in `shard_dir`, in order (none without a folder)."""
    index = 0
    while shard_dir is not None and _shard_path(shard_dir, index).exists():
        yield Dataset.from_parquet(str(_shard_path(shard_dir, index)))
        index += 1


def _to_parquet(dataset: Dataset, path: Path) -> None:
    dataset.to_parquet(str(path))


def write_shard(shard_dir: Path, index: int, texts: list[str], labels: list[int]) -> None:
    """Shard `index`'s candidates and their prompt labels, written whole or not at all."""
    shard_dir.mkdir(parents=True, exist_ok=True)
    shard = Dataset.from_dict({"text": texts, "prompt_label": labels})
    write_atomic(_shard_path(shard_dir, index), partial(_to_parquet, shard))


__all__ = ["SHARD_DIR", "check_manifest", "finished_shards", "sampling_manifest", "write_shard"]
