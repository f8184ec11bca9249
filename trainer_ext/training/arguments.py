"""Configuration dataclasses. Every field has a default and a help text, so `HfArgumentParser` turns it into a CLI flag
and a recipe key with no extra code."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

from transformers import TrainingArguments

DistillationLoss = Literal["mse", "kl", "ce"]
DISTILLATION_LOSSES = DistillationLoss.__args__


def parse_layer_map(value: dict | list | str | None) -> dict[int, int] | None:
    """A student-to-teacher hidden layer map as `{student_layer: teacher_layer}` (0 = the embedding output).

    Accepts a dict, a list whose i-th entry is the teacher layer for student layer i, or the dict as a JSON string
    (the command-line form, as `TrainingArguments` takes its dict fields).
    """
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else None
        except json.JSONDecodeError as err:
            raise ValueError(
                f'hidden_layer_map={value!r} is not JSON: write a mapping such as \'{{"2": 4, "4": 8}}\'.'
            ) from err
    if not value:
        return None
    if isinstance(value, (list, tuple)):
        value = dict(enumerate(value))
    if not isinstance(value, dict):
        raise ValueError(f"hidden_layer_map must map student layers to teacher layers, got {value!r}.")
    return {int(k): int(v) for k, v in value.items()}


@dataclass
class DistillationTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the knowledge-distillation settings of `DistillationTrainer`.

    The defaults reproduce the reference study: mean squared error between student and teacher logits, with no
    hard-label term (`distillation_weight=1.0`).
    """

    distillation_loss: DistillationLoss = field(
        default="mse",
        metadata={
            "help": "Loss between student and teacher logits: 'mse' (on raw logits, as in the reference study), "
            "'kl' (Hinton: KL(teacher_T || student_T) * T^2, batchmean) or 'ce' (soft cross-entropy * T^2)."
        },
    )
    temperature: float = field(
        default=2.0,
        metadata={"help": "Softmax temperature T for the 'kl' and 'ce' losses (unused by 'mse'). Must be > 0."},
    )
    distillation_weight: float = field(
        default=1.0,
        metadata={
            "help": "Weight of the teacher term in [0, 1]; the hard-label cross-entropy gets 1 - distillation_weight. "
            "1.0 is the reference's pure logit-matching setup."
        },
    )
    hidden_distillation_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of an extra MSE between mapped student and teacher hidden states (0 disables it). "
            "Needs the teacher online (hidden states are not cached) and the same tokenizer for both models."
        },
    )
    pooled_distillation_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of an extra MSE between the student's mean-pooled last hidden state (over real tokens), "
            "through a learned linear projection to the teacher's width, and the teacher's (0 disables it). Unlike "
            "hidden_distillation_weight, which matches token positions and so needs one tokenizer for both models, "
            "it works across tokenizers (say an MPNet teacher and a MiniLM student). Needs the teacher online "
            "(`teacher_model=`, plus `teacher_tokenizer=` when it tokenizes differently): cached logits hold no "
            "hidden states."
        },
    )
    hidden_layer_map: dict[int, int] | str | None = field(
        default=None,
        metadata={
            "help": "Student-to-teacher hidden layer map {student: teacher} (0 = embeddings; a JSON string on the "
            "command line, a mapping or a list in YAML). Default: the teacher "
            "layers a build_student student started from (config.trainer_ext_teacher_layers), else student layer i "
            "maps to teacher layer round(i * teacher_layers / student_layers)."
        },
    )
    cache_teacher_logits: bool = field(
        default=True,
        metadata={
            "help": "Run the teacher once per training example before training and reuse its logits every epoch "
            "(stored under output_dir, keyed to the data and the teacher). Disable to run it on every batch."
        },
    )
    teacher_logits_column: str = field(
        default="teacher_logits",
        metadata={"help": "Dataset column holding teacher logits. A train set that has it needs no teacher model."},
    )
    teacher_text_column: str = field(
        default="text",
        metadata={
            "help": "Raw text column the teacher tokenizes itself when its tokenizer differs from the student's."
        },
    )
    teacher_max_length: int = field(
        default=128,
        metadata={"help": "Truncation length for the teacher's own tokenizer (raw-text mode)."},
    )
    teacher_batch_size: int | None = field(
        default=None,
        metadata={"help": "Batch size for computing teacher logits. Default: per_device_eval_batch_size."},
    )
    teacher_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Where cached teacher logits are stored. Default: <output_dir>/_teacher_logits."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.distillation_loss not in DISTILLATION_LOSSES:
            raise ValueError(
                f"distillation_loss={self.distillation_loss!r} is not supported; choose one of {DISTILLATION_LOSSES}."
            )
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}.")
        if not 0.0 <= self.distillation_weight <= 1.0:
            raise ValueError(f"distillation_weight must be in [0.0, 1.0], got {self.distillation_weight}.")
        if self.hidden_distillation_weight < 0:
            raise ValueError(f"hidden_distillation_weight must be >= 0, got {self.hidden_distillation_weight}.")
        if self.pooled_distillation_weight < 0:
            raise ValueError(f"pooled_distillation_weight must be >= 0, got {self.pooled_distillation_weight}.")
        if self.teacher_max_length < 1:
            raise ValueError(f"teacher_max_length must be >= 1, got {self.teacher_max_length}.")
        # Parsed now, so a malformed map fails here and not at the first training step.
        self.hidden_layer_map = parse_layer_map(self.hidden_layer_map)
