"""What several stages use alike: packaged names resolved, the recipe's training arguments for a stage, tokenization
at the run's one length, and each stage's precision, measured once and recorded in `precision.json`."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from datasets import Dataset
from transformers import TrainingArguments

from trainer_ext.data.assets import PackagedAssetError, packaged_source
from trainer_ext.files import write_json
from trainer_ext.pipeline.runner import PipelineError
from trainer_ext.training.precision import PrecisionChoice, choose_precision, training_precision_kwargs

if TYPE_CHECKING:
    from trainer_ext.pipeline.pipeline import Pipeline

PRECISION_FILE = "precision.json"
TRANSFER_LABELLING = "transfer_labelling"  # precision.json: the form that labelled the transfer set (`labelling`)

# The batch that times FP32 against bf16 autocast for a stage's model: a fixed size, so that the stages that only
# choose a precision (augmentation, teacher logits) do not read the student's batch size and lose their reuse when
# it changes.
PRECISION_PROBE_BATCH = 32


def resolve_source(name: str) -> str:
    """A `packaged:` name's path (the first use of packaged:mpnet unpacks it); other names as given."""
    try:
        return packaged_source(name)
    except PackagedAssetError as err:  # not installed, damaged or unknown: the message says what to do
        raise PipelineError(str(err)) from err


def training_args(
    p: Pipeline, section: str, stage: str, precision: PrecisionChoice, **extra: Any
) -> TrainingArguments:
    """The recipe's `section` (teacher_training or student_training) for `stage`: its output folder, the run's
    seed unless the section sets its own, the precision chosen for the stage."""
    base = getattr(p.recipe, section).whole(*extra)
    seed = base.seed if "seed" in p.recipe.raw.get(section, {}) else p.args.seed
    bf16 = training_precision_kwargs(precision)
    use_cpu = base.use_cpu or bf16.pop("use_cpu", False) or (p.num_processes > 1 and not torch.cuda.is_available())
    return replace(base, output_dir=str(p.out / "runs" / stage), seed=seed, use_cpu=use_cpu, **(bf16 | extra))


def tokenized(p: Pipeline, tokenizer: Any, dataset: Dataset) -> Dataset:
    return dataset.map(lambda b: tokenizer(b["text"], truncation=True, max_length=p.args.max_length), batched=True)


def recorded_precisions(p: Pipeline) -> dict[str, dict[str, Any]]:
    """`precision.json` as recorded so far (read once a run; the dict is updated in place as stages choose)."""
    if p.precisions is None:
        path = p.out / PRECISION_FILE
        p.precisions = json.loads(path.read_text()) if path.exists() else {}
    return p.precisions


def record_precisions(p: Pipeline, entries: dict[str, dict[str, Any]]) -> None:
    """Add `entries` to `precision.json` (written by the main process)."""
    recorded = recorded_precisions(p)
    recorded.update(entries)
    if p.is_main:
        write_json(p.out / PRECISION_FILE, recorded)


def stage_precision(
    p: Pipeline, stage: str, model: torch.nn.Module, tokenizer: Any, *, train: bool
) -> PrecisionChoice:
    """FP32 or bf16 autocast for `stage`, chosen once per run (see `precision.choose_precision`) on a real batch of
    training sentences, and recorded in `precision.json`; a resumed run reuses the recorded choice.

    Under torchrun the main process measures and decides, and every process takes its choice: ranks that chose apart
    would key the teacher-logit cache apart, and one would wait for the other forever. The model is left where it
    was (callers place it on `p.device` themselves)."""
    recorded = recorded_precisions(p)
    if stage in recorded and p.args.precision == "auto":
        return PrecisionChoice(**recorded[stage])
    choice = _measure_precision(p, stage, model, tokenizer, train=train) if p.is_main else None
    choice = p.broadcast(choice)
    p.progress(f"[{stage}] precision {choice.precision}: {choice.reason}")
    record_precisions(p, {stage: choice.to_dict()})
    return choice


def _measure_precision(
    p: Pipeline, stage: str, model: torch.nn.Module, tokenizer: Any, *, train: bool
) -> PrecisionChoice:
    size = PRECISION_PROBE_BATCH
    texts = p.data["train"]["text"][:size]
    batch = dict(tokenizer(texts, padding=True, truncation=True, max_length=p.args.max_length, return_tensors="pt"))
    if train:  # a causal LM (the generator) learns its own tokens; a classifier the labels
        causal = getattr(model, "can_generate", lambda: False)()
        batch["labels"] = batch["input_ids"].clone() if causal else torch.tensor(p.data["train"]["label"][:size])
    home = next(model.parameters()).device
    try:
        return choose_precision(stage, model.to(p.device), batch, p.args.precision, train=train, device=p.device)
    finally:
        model.to(home)


CANDIDATES_DIR = "candidates"  # selection: per candidate, a folder (model, onnx/, report) and <name>.json (figures)
SELECTION_FILE = "selection.json"  # selection: every candidate's record and the one shipped


def candidate_dir(p: Pipeline, shape: str, init: bool = False) -> Path:
    """A selection candidate's `candidates/<name>` (its model, onnx/ and report: what is copied when it is shipped), or
    its saved initialisation under `candidates/_init/`; a folder or Hub id is named by its path with / as --."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "--", shape.strip("/")).lstrip(".-") or "student"
    return p.out / CANDIDATES_DIR / ("_init" if init else "") / name


def selection_record(p: Pipeline) -> dict[str, Any]:
    """The selection stage's `candidates/selection.json`: every candidate's record and the one shipped."""
    return json.loads((p.out / CANDIDATES_DIR / SELECTION_FILE).read_text())
