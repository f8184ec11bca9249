"""Checks that a teacher, a student and their data can be distilled together, made when `DistillationTrainer` is
built so bad settings or data fail there and not hours into training; `DistillationError` says how to fix them."""

from __future__ import annotations

import re
from typing import Any

from trainer_ext.data.loading import DataValidationError, validate_label_column
from trainer_ext.training.arguments import DistillationTrainingArguments

_DEFAULT_LABEL = re.compile(r"^LABEL_\d+$")


class DistillationError(ValueError):
    """A teacher, student or dataset that cannot be distilled together; the message says how to fix it."""


def check_label_compatibility(teacher_config: Any, student_config: Any) -> None:
    """Teacher and student must predict the same labels in the same order, or the logits mean different things."""
    if teacher_config.num_labels != student_config.num_labels:
        raise DistillationError(
            f"The teacher predicts {teacher_config.num_labels} labels but the student {student_config.num_labels}. "
            "Build the student with the teacher's labels, e.g. `from_pretrained(..., num_labels=teacher.config."
            "num_labels, id2label=teacher.config.id2label, label2id=teacher.config.label2id)` or `build_student(teacher)`."
        )
    teacher_names = [str(teacher_config.id2label[i]) for i in range(teacher_config.num_labels)]
    student_names = [str(student_config.id2label[i]) for i in range(student_config.num_labels)]
    named = not any(_DEFAULT_LABEL.match(n) for n in teacher_names + student_names)
    if named and teacher_names != student_names:
        raise DistillationError(
            f"Teacher and student label orders differ: teacher {teacher_names}, student {student_names}. Logit i must "
            "mean the same label in both: give the student `id2label=teacher.config.id2label` (and label2id), or "
            "remap the teacher's head."
        )


def label_column(dataset: Any) -> str | None:
    """The dataset's label column (`labels`, `label` or `label_ids`), or None when it has none."""
    columns = getattr(dataset, "column_names", None) or []
    for name in ("labels", "label", "label_ids"):
        if name in columns:
            return name
    return None


def check_dataset(dataset: Any, split: str, num_labels: int | None, logits_column: str | None) -> None:
    """Cheap checks on a `datasets.Dataset`, so bad data fails here and not hours into training."""
    if dataset is None or not hasattr(dataset, "column_names"):
        return
    if len(dataset) == 0:
        raise DistillationError(f"The {split} dataset is empty: check the split name and any filtering applied to it.")
    column = label_column(dataset)
    if column is not None and (num_labels is not None or dataset.features[column].dtype == "string"):
        try:
            validate_label_column(dataset, column, num_labels, split_name=split, ignore_index=-100)
        except DataValidationError as err:
            raise DistillationError(str(err)) from err
    if logits_column and logits_column in dataset.column_names and num_labels is not None:
        width = len(dataset[0][logits_column])
        if width != num_labels:
            raise DistillationError(
                f"The {split} column {logits_column!r} has {width} logits per example but the student predicts "
                f"{num_labels} labels. Recompute the teacher logits with a teacher for the same labels."
            )


def check_distillation_data(
    train_dataset: Any,
    eval_dataset: Any,
    student: Any,
    args: DistillationTrainingArguments,
    has_teacher: bool,
) -> None:
    """The training and evaluation data checked against the student's labels and the distillation settings: a
    hard-label term needs labels, and the hidden-state and pooled terms need a teacher model (cached logits hold no
    hidden states)."""
    num_labels = getattr(getattr(student, "config", None), "num_labels", None)
    check_dataset(train_dataset, "train", num_labels, args.teacher_logits_column)
    if isinstance(eval_dataset, dict):
        for name, split in eval_dataset.items():
            check_dataset(split, f"eval ({name})", num_labels, None)
    else:
        check_dataset(eval_dataset, "eval", num_labels, None)
    if args.distillation_weight < 1.0 and train_dataset is not None and not label_column(train_dataset):
        raise DistillationError(
            f"distillation_weight={args.distillation_weight} mixes in a hard-label loss, but the training data "
            "has no 'label'/'labels' column. Add labels or set distillation_weight=1.0."
        )
    online = {
        name: weight
        for name in ("hidden_distillation_weight", "pooled_distillation_weight")
        if (weight := getattr(args, name)) > 0
    }
    if online and not has_teacher:
        settings = ", ".join(f"{name}={weight}" for name, weight in online.items())
        raise DistillationError(
            f"{settings} compares the teacher's hidden states, which cached teacher logits do not hold: pass "
            "`teacher_model=` (and `teacher_tokenizer=` when it tokenizes differently from the student), or set "
            f"{' and '.join(online)} to 0."
        )
