"""Hub-ready model cards whose every number was measured in the run that wrote them.

A card is rendered from a *results* dict (the schema `results.json` holds; `ModelCardCallback` and
`trainer-ext run` write it) with huggingface_hub's `ModelCard` / `ModelCardData` / `EvalResult` and the Jinja
template in `model_cards/template.md`. A variant without a measurement is written as "not measured", never as a
number, and is left out of the `model-index`.

Results schema (every key optional except `variants`):

```
{"variants": {"teacher" | "student_no_distillation" | "student_distilled" | "student_int8" | ...:
                 {"accuracy", "latency_ms", "size_mb", "parameters", "runtime", "eval_examples"}},
 "model_variant": "student_distilled",      # the FP32 weights in this folder
 "metric": "accuracy",
 "evaluation": {"dataset_id", "dataset_name", "dataset_config", "split", "examples"},
 "latency": {"batch_size", "sequence_length", "threads", "runs", "cpu"},
 "teacher": str, "student_base": str, "distillation": {...}, "augmentation": {...},
 "quantization": compression_report.json's content, "stages": {stage: seconds}}
```
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

CARD_FILE = "README.md"
PLOT_FILE = "accuracy_vs_latency.png"
RESULTS_FILE = "results.json"
TEMPLATE_PATH = Path(__file__).parent / "templates" / "model_card.md"
MARKER_TAG = "trainer-ext"
NOT_MEASURED = "not measured"

VARIANT_LABELS = {
    "teacher": "teacher",
    "teacher_int8": "teacher INT8",
    "student_no_distillation": "student without distillation",
    "student_distilled": "student (distilled)",
    "student": "student",
    "student_int8": "student INT8",
}
INT8_VARIANT = "student_int8"


class ModelCardError(ValueError):
    """The card cannot be written as asked; the message says how to fix it."""


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


# ------------------------------------------------------------------------------------------------------- results
def results_from_compression_report(report: dict[str, Any]) -> dict[str, Any]:
    """Results for a folder that only has `compression_report.json` (quantized with `trainer-ext quantize`).

    Both rows are ONNX Runtime measurements from the search: the FP32 graph and the chosen INT8 one, on the
    search's evaluation set. The teacher was not measured.
    """
    fp32, chosen = report["fp32"], report["chosen"]
    variants: dict[str, Any] = {
        "student": {
            "accuracy": fp32.get("accuracy"),
            "latency_ms": fp32["latency"]["median_ms"],
            "size_mb": fp32.get("size_mb"),
            "runtime": "ONNX Runtime FP32",
        },
        "teacher": {},
    }
    if chosen["name"] != "fp32":
        variants[INT8_VARIANT] = {
            "accuracy": chosen.get("accuracy"),
            "latency_ms": chosen["latency"]["median_ms"],
            "size_mb": chosen.get("size_mb"),
            "runtime": "ONNX Runtime INT8",
        }
    else:
        variants[INT8_VARIANT] = {"note": chosen.get("reason", "quantization kept FP32")}
    return {
        "variants": variants,
        "model_variant": "student",
        "metric": "accuracy",
        "evaluation": {"examples": report.get("eval_examples")},
        "latency": {
            "batch_size": 1,
            "sequence_length": report.get("args", {}).get("sequence_length"),
            "runs": report.get("args", {}).get("latency_runs"),
            "threads": report.get("onnx_threads"),
        },
        "quantization": report,
    }


def load_results(output_dir: str | os.PathLike) -> dict[str, Any]:
    """`results.json` if the folder has one, else what `compression_report.json` alone supports."""
    output_dir = Path(output_dir)
    if (output_dir / RESULTS_FILE).exists():
        return json.loads((output_dir / RESULTS_FILE).read_text())
    from .quantization import REPORT_FILE

    if (output_dir / REPORT_FILE).exists():
        return results_from_compression_report(json.loads((output_dir / REPORT_FILE).read_text()))
    raise ModelCardError(
        f"{output_dir} has neither {RESULTS_FILE} nor {REPORT_FILE}: a card only states measured numbers. Run the "
        "training with ModelCardCallback / QuantizationCallback, `trainer-ext quantize`, or pass report=."
    )


def measured(variant: dict[str, Any] | None) -> bool:
    return bool(variant) and (_is_number(variant.get("accuracy")) or _is_number(variant.get("latency_ms")))


def model_variant_name(results: dict[str, Any]) -> str:
    variants = results["variants"]
    name = results.get("model_variant")
    if name in variants:
        return name
    return next((n for n in ("student_distilled", "student") if n in variants), next(iter(variants)))


# ----------------------------------------------------------------------------------------------------- rendering
def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    return f"{value:{spec}}{suffix}" if _is_number(value) else NOT_MEASURED


def _rows(results: dict[str, Any], metric: str) -> list[dict[str, str]]:
    variants = results["variants"]
    teacher_ms = (variants.get("teacher") or {}).get("latency_ms")
    rows = []
    for name, v in variants.items():
        v = v or {}
        accuracy = v.get("accuracy")
        latency = v.get("latency_ms")
        speedup = teacher_ms / latency if _is_number(teacher_ms) and _is_number(latency) and latency > 0 else None
        rows.append(
            {
                "label": md(VARIANT_LABELS.get(name, name)),
                "runtime": md(v.get("runtime", NOT_MEASURED if not measured(v) else "")),
                "metric": _fmt(100 * accuracy, ".2f", "%") if _is_number(accuracy) else NOT_MEASURED,
                "latency": _fmt(latency, ".2f"),
                "speedup": _fmt(speedup, ".2f", "x"),
                "size": _fmt(v.get("size_mb"), ".1f"),
                "parameters": _fmt(v.get("parameters"), ","),
            }
        )
    return rows


def _eval_results(results: dict[str, Any], fields: dict[str, Any]) -> list[EvalResult]:
    """One model-index result per measured variant of *this* model: its FP32 weights and its INT8 ONNX file."""
    metric = results.get("metric", "accuracy")
    evaluation = results.get("evaluation", {})
    out = []
    for name, pretty in ((model_variant_name(results), "FP32"), (INT8_VARIANT, "INT8, ONNX Runtime")):
        v = results["variants"].get(name) or {}
        if not _is_number(v.get("accuracy")):
            continue
        runtime = v.get("runtime", pretty)
        out.append(
            EvalResult(
                task_type="text-classification",
                task_name="Text Classification",
                dataset_type=fields["dataset_id"] or evaluation.get("dataset_id") or "custom",
                dataset_name=fields["dataset_name"] or evaluation.get("dataset_name") or "evaluation set",
                dataset_config=fields["dataset_config"] or evaluation.get("dataset_config"),
                dataset_split=fields["dataset_split"] or evaluation.get("split"),
                metric_type=metric,
                metric_value=float(v["accuracy"]),
                metric_name=f"{metric.capitalize()} ({runtime})",
            )
        )
    return out


def _value(value: Any) -> str:
    """A setting or statistic for the page: floats to 4 significant digits, everything escaped."""
    return md(f"{value:.4g}" if isinstance(value, float) else value)


def _provenance(results: dict[str, Any]) -> list[str]:
    lines = []
    if results.get("teacher"):
        lines.append(f"Teacher: {md(results['teacher'])}.")
    if results.get("student_base"):
        lines.append(f"Student initialised from: {md(results['student_base'])}.")
    if results.get("distillation"):
        settings = ", ".join(f"{md(k)} = {_value(v)}" for k, v in results["distillation"].items())
        lines.append(f"Training: {settings}.")
    aug = results.get("augmentation")
    if aug:
        parts = [f"{md(k)} = {_value(v)}" for k, v in aug.items() if not isinstance(v, (dict, list))]
        lines.append(
            "Data augmentation (a causal LM fine-tuned on the training set, samples relabelled by the teacher): "
            + ", ".join(parts)
            + "."
        )
    quant = results.get("quantization")
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
    if results.get("stages"):
        stages = ", ".join(f"{md(k)} {v:.0f} s" for k, v in results["stages"].items() if _is_number(v))
        lines.append(f"Stage durations: {stages}.")
    return lines or ["Trained with trainer-ext."]


def _trials(results: dict[str, Any]) -> list[dict[str, str]]:
    quant = results.get("quantization") or {}
    rows = []
    for t in quant.get("trials", []):
        value = t.get("metric_value", t.get("accuracy"))
        rows.append(
            {
                "name": md(t.get("name", "?")),
                "latency": _fmt((t.get("latency") or {}).get("median_ms"), ".2f"),
                "metric": _fmt(value, ".4f") if _is_number(value) else "not evaluated",
                "status": md(
                    ("kept; " if t.get("name") == quant.get("chosen", {}).get("name") else "") + t.get("status", "")
                ),
            }
        )
    return rows


def _limitations(results: dict[str, Any], extra: Iterable[str]) -> list[str]:
    lines = []
    evaluation, latency = results.get("evaluation", {}), results.get("latency", {})
    n = evaluation.get("examples")
    acc = (results["variants"].get(model_variant_name(results)) or {}).get("accuracy")
    if _is_number(n) and n and _is_number(acc):
        se = 100 * math.sqrt(acc * (1 - acc) / n)
        lines.append(
            f"Accuracy was measured on {n:,} examples: one standard error is about {se:.1f} points, so smaller "
            "differences between rows are noise."
        )
    lines.append(
        f"Latency depends on the CPU: these figures come from {md(latency.get('cpu') or 'the machine that trained it')}"
        f" with {md(latency.get('threads', '?'))} threads; measure on your own hardware before relying on them."
    )
    lines.append(
        "A distilled student inherits its teacher's errors and biases, and can add its own on text unlike the "
        "training data."
    )
    int8 = results["variants"].get(INT8_VARIANT) or {}
    if not measured(int8):
        lines.append(f"No INT8 model is included: {md(int8.get('note', 'quantization was not run'))}.")
    lines += [md(x) for x in extra or ()]
    return lines


def accuracy_latency_plot(results: dict[str, Any], path: str | os.PathLike) -> Path | None:
    """Scatter of accuracy against batch-1 latency for every variant with both measured; None when there is none."""
    points = [
        (VARIANT_LABELS.get(name, name), v["latency_ms"], 100 * v["accuracy"])
        for name, v in results["variants"].items()
        if v and _is_number(v.get("latency_ms")) and _is_number(v.get("accuracy"))
    ]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers or CI
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for label, latency, accuracy in points:
        ax.scatter(latency, accuracy, s=40)
        ax.annotate(label, (latency, accuracy), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xscale("log")
    # Plain numbers at 1, 2, 5, 10, 20, ... ms instead of matplotlib's "2x10^0" labels.
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("batch-1 latency (ms, log scale)")
    ax.set_ylabel(f"{results.get('metric', 'accuracy')} (%)")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_model_card(
    output_dir: str | os.PathLike,
    report: dict[str, Any] | None = None,
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

    `report` is a results dict (see the module docstring); by default it is read from `<output_dir>/results.json`,
    or built from `compression_report.json`. The other fields are the card's metadata; strings are escaped, so
    names with quotes, colons, newlines or markdown cannot break the YAML header or the page.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise ModelCardError(f"{output_dir} is not a folder: pass the training output directory.")
    if not os.access(output_dir, os.W_OK):
        raise ModelCardError(f"Cannot write to {output_dir}; pass a writable output directory.")
    results = report if report is not None else load_results(output_dir)
    if not results.get("variants"):
        raise ModelCardError("The results have no 'variants': nothing was measured, so there is nothing to state.")
    evaluation = results.get("evaluation", {})
    fields = {
        "dataset_id": dataset_id or evaluation.get("dataset_id"),
        "dataset_name": dataset_name or evaluation.get("dataset_name"),
        "dataset_config": dataset_config or evaluation.get("dataset_config"),
        "dataset_split": dataset_split or evaluation.get("split"),
    }
    metric = results.get("metric", "accuracy")
    model_name = model_name or repo_id or output_dir.resolve().name
    base_model = base_model or results.get("base_model")
    if base_model and Path(base_model).exists():
        base_model = None  # a local path is not a Hub reference; the provenance section still names it
    all_tags = [MARKER_TAG, "text-classification", "distillation"]
    if measured(results["variants"].get(INT8_VARIANT)):
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
    latency = results.get("latency", {})
    quant = results.get("quantization") or {}
    criterion = quant.get("criterion", {})
    int8_kept = measured(results["variants"].get(INT8_VARIANT))
    evaluation_bits = [md(fields["dataset_name"] or fields["dataset_id"] or "the evaluation set")]
    if fields["dataset_config"]:
        evaluation_bits.append(f"config {md(fields['dataset_config'])}")
    if fields["dataset_split"]:
        evaluation_bits.append(f"split {md(fields['dataset_split'])}")
    if evaluation.get("examples"):
        evaluation_bits.append(f"{evaluation['examples']:,} examples")
    title = md(model_name)
    teacher = results["variants"].get("teacher") or {}
    student = results["variants"].get(model_variant_name(results)) or {}
    best = results["variants"].get(INT8_VARIANT) if int8_kept else student
    summary = "A compact text classifier made with trainer-ext (knowledge distillation and INT8 quantization)."
    if (
        measured(teacher)
        and measured(best)
        and _is_number(teacher.get("latency_ms"))
        and _is_number(best.get("latency_ms"))
    ):
        summary += (
            f" Its fastest form runs {teacher['latency_ms'] / best['latency_ms']:.1f}x faster than its teacher at "
            "batch 1"
        )
        if _is_number(teacher.get("accuracy")) and _is_number(best.get("accuracy")):
            summary += f", at {100 * (best['accuracy'] - teacher['accuracy']):+.2f} {md(metric)} points"
        summary += " (measured below)."
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path or TEMPLATE_PATH),
        title=title,
        summary=summary,
        eval_description=", ".join(evaluation_bits),
        latency_description=(
            f"batch {latency.get('batch_size', 1)}, length {md(latency.get('sequence_length', '?'))}, median of "
            f"{md(latency.get('runs', '?'))} runs after warm-up, tokenization excluded, "
            f"{md(latency.get('threads', '?'))} threads on {md(latency.get('cpu') or platform.machine())}"
        ),
        metric_label=md(metric),
        rows=_rows(results, metric),
        plot_file=plot_file,
        provenance=_provenance(results),
        trials=_trials(results),
        quantization_metric=md(quant.get("metric", metric)),
        criterion=(
            f"{criterion['max_absolute_drop']} (absolute)"
            if criterion.get("max_absolute_drop") is not None
            else f"{100 * (criterion.get('max_relative_drop') or 0):g}% (relative)"
        ),
        repo_literal=python_literal(_usage_reference(repo_id or model_name)),
        onnx_file="model_quantized.onnx" if int8_kept else "model.onnx",
        onnx_description="the INT8 model" if int8_kept else "the FP32 ONNX graph; no INT8 model was kept",
        limitations=_limitations(results, limitations),
    )
    tmp = output_dir / (CARD_FILE + ".tmp")
    tmp.write_text(str(card), encoding="utf-8")
    os.replace(tmp, output_dir / CARD_FILE)
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
