"""Tests for loading and validating text classification datasets, offline."""

import json
import logging
import sys
from collections import Counter

import datasets
import numpy as np
import pandas as pd
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Value

from trainer_ext.data import loading as data
from trainer_ext.data.loading import (
    OFFLINE_DATASET_NAME,
    DatasetUnavailableError,
    DataValidationError,
    id2label_label2id,
    label_names,
    load_offline_rotten_tomatoes,
    load_text_classification_dataset,
    validate_text_classification_dataset,
    validate_text_classification_splits,
)

COLORS = ["red", "green", "blue"]


def _three_class_frame(n_per_class: int = 20, prefix: str = "") -> pd.DataFrame:
    rows = [(f"{prefix}{color} example {i}", color) for color in COLORS for i in range(n_per_class)]
    return pd.DataFrame(rows, columns=["text", "label"])


@pytest.fixture
def load(tmp_path):
    """The loader with a per-test `datasets` cache, so tests do not share or pollute ~/.cache."""

    def _load(*args, **kwargs):
        return load_text_classification_dataset(*args, cache_dir=str(tmp_path / "hf_cache"), **kwargs)

    return _load


def _assert_standard(dataset: DatasetDict) -> None:
    assert list(dataset) == ["train", "validation", "test"]
    for split in dataset.values():
        assert split.column_names == ["text", "label"]
        assert split.features["text"] == Value("string")
        assert isinstance(split.features["label"], ClassLabel)


def _assert_disjoint(dataset: DatasetDict) -> None:
    texts = {name: set(split["text"]) for name, split in dataset.items()}
    assert not texts["train"] & texts["validation"]
    assert not texts["train"] & texts["test"]
    assert not texts["validation"] & texts["test"]


# ----------------------------------------------------------------------------------------------------------------------
# Built-in offline Rotten Tomatoes
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rotten_tomatoes() -> DatasetDict:
    return load_offline_rotten_tomatoes(seed=42)


def test_offline_rotten_tomatoes_sizes_and_balance(rotten_tomatoes):
    _assert_standard(rotten_tomatoes)
    assert {name: len(split) for name, split in rotten_tomatoes.items()} == {
        "train": 8530,
        "validation": 1066,
        "test": 1066,
    }
    assert Counter(rotten_tomatoes["train"]["label"]) == {0: 4265, 1: 4265}
    assert Counter(rotten_tomatoes["validation"]["label"]) == {0: 533, 1: 533}
    assert Counter(rotten_tomatoes["test"]["label"]) == {0: 533, 1: 533}
    assert rotten_tomatoes["train"].features["label"].names == ["neg", "pos"]
    assert label_names(rotten_tomatoes) == ["neg", "pos"]


def test_offline_rotten_tomatoes_texts_are_clean_and_disjoint(rotten_tomatoes):
    _assert_disjoint(rotten_tomatoes)
    all_texts = [t for split in rotten_tomatoes.values() for t in split["text"]]
    assert len(set(all_texts)) == len(all_texts) == 10662
    assert all(t == t.strip() and t for t in all_texts)
    validate_text_classification_splits(rotten_tomatoes, num_labels=2)


def test_offline_rotten_tomatoes_labels_follow_categories(rotten_tomatoes):
    frame = pd.read_csv(data.rotten_tomatoes_corpus_path(), usecols=["category", "text"])
    category = dict(zip(frame["text"].str.strip(), frame["category"]))
    train = rotten_tomatoes["train"].select(range(200))
    expected = {"neg": "rotten", "pos": "fresh"}
    names = train.features["label"].names
    assert all(category[text] == expected[names[label]] for text, label in zip(train["text"], train["label"]))


def test_offline_rotten_tomatoes_is_deterministic(rotten_tomatoes):
    again = load_text_classification_dataset(OFFLINE_DATASET_NAME, seed=42)
    for split in rotten_tomatoes:
        assert again[split]["text"] == rotten_tomatoes[split]["text"]
        assert again[split]["label"] == rotten_tomatoes[split]["label"]
    other = load_offline_rotten_tomatoes(seed=7)
    assert set(other["test"]["text"]) != set(rotten_tomatoes["test"]["text"])
    _assert_disjoint(other)


def test_offline_rotten_tomatoes_reads_the_packaged_csv_once_and_subsamples(monkeypatch, rotten_tomatoes):
    # Built in memory from one read of the packaged CSV: no `datasets` builder (Hub, hashing, cache files).
    def no_builder(*args, **kwargs):
        raise AssertionError("the offline dataset must not go through datasets.load_dataset")

    reads = []
    read_csv = pd.read_csv

    def counting_read_csv(path, *args, **kwargs):
        reads.append(str(path))
        return read_csv(path, *args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", no_builder)
    monkeypatch.setattr(pd, "read_csv", counting_read_csv)
    small = load_text_classification_dataset(OFFLINE_DATASET_NAME, max_train_samples=100)
    assert reads == [str(data.rotten_tomatoes_corpus_path())]
    assert all(split.cache_files == [] for split in small.values())
    assert len(small["train"]) == 100 and len(small["test"]) == 1066
    # 100 distinct rows of the same seed-42 train split; the evaluation splits are untouched.
    assert len(set(small["train"]["text"])) == 100
    assert set(small["train"]["text"]) <= set(rotten_tomatoes["train"]["text"])
    assert small["validation"]["text"] == rotten_tomatoes["validation"]["text"]
    assert small["test"]["text"] == rotten_tomatoes["test"]["text"]


# ----------------------------------------------------------------------------------------------------------------------
# Local files
# ----------------------------------------------------------------------------------------------------------------------


def test_single_csv_with_string_labels_is_encoded_and_carved(tmp_path, load):
    path = tmp_path / "colors.csv"
    _three_class_frame(20).to_csv(path, index=False)
    dataset = load(str(path), validation_size=0.1, test_size=0.2, seed=0)
    _assert_standard(dataset)
    _assert_disjoint(dataset)
    assert dataset["train"].features["label"].names == sorted(COLORS)
    assert {name: len(split) for name, split in dataset.items()} == {"train": 42, "validation": 6, "test": 12}
    # Stratified: every class is in every split, in proportion.
    assert Counter(dataset["test"]["label"]) == {0: 4, 1: 4, 2: 4}
    assert Counter(dataset["validation"]["label"]) == {0: 2, 1: 2, 2: 2}
    red = dataset["train"].features["label"].str2int("red")
    assert all(
        text.startswith("red")
        for text, label in zip(dataset["train"]["text"], dataset["train"]["label"])
        if label == red
    )
    again = load(str(path), validation_size=0.1, test_size=0.2, seed=0)
    assert again["test"]["text"] == dataset["test"]["text"]
    other = load(str(path), validation_size=0.1, test_size=0.2, seed=1)
    assert other["test"]["text"] != dataset["test"]["text"]


def test_int_sizes_and_max_train_samples(tmp_path, load):
    path = tmp_path / "colors.parquet"
    _three_class_frame(20).to_parquet(path)
    dataset = load(str(path), validation_size=6, test_size=9, max_train_samples=10)
    assert {name: len(split) for name, split in dataset.items()} == {"train": 10, "validation": 6, "test": 9}
    _assert_disjoint(dataset)


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".tsv", ".parquet"])
def test_file_formats(tmp_path, load, suffix):
    frame = _three_class_frame(10)
    path = tmp_path / f"data{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(frame.to_dict(orient="records")))
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif suffix == ".tsv":
        frame.to_csv(path, sep="\t", index=False)
    else:
        frame.to_parquet(path)
    dataset = load(str(path), validation_size=3, test_size=3)
    _assert_standard(dataset)
    assert sum(len(split) for split in dataset.values()) == 30
    assert label_names(dataset) == sorted(COLORS)


def test_column_aliases_are_detected(tmp_path, load, caplog):
    path = tmp_path / "glue_like.csv"
    frame = _three_class_frame(10).rename(columns={"text": "sentence", "label": "labels"})
    frame["idx"] = range(len(frame))
    frame.to_csv(path, index=False)
    with caplog.at_level(logging.INFO, logger="trainer_ext.data.loading"):
        dataset = load(str(path), validation_size=3, test_size=3)
    _assert_standard(dataset)
    assert "using 'sentence'" in caplog.text and "using 'labels'" in caplog.text


def test_explicit_columns_and_int_labels(tmp_path, load):
    path = tmp_path / "reviews.jsonl"
    rows = [{"body": f"review {i}", "stars": i % 3, "extra": "x"} for i in range(30)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    dataset = load(str(path), text_column="body", label_column="stars", validation_size=3, test_size=3)
    _assert_standard(dataset)
    assert dataset["train"].features["label"].names == ["0", "1", "2"]


def test_missing_label_column_names_available_columns(tmp_path, load):
    path = tmp_path / "nolabel.csv"
    pd.DataFrame({"text": ["a", "b"], "sentiment": ["pos", "neg"]}).to_csv(path, index=False)
    with pytest.raises(DataValidationError, match=r"no column 'label'.*\['text', 'sentiment'\].*label_column="):
        load(str(path))
    with pytest.raises(DataValidationError, match=r"no column 'body'.*text_column="):
        load(str(path), text_column="body", label_column="sentiment")


def test_ambiguous_aliases_are_an_error(tmp_path, load):
    path = tmp_path / "ambiguous.csv"
    pd.DataFrame({"sentence": ["a", "b"], "review": ["c", "d"], "label": [0, 1]}).to_csv(path, index=False)
    with pytest.raises(DataValidationError, match=r"several candidates \['sentence', 'review'\].*text_column="):
        load(str(path))


def test_directory_with_unlabelled_test_uses_validation_as_test(tmp_path, load):
    _three_class_frame(20, prefix="train ").to_csv(tmp_path / "train.csv", index=False)
    _three_class_frame(4, prefix="dev ").to_csv(tmp_path / "validation.csv", index=False)
    unlabelled = _three_class_frame(2, prefix="test ").assign(label=-1)
    unlabelled.to_csv(tmp_path / "test.csv", index=False)
    (tmp_path / "notes.txt").write_text("ignored")
    # String labels elsewhere do not matter: an all -1 split is unlabelled and dropped.
    dataset = load(str(tmp_path), validation_size=6)
    _assert_standard(dataset)
    _assert_disjoint(dataset)
    assert all(text.startswith("dev ") for text in dataset["test"]["text"]) and len(dataset["test"]) == 12
    assert all(text.startswith("train ") for text in dataset["validation"]["text"]) and len(dataset["validation"]) == 6
    assert len(dataset["train"]) == 54


def test_mixed_label_types_and_fractional_labels_are_errors(tmp_path, load):
    _three_class_frame(10).to_csv(tmp_path / "train.csv", index=False)
    _three_class_frame(2).assign(label=[0, 1] * 3).to_csv(tmp_path / "validation.csv", index=False)
    with pytest.raises(DataValidationError, match=r"mixed types.*all integers or all strings"):
        load(str(tmp_path))
    scores = tmp_path / "scores.csv"
    pd.DataFrame({"text": ["a", "b", "c"], "label": [0.0, 0.25, 1.0]}).to_csv(scores, index=False)
    with pytest.raises(DataValidationError, match=r"not whole numbers .*0\.25"):
        load(str(scores))


def test_labels_are_shared_across_splits(tmp_path, load):
    # "blue" only occurs in test: it must still get its own id, the same in every split.
    train = _three_class_frame(10)
    train = train[train["label"] != "blue"]
    train.to_csv(tmp_path / "train.csv", index=False)
    _three_class_frame(2, prefix="val ").to_csv(tmp_path / "validation.csv", index=False)
    _three_class_frame(2, prefix="test ").to_csv(tmp_path / "test.csv", index=False)
    dataset = load(data_files={split: str(tmp_path / f"{split}.csv") for split in ("train", "validation", "test")})
    for split in dataset.values():
        assert split.features["label"].names == ["blue", "green", "red"]
    assert Counter(dataset["test"]["label"]) == {0: 2, 1: 2, 2: 2}


def test_test_file_without_label_column_is_dropped(tmp_path, load):
    _three_class_frame(10).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame({"text": ["unlabelled a", "unlabelled b"]}).to_csv(tmp_path / "test.csv", index=False)
    dataset = load(str(tmp_path), validation_size=3, test_size=3)
    assert not any(text.startswith("unlabelled") for text in dataset["test"]["text"])
    assert len(dataset["test"]) == 3


def test_save_to_disk_directory(tmp_path, load):
    DatasetDict({"train": Dataset.from_pandas(_three_class_frame(10))}).save_to_disk(tmp_path / "saved")
    dataset = load(str(tmp_path / "saved"), validation_size=3, test_size=3)
    assert sum(len(split) for split in dataset.values()) == 30


def test_path_errors(tmp_path, load):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(str(tmp_path / "missing.csv"))
    (tmp_path / "other.csv").write_text("text,label\na,0\n")
    with pytest.raises(FileNotFoundError, match=r"no train file.*train\.<ext>"):
        load(str(tmp_path))
    with pytest.raises(ValueError, match="Unsupported file type"):
        load(data_files={"train": str(tmp_path / "data.xlsx")})
    with pytest.raises(ValueError, match="exactly one of"):
        load()
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\)"):
        load(str(tmp_path / "other.csv"), test_size=1.5)


def test_too_small_to_carve(tmp_path, load):
    path = tmp_path / "tiny.csv"
    pd.DataFrame({"text": ["a", "b", "c"], "label": [0, 1, 0]}).to_csv(path, index=False)
    with pytest.raises(DataValidationError, match="Cannot carve"):
        load(str(path), validation_size=2, test_size=2)


def test_invalid_rows_are_reported_by_the_loader(tmp_path, load):
    path = tmp_path / "blank.csv"
    frame = _three_class_frame(5)
    frame.loc[3, "text"] = "   "
    frame.to_csv(path, index=False)
    with pytest.raises(DataValidationError, match=r"split 'train': 1 of 15 texts .* first at rows \[3\]"):
        load(str(path))


# ----------------------------------------------------------------------------------------------------------------------
# Hub
# ----------------------------------------------------------------------------------------------------------------------


def test_hub_id_offline_raises_clear_error(monkeypatch, load):
    calls = []

    def offline_load_dataset(path, name=None, **kwargs):
        calls.append((path, name))
        raise ConnectionError(f"Couldn't reach '{path}' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(data.datasets, "load_dataset", offline_load_dataset)
    with pytest.raises(DatasetUnavailableError, match=r"Hub.*HF_HUB_OFFLINE.*local.*rotten_tomatoes_offline") as info:
        load("stanfordnlp/imdb", config_name="plain_text")
    assert calls == [("stanfordnlp/imdb", "plain_text")]
    assert isinstance(info.value.__cause__, ConnectionError)


def test_hub_dataset_is_normalized(monkeypatch, load):
    # A GLUE-like DatasetDict: `sentence`/`label` ClassLabel, extra `idx`, test labels hidden as -1.
    features = datasets.Features(
        {"sentence": Value("string"), "label": ClassLabel(names=["negative", "positive"]), "idx": Value("int32")}
    )

    def split(n, labelled=True):
        return Dataset.from_dict(
            {
                "sentence": [f"s{i}" for i in range(n)],
                "label": [i % 2 if labelled else -1 for i in range(n)],
                "idx": list(range(n)),
            },
            features=features,
        )

    glue = DatasetDict({"train": split(40), "validation": split(10), "test": split(10, labelled=False)})
    monkeypatch.setattr(data.datasets, "load_dataset", lambda *args, **kwargs: glue)
    dataset = load("nyu-mll/glue", config_name="sst2", validation_size=4)
    _assert_standard(dataset)
    assert label_names(dataset) == ["negative", "positive"]
    assert dataset["test"]["text"] == glue["validation"]["sentence"]
    assert len(dataset["validation"]) == 4 and len(dataset["train"]) == 36


# ----------------------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------------------


def _dataset(texts, labels, label_feature=None) -> Dataset:
    features = datasets.Features({"text": Value("string"), "label": label_feature}) if label_feature else None
    return Dataset.from_dict({"text": texts, "label": labels}, features=features)


def test_validate_accepts_good_data():
    good = _dataset(["a", "b", "c"], [0, 1, 2])
    validate_text_classification_dataset(good, num_labels=3)
    validate_text_classification_dataset(good)
    validate_text_classification_dataset(_dataset(["a", "b"], [0.0, 1.0]), num_labels=2)


def test_validate_empty():
    empty = _dataset(["a"], [0]).select([])
    with pytest.raises(DataValidationError, match=r"split 'train' is empty"):
        validate_text_classification_dataset(empty)
    with pytest.raises(DataValidationError, match=r"split 'validation' is empty"):
        validate_text_classification_dataset(empty, split_name="validation")


def test_validate_missing_columns():
    dataset = Dataset.from_dict({"sentence": ["a"], "label": [0]})
    with pytest.raises(DataValidationError, match=r"no column 'text'.*\['sentence', 'label'\].*text_column="):
        validate_text_classification_dataset(dataset)
    with pytest.raises(DataValidationError, match=r"no column 'target'.*label_column="):
        validate_text_classification_dataset(dataset, text_column="sentence", label_column="target")


def test_validate_string_labels():
    with pytest.raises(DataValidationError, match=r"are strings .*'pos'.*class_encode_column"):
        validate_text_classification_dataset(_dataset(["a", "b"], ["pos", "neg"]))


def test_validate_fractional_labels():
    with pytest.raises(DataValidationError, match=r"1 labels .* not whole numbers .*0\.5.*rows \[1\]"):
        validate_text_classification_dataset(_dataset(["a", "b"], [1.0, 0.5]))


def test_validate_missing_labels():
    with pytest.raises(DataValidationError, match=r"1 of 3 labels .* missing \(null\), first at rows \[2\]"):
        validate_text_classification_dataset(_dataset(["a", "b", "c"], [0, 1, None]))


def test_validate_labels_out_of_range():
    dataset = _dataset(["a", "b", "c", "d"], [0, 1, 2, 5])
    with pytest.raises(
        DataValidationError,
        match=r"2 labels .* outside \[0, 2\): values \[2, 5\], first at rows \[2, 3\].*num_labels and id2label",
    ):
        validate_text_classification_dataset(dataset, num_labels=2)
    validate_text_classification_dataset(dataset, num_labels=6)
    with pytest.raises(DataValidationError, match=r"outside \[0, 2\).*-1 usually marks unlabelled"):
        validate_text_classification_dataset(
            _dataset(["a", "b"], [0, -1], ClassLabel(names=["x", "y"])), split_name="test"
        )


def test_validate_class_label_range_without_num_labels():
    dataset = Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]}).cast_column("label", ClassLabel(names=["only"]))
    with pytest.raises(DataValidationError, match=r"outside \[0, 1\)"):
        validate_text_classification_dataset(dataset)


def test_validate_bad_texts():
    with pytest.raises(
        DataValidationError, match=r"3 of 5 texts .* missing, empty or whitespace-only, first at rows \[1, 2, 4\]"
    ):
        validate_text_classification_dataset(_dataset(["ok", "", " \t\n", "fine", None], [0, 1, 0, 1, 0]))
    non_string = Dataset.from_dict({"text": [1, 2], "label": [0, 1]})
    with pytest.raises(DataValidationError, match=r"type int64, but texts must be strings"):
        validate_text_classification_dataset(non_string)


def test_validate_respects_indices_mapping():
    dataset = _dataset(["", "a", "b"], [0, 1, 0]).select([1, 2])
    validate_text_classification_dataset(dataset)


def test_validate_splits_names_the_split():
    dataset = DatasetDict({"train": _dataset(["a"], [0]), "test": _dataset(["b"], [3])})
    with pytest.raises(DataValidationError, match=r"split 'test'"):
        validate_text_classification_splits(dataset, num_labels=2)


def _python_calls(function, *args, **kwargs) -> int:
    """How many Python and builtin function calls `function(*args, **kwargs)` makes (a row-by-row loop makes one or
    more per row; pyarrow compute makes none)."""
    count = 0

    def profile(frame, event, arg):
        nonlocal count
        count += event in ("call", "c_call")

    sys.setprofile(profile)
    try:
        function(*args, **kwargs)
    finally:
        sys.setprofile(None)
    return count


def test_validate_works_on_columns_not_rows():
    def make(n: int) -> Dataset:
        rng = np.random.default_rng(0)
        return _dataset([f"text {i}" for i in range(n)], rng.integers(0, 3, n).tolist())

    small, large = make(1_000), make(100_000)
    validate_text_classification_dataset(small, num_labels=3)  # warm-up: lazy imports, caches
    calls_small = _python_calls(validate_text_classification_dataset, small, num_labels=3)
    calls_large = _python_calls(validate_text_classification_dataset, large, num_labels=3)
    # 99,000 more rows, (almost) no more Python calls: the work is done by pyarrow, not a per-row loop.
    assert calls_large - calls_small < 1_000
    # And every row is still checked: a blank text and a bad label in the very last row are found.
    texts, labels = [f"text {i}" for i in range(100_000)], [0] * 100_000
    texts[-1] = " "
    with pytest.raises(DataValidationError, match=r"1 of 100000 texts .* first at rows \[99999\]"):
        validate_text_classification_dataset(_dataset(texts, labels), num_labels=3)
    labels[-1] = 3
    with pytest.raises(DataValidationError, match=r"1 labels .* outside \[0, 3\).* first at rows \[99999\]"):
        validate_text_classification_dataset(_dataset([f"text {i}" for i in range(100_000)], labels), num_labels=3)


# ----------------------------------------------------------------------------------------------------------------------
# Label helpers
# ----------------------------------------------------------------------------------------------------------------------


def test_label_names_and_mappings():
    assert label_names(_dataset(["a"], [0], ClassLabel(names=["neg", "pos"]))) == ["neg", "pos"]
    assert label_names(_dataset(["a", "b"], [0, 2])) == ["0", "1", "2"]
    assert label_names(_dataset(["a", "b"], ["pos", "neg"])) == ["neg", "pos"]
    id2label, label2id = id2label_label2id(["neg", "pos"])
    assert id2label == {0: "neg", 1: "pos"} and label2id == {"neg": 0, "pos": 1}
    with pytest.raises(ValueError, match=r"duplicates \['a'\]"):
        id2label_label2id(["a", "b", "a"])
