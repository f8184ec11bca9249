"""Checks that a dataset can train or evaluate a text classifier (`validate_text_classification_dataset` and
friends), column-wise with pyarrow compute (100k rows in milliseconds), and the error they raise,
`DataValidationError`, whose message says how to fix the data."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from datasets import ClassLabel, Dataset, DatasetDict

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
    labels = arrow_column(dataset, label_column)
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


def arrow_column(dataset: Dataset, column: str) -> pa.ChunkedArray:
    # Goes through the arrow formatter so a select()/shuffle() indices mapping is honoured.
    return dataset.select_columns([column]).with_format("arrow")[:].column(column)


def _first_indices(mask: pa.ChunkedArray | pa.Array) -> list[int]:
    return pc.indices_nonzero(mask).to_pylist()[:_MAX_REPORTED]


def check_whole_numbers(labels: pa.ChunkedArray, column: str, where: str) -> None:
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
        check_whole_numbers(labels, column, where)
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


__all__ = [
    "DataValidationError",
    "arrow_column",
    "check_whole_numbers",
    "validate_label_column",
    "validate_text_classification_dataset",
    "validate_text_classification_splits",
]
