"""The augmentation stage: the transfer set (`data.transfer`: generated and unlabelled sentences, filtered, labelled
by the teacher), saved in `augmentation/augmented` with the teacher's logits. Runs when `run.augment` is set."""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING

from datasets import Dataset

from trainer_ext.data.transfer.augmentation import TextGenerationAugmenter
from trainer_ext.files import write_atomic
from trainer_ext.pipeline.runner import Stage
from trainer_ext.pipeline.shared import TRANSFER_LABELLING, record_precisions, resolve_source, stage_precision
from trainer_ext.pipeline.stages.teacher import load_teacher

if TYPE_CHECKING:
    from trainer_ext.pipeline.pipeline import Pipeline


def stage_augmentation(p: Pipeline) -> None:
    """Generated, teacher-relabelled sentences in `augmentation/augmented` (TextGenerationAugmenter.augment)."""
    teacher, teacher_tokenizer = load_teacher(p)
    aug_dir = p.out / "augmentation"
    args = replace(
        p.recipe.augmentation.whole("output_dir", "max_length", "generator_name_or_path"),
        output_dir=str(aug_dir),
        max_length=p.args.max_length,
        generator_name_or_path=resolve_source(p.recipe.augmentation.generator_name_or_path),
    )
    exclude = [t for s in (p.args.eval_split, p.args.test_split) for t in p.data[s]["text"]]
    augmenter = TextGenerationAugmenter(args.generator_name_or_path, args=args)
    precision = {
        "generator_bf16": args.num_samples > 0
        and stage_precision(p, "generator", augmenter.model, augmenter.tokenizer, train=args.fine_tune).bf16,
        "teacher_bf16": stage_precision(p, "teacher_logits", teacher, teacher_tokenizer, train=False).bf16,
    }
    # Both run outside a Trainer (sampling, labelling): placed on this process's device here, not as a side effect of
    # timing their precision, which a resumed run skips.
    augmenter.model.to(p.device)
    teacher.to(p.device)
    # The transfer set may be labelled in another form (augmentation.teacher_labelling), chosen before generation; the
    # original and eval sentences' logits keep the teacher_logits precision.
    check = list(p.data[p.args.eval_split]["text"])
    generated = augmenter.augment(
        p.data["train"], teacher, teacher_tokenizer, exclude, labelling_texts=check, **precision
    )
    if p.is_main:
        write_atomic(aug_dir / "augmented", partial(Dataset.save_to_disk, generated))
    labelling = augmenter.stats.get("teacher_labelling")
    sampling = augmenter.stats.get("sampling")
    entries = {}
    if labelling:  # beside every stage's precision, so results.json and the card show it
        entries[TRANSFER_LABELLING] = {"stage": TRANSFER_LABELLING, "precision": labelling["form"], **labelling}
    if sampling:  # the engine and the generator's weights that sampled, measured on this machine
        entries["sampling"] = {"stage": "sampling", **sampling}
    if entries:
        record_precisions(p, entries)


STAGE = Stage(
    "augmentation",
    stage_augmentation,
    ("data", "teacher"),
    skip=lambda p: None if p.args.augment else "run.augment is false",
)
