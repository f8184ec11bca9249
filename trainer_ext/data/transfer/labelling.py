"""Which form of the teacher labels the transfer set: FP32, bf16 autocast, or the teacher's INT8 ONNX model, the last
only where its labels agree with FP32's on the validation sentences (`AugmentationArguments.teacher_labelling`).

Only the transfer set: the original sentences' and the eval split's logits stay in the teacher's faithful form
(`precision`), since the student learns those and the guard and the selection measure against them. On the measured
Xeon the INT8 teacher agreed with FP32 on 96.81% of the validation sentences (benchmarks/README.md), below the 99% bar:
so INT8 is opt-in, and checked on each run's own teacher before any sentence is generated.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from accelerate.utils import gather_object
from datasets import ClassLabel, Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging

from trainer_ext.data.transfer.arguments import LABELLING_FORMS, AugmentationArguments, AugmentationError
from trainer_ext.deployment.benchmark import ClassifierRunner
from trainer_ext.deployment.quantization import INT8_FILE, dynamic_int8
from trainer_ext.files import write_json
from trainer_ext.training.distributed import broadcast_from_main, process_state
from trainer_ext.training.precision import bf16_support
from trainer_ext.training.teacher_logits import (
    CACHE_FORMAT_VERSION,
    TeacherLogitsCache,
    compute_teacher_logits,
    dataset_fingerprint,
    teacher_fingerprint,
    tokenizer_fingerprint,
)

logger = logging.get_logger(__name__)

INT8_LABELLER_DIR = "teacher_int8"  # under the augmentation output folder
LABELLER_RECORD = "labeller.json"  # beside the INT8 file: the teacher it was made from
_NAMES = {"fp32": "FP32", "bf16": "bf16 autocast", "int8": "ONNX Runtime INT8"}


@dataclass
class LabellingChoice:
    """The form that labels the transfer set, and why; in augmentation_stats.json and precision.json."""

    form: Literal["fp32", "bf16", "int8"]
    requested: str  # teacher_labelling as set
    reason: str  # one sentence: why this form
    fallback: str | None = None  # why the requested form is not the one used
    agreement: float | None = None  # share of the check sentences whose INT8 argmax is FP32's
    min_agreement: float | None = None
    sentences: int | None = None  # check sentences (the eval split)
    seconds_per_10k: dict[str, float] | None = None  # each form timed on the check sentences, one pass
    int8_model: str | None = None  # the INT8 ONNX file that labels, when it does
    int8_config: str | None = None  # how it was quantized (`quantization.dynamic_int8`)

    @property
    def bf16(self) -> bool:
        return self.form == "bf16"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def int8_labeller(
    teacher: PreTrainedModel, folder: str | os.PathLike, *, optimization_level: int = 2
) -> tuple[Path, str]:
    """The teacher's INT8 ONNX file in `folder` and its configuration's name, built once (`quantization.dynamic_int8`)
    and reused while `labeller.json` names this teacher's weights: a resumed run does not export again, and a
    changed teacher never labels with another's INT8 model. The record is written after the folder, so a record
    means a complete folder."""
    folder = Path(folder)
    fingerprint = teacher_fingerprint(teacher)
    record = folder / LABELLER_RECORD
    if record.exists() and (folder / INT8_FILE).exists():
        saved = json.loads(record.read_text())
        if saved.get("teacher") == fingerprint:
            return folder / INT8_FILE, saved["config"]
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".teacher-", dir=folder.parent) as saved_teacher:
        teacher.save_pretrained(saved_teacher)  # the exporter reads a saved model
        path, config = dynamic_int8(saved_teacher, folder, optimization_level=optimization_level)
    # Taken again: saving fills the config's `architectures` of a teacher never saved before, which the hash covers.
    write_json(record, {"teacher": teacher_fingerprint(teacher), "config": config})
    return path, config


def int8_logits(
    model: str | os.PathLike | ClassifierRunner,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    max_length: int,
    batch_size: int = 64,
) -> np.ndarray:
    """Logits of an INT8 ONNX model (a file, or a runner of one) over `texts`, in order, from batches of length-sorted
    sentences (as the teacher-logit pass forms them, to cut padding); under torchrun each process runs a share and
    every process gets them all."""
    runner = model if isinstance(model, ClassifierRunner) else ClassifierRunner(model, tokenizer)
    with process_state().split_between_processes(list(range(len(texts)))) as mine:
        order = np.argsort([len(texts[i]) for i in mine], kind="stable")
        part = runner.logits([texts[mine[j]] for j in order], batch_size=batch_size, max_length=max_length)
        if len(mine):
            part[order] = part.copy()  # back to the share's order
    parts = [p for p in gather_object([part]) if len(p)]
    return np.concatenate(parts).astype(np.float32)


def int8_teacher_logits(
    choice: LabellingChoice,
    tokenizer: PreTrainedTokenizerBase,
    dataset: Dataset,
    *,
    max_length: int,
    cache_dir: str | os.PathLike | None = None,
    text_column: str = "text",
) -> np.ndarray:
    """The INT8 teacher's logits on `dataset`'s text, cached like `compute_teacher_logits`'s, keyed by the data, the
    INT8 file's bytes, the tokenizer and the length."""
    state = process_state()
    path = Path(choice.int8_model)
    cache = TeacherLogitsCache(cache_dir) if cache_dir is not None else None
    key = None
    if cache is not None and dataset_fingerprint(dataset) is not None:
        settings = {
            "version": CACHE_FORMAT_VERSION,
            "data": dataset_fingerprint(dataset),
            "int8": hashlib.sha256(path.read_bytes()).hexdigest()[:16],
            "column": text_column,
            "max_length": max_length,
            "tokenizer": tokenizer_fingerprint(tokenizer),
        }
        key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24]
        cached = cache.load(key)
        if cached is not None and len(cached) == len(dataset):
            return cached
    logits = int8_logits(path, tokenizer, list(dataset[text_column]), max_length=max_length)
    if key is not None:
        if state.is_main_process:
            cache.save(key, logits, metadata={"rows": len(dataset), "form": "int8", "file": str(path)})
        state.wait_for_everyone()
    return logits


def choose_labelling(
    requested: str,
    teacher: PreTrainedModel,
    teacher_tokenizer: PreTrainedTokenizerBase,
    *,
    auto_bf16: bool = False,
    check_texts: Sequence[str] = (),
    min_agreement: float = 0.99,
    max_length: int = 64,
    folder: str | os.PathLike | None = None,
    batch_size: int = 64,
) -> LabellingChoice:
    """The form that labels the transfer set, for `requested` (`AugmentationArguments.teacher_labelling`):

    - 'auto': bf16 autocast when `auto_bf16` (the form measured for the teacher's logits), else FP32;
    - 'fp32', 'bf16': that form; bf16 without fast bf16 arithmetic is used as asked, with a warning and the reason
      recorded, as `run.precision: bf16` is (`precision.choose_precision`);
    - 'int8': the teacher exported and dynamically quantized into `folder` (`int8_labeller`), used only when its argmax
      agrees with FP32's on at least `min_agreement` of `check_texts`; otherwise, or when it cannot be built, the
      'auto' form, with the reason in `fallback`. FP32, INT8 (and bf16 when it is the 'auto' form) are timed on
      `check_texts`, one pass each.

    Under torchrun the main process builds the INT8 model; the checks run in shares, and every process gets the
    same logits, so the same decision.
    """
    if requested not in LABELLING_FORMS:
        raise ValueError(f"teacher_labelling must be one of {LABELLING_FORMS}, got {requested!r}.")
    auto = "bf16" if auto_bf16 else "fp32"
    if requested == "auto":
        return LabellingChoice(auto, requested, f"{_NAMES[auto]}, the form chosen for the teacher's logits")
    if requested == "fp32":
        return LabellingChoice("fp32", requested, "set in the recipe")
    if requested == "bf16":
        supported, why = bf16_support(next(teacher.parameters()).device)
        if supported:
            return LabellingChoice("bf16", requested, "set in the recipe")
        logger.warning(f"teacher_labelling is bf16 but {why}, so bf16 autocast will likely be slower than fp32.")
        return LabellingChoice("bf16", requested, f"set in the recipe, although {why} (likely slower than fp32)")
    if folder is None or not check_texts:
        raise ValueError("teacher_labelling='int8' needs a folder for the INT8 model and sentences to check it on.")

    state = process_state()
    built = None
    if state.is_main_process:
        try:
            path, config = int8_labeller(teacher, folder)
            built = {"int8_model": str(path), "int8_config": config}
        except Exception as err:  # noqa: BLE001 - any export or quantization failure falls back, with its reason
            logger.warning("The INT8 labelling teacher could not be built", exc_info=True)
            built = {"error": f"{type(err).__name__}: {err}"}
    built = broadcast_from_main(built)
    if "error" in built:
        fallback = f"the INT8 teacher could not be built ({built['error']}): labelled in {_NAMES[auto]} instead"
        return LabellingChoice(auto, requested, fallback, fallback=fallback, min_agreement=min_agreement)

    texts = [str(t) for t in check_texts]
    data = Dataset.from_dict({"text": texts})
    seconds: dict[str, float] = {}

    def timed(form: str, label) -> np.ndarray:
        start = time.perf_counter()
        logits = label()
        seconds[form] = 10_000 * (time.perf_counter() - start) / len(texts)
        return logits

    def pytorch(bf16: bool) -> np.ndarray:
        return compute_teacher_logits(
            teacher, data, teacher_tokenizer=teacher_tokenizer, max_length=max_length, batch_size=batch_size, bf16=bf16
        )

    reference = timed("fp32", lambda: pytorch(False))
    if auto == "bf16":
        timed("bf16", lambda: pytorch(True))
    runner = ClassifierRunner(built["int8_model"], teacher_tokenizer)  # the session starts outside the timing
    int8 = timed(
        "int8", lambda: int8_logits(runner, teacher_tokenizer, texts, max_length=max_length, batch_size=batch_size)
    )
    agreement = float((int8.argmax(-1) == reference.argmax(-1)).mean())
    measured = f"the INT8 teacher agreed with FP32 on {100 * agreement:.2f}% of {len(texts):,} validation sentences"
    record = dict(agreement=agreement, min_agreement=min_agreement, sentences=len(texts), seconds_per_10k=seconds)
    if agreement >= min_agreement:
        if seconds["int8"] >= seconds[auto]:
            logger.warning(
                f"The INT8 teacher labels (it agrees), but measured no faster than {_NAMES[auto]}: "
                f"{seconds['int8']:.1f} against {seconds[auto]:.1f} s per 10,000 sentences."
            )
        reason = f"{measured} (at least {100 * min_agreement:.2f}%)"
        return LabellingChoice("int8", requested, reason, **record, **built)
    fallback = (
        f"{measured}, below min_labelling_agreement {100 * min_agreement:.2f}%: labelled in {_NAMES[auto]} instead"
    )
    logger.warning(f"teacher_labelling int8: {fallback}.")
    return LabellingChoice(auto, requested, fallback, fallback=fallback, **record, int8_config=built["int8_config"])


# ------------------------------------------------------------------------------------------- labelling the set
def relabel(
    dataset: Dataset,
    teacher: PreTrainedModel | None,
    teacher_tokenizer: PreTrainedTokenizerBase | None,
    label_names: list[str],
    stats: dict,
    args: AugmentationArguments,
    *,
    labelling: LabellingChoice | None = None,
    teacher_bf16: bool = False,
) -> Dataset:
    """Add `teacher_logits` and `label` (the teacher's argmax, or the prompt label without a teacher) to generated
    `text`/`prompt_label` rows, apply the teacher filters, and record agreement statistics in `stats`.

    The teacher labels in the `labelling` form (`choose_labelling`), else in FP32 or, with `teacher_bf16`, bf16
    autocast; `args` gives the student's `max_length`, the `output_dir` of the logits' cache and the filters."""
    num_labels = len(label_names)
    if teacher is None:
        logits = np.full((len(dataset), num_labels), np.nan, dtype=np.float32)
        labels = list(dataset["prompt_label"])
    else:
        if teacher.config.num_labels != num_labels:
            raise AugmentationError(
                f"The teacher predicts {teacher.config.num_labels} labels but the data has "
                f"{num_labels} ({label_names})."
            )
        cache_dir = Path(args.output_dir) / "_teacher_logits" if args.output_dir else None
        start = time.perf_counter()
        if labelling is not None and labelling.form == "int8":
            logits = int8_teacher_logits(
                labelling, teacher_tokenizer, dataset, max_length=args.max_length, cache_dir=cache_dir
            )
        else:
            logits = compute_teacher_logits(
                teacher,
                dataset,
                teacher_tokenizer=teacher_tokenizer,
                text_column="text",
                max_length=args.max_length,  # the length the student trains at: the logits the trainer would get
                bf16=labelling.bf16 if labelling is not None else teacher_bf16,
                cache_dir=cache_dir,
            )
        stats["labelling_seconds"] = time.perf_counter() - start
        labels = logits.argmax(-1).tolist()
    stats["teacher_labelling"] = labelling.to_dict() if teacher is not None and labelling else None
    dataset = dataset.add_column("teacher_logits", [row.tolist() for row in logits])
    dataset = dataset.add_column("label", labels)
    dataset = dataset.cast_column("label", ClassLabel(names=label_names))
    if "source" not in dataset.column_names:
        dataset = dataset.add_column("source", ["generated"] * len(dataset))
    prompt = np.asarray(list(dataset["prompt_label"]))
    generated = prompt >= 0  # unlabelled sentences have no prompt to agree with
    agree = (np.asarray(labels) == prompt) | ~generated
    stats["teacher_agreement"] = float(agree[generated].mean()) if teacher is not None and generated.any() else None
    stats["per_label_agreement"] = (
        {label_names[i]: float(agree[prompt == i].mean()) for i in range(num_labels) if (prompt == i).any()}
        if teacher is not None
        else None
    )
    keep = np.ones(len(dataset), dtype=bool)
    if teacher is not None and args.min_teacher_confidence is not None:
        shifted = logits - logits.max(-1, keepdims=True)
        probs = np.exp(shifted) / np.exp(shifted).sum(-1, keepdims=True)
        keep &= probs.max(-1) >= args.min_teacher_confidence
    if teacher is not None and args.require_label_agreement:
        keep &= agree
    stats["dropped_by_teacher_filters"] = int((~keep).sum())
    if not keep.all():
        dataset = dataset.select(np.flatnonzero(keep).tolist())
    stats["final"] = len(dataset)
    stats["final_per_label"] = {
        label_names[i]: int(c)
        for i, c in enumerate(np.bincount(np.asarray(list(dataset["label"]), dtype=int), minlength=num_labels))
    }
    if len(dataset) == 0:
        raise AugmentationError(
            f"The teacher filters removed every sample: {json.dumps(stats)}. Lower "
            "min_teacher_confidence or turn off require_label_agreement."
        )
    return dataset


__all__ = [
    "INT8_LABELLER_DIR",
    "LABELLING_FORMS",
    "LabellingChoice",
    "choose_labelling",
    "int8_labeller",
    "int8_logits",
    "int8_teacher_logits",
    "relabel",
]
