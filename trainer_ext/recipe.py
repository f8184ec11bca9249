"""Recipes: YAML files parsed into the same dataclasses as the Python API, with command-line overrides.

```yaml
run:                 # RunArguments: data, teacher, student, generator, output folder
  output_dir: outputs/rotten_tomatoes_offline
teacher_training:    # transformers.TrainingArguments (output_dir is set per stage)
  num_train_epochs: 1
student_training:    # DistillationTrainingArguments, used by both student runs
  distillation_loss: kl
augmentation:        # AugmentationArguments
  num_samples: 4000
quantization:        # QuantizationArguments
  approach: auto
card:                # CardArguments: model card metadata
  license: apache-2.0
profiles:            # named sets of overrides, chosen with --profile NAME
  quick: {run: {max_train_samples: 1000}}
```

Overrides on the command line: `--section.key value` (e.g. `--augmentation.num_samples 200`). An unknown section or
key is an error that lists the valid ones (and the closest match).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import TrainingArguments

from .arguments import DistillationTrainingArguments
from .augmentation import AugmentationArguments
from .quantization import QuantizationArguments


class RecipeError(ValueError):
    """The recipe cannot be used as written; the message says what to change."""


PACKAGED_TEACHER = "packaged:minilm"
PACKAGED_GENERATOR = "packaged:smollm2"


@dataclass
class RunArguments:
    """What to compress and where: the stages' inputs. Everything else is in the other sections."""

    output_dir: str = field(default="outputs/run", metadata={"help": "Every stage writes below this folder."})
    dataset: str = field(
        default="rotten_tomatoes_offline",
        metadata={"help": "Built-in name, local file/folder or Hub id (see load_text_classification_dataset)."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset config, e.g. sst2 for glue."})
    text_column: str = field(default="text", metadata={"help": "Text column of the raw data."})
    label_column: str = field(default="label", metadata={"help": "Label column of the raw data."})
    eval_split: str = field(default="validation", metadata={"help": "Split the quantization search measures."})
    test_split: str = field(default="test", metadata={"help": "Split every variant is finally measured on."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Subsample the training split."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Subsample the eval and test splits."})
    teacher: str = field(
        default=PACKAGED_TEACHER,
        metadata={"help": f"Teacher: {PACKAGED_TEACHER!r} (the packaged MiniLM), a local folder or a Hub id."},
    )
    teacher_fine_tune: str = field(
        default="auto",
        metadata={
            "help": "'auto' fine-tunes the teacher when it is not yet a classifier for these labels; 'true' always; "
            "'false' never.",
            "choices": ["auto", "true", "false"],
        },
    )
    student: str = field(
        default="bert-mini",
        metadata={
            "help": "A STUDENT_PRESETS name (built from the teacher, see student_init) or a local folder / Hub id of "
            "a model to start from (e.g. google/bert_uncased_L-4_H-256_A-4)."
        },
    )
    student_init: str = field(
        default="projected",
        metadata={
            "help": "How a preset student is built from the teacher: 'projected' (its layers, heads and neurons "
            "projected onto the principal directions of its hidden states on training text) or 'random' (only the "
            "embeddings projected, a random encoder).",
            "choices": ["projected", "random"],
        },
    )
    student_init_samples: int = field(
        default=512, metadata={"help": "Training sentences whose teacher hidden states give the projection basis."}
    )
    augment: bool = field(default=True, metadata={"help": "Run the augmentation stage (generator, relabelling)."})
    max_length: int = field(default=64, metadata={"help": "Tokenization length for training (the reference's 64)."})
    latency_runs: int = field(default=100, metadata={"help": "Timed batch-1 runs per variant in the benchmark."})
    seed: int = field(default=42, metadata={"help": "Seed for data, student initialisation and training."})

    def __post_init__(self) -> None:
        if self.teacher_fine_tune not in ("auto", "true", "false"):
            raise ValueError(f"teacher_fine_tune must be 'auto', 'true' or 'false', got {self.teacher_fine_tune!r}.")
        if self.student_init not in ("projected", "random"):
            raise ValueError(f"student_init must be 'projected' or 'random', got {self.student_init!r}.")
        if self.max_length < 8 or self.latency_runs < 1 or self.student_init_samples < 1:
            raise ValueError("max_length must be >= 8, and latency_runs and student_init_samples >= 1.")


@dataclass
class CardArguments:
    """Model card metadata (see write_model_card)."""

    model_name: str | None = field(default=None, metadata={"help": "Card title and model-index name."})
    repo_id: str | None = field(default=None, metadata={"help": "Hub repo id shown in the usage snippets."})
    license: str | None = field(default=None, metadata={"help": "License id, e.g. apache-2.0."})
    language: str | None = field(default="en", metadata={"help": "Language code."})
    dataset_id: str | None = field(default=None, metadata={"help": "Hub id of the evaluation dataset."})
    dataset_name: str | None = field(default=None, metadata={"help": "Pretty name of the evaluation dataset."})
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset config, e.g. sst2."})
    dataset_split: str | None = field(default=None, metadata={"help": "Split the accuracy was measured on."})
    base_model: str | None = field(default=None, metadata={"help": "Hub id the student was made from."})
    base_model_relation: str | None = field(default=None, metadata={"help": "finetune, quantized, ..."})
    tags: list[str] | None = field(default=None, metadata={"help": "Extra tags."})
    limitations: list[str] | None = field(default=None, metadata={"help": "Extra limitation lines."})


# Defaults the pipeline gives the Trainer sections (a recipe value wins). output_dir is always set per stage.
TRAINING_DEFAULTS: dict[str, Any] = {
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 128,
    "warmup_ratio": 0.1,
    "weight_decay": 0.01,
    "group_by_length": True,
    "eval_strategy": "no",
    "save_strategy": "no",
    "logging_steps": 50,
    "report_to": "none",
    "dataloader_pin_memory": False,
}

SECTIONS: dict[str, type] = {
    "run": RunArguments,
    "teacher_training": TrainingArguments,
    "student_training": DistillationTrainingArguments,
    "augmentation": AugmentationArguments,
    "quantization": QuantizationArguments,
    "card": CardArguments,
}
# Set by the pipeline for each stage; a recipe value would be silently ignored, so it is refused.
MANAGED_KEYS = {
    "teacher_training": {"output_dir"},
    "student_training": {"output_dir"},
    "augmentation": {"output_dir"},
}


@dataclass
class Recipe:
    run: RunArguments
    teacher_training: TrainingArguments
    student_training: DistillationTrainingArguments
    augmentation: AugmentationArguments
    quantization: QuantizationArguments
    card: CardArguments
    source: str | None = None
    profile: str | None = None
    raw: dict[str, dict[str, Any]] = field(default_factory=dict)


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


def _unknown_key_error(section: str, key: str, valid: list[str]) -> RecipeError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return RecipeError(f"Unknown key {section}.{key}.{hint} Valid keys of {section!r}: {', '.join(sorted(valid))}.")


def _check_keys(values: dict[str, dict[str, Any]]) -> None:
    for section, entries in values.items():
        if section not in SECTIONS:
            close = difflib.get_close_matches(section, list(SECTIONS), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise RecipeError(f"Unknown recipe section {section!r}.{hint} Valid sections: {', '.join(SECTIONS)}.")
        if not isinstance(entries, dict):
            raise RecipeError(f"Recipe section {section!r} must be a mapping of key: value, got {entries!r}.")
        valid = _field_names(SECTIONS[section])
        for key in entries:
            if key in MANAGED_KEYS.get(section, set()):
                raise RecipeError(
                    f"{section}.{key} is set by the pipeline for each stage; set run.output_dir instead."
                )
            if key not in valid:
                raise _unknown_key_error(section, key, valid)


def _field_type(cls: type, key: str) -> Any:
    hints = typing.get_type_hints(cls)
    return hints.get(key, str)


def coerce(value: Any, annotation: Any) -> Any:
    """A command-line string (or YAML scalar) converted to the field's type; YAML 1.1 reads '1e-4' as a string."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        for arg in args:
            try:
                return coerce(value, arg)
            except (TypeError, ValueError):
                continue
        return value
    if origin in (list, typing.List):  # noqa: UP006 - get_origin may return typing.List on old annotations
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        (item,) = typing.get_args(annotation) or (str,)
        return [coerce(v, item) for v in value]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "1", "yes"):
            return True
        if str(value).lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"expected an integer, got {value!r}")
        return int(value)
    if annotation is float:
        return float(value)
    if annotation is str:
        return str(value)
    return value


def _merge(base: dict[str, dict[str, Any]], overrides: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    merged = {section: dict(entries) for section, entries in base.items()}
    for section, entries in overrides.items():
        merged.setdefault(section, {}).update(entries)
    return merged


def parse_overrides(argv: list[str]) -> tuple[dict[str, dict[str, Any]], str | None]:
    """`--section.key value` / `--section.key=value` pairs and `--profile NAME` from a command line."""
    overrides: dict[str, dict[str, Any]] = {}
    profile = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise RecipeError(f"Unexpected argument {arg!r}: overrides look like --section.key value.")
        name, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(argv):
                raise RecipeError(f"{arg} needs a value.")
            value = argv[i + 1]
            i += 1
        i += 1
        if name == "profile":
            profile = value
            continue
        section, dot, key = name.partition(".")
        if not dot:
            raise RecipeError(
                f"Override {arg!r} names no section: write --section.key value, sections: {', '.join(SECTIONS)}."
            )
        overrides.setdefault(section, {})[key] = value
    return overrides, profile


def load_recipe(
    path: str | os.PathLike | None,
    overrides: dict[str, dict[str, Any]] | None = None,
    profile: str | None = None,
) -> Recipe:
    """Parse a recipe file (or the built-in defaults when `path` is None) with a profile and overrides applied."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise RecipeError(
                f"Recipe file {path} does not exist; the recipes shipped with trainer-ext are in recipes/."
            )
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise RecipeError(f"Recipe file {path} is not valid YAML: {err}") from err
        if not isinstance(raw, dict):
            raise RecipeError(f"Recipe file {path} must hold a mapping of sections, got {type(raw).__name__}.")
    profiles = raw.pop("profiles", {}) or {}
    values: dict[str, dict[str, Any]] = {k: (v or {}) for k, v in raw.items()}
    _check_keys(values)
    if profile is not None:
        if profile not in profiles:
            raise RecipeError(f"Unknown profile {profile!r}; this recipe has: {', '.join(profiles) or 'none'}.")
        _check_keys(profiles[profile])
        values = _merge(values, profiles[profile])
    if overrides:
        _check_keys(overrides)
        values = _merge(values, overrides)
    built: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        entries = dict(values.get(section, {}))
        try:
            typed = {k: coerce(v, _field_type(cls, k)) for k, v in entries.items()}
        except (TypeError, ValueError) as err:
            raise RecipeError(f"Recipe section {section!r}: {err}") from err
        if cls in (TrainingArguments, DistillationTrainingArguments):
            typed = {**TRAINING_DEFAULTS, **typed, "output_dir": "unset-by-recipe"}
        try:
            built[section] = cls(**typed)
        except (TypeError, ValueError) as err:
            raise RecipeError(f"Recipe section {section!r}: {err}") from err
    return Recipe(**built, source=str(path) if path else None, profile=profile, raw=values)
