"""`DistillationTrainer`: a drop-in `Trainer` that adds a knowledge-distillation loss from a teacher model."""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from accelerate.utils import broadcast
from torch import nn
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
)
from transformers.utils import logging

from trainer_ext.data.loading import DataValidationError, validate_label_column
from trainer_ext.data.transfer.augmentation import (
    AUGMENTATION_DIR,
    AugmentationArguments,
    augment_training_data,
)
from trainer_ext.training.arguments import DistillationTrainingArguments
from trainer_ext.training.losses import distillation_loss, hidden_state_mse_loss, mean_pool, pooled_mse_loss
from trainer_ext.training.teacher import compute_teacher_logits, teacher_encode

logger = logging.get_logger(__name__)

PROJECTION_FILE = "distillation_projection.pt"
POOLED_PROJECTION_FILE = "distillation_pooled_projection.pt"
# The learned projections (trainer attribute -> checkpoint file): trained with the student, kept in checkpoints for
# resume, never in the saved student.
_PROJECTION_FILES = {"hidden_projection": PROJECTION_FILE, "pooled_projection": POOLED_PROJECTION_FILE}
# Prefix of the training-data columns holding the teacher's own tokens (`teacher_input_ids`, ...), added when it reads
# raw text with its own tokenizer and also runs on every batch (pooled distillation).
TEACHER_INPUT_PREFIX = "teacher_"
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


def _same_vocabulary(a: PreTrainedTokenizerBase | None, b: PreTrainedTokenizerBase | None) -> bool:
    return a is not None and b is not None and a.get_vocab() == b.get_vocab()


def _batch_size(batch: Any) -> int:
    """Examples in a collated batch: the first dimension of its first tensor."""
    values = batch.values() if hasattr(batch, "values") else batch
    for value in values:
        if torch.is_tensor(value) and value.dim() > 0:
            return value.shape[0]
    return 0


def _label_column(dataset: Any) -> str | None:
    columns = getattr(dataset, "column_names", None) or []
    for name in ("labels", "label", "label_ids"):
        if name in columns:
            return name
    return None


def _check_dataset(dataset: Any, split: str, num_labels: int | None, logits_column: str | None) -> None:
    """Cheap checks on a `datasets.Dataset`, so bad data fails here and not hours into training."""
    if dataset is None or not hasattr(dataset, "column_names"):
        return
    if len(dataset) == 0:
        raise DistillationError(f"The {split} dataset is empty: check the split name and any filtering applied to it.")
    label_column = _label_column(dataset)
    if label_column is not None and (num_labels is not None or dataset.features[label_column].dtype == "string"):
        try:
            validate_label_column(dataset, label_column, num_labels, split_name=split, ignore_index=-100)
        except DataValidationError as err:
            raise DistillationError(str(err)) from err
    if logits_column and logits_column in dataset.column_names and num_labels is not None:
        width = len(dataset[0][logits_column])
        if width != num_labels:
            raise DistillationError(
                f"The {split} column {logits_column!r} has {width} logits per example but the student predicts "
                f"{num_labels} labels. Recompute the teacher logits with a teacher for the same labels."
            )


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


class DistillationTrainer(Trainer):
    """A `Trainer` that distils a teacher into the model being trained.

    With no `teacher_model` and no teacher-logits column in the training data it behaves exactly like `Trainer`.
    With a teacher, the teacher's logits are computed once before training (see `trainer_ext.training.teacher`), stored under
    the output directory keyed to the data and the teacher, and the loss becomes

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

        if isinstance(teacher_model, (str, os.PathLike)):
            teacher_path = str(teacher_model)
            teacher_model = AutoModelForSequenceClassification.from_pretrained(teacher_path)
            if teacher_tokenizer is None:
                try:
                    teacher_tokenizer = AutoTokenizer.from_pretrained(teacher_path)
                except (OSError, ValueError):
                    teacher_tokenizer = None
        if isinstance(teacher_tokenizer, str):
            teacher_tokenizer = AutoTokenizer.from_pretrained(teacher_tokenizer)
        self.teacher_model: PreTrainedModel | None = teacher_model

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
        self.distilling = self.teacher_model is not None or has_logits_column
        self._teacher_logits_ready = has_logits_column
        self._metrics: dict[str, list[float]] = defaultdict(list)
        self.hidden_projection: nn.Module | None = None
        self.hidden_layer_map: dict[int, int] | None = None
        self.pooled_projection: nn.Module | None = None
        self._pooled_projection_fitted = False
        # The teacher's token columns (column -> its input name), when it reads text and runs on every batch.
        self._teacher_input_columns: dict[str, str] = {}
        # The teacher reads raw text only when it tokenizes differently from the student.
        student_tokenizer = processing_class if isinstance(processing_class, PreTrainedTokenizerBase) else None
        self.teacher_reads_text = teacher_tokenizer is not None and not _same_vocabulary(
            teacher_tokenizer, student_tokenizer
        )
        self.teacher_tokenizer = teacher_tokenizer if self.teacher_reads_text else None
        self.augmentation_args = augmentation_args
        self.augmentation_exclude_texts = list(augmentation_exclude_texts or [])
        self.augmentation_stats: dict[str, Any] | None = None
        # Examples in the current gradient-accumulation window, counted when the loss must be normalised over it.
        self._window_examples: torch.Tensor | int | None = None
        if augmentation_args is not None:
            self._check_augmentation()
        if not self.distilling:
            return

        num_labels = getattr(getattr(self.model, "config", None), "num_labels", None)
        _check_dataset(self.train_dataset, "train", num_labels, self.logits_column)
        if isinstance(self.eval_dataset, dict):
            for name, split in self.eval_dataset.items():
                _check_dataset(split, f"eval ({name})", num_labels, None)
        else:
            _check_dataset(self.eval_dataset, "eval", num_labels, None)
        if (
            dargs.distillation_weight < 1.0
            and self.train_dataset is not None
            and not _label_column(self.train_dataset)
        ):
            raise DistillationError(
                f"distillation_weight={dargs.distillation_weight} mixes in a hard-label loss, but the training data "
                "has no 'label'/'labels' column. Add labels or set distillation_weight=1.0."
            )
        online = {
            name: weight
            for name in ("hidden_distillation_weight", "pooled_distillation_weight")
            if (weight := getattr(dargs, name)) > 0
        }
        if online and self.teacher_model is None:
            settings = ", ".join(f"{name}={weight}" for name, weight in online.items())
            raise DistillationError(
                f"{settings} compares the teacher's hidden states, which cached teacher logits do not hold: pass "
                "`teacher_model=` (and `teacher_tokenizer=` when it tokenizes differently from the student), or set "
                f"{' and '.join(online)} to 0."
            )
        if self.teacher_model is not None:
            self._setup_teacher()
        # Collators only know model inputs; the logits (and the teacher's own tokens) travel beside them.
        self.data_collator = TeacherLogitsCollator(
            self.data_collator, self.logits_column, self.teacher_tokenizer, self._teacher_input_columns
        )

    # ----------------------------------------------------------------------------------------------------- set-up
    def _setup_teacher(self) -> None:
        dargs = self.distillation_args
        teacher = self.teacher_model
        student_config = getattr(self.model, "config", None)
        if student_config is not None:
            check_label_compatibility(teacher.config, student_config)
            teacher_vocab = getattr(teacher.config, "vocab_size", None)
            student_vocab = getattr(student_config, "vocab_size", None)
            if not self.teacher_reads_text and teacher_vocab != student_vocab:
                raise DistillationError(
                    f"Teacher and student vocabularies differ (teacher vocab_size={teacher_vocab}, student "
                    f"{student_vocab}), so the teacher cannot read the student's token ids. Pass "
                    "`teacher_tokenizer=` (the teacher's own tokenizer): it will then read the raw "
                    f"{dargs.teacher_text_column!r} column."
                )
        if self.teacher_reads_text:
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
                self._teacher_input_columns = {
                    TEACHER_INPUT_PREFIX + name: name for name in self.teacher_tokenizer.model_input_names
                }
            columns = getattr(self.train_dataset, "column_names", None)
            reads_text = not self._teacher_logits_ready or bool(self._teacher_input_columns)
            if columns is not None and dargs.teacher_text_column not in columns and reads_text:
                raise DistillationError(
                    f"The teacher has its own tokenizer and reads the raw text column {dargs.teacher_text_column!r}, "
                    f"but the training data has only {columns}. Keep the text column when tokenizing, or set "
                    "`teacher_text_column`."
                )
        # The teacher only ever runs forward: eval mode (no dropout), no gradients, never wrapped in DDP.
        teacher.eval()
        teacher.requires_grad_(False)
        self.teacher_model = teacher = self.accelerator.prepare_model(teacher, evaluation_mode=True)
        if dargs.hidden_distillation_weight > 0:
            self._setup_hidden_projection()
        if dargs.pooled_distillation_weight > 0:
            # Always a learned map, even at equal widths: two separately trained encoders use different bases. It is
            # fitted to the first training batch (`_fit_pooled_projection`), the first data it can see.
            self.pooled_projection = self._new_projection()

    def _new_projection(self, init: Callable[[nn.Linear], None] | None = None) -> nn.Module:
        """A learned student-to-teacher width projection. It is trained with the student but is not part of it, so
        `save_model` never writes it into the student's weights (checkpoints keep it, see `_PROJECTION_FILES`)."""
        projection = nn.Linear(self.model.config.hidden_size, self.teacher_model.config.hidden_size)
        if init is not None:
            init(projection)
        # Prepared like the student: under DDP it starts from rank 0's copy (a least-squares solve is not bit-identical
        # across processes) and its gradients are averaged across processes.
        return self.accelerator.prepare_model(projection)

    def _setup_hidden_projection(self) -> None:
        teacher_config, student_config = self.teacher_model.config, self.model.config
        n_teacher, n_student = teacher_config.num_hidden_layers, student_config.num_hidden_layers
        layer_map = self.distillation_args.hidden_layer_map
        origin = getattr(student_config, "trainer_ext_teacher_layers", None)
        if layer_map is None and isinstance(origin, list) and len(origin) == n_student:
            # A student built from this teacher (build_student) matches each layer to the one it started from.
            layer_map = {0: 0} | {i + 1: int(t) + 1 for i, t in enumerate(origin)}
        if layer_map is None:
            layer_map = {s: round(s * n_teacher / n_student) for s in range(1, n_student + 1)}
        for s, t in layer_map.items():
            if not (0 <= s <= n_student and 0 <= t <= n_teacher):
                raise DistillationError(
                    f"hidden_layer_map entry {s}:{t} is out of range: student layers are 0..{n_student}, teacher "
                    f"layers 0..{n_teacher} (0 = embedding output)."
                )
        self.hidden_layer_map = layer_map
        if student_config.hidden_size != teacher_config.hidden_size:
            # One learned projection shared by all mapped layers (as in TinyBERT).
            self.hidden_projection = self._new_projection(self._init_hidden_projection)

    @torch.no_grad()
    def _init_hidden_projection(self, projection: nn.Linear) -> None:
        """Start the student-to-teacher projection at the least-squares map between the two word-embedding tables.

        Both models read the same vocabulary (checked earlier), so row `i` of each table embeds the same token. For a
        student built by `build_student` (student embeddings = teacher embeddings @ P, P orthonormal) this recovers
        `P.T`, the map its projected layers were built with; otherwise it is still a better start than random.
        """
        student_words = self.model.get_input_embeddings().weight.detach().float()
        teacher_words = self.teacher_model.get_input_embeddings().weight.detach().float().to(student_words.device)
        if student_words.shape[0] != teacher_words.shape[0]:
            return  # different vocabularies (a teacher_tokenizer was given): keep the random initialisation
        solution = torch.linalg.lstsq(student_words.cpu(), teacher_words.cpu()).solution  # (student, teacher)
        projection.weight.copy_(solution.T.to(projection.weight))
        projection.bias.zero_()

    def _check_augmentation(self) -> None:
        if self.teacher_model is None:
            raise DistillationError(
                "augmentation_args needs a teacher_model: generated sentences are labelled by the teacher."
            )
        if not isinstance(self.processing_class, PreTrainedTokenizerBase):
            raise DistillationError("augmentation_args needs processing_class= (the student's tokenizer).")
        if not self.distillation_args.cache_teacher_logits:
            raise DistillationError(
                "augmentation_args needs cache_teacher_logits=True: generated text is labelled once."
            )
        columns = getattr(self.train_dataset, "column_names", None) or []
        text_column = self.distillation_args.teacher_text_column
        if text_column not in columns or _label_column(self.train_dataset) is None:
            raise DistillationError(
                f"Augmentation learns from the raw text and labels, but the training data has only {columns}. Keep "
                f"the {text_column!r} and label columns when tokenizing."
            )

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
        text_column = self.distillation_args.teacher_text_column
        eval_texts = []  # never generated, and what an INT8 labelling teacher is checked on
        eval_sets = self.eval_dataset.values() if isinstance(self.eval_dataset, dict) else [self.eval_dataset]
        for split in eval_sets:
            if split is not None and text_column in (getattr(split, "column_names", None) or []):
                eval_texts.extend(split[text_column])
        exclude = list(self.augmentation_exclude_texts) + eval_texts
        args = self.augmentation_args
        if args.output_dir is None:  # resumable by default, like the teacher-logit cache
            args = replace(args, output_dir=os.path.join(self.args.output_dir, AUGMENTATION_DIR))
        original = len(self.train_dataset)
        self.train_dataset, self.augmentation_stats = augment_training_data(
            self.train_dataset,
            args,
            teacher=self.teacher_model,
            teacher_tokenizer=self.teacher_tokenizer or self.processing_class,
            exclude_texts=exclude,
            text_column=text_column,
            label_column=_label_column(self.train_dataset),
            tokenizer=self.processing_class,
            logits_column=self.logits_column,
            labelling_texts=eval_texts,
        )
        logger.warning(
            f"Training on {original} original + {len(self.train_dataset) - original} generated examples "
            f"(teacher agreement with the prompt label: {self.augmentation_stats.get('teacher_agreement')})."
        )

    # -------------------------------------------------------------------------------------------- teacher logits
    def get_train_dataloader(self) -> torch.utils.data.DataLoader:
        # The logits become a dataset column, so they must exist before the dataloader is built; computing them here
        # (and not per batch) is what makes the teacher run once per example instead of once per epoch.
        self.prepare_teacher_logits()
        self.prepare_teacher_inputs()
        return super().get_train_dataloader()

    def prepare_teacher_logits(self) -> None:
        """Add the teacher-logits column to the training data, from the cache when the data and teacher match."""
        dargs = self.distillation_args
        if (
            self._teacher_logits_ready
            or self.teacher_model is None
            or not dargs.cache_teacher_logits
            or self.train_dataset is None
        ):
            return
        if not hasattr(self.train_dataset, "add_column"):
            raise DistillationError(
                "Caching teacher logits needs a `datasets.Dataset` train set; set cache_teacher_logits=False to run "
                "the teacher on every batch instead."
            )
        cache_dir = dargs.teacher_cache_dir or os.path.join(self.args.output_dir, "_teacher_logits")
        logits = compute_teacher_logits(
            self.teacher_model,
            self.train_dataset,
            batch_size=dargs.teacher_batch_size or self.args.per_device_eval_batch_size,
            device=self.args.device,
            teacher_tokenizer=self.teacher_tokenizer,
            text_column=dargs.teacher_text_column,
            max_length=dargs.teacher_max_length,
            collate=self._teacher_collate,
            cache_dir=cache_dir,
        )
        self.train_dataset = self.train_dataset.add_column(self.logits_column, logits.tolist())
        self._teacher_logits_ready = True

    def prepare_teacher_inputs(self) -> None:
        """Add the teacher's own tokens of the raw text (`teacher_input_ids`, ...) to the training data, when it
        tokenizes differently from the student and runs on every batch (pooled distillation). Tokenized once, like
        the student's columns, rather than in every batch's collation."""
        columns = self._teacher_input_columns
        present = getattr(self.train_dataset, "column_names", None) or []
        if not columns or self.train_dataset is None or set(columns) <= set(present):
            return
        if not hasattr(self.train_dataset, "map"):
            raise DistillationError(
                "pooled_distillation_weight with a teacher that has its own tokenizer needs a `datasets.Dataset` train "
                "set: its tokens of the raw text are added as columns."
            )
        tokenizer, max_length = self.teacher_tokenizer, self.distillation_args.teacher_max_length

        def encode(texts: list[str]) -> dict[str, list]:
            encoded = teacher_encode(tokenizer, texts, max_length)
            return {column: encoded[name] for column, name in columns.items()}

        self.train_dataset = self.train_dataset.map(
            encode, input_columns=self.distillation_args.teacher_text_column, batched=True
        )

    def _teacher_collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        collator = self.data_collator
        inner = collator.collator if isinstance(collator, TeacherLogitsCollator) else collator
        return inner(features)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        # Keep the teacher's columns through `remove_unused_columns`; compute_loss takes them out before the forward.
        for column in (self.logits_column, *self._teacher_input_columns):
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
        teacher_inputs = {name: inputs.pop(c) for c, name in self._teacher_input_columns.items() if c in inputs}
        if not self.distilling or not model.training:
            # Evaluation reports the student's own hard-label loss, comparable with a plain Trainer's.
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        dargs = self.distillation_args
        use_hidden = dargs.hidden_distillation_weight > 0 and self.teacher_model is not None
        use_pooled = dargs.pooled_distillation_weight > 0 and self.teacher_model is not None
        use_states = use_hidden or use_pooled
        teacher_outputs = None
        if teacher_logits is None or use_states:
            if self.teacher_model is None:
                raise DistillationError(
                    f"A training batch has no {self.logits_column!r} column and there is no teacher to compute it."
                )
            if not self.teacher_reads_text:
                teacher_inputs = {
                    k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "token_type_ids")
                }
            elif not teacher_inputs:
                raise DistillationError(
                    f"The teacher reads its own tokens, but a training batch has none of its columns "
                    f"{list(self._teacher_input_columns)}: they are added to the training data by `train()`."
                )
            with torch.no_grad():
                teacher_outputs = self.teacher_model(**teacher_inputs, output_hidden_states=use_states)
            if teacher_logits is None:
                teacher_logits = teacher_outputs.logits

        has_labels = "labels" in inputs and dargs.distillation_weight < 1.0
        forward_inputs = dict(inputs) if has_labels else {k: v for k, v in inputs.items() if k != "labels"}
        if has_labels and self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            forward_inputs["num_items_in_batch"] = num_items_in_batch
        outputs = model(**forward_inputs, output_hidden_states=use_states)
        student_logits = outputs["logits"]

        kd_loss = distillation_loss(
            student_logits,
            teacher_logits.to(student_logits.device),
            dargs.distillation_loss,
            dargs.temperature,
            "mean",
        )
        # Gradient accumulation (Trainer's contract, whatever the student's `forward`): when Trainer divides the loss
        # by the accumulation steps, each term is this batch's mean. Otherwise each per-example mean is weighted by
        # this batch's share of the window's examples, so the window sums to its mean (exact for unequal batches).
        window_normalised = self._loss_normalised_over_window(num_items_in_batch)
        if not window_normalised:
            example_share = 1.0
        elif self._window_examples:
            example_share = student_logits.shape[0] / self._window_examples
        else:  # no window count (training_step called outside Trainer's loop): equal batches
            example_share = 1.0 / getattr(
                self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps
            )
        loss = dargs.distillation_weight * kd_loss * example_share
        self._metrics["distill_loss"].append(kd_loss.detach().item())
        if has_labels:
            hard_loss = outputs["loss"]
            if "num_items_in_batch" in forward_inputs:
                # The model divided its summed loss by the window's labelled items, as Trainer expects of it.
                loss = loss + (1.0 - dargs.distillation_weight) * hard_loss
                labelled = int(inputs["labels"].ne(-100).sum())
                if labelled:  # logged as this batch's mean, like the other terms
                    self._metrics["hard_loss"].append(float(hard_loss.detach() * num_items_in_batch / labelled))
            else:
                loss = loss + (1.0 - dargs.distillation_weight) * hard_loss * example_share
                self._metrics["hard_loss"].append(hard_loss.detach().item())
        if use_hidden:
            hidden_loss = self._hidden_loss(outputs.hidden_states, teacher_outputs.hidden_states, inputs)
            loss = loss + dargs.hidden_distillation_weight * hidden_loss * example_share
            self._metrics["hidden_loss"].append(hidden_loss.detach().item())
        if use_pooled:
            student_pooled = mean_pool(outputs.hidden_states[-1], inputs.get("attention_mask"))
            teacher_pooled = mean_pool(teacher_outputs.hidden_states[-1], teacher_inputs.get("attention_mask"))
            if not self._pooled_projection_fitted:
                self._fit_pooled_projection(student_pooled, teacher_pooled.to(student_pooled.device))
            pooled_loss = pooled_mse_loss(self.pooled_projection(student_pooled), teacher_pooled)
            loss = loss + dargs.pooled_distillation_weight * pooled_loss * example_share
            self._metrics["pooled_loss"].append(pooled_loss.detach().item())
        if window_normalised and num_items_in_batch is not None and self.args.average_tokens_across_devices:
            # Trainer's item count is summed over processes and DDP averages gradients: undo the average.
            loss = loss * (self.accelerator.num_processes if self.args.n_gpu <= 1 else self.args.n_gpu)
        if return_outputs:
            return loss, outputs
        return loss

    def _hidden_loss(self, student_hidden: tuple, teacher_hidden: tuple, inputs: dict[str, Any]) -> torch.Tensor:
        mask = inputs.get("attention_mask")
        losses = []
        for s, t in self.hidden_layer_map.items():
            projected = student_hidden[s]
            if self.hidden_projection is not None:
                projected = self.hidden_projection(projected)
            losses.append(hidden_state_mse_loss(projected, teacher_hidden[t], mask))
        return torch.stack(losses).mean()

    @torch.no_grad()
    def _fit_pooled_projection(self, student: torch.Tensor, teacher: torch.Tensor) -> None:
        """Start the pooled projection at the least-squares map from the first training batch's pooled student states
        to the teacher's, before its first update.

        A randomly initialised projection barely moves at a student's learning rate, so the student would be pulled
        towards an arbitrary image of the teacher for the whole run. The fit costs nothing (both pooled states are
        computed for the loss anyway); a small ridge term keeps it well-posed when the batch is smaller than the
        student's width (32 sentences, 384 units for MiniLM): the map is then fitted on the batch's directions and
        trained further with the student. Every process starts from rank 0's fit.
        """
        projection = self.accelerator.unwrap_model(self.pooled_projection)
        with torch.autocast(student.device.type, enabled=False):
            s, t = student.detach().float(), teacher.detach().float()
            s_mean, t_mean = s.mean(dim=0), t.mean(dim=0)
            s, t = s - s_mean, t - t_mean
            gram = s.T @ s
            ridge = 1e-3 * gram.diagonal().mean() + 1e-6
            eye = torch.eye(gram.shape[0], device=gram.device)
            weight = torch.linalg.solve(gram + ridge * eye, s.T @ t).T  # (teacher, student)
            bias = t_mean - weight @ s_mean
        projection.weight.copy_(broadcast(weight.to(projection.weight).contiguous(), from_process=0))
        projection.bias.copy_(broadcast(bias.to(projection.bias).contiguous(), from_process=0))
        self._pooled_projection_fitted = True

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Report the loss components averaged since the last log, beside Trainer's total loss.
        if self._metrics and "loss" in logs:
            for name, values in self._metrics.items():
                if values:
                    logs[name] = round(float(np.mean(values)), 6)
            self._metrics.clear()
        super().log(logs, start_time)

    # --------------------------------------------------------------------- the learned hidden-state projections
    def _projections(self) -> dict[str, nn.Module]:
        """The learned projections in use, by checkpoint file."""
        modules = {file: getattr(self, name) for name, file in _PROJECTION_FILES.items()}
        return {file: module for file, module in modules.items() if module is not None}

    def create_optimizer(self):
        optimizer = super().create_optimizer()
        projections = self._projections()
        if projections and not getattr(self, "_projection_in_optimizer", False):
            params = [p for projection in projections.values() for p in projection.parameters()]
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
            for file, projection in self._projections().items():
                state = self.accelerator.unwrap_model(projection).state_dict()
                torch.save(state, os.path.join(output_dir, file))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        for file, projection in self._projections().items():
            path = os.path.join(checkpoint, file)
            if os.path.exists(path):
                state = torch.load(path, map_location=self.args.device)
                self.accelerator.unwrap_model(projection).load_state_dict(state)
                if file == POOLED_PROJECTION_FILE:  # resumed: the trained map, not a fresh fit
                    self._pooled_projection_fitted = True
