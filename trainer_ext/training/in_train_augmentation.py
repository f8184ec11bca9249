"""The augmentation `DistillationTrainer(augmentation_args=...)` runs at the start of `train()`: its settings checked
when the trainer is built, then label-conditioned generation (`augmentation.augment_training_data`) whose sentences,
relabelled by the teacher, are added to the training data."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from transformers import PreTrainedTokenizerBase

from trainer_ext.data.transfer.augmentation import AUGMENTATION_DIR, AugmentationArguments, augment_training_data
from trainer_ext.training.arguments import DistillationTrainingArguments
from trainer_ext.training.checks import DistillationError, label_column
from trainer_ext.training.distillation_teacher import DistillationTeacher


def check_augmentation(
    teacher: DistillationTeacher, student_tokenizer: Any, train_dataset: Any, args: DistillationTrainingArguments
) -> None:
    """Refuse augmentation settings that cannot work: generation needs a teacher to label it, the student's
    tokenizer, cached teacher logits, and raw text and labels to learn from."""
    if teacher.model is None:
        raise DistillationError(
            "augmentation_args needs a teacher_model: generated sentences are labelled by the teacher."
        )
    if not isinstance(student_tokenizer, PreTrainedTokenizerBase):
        raise DistillationError("augmentation_args needs processing_class= (the student's tokenizer).")
    if not args.cache_teacher_logits:
        raise DistillationError("augmentation_args needs cache_teacher_logits=True: generated text is labelled once.")
    columns = getattr(train_dataset, "column_names", None) or []
    text_column = args.teacher_text_column
    if text_column not in columns or label_column(train_dataset) is None:
        raise DistillationError(
            f"Augmentation learns from the raw text and labels, but the training data has only {columns}. Keep "
            f"the {text_column!r} and label columns when tokenizing."
        )


def augment_in_training(
    train_dataset: Any,
    eval_dataset: Any,
    augmentation_args: AugmentationArguments,
    exclude_texts: Iterable[str],
    *,
    teacher: DistillationTeacher,
    student_tokenizer: PreTrainedTokenizerBase,
    args: DistillationTrainingArguments,
    output_dir: str,
) -> tuple[Any, dict[str, Any]]:
    """`train_dataset` (its teacher logits already added) with generated, teacher-relabelled examples appended, their
    teacher logits included, and the augmentation's statistics.

    Generation never reproduces `exclude_texts` nor the evaluation data's texts, which an INT8 labelling teacher is
    also checked on. The augmentation's folder defaults to `<output_dir>/augmentation`, so an interrupted run resumes
    from the finished shards.
    """
    text_column = args.teacher_text_column
    eval_texts = []  # never generated, and what an INT8 labelling teacher is checked on
    eval_sets = eval_dataset.values() if isinstance(eval_dataset, dict) else [eval_dataset]
    for split in eval_sets:
        if split is not None and text_column in (getattr(split, "column_names", None) or []):
            eval_texts.extend(split[text_column])
    exclude = list(exclude_texts) + eval_texts
    if augmentation_args.output_dir is None:  # resumable by default, like the teacher-logit cache
        augmentation_args = replace(augmentation_args, output_dir=os.path.join(output_dir, AUGMENTATION_DIR))
    return augment_training_data(
        train_dataset,
        augmentation_args,
        teacher=teacher.model,
        teacher_tokenizer=teacher.tokenizer or student_tokenizer,
        exclude_texts=exclude,
        text_column=text_column,
        label_column=label_column(train_dataset),
        tokenizer=student_tokenizer,
        logits_column=args.teacher_logits_column,
        labelling_texts=eval_texts,
    )
