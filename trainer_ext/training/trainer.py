"""`DistillationTrainer`: a drop-in `Trainer` that adds a knowledge-distillation loss from a teacher model.

The trainer ties the parts into `Trainer`'s loop: the teacher side (`distillation_teacher`), the loss assembly
(`objective`), the learned projections (`projections`), the set-up checks (`checks`) and the in-train augmentation
(`in_train_augmentation`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainingArguments
from transformers.utils import logging

from trainer_ext.data.transfer.augmentation import AugmentationArguments
from trainer_ext.training.arguments import DistillationTrainingArguments
from trainer_ext.training.checks import DistillationError, check_distillation_data, check_label_compatibility
from trainer_ext.training.distillation_teacher import TEACHER_INPUT_PREFIX, DistillationTeacher, TeacherLogitsCollator
from trainer_ext.training.in_train_augmentation import augment_in_training, check_augmentation
from trainer_ext.training.objective import DistillationObjective
from trainer_ext.training.projections import POOLED_PROJECTION_FILE, PROJECTION_FILE, StudentProjections

__all__ = [
    "POOLED_PROJECTION_FILE",
    "PROJECTION_FILE",
    "TEACHER_INPUT_PREFIX",
    "DistillationError",
    "DistillationTrainer",
    "TeacherLogitsCollator",
    "check_label_compatibility",
]

logger = logging.get_logger(__name__)


def _batch_size(batch: Any) -> int:
    """Examples in a collated batch: the first dimension of its first tensor."""
    values = batch.values() if hasattr(batch, "values") else batch
    for value in values:
        if torch.is_tensor(value) and value.dim() > 0:
            return value.shape[0]
    return 0


class DistillationTrainer(Trainer):
    """A `Trainer` that distils a teacher into the model being trained.

    With no `teacher_model` and no teacher-logits column in the training data it behaves exactly like `Trainer`.
    With a teacher, the teacher's logits are computed once before training (see `trainer_ext.training.teacher_logits`),
    stored under the output directory keyed to the data and the teacher, and the loss becomes

        (1 - distillation_weight) * CE(student, labels) + distillation_weight * D(student, teacher)
        + hidden_distillation_weight * MSE(project(student hidden), teacher hidden)
        + pooled_distillation_weight * MSE(project(mean_pool(student last hidden)), mean_pool(teacher last hidden))

    where D is `args.distillation_loss`. Training data that already has a `teacher_logits` column needs no teacher
    (the hidden-state and pooled terms do: they run it on every batch).

    Args (beyond `Trainer`'s):
        teacher_model: a sequence-classification model or a path/Hub id to load one from.
        teacher_tokenizer: the teacher's tokenizer when it differs from the student's; the teacher then reads the raw
            `args.teacher_text_column` of the training data (for the pooled term, tokenized once into `teacher_*`
            columns before training). Loaded from `teacher_model` when that is a path.
        augmentation_args: run label-conditioned generation (`augmentation.augment_training_data`) at the start of
            `train()`: generated sentences are relabelled by the teacher and added to the training data before
            distillation. Its `output_dir` defaults to `<output_dir>/augmentation` (where `ModelCardCallback` finds
            the statistics), so an interrupted run resumes from the finished shards.
        augmentation_exclude_texts: texts generation must never reproduce (say, the test split); the evaluation
            data's texts are always excluded.
    """

    def __init__(
        self,
        model: PreTrainedModel | nn.Module | None = None,
        args: TrainingArguments | None = None,
        data_collator: Callable | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        model_init: Callable[..., PreTrainedModel] | None = None,
        compute_loss_func: Callable | None = None,
        compute_metrics: Callable | None = None,
        callbacks: list | None = None,
        optimizers: tuple = (None, None),
        optimizer_cls_and_kwargs: tuple | None = None,
        preprocess_logits_for_metrics: Callable | None = None,
        *,
        teacher_model: PreTrainedModel | str | os.PathLike | None = None,
        teacher_tokenizer: PreTrainedTokenizerBase | str | None = None,
        augmentation_args: AugmentationArguments | None = None,
        augmentation_exclude_texts: Iterable[str] | None = None,
    ) -> None:
        if args is None:
            args = DistillationTrainingArguments(output_dir="trainer_output")
        # A plain TrainingArguments works too (drop-in); distillation settings then take their defaults.
        self.distillation_args = (
            args
            if isinstance(args, DistillationTrainingArguments)
            else DistillationTrainingArguments(output_dir=args.output_dir, report_to="none")
        )
        dargs = self.distillation_args
        student_tokenizer = processing_class if isinstance(processing_class, PreTrainedTokenizerBase) else None
        self.teacher = DistillationTeacher(teacher_model, teacher_tokenizer, student_tokenizer, dargs)

        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            model_init=model_init,
            compute_loss_func=compute_loss_func,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )

        self.logits_column = dargs.teacher_logits_column
        has_logits_column = self.logits_column in (getattr(self.train_dataset, "column_names", None) or [])
        has_teacher = self.teacher_model is not None
        self.distilling = has_teacher or has_logits_column
        self.projections = StudentProjections()
        self.distillation_objective = DistillationObjective(dargs, self.projections, online=has_teacher)
        self.augmentation_args = augmentation_args
        self.augmentation_exclude_texts = list(augmentation_exclude_texts or [])
        self.augmentation_stats: dict[str, Any] | None = None
        # Examples in the current gradient-accumulation window, counted when the loss must be normalised over it.
        self._window_examples: torch.Tensor | int | None = None
        if augmentation_args is not None:
            check_augmentation(self.teacher, self.processing_class, self.train_dataset, dargs)
        if not self.distilling:
            return

        check_distillation_data(self.train_dataset, self.eval_dataset, self.model, dargs, has_teacher)
        if has_teacher:
            self.teacher.setup(self.model, self.train_dataset, has_logits_column, self.accelerator)
            self.projections.setup(self.model, self.teacher_model, dargs, self.accelerator)
        # Collators only know model inputs; the logits (and the teacher's own tokens) travel beside them.
        self.data_collator = self.teacher.collator(self.data_collator)

    # ------------------------------------------------------------------------------------------- the teacher side
    @property
    def teacher_model(self) -> PreTrainedModel | None:
        """The teacher (prepared by the accelerator once the trainer is built), or None when the data holds its logits."""
        return self.teacher.model

    @property
    def teacher_tokenizer(self) -> PreTrainedTokenizerBase | None:
        """The teacher's own tokenizer, kept only when it tokenizes differently from the student."""
        return self.teacher.tokenizer

    @property
    def teacher_reads_text(self) -> bool:
        """Whether the teacher reads the raw text with its own tokenizer instead of the student's token ids."""
        return self.teacher.reads_text

    def train(self, *args: Any, **kwargs: Any):
        # Augmentation is long work that must finish before the train dataloader is built: it runs here, once (not
        # in __init__, so building a trainer stays cheap, and not in a dataloader getter).
        if self.augmentation_args is not None and self.augmentation_stats is None:
            self._augment_training_data()
        self._window_examples = None
        try:
            return super().train(*args, **kwargs)
        finally:
            self._window_examples = None

    def _augment_training_data(self) -> None:
        """Append generated, teacher-relabelled examples (their teacher logits included) to the training data."""
        self.prepare_teacher_logits()  # the original rows' logits first; generated rows bring their own
        original = len(self.train_dataset)
        self.train_dataset, self.augmentation_stats = augment_in_training(
            self.train_dataset,
            self.eval_dataset,
            self.augmentation_args,
            self.augmentation_exclude_texts,
            teacher=self.teacher,
            student_tokenizer=self.processing_class,
            args=self.distillation_args,
            output_dir=self.args.output_dir,
        )
        logger.warning(
            f"Training on {original} original + {len(self.train_dataset) - original} generated examples "
            f"(teacher agreement with the prompt label: {self.augmentation_stats.get('teacher_agreement')})."
        )

    def get_train_dataloader(self) -> torch.utils.data.DataLoader:
        # The logits become a dataset column, so they must exist before the dataloader is built; computing them here
        # (and not per batch) is what makes the teacher run once per example instead of once per epoch.
        self.prepare_teacher_logits()
        self.prepare_teacher_inputs()
        return super().get_train_dataloader()

    def prepare_teacher_logits(self) -> None:
        """Add the teacher-logits column to the training data, from the cache when the data and teacher match."""
        self.train_dataset = self.teacher.add_logits_column(self.train_dataset, self.args, self.data_collator)

    def prepare_teacher_inputs(self) -> None:
        """Add the teacher's own tokens of the raw text (`teacher_input_ids`, ...) to the training data, when it
        tokenizes differently from the student and runs on every batch (pooled distillation). Tokenized once, like
        the student's columns, rather than in every batch's collation."""
        self.train_dataset = self.teacher.add_input_columns(self.train_dataset)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        # Keep the teacher's columns through `remove_unused_columns`; compute_loss takes them out before the forward.
        for column in (self.logits_column, *self.teacher.input_columns):
            if self.distilling and column not in self._signature_columns:
                self._signature_columns.append(column)

    # ------------------------------------------------------------------------------------------------------ loss
    def _loss_normalised_over_window(self, num_items_in_batch: torch.Tensor | int | None) -> bool:
        """Trainer's contract (`training_step`): it divides the loss by the accumulation steps unless the model takes
        loss kwargs and is given `num_items_in_batch`, or a `compute_loss_func` is set; then the loss must already be
        normalised over the whole accumulation window."""
        return self.compute_loss_func is not None or (
            bool(self.model_accepts_loss_kwargs) and num_items_in_batch is not None
        )

    def get_batch_samples(self, *args: Any, **kwargs: Any):
        # Trainer counts a window's labelled items; the distillation terms count every example (a row labelled -100
        # is still distilled), so when the loss is normalised over the window, count its examples too.
        batch_samples, num_items_in_batch = super().get_batch_samples(*args, **kwargs)
        self._window_examples = None
        if self.distilling and self._loss_normalised_over_window(num_items_in_batch):
            examples = sum(_batch_size(batch) for batch in batch_samples)
            if num_items_in_batch is not None and self.args.average_tokens_across_devices and self.args.world_size > 1:
                # Like Trainer's item count: summed over processes (the loss is then scaled by the process count).
                examples = self.accelerator.gather(torch.tensor(examples, device=self.args.device)).sum()
            self._window_examples = examples
        return batch_samples, num_items_in_batch

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        teacher_logits = inputs.pop(self.logits_column, None)
        teacher_inputs = self.teacher.pop_inputs(inputs)
        if not self.distilling or not model.training:
            # Evaluation reports the student's own hard-label loss, comparable with a plain Trainer's.
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        use_states = self.distillation_objective.uses_teacher_states
        teacher_outputs = None
        if teacher_logits is None or use_states:
            teacher_inputs, teacher_outputs = self.teacher.forward(inputs, teacher_inputs, use_states)
            if teacher_logits is None:
                teacher_logits = teacher_outputs.logits

        has_labels = self.distillation_objective.uses_labels(inputs)
        forward_inputs = dict(inputs) if has_labels else {k: v for k, v in inputs.items() if k != "labels"}
        if has_labels and self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            forward_inputs["num_items_in_batch"] = num_items_in_batch
        outputs = model(**forward_inputs, output_hidden_states=use_states)
        window_normalised = self._loss_normalised_over_window(num_items_in_batch)
        loss = self.distillation_objective(
            outputs,
            inputs,
            teacher_logits,
            teacher_outputs,
            teacher_inputs,
            example_share=self._example_share(outputs["logits"].shape[0], window_normalised),
            window_items=num_items_in_batch if "num_items_in_batch" in forward_inputs else None,
        )
        if window_normalised and num_items_in_batch is not None and self.args.average_tokens_across_devices:
            # Trainer's item count is summed over processes and DDP averages gradients: undo the average.
            loss = loss * (self.accelerator.num_processes if self.args.n_gpu <= 1 else self.args.n_gpu)
        if return_outputs:
            return loss, outputs
        return loss

    def _example_share(self, batch_examples: int, window_normalised: bool) -> float | torch.Tensor:
        """Gradient accumulation (Trainer's contract, whatever the student's `forward`): when Trainer divides the loss
        by the accumulation steps, each term is this batch's mean (share 1). Otherwise each per-example mean is
        weighted by this batch's share of the window's examples, so the window sums to its mean (exact for unequal
        batches)."""
        if not window_normalised:
            return 1.0
        if self._window_examples:
            return batch_examples / self._window_examples
        # No window count (training_step called outside Trainer's loop): equal batches.
        return 1.0 / getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Report the loss components averaged since the last log, beside Trainer's total loss.
        if "loss" in logs:
            logs.update(self.distillation_objective.pop_means())
        super().log(logs, start_time)

    # --------------------------------------------------------------------- the learned hidden-state projections
    @property
    def hidden_projection(self) -> nn.Module | None:
        """The learned student-to-teacher projection of the hidden-state term (None at equal widths or without it)."""
        return self.projections.hidden

    @property
    def hidden_layer_map(self) -> dict[int, int] | None:
        """Student layer -> teacher layer compared by the hidden-state term (0 = the embedding output)."""
        return self.projections.layer_map

    @property
    def pooled_projection(self) -> nn.Module | None:
        """The learned student-to-teacher projection of the pooled term."""
        return self.projections.pooled

    def create_optimizer(self):
        optimizer = super().create_optimizer()
        params = self.projections.parameters()
        if params and not getattr(self, "_projection_in_optimizer", False):
            optimizer.add_param_group({"params": params, "weight_decay": 0.0})
            self._projection_in_optimizer = True
        return optimizer

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """Keep a card written by `write_model_card` (measured numbers); otherwise Trainer's own.

        `Trainer.push_to_hub` calls this before uploading and would replace README.md with its training summary.
        """
        from trainer_ext.reporting.cards import CARD_FILE, is_trainer_ext_card

        if is_trainer_ext_card(os.path.join(self.args.output_dir, CARD_FILE)):
            return
        super().create_model_card(*args, **kwargs)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        # The projections live in the checkpoint (for resume), never in the saved student.
        if self.args.should_save:
            self.projections.save(output_dir)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self.projections.load(checkpoint, self.args.device)
