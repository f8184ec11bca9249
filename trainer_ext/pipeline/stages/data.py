"""The data stage: load, validate and split the dataset once, and save the splits as used, so that a resumed run
(and benchmarks/ablation_seeds.py) reads them and never the source again."""

from __future__ import annotations

import hashlib
import json
from functools import partial
from typing import TYPE_CHECKING

from datasets import DatasetDict, load_from_disk

from trainer_ext.data.loading import (
    OFFLINE_DATASET_NAME,
    DatasetUnavailableError,
    DataValidationError,
    label_names,
    load_text_classification_dataset,
)
from trainer_ext.files import write_atomic, write_json
from trainer_ext.pipeline.runner import PipelineError, Stage

if TYPE_CHECKING:
    from trainer_ext.pipeline.pipeline import Pipeline


def data_digest(data: DatasetDict) -> str:
    """A digest of the splits' texts, labels and label names: a data file edited between two runs changes it."""
    digest = hashlib.sha256()
    for split in sorted(data):
        texts, labels = list(data[split]["text"]), list(data[split]["label"])
        digest.update(json.dumps([split, label_names(data[split]), texts, labels]).encode())
    return digest.hexdigest()[:16]


def load_data(p: Pipeline) -> DatasetDict:
    """The splits as the run uses them, loaded once (by `check`); loader errors name the flags that fix them."""
    if p.loaded_data is not None:
        return p.loaded_data
    a = p.args
    fix = (
        f"Set --run.dataset to '{OFFLINE_DATASET_NAME}', a local .csv/.tsv/.json/.jsonl/.parquet file, a folder "
        "of train/validation/test files, or a Hub id (downloaded once while online)."
    )
    try:
        data = load_text_classification_dataset(
            a.dataset,
            config_name=a.dataset_config,
            text_column=a.text_column,
            label_column=a.label_column,
            seed=a.seed,
            max_train_samples=a.max_train_samples,
        )
    except DataValidationError as err:
        flags = " ".join(f"--run.{name} {value}" for name, value in err.settings.items())
        raise PipelineError(f"run.dataset {a.dataset!r}: {err.problem}" + (f" Set {flags}." if flags else "")) from err
    except (OSError, ValueError, DatasetUnavailableError) as err:
        raise PipelineError(f"run.dataset {a.dataset!r}: {' '.join(str(err).split())} {fix}") from err
    for split in (a.eval_split, a.test_split):
        if split not in data:
            raise PipelineError(
                f"The data has no {split!r} split (it has {list(data)}); set --run.eval_split/--run.test_split."
            )
        if a.max_eval_samples and len(data[split]) > a.max_eval_samples:
            data[split] = data[split].shuffle(seed=a.seed).select(range(a.max_eval_samples))
    p.loaded_data = data
    return data


def stage_data(p: Pipeline) -> DatasetDict:
    data = load_data(p)
    if p.is_main:
        summary = {split: len(ds) for split, ds in data.items()} | {"labels": label_names(data["train"])}
        write_json(p.out / "data" / "summary.json", summary)
    # The splits as used: a resumed run reads them, never the source again (benchmarks/ablation_seeds.py too).
    if p.is_main:
        write_atomic(p.out / "data" / "splits", partial(DatasetDict.save_to_disk, data))
    p.barrier()
    p.data = data
    return data


def reload_data(p: Pipeline) -> DatasetDict:
    """A reused data stage's saved splits (never the source again: it may have changed since)."""
    splits = p.out / "data" / "splits"
    if not splits.exists():
        raise PipelineError(f"The data stage's output {splits} is missing; delete {p.marker('data')}.")
    p.loaded_data = p.data = load_from_disk(str(splits))
    return p.data


STAGE = Stage("data", stage_data, (), extra=lambda p: {"content": data_digest(load_data(p))}, reload=reload_data)
