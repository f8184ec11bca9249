"""The teacher side of a distillation, as `DistillationTrainer` runs it: loading the teacher, telling whether it reads
the student's token ids or the raw text with its own tokenizer, checking it against the student and the data, its
logits added once to the training data (from the cache, see `trainer_ext.training.teacher_logits`), its own tokens
added beside the student's, the collator that carries both, and its outputs on a training batch."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainingArguments,
)

from trainer_ext.training.arguments import DistillationTrainingArguments
from trainer_ext.training.checks import DistillationError, check_label_compatibility
from trainer_ext.training.teacher_logits import compute_teacher_logits, teacher_encode

# Prefix of the training-data columns holding the teacher's own tokens (`teacher_input_ids`, ...), added when it reads
# raw text with its own tokenizer and also runs on every batch (pooled distillation).
TEACHER_INPUT_PREFIX = "teacher_"


def _same_vocabulary(a: PreTrainedTokenizerBase | None, b: PreTrainedTokenizerBase | None) -> bool:
    return a is not None and b is not None and a.get_vocab() == b.get_vocab()


class TeacherLogitsCollator:
    """Wraps any data collator: takes the teacher's columns out before collating, then adds them back batched: the
    teacher-logits column stacked and, when given, the teacher's own token columns padded by its tokenizer.

    Collators such as `DataCollatorWithPadding` only know the student's token columns; this keeps them unaware of
    distillation.
    """

    def __init__(
        self,
        collator: Callable[[list[dict[str, Any]]], dict[str, Any]],
        column: str,
        teacher_tokenizer: PreTrainedTokenizerBase | None = None,
        teacher_columns: dict[str, str] | None = None,
    ) -> None:
        self.collator = collator
        self.column = column
        self.teacher_tokenizer = teacher_tokenizer
        self.teacher_columns = teacher_columns or {}  # column -> the teacher's input name

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if not features or not isinstance(features[0], dict):
            return self.collator(features)
        teacher_columns = [c for c in self.teacher_columns if c in features[0]]
        own = set(teacher_columns) | ({self.column} & features[0].keys())
        if not own:
            return self.collator(features)
        batch = self.collator([{k: v for k, v in f.items() if k not in own} for f in features])
        if self.column in own:
            batch[self.column] = torch.as_tensor(np.asarray([f[self.column] for f in features], dtype=np.float32))
        if teacher_columns:
            names = {c: self.teacher_columns[c] for c in teacher_columns}
            padded = self.teacher_tokenizer.pad(
                [{name: f[c] for c, name in names.items()} for f in features], return_tensors="pt"
            )
            batch.update({c: padded[name] for c, name in names.items()})
        return batch


class DistillationTeacher:
    """The teacher of a `DistillationTrainer`, or its absence (`model` None: the training data brings the logits).

    Args:
        model: a sequence-classification model or a path/Hub id to load one from.
        tokenizer: the teacher's tokenizer (or its path/Hub id); loaded from `model` when that is a path. The teacher
            reads the raw `args.teacher_text_column` with it only when its vocabulary differs from the student's.
        student_tokenizer: the student's tokenizer, if it has one.
        args: the distillation settings.
    """

    def __init__(
        self,
        model: PreTrainedModel | str | os.PathLike | None,
        tokenizer: PreTrainedTokenizerBase | str | None,
        student_tokenizer: PreTrainedTokenizerBase | None,
        args: DistillationTrainingArguments,
    ) -> None:
        if isinstance(model, (str, os.PathLike)):
            teacher_path = str(model)
            model = AutoModelForSequenceClassification.from_pretrained(teacher_path)
            if tokenizer is None:
                try:
                    tokenizer = AutoTokenizer.from_pretrained(teacher_path)
                except (OSError, ValueError):
                    tokenizer = None
        if isinstance(tokenizer, str):
            tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        self.model: PreTrainedModel | None = model
        self.args = args
        # The teacher reads raw text only when it tokenizes differently from the student.
        self.reads_text = tokenizer is not None and not _same_vocabulary(tokenizer, student_tokenizer)
        self.tokenizer: PreTrainedTokenizerBase | None = tokenizer if self.reads_text else None
        # The teacher's token columns (column -> its input name), when it reads text and runs on every batch.
        self.input_columns: dict[str, str] = {}
        self.logits_ready = False  # the training data holds the teacher's logits

    # ----------------------------------------------------------------------------------------------------- set-up
    def setup(self, student: Any, train_dataset: Any, logits_ready: bool, accelerator: Accelerator) -> None:
        """Check the teacher against the student and the training data (`logits_ready`: the data already holds its
        logits), note the token columns it needs, and prepare it to run forward only."""
        dargs = self.args
        student_config = getattr(student, "config", None)
        self.logits_ready = logits_ready
        teacher = self.model
        if student_config is not None:
            check_label_compatibility(teacher.config, student_config)
            teacher_vocab = getattr(teacher.config, "vocab_size", None)
            student_vocab = getattr(student_config, "vocab_size", None)
            if not self.reads_text and teacher_vocab != student_vocab:
                raise DistillationError(
                    f"Teacher and student vocabularies differ (teacher vocab_size={teacher_vocab}, student "
                    f"{student_vocab}), so the teacher cannot read the student's token ids. Pass "
                    "`teacher_tokenizer=` (the teacher's own tokenizer): it will then read the raw "
                    f"{dargs.teacher_text_column!r} column."
                )
        if self.reads_text:
            if not dargs.cache_teacher_logits:
                raise DistillationError(
                    "cache_teacher_logits=False runs the teacher on the student's token batches, which needs a shared "
                    "tokenizer. With a different teacher tokenizer, keep cache_teacher_logits=True."
                )
            if dargs.hidden_distillation_weight > 0:
                raise DistillationError(
                    "Hidden-state distillation aligns tokens, so teacher and student must share a tokenizer; set "
                    "hidden_distillation_weight=0 (pooled_distillation_weight works across tokenizers) or use a "
                    "student built from the teacher (`build_student`)."
                )
            if dargs.pooled_distillation_weight > 0:  # the teacher runs on every batch, on its own tokens
                self.input_columns = {TEACHER_INPUT_PREFIX + name: name for name in self.tokenizer.model_input_names}
            columns = getattr(train_dataset, "column_names", None)
            reads_text = not self.logits_ready or bool(self.input_columns)
            if columns is not None and dargs.teacher_text_column not in columns and reads_text:
                raise DistillationError(
                    f"The teacher has its own tokenizer and reads the raw text column {dargs.teacher_text_column!r}, "
                    f"but the training data has only {columns}. Keep the text column when tokenizing, or set "
                    "`teacher_text_column`."
                )
        # The teacher only ever runs forward: eval mode (no dropout), no gradients, never wrapped in DDP.
        teacher.eval()
        teacher.requires_grad_(False)
        self.model = accelerator.prepare_model(teacher, evaluation_mode=True)

    def collator(self, data_collator: Callable) -> TeacherLogitsCollator:
        """`data_collator` made to carry the teacher's logits and own tokens beside the model inputs it knows."""
        return TeacherLogitsCollator(
            data_collator, self.args.teacher_logits_column, self.tokenizer, self.input_columns
        )

    # ------------------------------------------------------------------------------------------- training data
    def add_logits_column(self, dataset: Any, training_args: TrainingArguments, data_collator: Callable) -> Any:
        """`dataset` with the teacher-logits column added once, from the cache under the output directory when the data
        and teacher match; `dataset` itself when it has them, or they are not cached (no teacher, or it runs on every
        batch). The teacher reads the student's token columns batched by `data_collator`, or the raw text with its own
        tokenizer."""
        dargs = self.args
        if self.logits_ready or self.model is None or not dargs.cache_teacher_logits or dataset is None:
            return dataset
        if not hasattr(dataset, "add_column"):
            raise DistillationError(
                "Caching teacher logits needs a `datasets.Dataset` train set; set cache_teacher_logits=False to run "
                "the teacher on every batch instead."
            )
        # The teacher reads model inputs only: the collator the trainer was given, without the teacher's columns.
        inner = data_collator.collator if isinstance(data_collator, TeacherLogitsCollator) else data_collator
        cache_dir = dargs.teacher_cache_dir or os.path.join(training_args.output_dir, "_teacher_logits")
        logits = compute_teacher_logits(
            self.model,
            dataset,
            batch_size=dargs.teacher_batch_size or training_args.per_device_eval_batch_size,
            device=training_args.device,
            teacher_tokenizer=self.tokenizer,
            text_column=dargs.teacher_text_column,
            max_length=dargs.teacher_max_length,
            collate=inner,
            cache_dir=cache_dir,
        )
        dataset = dataset.add_column(dargs.teacher_logits_column, logits.tolist())
        self.logits_ready = True
        return dataset

    def add_input_columns(self, dataset: Any) -> Any:
        """`dataset` with the teacher's own tokens of the raw text (`teacher_input_ids`, ...), when it tokenizes
        differently from the student and runs on every batch (pooled distillation); otherwise `dataset` itself."""
        columns = self.input_columns
        present = getattr(dataset, "column_names", None) or []
        if not columns or dataset is None or set(columns) <= set(present):
            return dataset
        if not hasattr(dataset, "map"):
            raise DistillationError(
                "pooled_distillation_weight with a teacher that has its own tokenizer needs a `datasets.Dataset` train "
                "set: its tokens of the raw text are added as columns."
            )
        tokenizer, max_length = self.tokenizer, self.args.teacher_max_length

        def encode(texts: list[str]) -> dict[str, list]:
            encoded = teacher_encode(tokenizer, texts, max_length)
            return {column: encoded[name] for column, name in columns.items()}

        return dataset.map(encode, input_columns=self.args.teacher_text_column, batched=True)

    # ------------------------------------------------------------------------------------------------ batches
    def pop_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Take the teacher's own token columns out of a batch (the student never sees them), by its input names."""
        return {name: inputs.pop(c) for c, name in self.input_columns.items() if c in inputs}

    def forward(
        self, inputs: dict[str, Any], teacher_inputs: dict[str, Any], output_hidden_states: bool
    ) -> tuple[dict[str, Any], Any]:
        """The teacher's outputs on a training batch, without gradients: on the student's token ids, or on its own
        tokens (`teacher_inputs`, from `pop_inputs`) when it reads text. Returns the inputs it read and its outputs."""
        if self.model is None:
            raise DistillationError(
                f"A training batch has no {self.args.teacher_logits_column!r} column and there is no teacher to "
                "compute it."
            )
        if not self.reads_text:
            teacher_inputs = {
                k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "token_type_ids")
            }
        elif not teacher_inputs:
            raise DistillationError(
                f"The teacher reads its own tokens, but a training batch has none of its columns "
                f"{list(self.input_columns)}: they are added to the training data by `train()`."
            )
        with torch.no_grad():
            outputs = self.model(**teacher_inputs, output_hidden_states=output_hidden_states)
        return teacher_inputs, outputs
