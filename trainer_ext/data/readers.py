"""Reading local data into raw splits (a `DatasetDict` with the source's own columns): csv, tsv, json, jsonl and
parquet files (compressed too), given per split (`read_data_files`) or found in a folder, and `save_to_disk` datasets
(`read_local`). What `datasets` says about a bad file is said as what to do about it."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import datasets
from datasets import DatasetDict

from trainer_ext.data.validation import DataValidationError

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


def file_format(path: str | os.PathLike[str]) -> str | None:
    """The key of FILE_FORMATS for `path` (compressed files included), or None if unsupported."""
    name = str(path).lower()
    for suffix in COMPRESSION_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    extension = os.path.splitext(name)[1]
    return extension if extension in FILE_FORMATS else None


def normalize_data_files(
    data_files: str | os.PathLike[str] | Sequence[str] | Mapping[str, str | Sequence[str]],
) -> dict[str, list[str]]:
    if isinstance(data_files, str | os.PathLike):
        return {"train": [str(data_files)]}
    if isinstance(data_files, Mapping):
        return {str(split): [files] if isinstance(files, str) else list(files) for split, files in data_files.items()}
    return {"train": [str(f) for f in data_files]}


def read_data_files(data_files: dict[str, list[str]], cache_dir: str | None) -> DatasetDict:
    raw = DatasetDict()
    for split, files in data_files.items():
        formats = {file_format(f) for f in files}
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
    files = sorted(p for p in directory.iterdir() if p.is_file() and file_format(p) is not None)
    for split, aliases in SPLIT_ALIASES.items():
        for alias in aliases:
            # `train.csv`, or shards such as `train-00000-of-00002.parquet`.
            matches = [str(p) for p in files if p.name.split(".")[0] == alias or p.name.startswith(f"{alias}-")]
            if matches:
                found[split] = matches
                break
    return found


def read_local(name_or_path: str, cache_dir: str | None) -> DatasetDict | None:
    """The raw splits of a local file, a folder of `train.*` (and `validation.*`, `test.*`) files or a `save_to_disk`
    dataset; None when `name_or_path` names nothing local (no such folder, and no data file's extension)."""
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
        return read_data_files(data_files, cache_dir)
    if path.is_file() or file_format(path) is not None:
        if not path.is_file():
            raise FileNotFoundError(f"Data file '{path}' does not exist; check the path.")
        if file_format(path) is None:
            raise ValueError(f"Unsupported file type '{path}': use one of {', '.join(FILE_FORMATS)}.")
        return read_data_files({"train": [str(path)]}, cache_dir)
    return None


__all__ = ["FILE_FORMATS", "SPLIT_ALIASES", "file_format", "normalize_data_files", "read_data_files", "read_local"]
