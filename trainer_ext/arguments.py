"""Configuration dataclasses. Every field has a default and a help text, so `HfArgumentParser` turns it into a CLI flag
and a recipe key with no extra code."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

DISTILLATION_LOSSES = ("mse", "kl", "ce")


def parse_layer_map(value: str | dict | list | None) -> dict[int, int] | None:
    """Parse a student-to-teacher hidden layer map.

    Accepts a dict `{student_layer: teacher_layer}`, a list whose i-th entry is the teacher layer for student layer i,
    or a string `"1:2,2:4"` (the CLI / YAML form). Layer 0 is the embedding output, as in `output_hidden_states`.
    """
    if value is None or value == "" or value == {}:
        return None
    if isinstance(value, dict):
        return {int(k): int(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return {i: int(v) for i, v in enumerate(value)}
    if isinstance(value, str):
        pairs = {}
        for item in value.split(","):
            student, sep, teacher = item.strip().partition(":")
            if not sep:
                raise ValueError(
                    f"hidden_layer_map={value!r} is not of the form 'student:teacher,...' (for example '2:4,4:8')."
                )
            pairs[int(student)] = int(teacher)
        return pairs
    raise TypeError(f"hidden_layer_map must be a dict, a list or a 'student:teacher,...' string, not {type(value)}.")


@dataclass
class DistillationTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the knowledge-distillation settings of `DistillationTrainer`.

    The defaults reproduce the reference study: mean squared error between student and teacher logits, with no
    hard-label term (`distillation_weight=1.0`).
    """

    distillation_loss: str = field(
        default="mse",
        metadata={
            "help": "Loss between student and teacher logits: 'mse' (on raw logits, as in the reference study), "
            "'kl' (Hinton: KL(teacher_T || student_T) * T^2, batchmean) or 'ce' (soft cross-entropy * T^2).",
            "choices": list(DISTILLATION_LOSSES),
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
    hidden_layer_map: str | None = field(
        default=None,
        metadata={
            "help": "Student-to-teacher hidden layer map, 'student:teacher,...' (0 = embeddings). Default: the teacher "
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
        metadata={"help": "Where cached teacher logits are stored. Default: <output_dir>/teacher_logits."},
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
        if self.teacher_max_length < 1:
            raise ValueError(f"teacher_max_length must be >= 1, got {self.teacher_max_length}.")
        # Validate the map's syntax now, not at the first training step.
        parse_layer_map(self.hidden_layer_map)
