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

Overrides on the command line: `--section.key value` (e.g. `--augmentation.num_samples 200`; a list as
`--quantization.optimization_levels 0,2`). An unknown section or key is an error that lists the valid ones (and the
closest match). Each section is parsed by `transformers.HfArgumentParser` over its dataclass: recipe values are the
parser's defaults and overrides its command line, so types, choices and conversions are exactly the CLI's.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from transformers import HfArgumentParser, TrainingArguments

from trainer_ext.data.transfer.augmentation import AugmentationArguments
from trainer_ext.deployment.quantization import QuantizationArguments
from trainer_ext.reporting.cards import CardArguments
from trainer_ext.training.arguments import DistillationTrainingArguments
from trainer_ext.training.students import PRETRAINED_STUDENTS, STUDENT_PRESETS, pretrained_student, teacher_layers


class RecipeError(ValueError):
    """The recipe cannot be used as written; the message says what to change."""


PACKAGED_TEACHER = "packaged:minilm"
PACKAGED_MPNET = "packaged:mpnet"
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
        metadata={
            "help": f"Teacher: {PACKAGED_TEACHER!r} (the packaged MiniLM, 6x384), {PACKAGED_MPNET!r} (the packaged "
            "all-mpnet-base-v2, 12x768, unpacked once into the cache), a local folder or a Hub id."
        },
    )
    teacher_fine_tune: bool | None = field(
        default=None,
        metadata={
            "help": "Fine-tune the teacher on the training split: true always, false never, unset (null) when it is "
            "not yet a classifier for these labels."
        },
    )
    teacher_patience: int | None = field(
        default=2,
        metadata={
            "help": "Fine-tune the teacher to a validation plateau: evaluate on the eval split four times an epoch, "
            "keep the best, stop after this many evaluations without improvement; the teacher_training budget "
            "(max_steps, else num_train_epochs) is then an upper bound. Null: train for the whole budget, no "
            "evaluation, keep the last."
        },
    )
    student: list[str] = field(
        default_factory=lambda: ["bert-mini"],
        metadata={
            "help": "The student, or a list of candidates to choose from by the budget below (fastest first). Each is "
            f"a preset ({', '.join(STUDENT_PRESETS)}: built from student_init_from or the teacher, see student_init), "
            "'teacher-layers-K' (K of the teacher's layers at its width) or a local folder / Hub id of a model to "
            "start from (e.g. google/bert_uncased_L-4_H-256_A-4); 'minilm' is the packaged pre-trained MiniLM in its "
            "own shape (6 x 384, its own tokenizer) and 'minilm-layers-K' K of its layers."
        },
    )
    max_accuracy_drop: float | None = field(
        default=None,
        metadata={
            "help": "Accuracy budget: the shipped student's INT8 model may be at most this many points below the "
            "teacher on the eval split. With several candidates the fastest that meets it is shipped."
        },
    )
    max_latency_ms: float | None = field(
        default=None,
        metadata={
            "help": "Latency budget: the shipped student's INT8 model at batch 1, each sentence at its own length "
            "(the quantization search's real_length shape), in milliseconds on this machine."
        },
    )
    student_init: Literal["projected", "random"] = field(
        default="projected",
        metadata={
            "help": "How a preset student is built from the teacher: 'projected' (its layers, heads and neurons "
            "projected onto the principal directions of its hidden states on training text) or 'random' (only the "
            "embeddings projected, a random encoder)."
        },
    )
    student_init_from: str | None = field(
        default=None,
        metadata={
            "help": "The model a preset student is built from: unset (null) for the teacher, or a packaged name, "
            "local folder or Hub id (e.g. 'packaged:minilm', a smaller pre-trained encoder, narrowed to the preset). "
            "The student then has that model's tokenizer; the teacher reads the raw text with its own."
        },
    )
    student_init_samples: int = field(
        default=512, metadata={"help": "Training sentences whose teacher hidden states give the projection basis."}
    )
    precision: Literal["auto", "fp32", "bf16"] = field(
        default="auto",
        metadata={
            "help": "Training and teacher/generator inference precision: 'auto' detects bf16 support (AMX, "
            "AVX512-BF16, a CUDA GPU) and, where present, times FP32 and bf16 autocast on each stage's model and keeps "
            "the faster; 'fp32' or 'bf16' everywhere. ONNX export and latency measurement always use FP32 inputs."
        },
    )
    augment: bool = field(default=True, metadata={"help": "Run the augmentation stage (generator, relabelling)."})
    max_length: int = field(default=64, metadata={"help": "Tokenization length for training (the reference's 64)."})
    latency_runs: int = field(default=100, metadata={"help": "Timed batch-1 runs per variant in the benchmark."})
    seed: int = field(default=42, metadata={"help": "Seed for data, student initialisation and training."})

    def __post_init__(self) -> None:
        if isinstance(self.student, str):  # `student: bert-mini` in a recipe, or a comma-separated override
            self.student = [name.strip() for name in self.student.split(",") if name.strip()]
        self.student = list(self.student)
        if not self.student:
            raise ValueError("student is empty: name at least one student, e.g. [bert-tiny, bert-mini].")
        for name in self.student:
            if (
                (name.startswith("bert-") and name not in STUDENT_PRESETS)
                or (name.startswith("teacher-layers") and not teacher_layers(name))
                or (name.startswith("minilm") and not pretrained_student(name))
            ):
                known = [*STUDENT_PRESETS, "teacher-layers-6", *PRETRAINED_STUDENTS, "minilm-layers-3"]
                close = difflib.get_close_matches(name, known, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ValueError(
                    f"Unknown student shape {name!r}.{hint} Choose presets from {', '.join(STUDENT_PRESETS)}, "
                    "'teacher-layers-K' with K >= 1, the pre-trained 'minilm' or 'minilm-layers-K', or a model "
                    "folder / Hub id."
                )
        if len(set(self.student)) < len(self.student):
            raise ValueError(f"student lists a candidate twice: {self.student}.")
        if len(self.student) > 1 and self.max_accuracy_drop is None and self.max_latency_ms is None:
            raise ValueError(
                f"student lists {len(self.student)} candidates but no budget to choose by: set max_accuracy_drop "
                "(points below the teacher) and/or max_latency_ms, or name one student."
            )
        if self.max_accuracy_drop is not None and not 0 <= self.max_accuracy_drop <= 100:
            raise ValueError(
                f"max_accuracy_drop is in accuracy points below the teacher, between 0 and 100; got "
                f"{self.max_accuracy_drop:g}."
            )
        if self.max_latency_ms is not None and not self.max_latency_ms > 0:
            raise ValueError(f"max_latency_ms must be a positive number of milliseconds, got {self.max_latency_ms:g}.")
        if self.student_init not in ("projected", "random"):
            raise ValueError(f"student_init must be 'projected' or 'random', got {self.student_init!r}.")
        if self.teacher_patience is not None and self.teacher_patience < 1:
            raise ValueError(f"teacher_patience must be >= 1 evaluations (or null), got {self.teacher_patience}.")
        if self.max_length < 8 or self.latency_runs < 1 or self.student_init_samples < 1:
            raise ValueError("max_length must be >= 8, and latency_runs and student_init_samples >= 1.")


@dataclass
class _StageDefaults:
    """Defaults of a recipe's training stages, redeclared over `TrainingArguments`' (trl's way).

    Each stage saves its finished model itself and measures it in the benchmark stage, so no checkpoints and no
    evaluation during training; sentences vary from 3 to 64 tokens, so batches are grouped by length; no reporting
    integrations, and no pinned memory on CPU-only machines.
    """

    output_dir: str | None = field(default=None, metadata={"help": "Set by the pipeline for each stage."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Training batch size per process."})
    per_device_eval_batch_size: int = field(default=128, metadata={"help": "Evaluation batch size per process."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Share of the steps spent warming up."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    group_by_length: bool = field(default=True, metadata={"help": "Batch sentences of similar length together."})
    eval_strategy: str = field(default="no", metadata={"help": "No evaluation during training."})
    save_strategy: str = field(default="no", metadata={"help": "No checkpoints: each stage saves its model."})
    logging_steps: float = field(default=50, metadata={"help": "Log the loss every this many steps."})
    report_to: str | None = field(default="none", metadata={"help": "Reporting integrations (none by default)."})
    dataloader_pin_memory: bool = field(default=False, metadata={"help": "Pin memory (GPU only)."})


@dataclass
class TeacherTrainingArguments(_StageDefaults, TrainingArguments):
    """`TrainingArguments` of the teacher stage, with the stage defaults of `_StageDefaults`."""


@dataclass
class StudentTrainingArguments(_StageDefaults, DistillationTrainingArguments):
    """`DistillationTrainingArguments` of both student stages, with the stage defaults of `_StageDefaults`."""


SECTIONS: dict[str, type] = {
    "run": RunArguments,
    "teacher_training": TeacherTrainingArguments,
    "student_training": StudentTrainingArguments,
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


class _SectionParser(HfArgumentParser):
    """An `HfArgumentParser` for one recipe section whose errors are `RecipeError`s naming the section."""

    def __init__(self, section: str) -> None:
        super().__init__(SECTIONS[section], prog=section, add_help=False)
        self.section = section

    def error(self, message: str) -> typing.NoReturn:
        # argparse says "argument --key/--key-alias: ..."; name the recipe key instead.
        key = re.match(r"argument --(\w+)", message)
        message = re.sub(r"argument --(\w+)(/--[\w-]+)?", rf"{self.section}.\1", message).rstrip(".")
        invalid = re.search(r"invalid (\w+) value", message)
        if key and invalid:  # argparse names the type; say what to give instead
            example = {"float": "a number such as 3 or 1e-4", "int": "a whole number", "choice": "one of the choices"}
            kind = example.get(invalid.group(1), f"a {invalid.group(1)}")
            message += f". Give {kind}: --{self.section}.{key.group(1)} VALUE"
        raise RecipeError(f"Recipe section {self.section!r}: {message}.")

    def build(self, values: dict[str, Any], overrides: dict[str, str]) -> Any:
        """The section's dataclass from recipe values (YAML types) and command-line overrides (strings).

        The recipe values become the parser's defaults, the overrides its command line. argparse converts a string
        default with the field's type, so YAML 1.1's '1e-4' string still becomes a float.
        """
        self.set_defaults(**values)
        hints = typing.get_type_hints(SECTIONS[self.section])
        argv = []
        for key, value in overrides.items():
            if str(value).lower() in ("null", "none") and type(None) in typing.get_args(hints[key]):
                self.set_defaults(**{key: None})  # argparse would keep "null" as a string for a `str | None` field
                continue
            is_list = list in (typing.get_origin(hints[key]), *map(typing.get_origin, typing.get_args(hints[key])))
            argv += [f"--{key}", *(str(value).replace(",", " ").split() if is_list else [str(value)])]
        try:
            (built,) = self.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
        except RecipeError:
            raise
        except (TypeError, ValueError) as err:  # raised by the dataclass's own validation
            raise RecipeError(f"Recipe section {self.section!r}: {err}") from err
        return built


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
    overrides = overrides or {}
    _check_keys(overrides)
    built = {
        section: _SectionParser(section).build(values.get(section, {}), overrides.get(section, {}))
        for section in SECTIONS
    }
    values = _merge(values, overrides)
    return Recipe(**built, source=str(path) if path else None, profile=profile, raw=values)
