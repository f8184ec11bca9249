"""Everything that can be checked before long work starts, without writing anything: the output folder, the data,
one sequence length, every model the recipe names (teacher, students, generator) and whether its vocabulary reads
the data. A failed check leaves the output folder as it was (or absent)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datasets import DatasetDict
from transformers import AutoConfig, AutoTokenizer
from transformers.utils import logging

from trainer_ext.data.assets import PACKAGED_SOURCES
from trainer_ext.data.loading import DataValidationError, label_names, load_unlabeled_texts
from trainer_ext.data.transfer.augmentation import AugmentationError, prompt_names
from trainer_ext.pipeline.runner import PipelineError
from trainer_ext.pipeline.shared import resolve_source
from trainer_ext.pipeline.stages.data import load_data
from trainer_ext.training.students import STUDENT_PRESETS, pretrained_student, teacher_layers

if TYPE_CHECKING:
    from trainer_ext.pipeline.pipeline import Pipeline

logger = logging.get_logger(__name__)

# Settings that other sections once owned beside run.max_length: the pipeline sets them to run.max_length.
LENGTH_SETTINGS = (
    ("quantization", "sequence_length"),
    ("augmentation", "max_length"),
    ("student_training", "teacher_max_length"),
)
# Share of a sample's word pieces that a tokenizer maps to its unknown token: above the first it warns, above the
# second it refuses (a cased vocabulary on text in another script, a vocabulary of another language).
UNKNOWN_WARN, UNKNOWN_REFUSE = 0.02, 0.25


def unknown_token_share(tokenizer: Any, texts: list[str]) -> float:
    """The share of `texts`' tokens (special tokens aside) that `tokenizer` maps to its unknown token."""
    unk = tokenizer.unk_token_id
    if unk is None or not texts:
        return 0.0  # byte-level vocabularies have no unknown token
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    total = sum(len(row) for row in ids)
    return sum(row.count(unk) for row in ids) / max(total, 1)


def check(p: Pipeline) -> None:
    """Every check, in the order a user would fix them. The data is loaded and checked here, once, for the data
    stage."""
    check_output_dir(p.out)
    with p.settings.reading("data"):  # the data stage's settings are read here, where its data is loaded
        data = load_data(p)
    check_data(p, data)
    check_lengths(p)
    check_students(p)
    check_vocabularies(p, data)
    if p.args.augment:
        check_augmentation(p)


def check_students(p: Pipeline) -> None:
    """The teacher loads, and every student candidate resolves and fits it, before the teacher is trained."""
    teacher_config = model_config(p.args.teacher, "run.teacher", lambda: resolve_source(p.args.teacher))
    for shape in p.args.student:  # presets are known; the other names must resolve now, not after the teacher
        depth = teacher_layers(shape)
        if depth and depth >= teacher_config.num_hidden_layers:
            raise PipelineError(
                f"run.student {shape!r}: the teacher has {teacher_config.num_hidden_layers} layers, so "
                f"teacher-layers-K needs K below that. Set --run.student teacher-layers-{teacher_config.num_hidden_layers // 2}."
            )
        pretrained = pretrained_student(shape)
        if pretrained:
            config = model_config(pretrained[0], "run.student", lambda name=pretrained[0]: resolve_source(name))
            if pretrained[1] and pretrained[1] >= config.num_hidden_layers:
                base = shape.rsplit("-layers-", 1)[0]
                raise PipelineError(
                    f"run.student {shape!r}: {base} has {config.num_hidden_layers} layers, so {base}-layers-K "
                    f"needs K below that. Set --run.student {base}-layers-{config.num_hidden_layers // 2}, or "
                    f"{base} for all of them."
                )
        elif not depth and shape not in STUDENT_PRESETS:
            model_config(shape, "run.student", lambda name=shape: name)
    if p.args.student_init_from is not None:
        name = p.args.student_init_from
        model_config(name, "run.student_init_from", lambda: resolve_source(name))


def check_augmentation(p: Pipeline) -> None:
    """The generator loads, the prompts name every label, and the unlabelled text (when set) reads."""
    aug = p.recipe.augmentation
    model_config(
        aug.generator_name_or_path,
        "augmentation.generator_name_or_path",
        lambda: resolve_source(p.recipe.augmentation.generator_name_or_path),
    )
    names = label_names(load_data(p)["train"])
    try:
        prompt_names(aug.prompt_label_names, names)
    except AugmentationError as err:
        raise PipelineError(f"augmentation.{err} Set --augmentation.prompt_label_names {','.join(names)}.") from err
    if aug.unlabeled_texts:  # read once now: a missing, empty or non-text source fails before any training
        try:
            load_unlabeled_texts(aug.unlabeled_texts, aug.unlabeled_text_column)
        except (DataValidationError, OSError, ValueError) as err:
            raise PipelineError(f"augmentation.unlabeled_texts: {err}") from err


def check_lengths(p: Pipeline) -> None:
    """One sequence length for the whole run: `run.max_length` trains, labels, guards, searches and benchmarks. A
    recipe that sets another section's length to something else is refused, not silently overridden."""
    length = p.recipe.unwrapped.run.max_length
    for section, name in LENGTH_SETTINGS:
        value = getattr(getattr(p.recipe.unwrapped, section), name)
        if name in p.recipe.raw.get(section, {}) and value != length:
            raise PipelineError(
                f"{section}.{name} is {value} but run.max_length is {length}: a run has one sequence length, "
                "run.max_length, for training, the teacher's logits, the guard, the INT8 search and the "
                f"benchmark. Remove {section}.{name}, or set --run.max_length {value}."
            )


def check_output_dir(out: Path) -> None:
    """`run.output_dir` is, or can be created as, a writable folder (checked on its nearest existing parent)."""
    existing = out.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise PipelineError(
            f"Cannot create the output directory {out}: {existing} is a file. Set --run.output_dir to a folder."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PipelineError(
            f"Cannot write to {existing}, so not to {out} either. Set --run.output_dir to a writable folder."
        )


def check_vocabularies(p: Pipeline, data: DatasetDict) -> None:
    """Every tokenizer that will read the training text (the teacher's, each student's or the model a preset is
    narrowed from) can read it: the share of unknown tokens on the first 512 sentences, before any training."""
    sources = {"run.teacher": resolve_source(p.args.teacher)}
    for shape in p.args.student:
        pretrained = pretrained_student(shape)
        if pretrained:
            sources["run.student"] = resolve_source(pretrained[0])
        elif shape in STUDENT_PRESETS and p.args.student_init_from is not None:
            sources["run.student_init_from"] = resolve_source(p.args.student_init_from)
        elif shape not in STUDENT_PRESETS and not teacher_layers(shape):
            sources["run.student"] = shape
    texts = list(data["train"]["text"][:512])
    for key, source in sources.items():
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError):
            continue  # a packaged single-file model or an unusual folder: the stage that loads it says why
        share = unknown_token_share(tokenizer, texts)
        where = f"{key} {source!r}: {100 * share:.1f}% of the training text's tokens are unknown to its vocabulary"
        if share > UNKNOWN_REFUSE:
            raise PipelineError(
                f"{where}, so it cannot read this data (a cased vocabulary on other text, another language?). "
                f"Set --{key} to a model whose tokenizer covers the data."
            )
        if share > UNKNOWN_WARN:
            logger.warning(f"{where}; it trains, but those words are lost to it.")


def model_config(name: str, key: str, resolve: Callable[[], str]) -> Any:
    """The config of the model `name` (a packaged name, a local folder or a Hub id) that the recipe's `key` names, or
    a `PipelineError` that says why it does not load and which flag to change."""
    fix = (
        f"Set --{key} to a packaged name ({', '.join(PACKAGED_SOURCES)}), a local model folder, or a Hub id "
        "(downloaded once while online)."
    )
    source = resolve()  # a packaged name that is not installed fails here, with its own fix
    path = Path(source).expanduser()
    if path.is_file() and name in PACKAGED_SOURCES:
        return None  # a packaged single-file model (the GGUF generator), checked by packaged_source
    if path.is_dir() and not (path / "config.json").exists():
        raise PipelineError(f"{key} {name!r} is a folder without config.json, not a saved model. {fix}")
    if not path.exists() and (source.startswith((".", "/", "~")) or source.count("/") > 1):
        raise PipelineError(f"{key} {name!r} does not exist: there is no such folder. {fix}")
    try:
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as err:
        offline = "HF_HUB_OFFLINE=1 and it is not in the local cache" if os.environ.get("HF_HUB_OFFLINE") else ""
        reason = offline or " ".join(str(err).split())
        raise PipelineError(
            f"{key} {name!r} is not a model folder, and as a Hub id it does not load: {reason}. {fix}"
        ) from err


def check_data(p: Pipeline, data: DatasetDict) -> None:
    """What the stages need of the data and the loader does not check: two classes to learn, and no label to
    evaluate that training never saw."""
    names = label_names(data["train"])
    seen = set(data["train"]["label"])
    if len(seen) < 2:
        (only,) = [names[i] for i in seen]
        raise PipelineError(
            f"The training split of {p.args.dataset!r} has one class only ({only!r}, {len(data['train']):,} rows) "
            f"of the labels {names} found: a classifier needs at least two. Check the data, or "
            f"--run.label_column (now {p.args.label_column!r})."
        )
    for split in (p.args.eval_split, p.args.test_split):
        unseen = sorted(set(data[split]["label"]) - seen)
        if unseen:
            raise PipelineError(
                f"The {split} split of {p.args.dataset!r} has labels the training split never has: "
                f"{[names[i] for i in unseen]} (training has {[names[i] for i in sorted(seen)]}). Add training "
                "examples of them, or drop those rows."
            )
