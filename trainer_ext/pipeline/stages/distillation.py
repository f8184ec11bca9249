"""The distillation stages: the student distilled against the teacher's logits.

- distillation_original: on the original training sentences only, the ablation row that shows what the transfer set
  adds (only when augmentation runs; otherwise `distillation` is that row);
- distillation: on the original sentences and the transfer set. When the selection stage ran, its shipped
  candidate is that model, and it is copied rather than trained again.

The teacher's logits on the original sentences are computed once for both (and every selection candidate); the
transfer set brings the logits the teacher gave it when labelling it."""

from __future__ import annotations

import shutil
from functools import partial
from typing import TYPE_CHECKING, Any

from datasets import Dataset, load_from_disk
from transformers import PreTrainedModel

from trainer_ext.data.transfer.augmentation import merge_with_original
from trainer_ext.files import write_atomic
from trainer_ext.pipeline.runner import PipelineError, Stage
from trainer_ext.pipeline.shared import candidate_dir
from trainer_ext.pipeline.stages.students import student_reads, train_student
from trainer_ext.pipeline.stages.teacher import load_teacher, teacher_logits

if TYPE_CHECKING:
    from trainer_ext.pipeline.pipeline import Pipeline


def original_with_logits(p: Pipeline, teacher: PreTrainedModel, teacher_tokenizer: Any) -> Dataset:
    """The training split with the teacher's logits (one pass for every distillation stage and candidate)."""
    logits = teacher_logits(p, teacher, teacher_tokenizer, "train")
    return p.data["train"].add_column("teacher_logits", logits.tolist())


def save_distillation_data(p: Pipeline, name: str, train: Dataset) -> None:
    """Each distillation stage's training rows with their logits, for benchmarks/ablation_seeds.py."""
    if p.is_main:
        write_atomic(p.out / "distillation_data" / name, partial(Dataset.save_to_disk, train))


def distillation_inputs(p: Pipeline) -> tuple[str, ...]:
    """The stages whose outputs a distilled student is trained from."""
    return ("data", "teacher", "augmentation") if p.args.augment else ("data", "teacher")


def distillation_train(p: Pipeline, teacher: PreTrainedModel, teacher_tokenizer: Any) -> Dataset:
    """The original sentences and the transfer set (when augmentation ran), with the teacher's logits."""
    train = original_with_logits(p, teacher, teacher_tokenizer)
    augmented = p.out / "augmentation" / "augmented"
    if p.args.augment:
        if not augmented.exists():
            raise PipelineError(f"The augmentation output {augmented} is missing; delete its stage marker.")
        # The transfer set keeps the logits the teacher gave it when labelling it: it never runs on them twice.
        train = merge_with_original(train, load_from_disk(str(augmented)))
    return train


def stage_distillation_original(p: Pipeline) -> None:
    """The ablation row: distilled on the original training sentences only (same student, settings and logits)."""
    teacher = load_teacher(p)
    train = original_with_logits(p, *teacher)
    save_distillation_data(p, "original", train)
    train_student(p, "student_distilled_original", train, teacher)


def stage_distillation(p: Pipeline) -> None:
    if p.selecting:
        # The selection stage trained this shape with these settings on this data: its model is copied, not trained
        # again (and its INT8 search comes with it, see the quantization stage).
        candidate = candidate_dir(p, p.shape)
        if not (candidate / "config.json").exists():
            raise PipelineError(f"The selection stage's model {candidate} is missing; delete {p.marker('selection')}.")
        if p.is_main:
            write_atomic(p.out / "student_distilled", partial(shutil.copytree, candidate))
        p.barrier()
        return
    teacher = load_teacher(p)
    train = distillation_train(p, *teacher)
    save_distillation_data(p, "transfer" if p.args.augment else "original", train)
    train_student(p, "student_distilled", train, teacher)


ORIGINAL = Stage(
    "distillation_original",
    stage_distillation_original,
    student_reads,
    skip=lambda p: None if p.args.augment else "no transfer set: distillation is this row",
)
STAGE = Stage(
    "distillation",
    stage_distillation,
    lambda p: distillation_inputs(p) + (("selection",) if p.selecting else ()),
)
