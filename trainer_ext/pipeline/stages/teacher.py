"""The teacher stage: the teacher classifier for these labels, fine-tuned on the training split when it is not one
yet (`transformers.Trainer`, to a validation plateau where `run.teacher_patience` is set), saved in `teacher/`.

Also what the later stages read of the teacher: the saved model, and its logits on a split, computed once and cached
(`training.teacher.compute_teacher_logits`)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    PreTrainedModel,
    Trainer,
    set_seed,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from trainer_ext.data.loading import id2label_label2id, label_names
from trainer_ext.deployment.benchmark import accuracy
from trainer_ext.files import save_pretrained
from trainer_ext.pipeline.runner import Stage
from trainer_ext.pipeline.shared import resolve_source, stage_precision, tokenized, training_args
from trainer_ext.training.teacher_logits import compute_teacher_logits

if TYPE_CHECKING:
    from trainer_ext.pipeline.pipeline import Pipeline

logger = logging.get_logger(__name__)

TEACHER_TRAINING_FILE = "trainer_ext_plateau.json"  # teacher/: how far a teacher trained to a plateau went


class JsonFile:
    """A JSON file saved into a model folder with the model (`files.save_pretrained` calls `save_pretrained`)."""

    def __init__(self, name: str, value: Any) -> None:
        self.name, self.value = name, value

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        Path(folder, self.name).write_text(json.dumps(self.value, indent=2))


def accuracy_metric(prediction: Any) -> dict[str, float]:
    """`compute_metrics` for Trainer: accuracy of the argmax."""
    return {"accuracy": accuracy(prediction.predictions, prediction.label_ids)}


def needs_fine_tuning(p: Pipeline, source: str, names: list[str]) -> bool:
    """Whether the teacher must be fine-tuned here: `run.teacher_fine_tune` when set, else unless it is already a
    classifier for these labels."""
    if p.args.teacher_fine_tune is not None:
        return p.args.teacher_fine_tune
    config = AutoConfig.from_pretrained(source)
    is_classifier = any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))
    saved = [config.id2label.get(i) for i in range(config.num_labels)]
    # Many Hub classifiers keep the generic LABEL_0.. names: with the right count they are taken as these labels.
    generic = saved == [f"LABEL_{i}" for i in range(config.num_labels)] and len(saved) == len(names)
    same_labels = saved == names or generic
    if is_classifier and not same_labels:
        logger.warning(
            f"The teacher {source} classifies {list(config.id2label.values())}, not {names}: fine-tuning it."
        )
    return not (is_classifier and same_labels)


def plateau_settings(p: Pipeline, rows: int) -> dict[str, Any]:
    """Trainer settings that train the teacher to a validation plateau: evaluate and checkpoint four times an epoch,
    keep the best (by accuracy on the eval split), at most one checkpoint on disk besides the best."""
    section = p.recipe.teacher_training
    batch = section.per_device_train_batch_size * section.gradient_accumulation_steps * p.num_processes
    every = max(1, -(-rows // batch) // 4)
    return {
        "eval_strategy": "steps",
        "eval_steps": every,
        "save_strategy": "steps",
        "save_steps": every,
        "save_total_limit": 1,
        "save_only_model": True,  # the checkpoints only hold the best weights: no optimizer state to write
        "load_best_model_at_end": True,
        "metric_for_best_model": "accuracy",
        "greater_is_better": True,
    }


def stage_teacher(p: Pipeline) -> None:
    source = resolve_source(p.args.teacher)
    names = label_names(p.data["train"])
    id2label, label2id = id2label_label2id(names)
    tokenizer = AutoTokenizer.from_pretrained(source)
    plateau: dict[str, Any] = {}
    if not needs_fine_tuning(p, source, names):
        teacher = AutoModelForSequenceClassification.from_pretrained(source, id2label=id2label, label2id=label2id)
    else:
        set_seed(p.args.seed)  # the new classification head's initialisation, so a re-run is the same run
        teacher = AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=len(names), id2label=id2label, label2id=label2id
        )
        precision = stage_precision(p, "teacher_fine_tuning", teacher, tokenizer, train=True)
        train = tokenized(p, tokenizer, p.data["train"])
        plateau = plateau_settings(p, len(train)) if p.args.teacher_patience else {}
        trainer = Trainer(
            model=teacher,
            args=training_args(p, "teacher_training", "teacher", precision, **plateau),
            train_dataset=train,
            eval_dataset=tokenized(p, tokenizer, p.data[p.args.eval_split]) if plateau else None,
            processing_class=tokenizer,
            data_collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=accuracy_metric if plateau else None,
            callbacks=[EarlyStoppingCallback(p.args.teacher_patience)] if plateau else None,
        )
        trainer.train()
        teacher = trainer.model
        if plateau:
            plateau = _plateau_record(p, trainer)
    if p.is_main:
        record = [JsonFile(TEACHER_TRAINING_FILE, plateau)] if plateau else []
        save_pretrained(p.out / "teacher", teacher, tokenizer, *record)


def _plateau_record(p: Pipeline, trainer: Trainer) -> dict[str, Any]:
    """How far a teacher trained to a plateau went, saved beside its weights for the card. The best weights are loaded
    and saved by the stage; its checkpoints (the MPNet teacher's are 440 MB each) would only be left behind in
    runs/teacher, so they are removed."""
    if p.is_main:
        for checkpoint in Path(trainer.args.output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
            shutil.rmtree(checkpoint, ignore_errors=True)
    state = trainer.state
    return {
        "best_step": int(getattr(state, "best_global_step", None) or state.global_step),
        "steps": state.global_step,
        "max_steps": state.max_steps,
        "epochs": state.epoch,
        "best_eval_accuracy": state.best_metric,
        "split": p.args.eval_split,
        "patience": p.args.teacher_patience,
    }


def load_teacher(p: Pipeline) -> tuple[PreTrainedModel, Any]:
    """The teacher stage's model and tokenizer."""
    path = p.out / "teacher"
    if not (path / "config.json").exists():
        raise p.missing(str(path), "teacher")
    return AutoModelForSequenceClassification.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def teacher_logits(p: Pipeline, teacher: PreTrainedModel, teacher_tokenizer: Any, split: str) -> np.ndarray:
    """The teacher's logits on a split, computed once (cached under `_teacher_logits`), at the training length, in
    the precision measured for the teacher's inference."""
    precision = stage_precision(p, "teacher_logits", teacher, teacher_tokenizer, train=False)
    return compute_teacher_logits(
        teacher.to(p.device),
        p.data[split],
        batch_size=p.recipe.student_training.per_device_eval_batch_size,
        device=p.device,
        teacher_tokenizer=teacher_tokenizer,
        max_length=p.args.max_length,
        cache_dir=p.out / "_teacher_logits",
        bf16=precision.bf16,
    )


def teacher_eval_accuracy(p: Pipeline, teacher: PreTrainedModel, teacher_tokenizer: Any) -> float:
    """The teacher's accuracy on the eval split, the budget's and the guard's reference."""
    logits = teacher_logits(p, teacher, teacher_tokenizer, p.args.eval_split)
    return accuracy(logits, np.asarray(p.data[p.args.eval_split]["label"]))


STAGE = Stage("teacher", stage_teacher, ("data",))
