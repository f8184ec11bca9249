"""The card stage: `results.json` (the run's one results file, copied beside the shipped student) and the student's
Hub model card (`reporting`), from the benchmark's measurements and what each stage recorded."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import AutoConfig

from trainer_ext.data.assets import PACKAGED_SOURCES
from trainer_ext.data.loading import OFFLINE_DATASET_NAME, label_names
from trainer_ext.data.transfer.augmentation import read_stats
from trainer_ext.deployment.quantization import REPORT_FILE
from trainer_ext.pipeline.runner import Stage
from trainer_ext.pipeline.shared import recorded_precisions, resolve_source, selection_record
from trainer_ext.pipeline.stages.guard import shipped_record
from trainer_ext.pipeline.stages.teacher import TEACHER_TRAINING_FILE, needs_fine_tuning
from trainer_ext.reporting.cards import DISTILLATION_SETTINGS, write_model_card
from trainer_ext.reporting.results import Results
from trainer_ext.training.students import STUDENT_PRESETS, pretrained_student, teacher_layers

if TYPE_CHECKING:
    from trainer_ext.pipeline.pipeline import Pipeline


def describe_teacher(p: Pipeline) -> str:
    """The teacher as the card names it: packaged or given name, and how it was fine-tuned here."""
    source = resolve_source(p.args.teacher)
    packaged = PACKAGED_SOURCES.get(p.args.teacher)
    name = packaged.description if packaged else p.args.teacher
    if not needs_fine_tuning(p, source, label_names(p.data["train"])):
        return name
    plateau = p.out / "teacher" / TEACHER_TRAINING_FILE
    if plateau.exists():
        t = json.loads(plateau.read_text())
        return (
            f"{name}, fine-tuned here on the training split to a plateau on the {t['split']} split: "
            f"{100 * t['best_eval_accuracy']:.2f}% at step {t['best_step']:,}, stopped at step {t['steps']:,} "
            f"of at most {t['max_steps']:,} (patience {t['patience']} evaluations)"
        )
    section = p.recipe.teacher_training
    if section.max_steps > 0:  # Trainer's rule: max_steps overrides num_train_epochs
        return f"{name}, fine-tuned here on the training split for {section.max_steps:,} steps"
    epochs = section.num_train_epochs
    return f"{name}, fine-tuned here on the training split for {epochs:g} epoch{'' if epochs == 1 else 's'}"


def describe_student_base(p: Pipeline, config: Any) -> str:
    """What the shipped student was built from, as the card says it."""
    shape = p.shape
    init = str(getattr(config, "trainer_ext_student_init", "its vocabulary"))
    if teacher_layers(shape):
        return f"{shape}: {init}"
    pretrained = pretrained_student(shape)
    if pretrained:
        packaged = PACKAGED_SOURCES[pretrained[0]].description
        if pretrained[1]:
            return f"{pretrained[1]} of the layers of {packaged} ({shape}), at its width, with a new head"
        return f"{packaged}, pre-trained, in its own shape ({config.num_hidden_layers} x {config.hidden_size}), with a new head"
    if shape not in STUDENT_PRESETS:
        return shape
    # build_student calls the model it narrows "teacher"; here that is student_init_from when it is set (and the
    # preset fits in it: configs saved before that choice existed lack the attribute).
    init_from = getattr(config, "trainer_ext_student_init_from", p.args.student_init_from)
    if init_from is None:
        return f"the {shape} preset built from the teacher: {init}"
    packaged = PACKAGED_SOURCES.get(init_from)
    source = packaged.description if packaged else init_from
    return f"the {shape} preset narrowed from {source}: {init.replace('teacher layers', 'its layers', 1)}"


def hub_base_model(p: Pipeline) -> str | None:
    """The Hub model this one was made from, for the card's base_model: a Hub student, else a Hub teacher."""
    for name in (p.shape, p.args.teacher):
        if (
            name not in STUDENT_PRESETS
            and name not in PACKAGED_SOURCES
            and not pretrained_student(name)
            and not Path(name).exists()
        ):
            return name
    return None


def stage_card(p: Pipeline) -> None:
    """`results.json` (the run's one results file, copied beside the student) and the student's model card."""
    if not p.is_main:
        return
    measured = json.loads((p.out / "benchmark" / "variants.json").read_text())
    a, folder = p.args, p.out / p.shipped
    report = folder / REPORT_FILE
    results = Results(
        variants=measured["variants"],
        model_variant=p.shipped,
        evaluation={
            # Only a Hub dataset id belongs in the card's `datasets`; built-in or local data is named instead.
            "dataset_id": None if a.dataset == OFFLINE_DATASET_NAME or Path(a.dataset).exists() else a.dataset,
            "dataset_name": a.dataset,
            "dataset_config": a.dataset_config,
            "split": a.test_split,
            "examples": len(p.data[a.test_split]),
        },
        latency=measured["latency"],
        teacher=describe_teacher(p),
        base_model=hub_base_model(p),
        student_base=describe_student_base(p, AutoConfig.from_pretrained(folder)),
        distillation={k: getattr(p.recipe.student_training, k) for k in DISTILLATION_SETTINGS},
        augmentation=read_stats(p.out / "augmentation"),
        quantization=json.loads(report.read_text()) if report.exists() else None,
        recipe={"source": p.recipe.source, "profile": p.recipe.profile, "values": p.recipe.raw},
        processes=p.num_processes,
        precision=recorded_precisions(p) or None,
        stages=dict(p.stage_seconds),  # every stage before this one; the card's own takes well under a second
        selection=selection_record(p) if p.selecting else None,
        guard=shipped_record(p),
    )
    results.save(p.out)
    results.save(folder)
    # Without card.model_name the card is named after the student and the data (reporting.default_model_name).
    write_model_card(folder, results, **asdict(p.recipe.card.whole()))


STAGE = Stage("card", stage_card, ("benchmark",))
