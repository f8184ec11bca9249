"""Hub-ready model cards whose every number was measured in the run that wrote them.

A card is rendered from a `Results` (the schema of `results.json`, owned by `trainer_ext.reporting.results`) with
huggingface_hub's `ModelCard` / `ModelCardData` / `EvalResult` and the Jinja template in
`templates/model_card.md`. A variant without a measurement is written as "not measured", never as a number, and is
left out of the `model-index`.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from trainer_ext.files import write_atomic, write_text
from trainer_ext.reporting.results import Results, ResultsError, Variant, variant_warnings

CARD_FILE = "README.md"
PLOT_FILE = "accuracy_vs_latency.png"
TEMPLATE_PATH = Path(__file__).parent / "templates" / "model_card.md"
MARKER_TAG = "trainer-ext"
NOT_MEASURED = "not measured"

VARIANT_LABELS = {
    "teacher": "teacher",
    "teacher_int8": "teacher INT8",
    "student_no_distillation": "student without distillation",
    "student_distilled_original": "student distilled on the original sentences only",
    "student_distilled": "student (distilled)",
    "student": "student",
    "student_int8": "student INT8",
    "student_openvino": "student, OpenVINO (the search's pick)",
}


def variant_label(name: str) -> str:
    """A variant's name for people: `VARIANT_LABELS`, or `candidate_<student>[_int8]` as the selection's candidate."""
    if name in VARIANT_LABELS:
        return VARIANT_LABELS[name]
    if name.startswith("candidate_"):
        student, int8 = name.removeprefix("candidate_"), name.endswith("_int8")
        return f"candidate {student.removesuffix('_int8')}{' INT8' if int8 else ''}"
    return name


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


# ------------------------------------------------------------------------------------------------------ escaping
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+!|~])")


def md(value: Any) -> str:
    """One line of inert markdown: newlines folded, markup and table pipes escaped, HTML impossible."""
    text = " ".join(str(value).split())
    return _MD_SPECIAL.sub(r"\\\1", text)


def python_literal(value: str) -> str:
    """A Python string literal that cannot end the surrounding code fence or string."""
    return json.dumps(str(value)).replace("`", "\\u0060")


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def _usage_reference(name: str) -> str:
    """What the usage snippets load: the repo id when `name` is a valid one, else a placeholder to replace."""
    return name if _REPO_ID.match(name) and len(name) <= 96 else "path/to/this/model"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ----------------------------------------------------------------------------------------------------- rendering
def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    return f"{value:{spec}}{suffix}" if _is_number(value) else NOT_MEASURED


EXTRA_SHAPE_COLUMNS = ("real_length", "real_length_tokenized", "batch_32")  # beside the fixed-length one


def _rows(results: Results) -> list[dict[str, str]]:
    return [
        {
            "label": md(variant_label(name)),
            "runtime": md(v.runtime or ("" if v.measured else NOT_MEASURED)),
            "metric": _fmt(100 * v.accuracy, ".2f", "%") if _is_number(v.accuracy) else NOT_MEASURED,
            "latency": _fmt(v.latency_ms, ".2f"),
            **{shape: _fmt((v.shapes or {}).get(shape, {}).get("median_ms"), ".2f") for shape in EXTRA_SHAPE_COLUMNS},
            "speedup": _fmt(v.speedup_vs_teacher, ".2f", "x"),
            "size": _fmt(v.size_mb, ".1f"),
            "parameters": _fmt(v.parameters, ","),
        }
        for name, v in results.variants.items()
    ]


def _eval_results(results: Results, fields: dict[str, Any]) -> list[EvalResult]:
    """One model-index result per measured variant of *this* model: its FP32 weights and its INT8 ONNX file."""
    metric, evaluation = results.metric, results.evaluation
    out = []
    for v, pretty in ((results.model, "FP32"), (results.int8, "INT8, ONNX Runtime")):
        if not _is_number(v.accuracy):
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


def transfer_set_line(aug: dict[str, Any]) -> str:
    """What built the transfer set, with each source's count, then its statistics."""
    sources = aug.get("sources") or {}
    named = []
    for source, count in sources.items():
        if source == "generated":
            named.append(f"{count:,} generated by a causal LM fine-tuned on the training set")
        else:
            named.append(f"{count:,} unlabelled sentences from {md(source.split(':', 1)[-1])}")
    parts = [f"{md(k)} = {_value(v)}" for k, v in aug.items() if not isinstance(v, (dict, list))]
    head = f"Transfer set ({', '.join(named)}; every sentence labelled by the teacher)" if named else "Transfer set"
    return head + ": " + ", ".join(parts) + "."


def _value(value: Any) -> str:
    """A setting or statistic for the page: floats to 4 significant digits, everything escaped."""
    return md(f"{value:.4g}" if isinstance(value, float) else value)


def _provenance(results: Results) -> list[str]:
    lines = []
    if results.teacher:
        lines.append(f"Teacher: {md(results.teacher)}.")
    if results.student_base:
        lines.append(f"Student initialised from: {md(results.student_base)}.")
    if results.distillation:
        settings = ", ".join(f"{md(k)} = {_value(v)}" for k, v in results.distillation.items())
        lines.append(f"Training: {settings}.")
    aug = results.augmentation
    if aug:
        lines.append(transfer_set_line(aug))
    if results.selection:
        sel = results.selection
        outcome = "met the budget" if sel.get("met") else "the budget was not met by any candidate: the closest"
        lines.append(
            f"Student: {md(sel.get('shipped'))}, chosen from {len(sel.get('candidates', []))} candidates ({outcome}); "
            f"{md(sel.get('reason'))} (candidates below)."
        )
    if results.guard:
        shipped = variant_label(results.guard.get("shipped", ""))
        lines.append(f"Shipped: the {md(shipped)}; {md(results.guard.get('reason'))}.")
        if results.guard.get("teacher_note"):
            lines.append(f"Note: {md(results.guard['teacher_note'])}.")
    quant = results.quantization
    if quant:
        chosen = quant.get("chosen", {})
        if chosen.get("name", "fp32") == "fp32":
            lines.append(f"Quantization: no INT8 model kept ({md(chosen.get('reason', 'FP32 kept'))}).")
        else:
            lines.append(
                f"Quantization: {md(chosen['name'])} ({md(_fmt(chosen.get('speedup_vs_fp32'), '.2f', 'x'))} faster than "
                f"the FP32 ONNX graph), chosen by an accuracy-aware search over {len(quant.get('trials', []))} "
                "configurations; ONNX export checked against PyTorch (largest logit difference "
                f"{md(_fmt(quant.get('export_max_abs_logit_diff'), '.1e'))})."
            )
    if results.precision:
        chosen = ", ".join(f"{md(k)} {md(v.get('precision'))}" for k, v in results.precision.items())
        lines.append(f"Precision per stage (detected and measured on the training machine): {chosen}.")
        labelling = results.precision.get("transfer_labelling") or {}
        if labelling.get("requested") == "int8":  # opt-in: say whether the INT8 teacher labelled, and why
            lines.append(f"Transfer-set labelling ({md(labelling.get('precision'))}): {md(labelling.get('reason'))}.")
    if results.stages:
        stages = ", ".join(f"{md(k)} {v:.0f} s" for k, v in results.stages.items() if _is_number(v))
        lines.append(f"Stage durations: {stages}.")
    return lines or ["Trained with trainer-ext."]


def _candidates(results: Results) -> list[dict[str, str]]:
    """The selection's candidates, in the order they were tried (fastest first), for the card's table."""
    sel = results.selection or {}
    rows = []
    for r in sel.get("candidates", []):
        status = r.get("status", "")
        if status == "trained":
            status = "shipped" if r["student"] == sel.get("shipped") else "trained"
            status += ", within the budget" if r.get("meets_budget") else ", outside the budget"
        elif r.get("error"):
            status = f"{status}: {r['error']}"
        rows.append(
            {
                "student": md(r["student"])
                + (f" ({r['layers']} x {r['hidden_size']})" if _is_number(r.get("layers")) else ""),
                "parameters": f"{r['parameters']:,}" if _is_number(r.get("parameters")) else "-",
                "train_minutes": _fmt(r["train_seconds"] / 60 if _is_number(r.get("train_seconds")) else None, ".1f"),
                "fp32": _fmt(100 * r["fp32_accuracy"] if _is_number(r.get("fp32_accuracy")) else None, ".2f"),
                "int8": _fmt(100 * r["int8_accuracy"] if _is_number(r.get("int8_accuracy")) else None, ".2f"),
                "ms": _fmt(r.get("int8_real_length_ms"), ".2f"),
                "status": md(status),
            }
        )
    return rows


def _trials(results: Results) -> list[dict[str, str]]:
    quant = results.quantization or {}
    rows = []
    for t in quant.get("trials", []):
        value = t.get("metric_value", t.get("accuracy"))
        rows.append(
            {
                "name": md(t.get("name", "?")),
                "latency": _fmt((t.get("latency") or {}).get("median_ms"), ".2f"),
                "metric": _fmt(value, ".4f") if _is_number(value) else "not evaluated",
                "status": md(
                    ("kept; " if t.get("name") == quant.get("chosen", {}).get("name") else "")
                    + t.get("status", "")
                    + "".join(f"; inconsistent timing: {flag}" for flag in variant_warnings(t))
                ),
            }
        )
    return rows


def _limitations(results: Results, extra: Iterable[str]) -> list[str]:
    lines = []
    latency = results.latency
    n = results.evaluation.get("examples")
    acc = results.model.accuracy
    if _is_number(n) and n and _is_number(acc):
        se = 100 * math.sqrt(acc * (1 - acc) / n)
        lines.append(
            f"Accuracy was measured on {n:,} examples: one standard error is about {se:.1f} points, so smaller "
            "differences between rows are noise."
        )
    lines.append(
        "Latency depends on the CPU and its instruction sets (AVX-512 VNNI and AMX speed INT8 up, AVX512-BF16 and AMX "
        f"bf16): these figures come from {md(_cpu(latency) or 'the machine that trained it')} with "
        f"{md(latency.get('threads', '?'))} threads; measure on your own hardware before relying on them."
    )
    lines.append(
        "A distilled student inherits its teacher's errors and biases, and can add its own on text unlike the "
        "training data."
    )
    if not results.int8.measured:
        lines.append(f"No INT8 model is included: {md(results.int8.note or 'quantization was not run')}.")
    lines += [md(x) for x in extra or ()]
    return lines


def _shape_picks(quant: dict[str, Any]) -> list[str]:
    """One line per serving shape: the fastest configuration within the criterion, its runtime and file."""
    versions = {
        "onnxruntime": (quant.get("onnxruntime") or {}).get("version"),
        "openvino": (quant.get("openvino") or {}).get("version"),
    }
    lines = []
    for shape, pick in (quant.get("per_shape") or {}).items():
        backend = pick.get("backend", "onnxruntime")
        runtime = f"{'ONNX Runtime' if backend == 'onnxruntime' else 'OpenVINO'} {versions.get(backend) or ''}".strip()
        static = f", compiled for the static shape {pick['static_shape']}" if pick.get("static_shape") else ""
        lines.append(
            # Shape, file and candidate names are the package's own (no markup): code spans, unescaped.
            f"`{shape}`: `{pick.get('file', pick['name'])}` ({pick['name']}, {md(runtime)}{static}; "
            f"{md(_fmt(pick.get('median_ms'), '.2f'))} ms, {md(_fmt(pick.get('speedup_vs_fp32'), '.2f', 'x'))} the FP32 "
            "ONNX graph's speed in the search)"
        )
    return lines


def _cpu(latency: dict[str, Any]) -> str | None:
    """The measuring CPU as recorded: its name and instruction sets (`benchmark.cpu_description`); results written
    before the instruction sets were recorded say so, since the name alone does not decide the speed."""
    cpu = latency.get("cpu")
    if cpu and "cpu_features" not in latency:
        return f"{cpu} (instruction sets not recorded)"
    return cpu


def _latency_warnings(results: Results) -> list[str]:
    """The flagged figures (`results.variant_warnings`), one line each, naming the variant: shown under the table."""
    return [
        f"{md(variant_label(name))}: {md(flag)}"
        for name, v in results.variants.items()
        for flag in variant_warnings(v)
    ]


def _latency_description(latency: dict[str, Any], results: Results) -> str:
    """How the latency columns were measured: shapes, runs, threads, CPU, and each runtime's version."""
    versions = sorted({v.runtime_version for v in results.variants.values() if v.runtime_version})
    ort = latency.get("onnxruntime") or {}
    text = (
        f"median of {md(latency.get('runs', '?'))} runs after warm-up (batch 32: a tenth as many calls), "
        f"{md(latency.get('threads', '?'))} threads on {md(_cpu(latency) or platform.machine())}"
    )
    if versions:
        text += "; " + ", ".join(md(v) for v in versions)
    if ort:
        text += (
            f" (ONNX Runtime: {ort.get('intra_op_num_threads')} intra-op threads, spinning "
            f"{'on' if ort.get('intra_op_allow_spinning') else 'off'}, {ort.get('inter_op_num_threads')} inter-op)"
        )
    shapes = latency.get("shapes") or {}
    if shapes:
        text += ". Columns: " + "; ".join(f"{md(name)}: {md(what)}" for name, what in shapes.items())
    else:
        text += f". Batch 1, length {md(latency.get('sequence_length', '?'))}, tokenization excluded"
    if latency.get("max_length"):
        text += (
            f". Sentences truncated at {md(latency['max_length'])} tokens (accuracy and the real-length columns); "
            f"the fixed length is {md(latency.get('sequence_length', '?'))}"
        )
    return text


def accuracy_latency_plot(results: Results, path: str | os.PathLike) -> Path | None:
    """Scatter of accuracy against latency for every variant with both measured (filled: batch 1 at the fixed length;
    hollow, same colour: real length and batch 32 per sentence, where measured); None when there is none."""
    if not any(_is_number(v.latency_ms) and _is_number(v.accuracy) for v in results.variants.values()):
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers or CI
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, ax = plt.subplots(figsize=(7, 5), dpi=100)
    shape_markers = {"real_length": ("o", "real length"), "batch_32": ("s", "batch 32, per sentence")}
    for name, v in results.variants.items():
        if not (_is_number(v.latency_ms) and _is_number(v.accuracy)):
            continue
        label, accuracy = variant_label(name), 100 * v.accuracy
        (dot,) = ax.plot([v.latency_ms], [accuracy], "D", markersize=6)
        ax.annotate(label, (v.latency_ms, accuracy), textcoords="offset points", xytext=(5, 5), fontsize=8)
        for shape, (marker, _) in shape_markers.items():
            ms = (v.shapes or {}).get(shape, {}).get("median_ms")
            if _is_number(ms):  # the same variant served another way: same colour, hollow marker
                ax.plot([ms], [accuracy], marker, markersize=6, mfc="none", color=dot.get_color())
    length = results.latency.get("sequence_length", 64)
    handles = [plt.Line2D([], [], marker="D", ls="", color="grey", label=f"batch 1, length {length}")]
    teacher = results.variants.get("teacher") or Variant()
    budget = (results.selection or {}).get("budget") or {}
    if _is_number(teacher.accuracy):
        handles.append(ax.axhline(100 * teacher.accuracy, color="black", lw=0.8, ls=":", label="teacher"))
        if _is_number(budget.get("max_accuracy_drop")):
            level = 100 * teacher.accuracy - budget["max_accuracy_drop"]
            label = f"accuracy budget: teacher - {budget['max_accuracy_drop']:g} (set on the eval split)"
            handles.append(ax.axhline(level, color="tab:red", lw=0.8, ls="--", label=label))
    if _is_number(budget.get("max_latency_ms")):
        label = f"latency budget: {budget['max_latency_ms']:g} ms, real length"
        handles.append(ax.axvline(budget["max_latency_ms"], color="tab:red", lw=0.8, ls="-.", label=label))
    if any(v.shapes for v in results.variants.values()):
        handles += [
            plt.Line2D([], [], marker=m, ls="", mfc="none", color="grey", label=text)
            for m, text in shape_markers.values()
        ]
    # Below the axes: inside, with the teacher and budget lines, no corner is free of points and labels.
    ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    ax.set_xscale("log")
    # Plain numbers at 1, 2, 5, 10, 20, ... ms instead of matplotlib's "2x10^0" labels.
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel(f"{results.metric} (%)")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    write_atomic(path, partial(fig.savefig, bbox_inches="tight"))
    plt.close(fig)
    return Path(path)


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
    is read from `<output_dir>/results.json`, or else built from `compression_report.json`. The other fields are the card's metadata; strings are escaped, so
    names with quotes, colons, newlines or markdown cannot break the YAML header or the page.
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
    model_name = model_name or repo_id or output_dir.resolve().name
    base_model = base_model or results.base_model
    if base_model and Path(base_model).exists():
        base_model = None  # a local path is not a Hub reference; the provenance section still names it
    all_tags = [MARKER_TAG, "text-classification", "distillation"]
    if results.int8.measured:
        all_tags += ["onnx", "int8", "quantized"]
    all_tags += [t for t in (tags or []) if t not in all_tags]
    card_data = ModelCardData(
        model_name=model_name,
        language=language,
        license=license,
        library_name="transformers",
        pipeline_tag="text-classification",
        tags=all_tags,
        base_model=base_model,
        datasets=[fields["dataset_id"]] if fields["dataset_id"] else None,
        metrics=[metric],
        eval_results=_eval_results(results, fields) or None,
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
    title = md(model_name)
    teacher = results.variants.get("teacher") or Variant()
    best = results.int8 if int8_kept else results.model
    summary = "A compact text classifier made with trainer-ext (knowledge distillation and INT8 quantization)."
    if _is_number(teacher.latency_ms) and _is_number(best.latency_ms):
        summary += (
            f" Its fastest form runs {teacher.latency_ms / best.latency_ms:.1f}x faster than its teacher at batch 1"
        )
        if _is_number(teacher.accuracy) and _is_number(best.accuracy):
            summary += f", at {100 * (best.accuracy - teacher.accuracy):+.2f} {md(metric)} points"
        summary += " (measured below)."
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path or TEMPLATE_PATH),
        title=title,
        summary=summary,
        eval_description=", ".join(evaluation_bits),
        latency_description=_latency_description(latency, results),
        sequence_length=md(latency.get("sequence_length", 64)),
        metric_label=md(metric),
        rows=_rows(results),
        latency_warnings=_latency_warnings(results),
        plot_file=plot_file,
        provenance=_provenance(results),
        trials=_trials(results),
        candidates=_candidates(results),
        selection_split=md((results.selection or {}).get("split", "eval")),
        teacher_eval_accuracy=_fmt(100 * results.selection["teacher_accuracy"] if results.selection else None, ".2f"),
        quantization_metric=md(quant.get("metric", metric)),
        criterion=(
            f"{criterion['max_absolute_drop']} (absolute)"
            if criterion.get("max_absolute_drop") is not None
            else f"{100 * (criterion.get('max_relative_drop') or 0):g}% (relative)"
        ),
        repo_literal=python_literal(_usage_reference(repo_id or model_name)),
        onnx_file="model_quantized.onnx" if int8_kept else "model.onnx",
        shape_picks=_shape_picks(quant),
        openvino_file=next(
            (
                p["file"].split("/", 1)[1]
                for p in quant.get("per_shape", {}).values()
                if p.get("backend") == "openvino"
            ),
            None,
        ),
        onnx_description="the INT8 model" if int8_kept else "the FP32 ONNX graph; no INT8 model was kept",
        limitations=_limitations(results, limitations),
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
