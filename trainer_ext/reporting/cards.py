"""Hub-ready model cards whose every number was measured in the run that wrote them.

A card is rendered from a `Results` (the schema of `results.json`, owned by `trainer_ext.reporting.results`) with
huggingface_hub's `ModelCard` / `ModelCardData` / `EvalResult` and the Jinja template in
`templates/model_card.md`. A variant without a measurement is written as "not measured", never as a number, and is
left out of the `model-index`. This module owns the card's metadata (name, tags, model-index), its opening summary
and the writing; the body's rows and lines come from `trainer_ext.reporting.sections`, the plot from
`trainer_ext.reporting.plot`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from trainer_ext.deployment.quantization import FP32_FILE, INT8_FILE, ONNX_SUBFOLDER, OPENVINO_SUBFOLDER
from trainer_ext.files import write_text
from trainer_ext.reporting.plot import accuracy_latency_plot
from trainer_ext.reporting.results import Results, ResultsError, Variant
from trainer_ext.reporting.sections import (
    candidate_rows,
    figure_text,
    is_number,
    latency_description,
    latency_warning_lines,
    limitation_lines,
    md,
    provenance_lines,
    python_literal,
    result_rows,
    shape_pick_lines,
    trial_rows,
    variant_label,
)

CARD_FILE = "README.md"
PLOT_FILE = "accuracy_vs_latency.png"
TEMPLATE_PATH = Path(__file__).parent / "templates" / "model_card.md"
MARKER_TAG = "trainer-ext"

# The training settings a card states (and results.json records) for the distillation.
DISTILLATION_SETTINGS = (
    "distillation_loss",
    "temperature",
    "distillation_weight",
    "num_train_epochs",
    "learning_rate",
    "per_device_train_batch_size",
)


class ModelCardError(ValueError):
    """The card cannot be written as asked; the message says how to fix it."""


@dataclass
class CardArguments:
    """Model card metadata: `write_model_card`'s fields, a recipe's `card` section and `trainer-ext card`'s flags."""

    model_name: str | None = field(default=None, metadata={"help": "Card title and model-index name."})
    repo_id: str | None = field(default=None, metadata={"help": "Hub repo id shown in the usage snippets."})
    license: str | None = field(default=None, metadata={"help": "License id, e.g. apache-2.0."})
    language: str | None = field(default="en", metadata={"help": "Language code."})
    dataset_id: str | None = field(default=None, metadata={"help": "Hub id of the evaluation dataset."})
    dataset_name: str | None = field(default=None, metadata={"help": "Pretty name of the evaluation dataset."})
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset config, e.g. sst2."})
    dataset_split: str | None = field(default=None, metadata={"help": "Split the accuracy was measured on."})
    base_model: str | None = field(default=None, metadata={"help": "Hub id the student was made from."})
    base_model_relation: str | None = field(default=None, metadata={"help": "finetune, quantized, ..."})
    tags: list[str] | None = field(default=None, metadata={"help": "Extra tags."})
    limitations: list[str] | None = field(default=None, metadata={"help": "Extra limitation lines."})


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def _usage_reference(name: str) -> str:
    """What the usage snippets load: the repo id when `name` is a valid one, else a placeholder to replace."""
    return name if _REPO_ID.match(name) and len(name) <= 96 else "path/to/this/model"


def eval_results(results: Results, fields: dict[str, Any]) -> list[EvalResult]:
    """One model-index result per measured variant of *this* model: its FP32 weights and its INT8 ONNX file."""
    metric, evaluation = results.metric, results.evaluation
    out = []
    for v, pretty in ((results.model, "FP32"), (results.int8, "INT8, ONNX Runtime")):
        if not is_number(v.accuracy):
            continue
        runtime = v.runtime or pretty
        out.append(
            EvalResult(
                task_type="text-classification",
                task_name="Text Classification",
                dataset_type=fields["dataset_id"] or evaluation.get("dataset_id") or "custom",
                dataset_name=fields["dataset_name"] or evaluation.get("dataset_name") or "evaluation set",
                dataset_config=fields["dataset_config"] or evaluation.get("dataset_config"),
                dataset_split=fields["dataset_split"] or evaluation.get("split"),
                metric_type=metric,
                metric_value=float(v.accuracy),
                metric_name=f"{metric.capitalize()} ({runtime})",
            )
        )
    return out


# Suffixes of local data files, left out of a name made from their path.
_DATA_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet", ".txt")


def _name_part(name: str) -> str:
    """The last part of a Hub id, `packaged:` name or path, without a data file's suffix, in repo-name characters."""
    last = re.split(r"[/\\:]", name.rstrip("/\\"))[-1]
    last = last.removesuffix(next((s for s in _DATA_SUFFIXES if last.lower().endswith(s)), ""))
    return re.sub(r"[^A-Za-z0-9._-]+", "-", last).strip("-.")


def default_model_name(results: Results) -> str:
    """The card's name when none is given: the student's shape, "distilled" when it was, and the evaluation data set
    (with its config), e.g. "minilm-distilled-rotten_tomatoes". Never the output folder's name, which says nothing
    about the model. A Hub id or a path gives its last part; the name is a valid Hub repo name."""
    shape = (results.selection or {}).get("shipped")
    if not shape:
        student = (((results.recipe or {}).get("values") or {}).get("run") or {}).get("student")
        if isinstance(student, list) and len(student) == 1:
            student = student[0]
        shape = student if isinstance(student, str) else None
    evaluation = results.evaluation
    dataset = evaluation.get("dataset_id") or evaluation.get("dataset_name")
    parts = [
        _name_part(shape) if shape else "student" if results.teacher or results.distilled else "text-classifier",
        "distilled" if results.distilled else "",
        _name_part(dataset) if dataset else "",
        _name_part(evaluation["dataset_config"]) if dataset and evaluation.get("dataset_config") else "",
    ]
    return "-".join(p for p in parts if p)[:96].strip("-.") or "text-classifier"


def card_tags(output_dir: Path, results: Results, extra: Iterable[str] | None) -> list[str]:
    """The card's tags, each true of this folder and this run: `distillation` only for distilled weights, `onnx` when
    an ONNX model is in the folder (or the run measured its INT8 one), `int8` and `quantized` when an INT8 model was
    kept, `openvino` when the folder has an OpenVINO model; then the caller's own."""
    tags = [MARKER_TAG, "text-classification"]
    if results.distilled:
        tags.append("distillation")
    if results.int8.measured or any((output_dir / ONNX_SUBFOLDER).glob("*.onnx")):
        tags.append("onnx")
    if results.int8.measured:
        tags += ["int8", "quantized"]
    if any((output_dir / OPENVINO_SUBFOLDER).glob("*.xml")):
        tags.append("openvino")
    return tags + [t for t in (extra or []) if t not in tags]


def summary_line(results: Results) -> str:
    """The card's opening: what made the model (only what this run did), then how much faster than its teacher the
    fastest measured form of this model runs at batch 1, naming that form (the speed-up its row shows)."""
    made = [
        step
        for step, done in (("knowledge distillation", results.distilled), ("INT8 quantization", results.int8.measured))
        if done
    ]
    compact = "compact " if results.teacher or results.distilled else ""
    summary = f"A {compact}text classifier made with trainer-ext" + (f" ({' and '.join(made)})" if made else "") + "."
    teacher = results.variants.get("teacher") or Variant()
    timed = {name: v for name, v in results.forms().items() if is_number(v.latency_ms)}
    if is_number(teacher.latency_ms) and timed:
        name, fastest = min(timed.items(), key=lambda item: item[1].latency_ms)
        summary += (
            f" Its fastest form ({md(fastest.runtime or variant_label(name))}) runs "
            f"{teacher.latency_ms / fastest.latency_ms:.1f}x faster than its teacher at batch 1, length "
            f"{md(results.latency.get('sequence_length', 64))}"
        )
        if is_number(teacher.accuracy) and is_number(fastest.accuracy):
            summary += f", at {100 * (fastest.accuracy - teacher.accuracy):+.2f} {md(results.metric)} points"
        summary += " (measured below)."
    return summary


def write_model_card(
    output_dir: str | os.PathLike,
    report: Results | dict[str, Any] | None = None,
    *,
    model_name: str | None = None,
    repo_id: str | None = None,
    license: str | None = None,
    language: str | list[str] | None = "en",
    dataset_id: str | None = None,
    dataset_name: str | None = None,
    dataset_config: str | None = None,
    dataset_split: str | None = None,
    base_model: str | None = None,
    base_model_relation: str | None = None,
    tags: list[str] | None = None,
    limitations: Iterable[str] = (),
    template_path: str | os.PathLike | None = None,
    plot: bool = True,
) -> ModelCard:
    """Write `<output_dir>/README.md` (and `accuracy_vs_latency.png`) from measured results; return the card.

    `report` is a `Results`, the content of a `results.json`, or the report `quantize_model` returns; by default it
    is read from `<output_dir>/results.json`, or else built from `compression_report.json`. The other fields are the card's metadata; strings are
    escaped, so names with quotes, colons, newlines or markdown cannot break the YAML header or the page.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise ModelCardError(f"{output_dir} is not a folder: pass the training output directory.")
    if not os.access(output_dir, os.W_OK):
        raise ModelCardError(f"Cannot write to {output_dir}; pass a writable output directory.")
    try:
        if isinstance(report, Results):
            results = report
        else:
            results = Results.from_dict(report) if report is not None else Results.load(output_dir)
    except ResultsError as err:
        raise ModelCardError(str(err)) from err
    evaluation = results.evaluation
    fields = {
        "dataset_id": dataset_id or evaluation.get("dataset_id"),
        "dataset_name": dataset_name or evaluation.get("dataset_name"),
        "dataset_config": dataset_config or evaluation.get("dataset_config"),
        "dataset_split": dataset_split or evaluation.get("split"),
    }
    metric = results.metric
    model_name = model_name or repo_id or default_model_name(results)
    base_model = base_model or results.base_model
    if base_model and Path(base_model).exists():
        base_model = None  # a local path is not a Hub reference; the provenance section still names it
    card_data = ModelCardData(
        model_name=model_name,
        language=language,
        license=license,
        library_name="transformers",
        pipeline_tag="text-classification",
        tags=card_tags(output_dir, results, tags),
        base_model=base_model,
        datasets=[fields["dataset_id"]] if fields["dataset_id"] else None,
        metrics=[metric],
        eval_results=eval_results(results, fields) or None,
        **({"base_model_relation": base_model_relation} if base_model_relation else {}),
    )
    plot_file = None
    if plot and accuracy_latency_plot(results, output_dir / PLOT_FILE) is not None:
        plot_file = PLOT_FILE
    latency = results.latency
    quant = results.quantization or {}
    criterion = quant.get("criterion", {})
    int8_kept = results.int8.measured
    evaluation_bits = [md(fields["dataset_name"] or fields["dataset_id"] or "the evaluation set")]
    if fields["dataset_config"]:
        evaluation_bits.append(f"config {md(fields['dataset_config'])}")
    if fields["dataset_split"]:
        evaluation_bits.append(f"split {md(fields['dataset_split'])}")
    if evaluation.get("examples"):
        evaluation_bits.append(f"{evaluation['examples']:,} examples")
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path or TEMPLATE_PATH),
        title=md(model_name),
        summary=summary_line(results),
        eval_description=", ".join(evaluation_bits),
        latency_description=latency_description(latency, results),
        sequence_length=md(latency.get("sequence_length", 64)),
        metric_label=md(metric),
        rows=result_rows(results),
        latency_warnings=latency_warning_lines(results),
        plot_file=plot_file,
        provenance=provenance_lines(results),
        trials=trial_rows(results),
        candidates=candidate_rows(results),
        selection_split=md((results.selection or {}).get("split", "eval")),
        teacher_eval_accuracy=figure_text(
            100 * results.selection["teacher_accuracy"] if results.selection else None, ".2f"
        ),
        quantization_metric=md(quant.get("metric", metric)),
        criterion=(
            f"{criterion['max_absolute_drop']} (absolute)"
            if criterion.get("max_absolute_drop") is not None
            else f"{100 * (criterion.get('max_relative_drop') or 0):g}% (relative)"
        ),
        repo_literal=python_literal(_usage_reference(repo_id or model_name)),
        onnx_file=INT8_FILE if int8_kept else FP32_FILE,
        shape_picks=shape_pick_lines(quant),
        openvino_file=next(
            (
                p["file"].split("/", 1)[1]
                for p in quant.get("per_shape", {}).values()
                if p.get("backend") == "openvino"
            ),
            None,
        ),
        onnx_description="the INT8 model" if int8_kept else "the FP32 ONNX graph; no INT8 model was kept",
        limitations=limitation_lines(results, limitations),
    )
    write_text(output_dir / CARD_FILE, str(card))
    return card


def is_trainer_ext_card(path: str | os.PathLike) -> bool:
    """Whether `path` is a card written by `write_model_card` (Trainer.create_model_card must not replace it)."""
    path = Path(path)
    if not path.exists():
        return False
    try:
        return MARKER_TAG in (ModelCard.load(path).data.tags or [])
    except Exception:  # an unreadable card is not ours
        return False
