"""The guard stage: ship the distilled student unless the one trained on labels alone is more accurate on the eval
split (the rule is `pipeline.rules.guard`); `shipped.json` says which and why, and the quantization, benchmark and
card stages read it."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from trainer_ext.deployment.benchmark import ClassifierRunner, accuracy
from trainer_ext.files import write_json
from trainer_ext.pipeline.rules import guard, teacher_note
from trainer_ext.pipeline.runner import PipelineError, Stage
from trainer_ext.pipeline.stages.teacher import load_teacher, teacher_eval_accuracy

if TYPE_CHECKING:
    from trainer_ext.pipeline.pipeline import Pipeline

SHIPPED_FILE = "shipped.json"  # guard: the student shipped (distilled or not) and why


def eval_accuracy(p: Pipeline, runner: ClassifierRunner) -> float:
    """A model's accuracy on the eval split, at the run's length."""
    split = p.data[p.args.eval_split]
    logits = runner.logits(list(split["text"]), max_length=p.args.max_length)
    return accuracy(logits, np.asarray(split["label"]))


def stage_guard(p: Pipeline) -> None:
    """Ship the distilled student unless the one trained on labels alone is more accurate on the eval split."""
    runners = {}
    for name in ("student_distilled", "student_no_distillation"):
        path = p.out / name
        if not (path / "config.json").exists():
            raise PipelineError(f"{path} is missing; delete its stage marker to retrain it.")
        model = AutoModelForSequenceClassification.from_pretrained(path).eval()
        runners[name] = ClassifierRunner(model, AutoTokenizer.from_pretrained(path))
    # Decided on the main process and broadcast: every process then quantizes and describes the same folder.
    accuracies = {name: eval_accuracy(p, runner) for name, runner in runners.items()} if p.is_main else None
    accuracies = p.broadcast(accuracies)
    shipped, reason = guard(accuracies)
    # The teacher's logits on the eval split are computed in shares on every process (and cached).
    teacher_accuracy = teacher_eval_accuracy(p, *load_teacher(p))
    note = teacher_note(teacher_accuracy, accuracies["student_no_distillation"])
    if p.is_main:
        record = {"shipped": shipped, "reason": reason, "split": p.args.eval_split, "accuracy": accuracies}
        record |= {"teacher_accuracy": teacher_accuracy, "teacher_note": note}
        write_json(p.out / SHIPPED_FILE, record)
    p.progress(f"[guard] shipping {shipped}: {reason}" + (f"; {note}" if note else ""))


def shipped_record(p: Pipeline) -> dict:
    """The guard's `shipped.json`: the student folder that is quantized, benchmarked as the model and given the card."""
    path = p.out / SHIPPED_FILE
    if not path.exists():
        raise PipelineError(f"The guard stage's output {path} is missing; delete {p.marker('guard')}.")
    return json.loads(path.read_text())


STAGE = Stage("guard", stage_guard, ("data", "teacher", "student_no_distillation", "distillation"))
