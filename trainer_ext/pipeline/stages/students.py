"""The student_no_distillation stage, the comparison row: the student trained on labels only.

Also how every student stage builds and trains its student: the initialisation (a preset narrowed from the teacher
or from `run.student_init_from`, `teacher-layers-K`, a packaged pre-trained encoder, or a model folder / Hub id),
saved once and keyed like a stage, and `train_student`, which the distillation and selection stages call with the
teacher."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from datasets import Dataset
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    PreTrainedModel,
    set_seed,
)
from transformers.utils import logging

from trainer_ext.data.loading import id2label_label2id, label_names
from trainer_ext.files import save_pretrained, write_json
from trainer_ext.pipeline.runner import Stage, dataclass_settings, stage_hash
from trainer_ext.pipeline.shared import resolve_source, stage_precision, tokenized, training_args
from trainer_ext.pipeline.stages.teacher import load_teacher
from trainer_ext.training.students import (
    STUDENT_PRESETS,
    build_student,
    calibration_batches,
    pretrained_student,
    teacher_layers,
)
from trainer_ext.training.trainer import DistillationTrainer

if TYPE_CHECKING:
    from trainer_ext.pipeline.pipeline import Pipeline

logger = logging.get_logger(__name__)


def student_settings(p: Pipeline, shape: str | None = None) -> dict[str, Any]:
    """The settings a student of `shape` is built and trained with (a selection candidate's key)."""
    a, shape = p.args, shape or p.shape
    init = {"student_init": a.student_init, "student_init_samples": a.student_init_samples}
    if a.student_init_from is not None:  # keyed only when set, so runs built from the teacher keep their keys
        init["student_init_from"] = a.student_init_from
    return (
        {"student": shape, "max_length": a.max_length}
        | (init if shape in STUDENT_PRESETS else {})
        | dataclass_settings(p.recipe.student_training.whole())
    )


def initial_student(p: Pipeline, shape: str | None = None, path: Path | None = None) -> tuple[PreTrainedModel, Any]:
    """The student both runs start from, saved once so that a resumed run starts from the same weights.

    It is keyed like a stage (its settings and the data and teacher it came from): when the student stages are redone
    with other settings, a saved initialisation from the old ones is rebuilt, never reused.
    """
    shape, path = shape or p.shape, path or p.out / "student_init"
    a = p.args
    settings = [shape, a.student_init, a.student_init_samples, a.max_length, a.seed]
    if a.student_init_from is not None:
        settings.append(a.student_init_from)
    key = stage_hash([settings, p.keys.get("data"), p.keys.get("teacher")])
    key_file = path / "init_key.json"
    saved = json.loads(key_file.read_text()).get("key") if key_file.exists() else None
    if saved != key:
        student, tokenizer = build_pipeline_student(p, shape, label_names(p.data["train"]))
        if p.is_main:
            save_pretrained(path, student, tokenizer)
            write_json(key_file, {"key": key})
        p.barrier()
    return AutoModelForSequenceClassification.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def build_pipeline_student(p: Pipeline, shape: str, names: list[str]) -> tuple[PreTrainedModel, Any]:
    """A preset narrowed from `student_init_from` (or the teacher, when the preset is wider or deeper than it),
    `teacher-layers-K` from the teacher, or a model folder / Hub id with a new head for these labels."""
    if shape in STUDENT_PRESETS:
        source, source_tokenizer, from_teacher = _preset_source(p, names, shape)
        # The projection basis comes from the source's hidden states on the first training sentences.
        texts = p.data["train"]["text"][: p.args.student_init_samples]
        batches = calibration_batches(source_tokenizer, texts, max_length=p.args.max_length)
        student = build_student(
            source, preset=shape, seed=p.args.seed, encoder_init=p.args.student_init, calibration_inputs=batches
        )
        if not from_teacher:
            # Its layers are the source's, not the teacher's: hidden-state losses must not map them onto the teacher's
            # layers of the same numbers (DistillationTrainer then spaces them evenly).
            student.config.__dict__.pop("trainer_ext_teacher_layers", None)
        student.config.trainer_ext_student_init_from = None if from_teacher else p.args.student_init_from
        return student, source_tokenizer
    if teacher_layers(shape):
        teacher, tokenizer = load_teacher(p)
        return build_student(teacher, num_hidden_layers=teacher_layers(shape)), tokenizer
    pretrained = pretrained_student(shape)
    source = resolve_source(pretrained[0]) if pretrained else shape
    id2label, label2id = id2label_label2id(names)
    torch.manual_seed(p.args.seed)
    student = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=len(names), id2label=id2label, label2id=label2id
    )
    if pretrained and pretrained[1]:
        # K of its own layers (evenly spaced, the last kept), at its width; its layers are not the teacher's, so
        # hidden-state losses space them evenly over the teacher's rather than by layer number.
        student = build_student(student, num_hidden_layers=pretrained[1])
        student.config.__dict__.pop("trainer_ext_teacher_layers", None)
    if pretrained:
        student.config.trainer_ext_student_init_from = pretrained[0]
    return student, AutoTokenizer.from_pretrained(source)


def _preset_source(p: Pipeline, names: list[str], preset: str) -> tuple[PreTrainedModel, Any, bool]:
    """The model a preset student is narrowed from, and whether it is the teacher: `run.student_init_from` (a
    pre-trained encoder such as the packaged MiniLM, the part Google's pre-trained BERT-Mini plays in the reference)
    when it is at least as wide and as deep as the preset, else the teacher."""
    if p.args.student_init_from is not None:
        source = resolve_source(p.args.student_init_from)
        config, sizes = AutoConfig.from_pretrained(source), STUDENT_PRESETS[preset]
        if (
            sizes["hidden_size"] <= config.hidden_size
            and sizes["num_hidden_layers"] <= config.num_hidden_layers
            and sizes["hidden_size"] % (config.hidden_size // config.num_attention_heads) == 0
        ):
            id2label, label2id = id2label_label2id(names)
            set_seed(p.args.seed)  # its new head, so the same run builds the same student
            model = AutoModelForSequenceClassification.from_pretrained(
                source, num_labels=len(names), id2label=id2label, label2id=label2id
            )
            return model, AutoTokenizer.from_pretrained(source), False
        logger.warning(
            f"{preset} is wider or deeper than run.student_init_from {p.args.student_init_from} "
            f"({config.num_hidden_layers} x {config.hidden_size}): it is narrowed from the teacher instead."
        )
    return *load_teacher(p), True


def train_student(
    p: Pipeline, name: str, train: Dataset, teacher: tuple[PreTrainedModel, Any] | None = None, **start: Any
) -> None:
    """Train the initial student on `train` into `name`: on labels only without a `teacher` (model, tokenizer), else
    distilled against the `teacher_logits` column that `train` carries (the teacher is passed for losses that read
    its hidden states). `start` is `shape` and `path` of the initialisation (`initial_student`)."""
    student, tokenizer = initial_student(p, start.get("shape"), start.get("path"))
    precision = stage_precision(p, "student_training", student, tokenizer, train=True)
    args = training_args(
        p,
        "student_training",
        name,
        precision,
        teacher_cache_dir=str(p.out / "_teacher_logits"),
        teacher_max_length=p.args.max_length,
    )
    if teacher is None and "teacher_logits" in train.column_names:
        train = train.remove_columns("teacher_logits")
    # The teacher reads raw text with its own tokenizer when the vocabularies differ (a Hub student).
    trainer = DistillationTrainer(
        model=student,
        args=args,
        train_dataset=tokenized(p, tokenizer, train),
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        teacher_model=teacher[0] if teacher is not None else None,
        teacher_tokenizer=teacher[1] if teacher is not None else None,
    )
    trainer.train()
    if p.is_main:
        save_pretrained(p.out / name, trainer.model, tokenizer)
    p.barrier()


def stage_student_no_distillation(p: Pipeline) -> None:
    # Without a teacher DistillationTrainer is exactly Trainer: the comparison row differs only in the loss.
    train_student(p, "student_no_distillation", p.data["train"])


def student_reads(p: Pipeline) -> tuple[str, ...]:
    """What a student stage reads: the data and the teacher, and the shape the selection stage shipped."""
    return ("data", "teacher", "selection") if p.selecting else ("data", "teacher")


STAGE = Stage("student_no_distillation", stage_student_no_distillation, student_reads)
