"""The model card's text, piece by piece: the escaping every value goes through (`md`), how a figure or an unmeasured
one is written, and the rows and lines each section of the template shows (the results table, how the model was made,
the student selection, the quantization trials, the serving shapes, the limitations). `cards.write_model_card` puts
them into the template; nothing here writes a file.
"""

from __future__ import annotations

import json
import math
import platform
import re
from collections.abc import Iterable
from typing import Any

from trainer_ext.reporting.results import Results, variant_warnings

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


# ------------------------------------------------------------------------------------------------------ escaping
# What CommonMark / GFM would read as markup, and only that: characters that are markup wherever they stand (`>` too:
# a quote at the start, and with `<` no tag can survive even as text that looks like one); runs of
# underscores, which start or end emphasis unless they sit inside a word (`distillation_loss` is plain text); block
# markers at the start of the value, which callers put at the start of a list item, a heading or a table cell (a
# heading, list, quote, numbered list or setext underline); and a heading's closing `#`s. Parentheses, braces, `!`
# and `+` elsewhere are plain text once `[` and `]` are escaped. Newlines are folded first, so the value's start is
# its only line start. `&` is left alone, as before: an entity reference can only produce text, never markup.
_MARKUP = re.compile(
    r"(?P<always>[\\`*\[\]<>|~])"
    r"|(?P<underscores>_+)"
    r"|^(?P<block>#{1,6}(?= |$)|[+=-])"
    r"|^(?P<number>\d{1,9})(?P<ordered>[.)])(?= |$)"
    r"|(?<= )(?P<closing>#+)$"
)


def _escape(match: re.Match[str]) -> str:
    text, kind = match.string, match.lastgroup
    if kind == "underscores":
        before = text[match.start() - 1] if match.start() else " "
        after = text[match.end()] if match.end() < len(text) else " "
        if before.isalnum() and after.isalnum():  # inside a word: neither opens nor closes emphasis
            return match.group()
        return "\\_" * len(match.group())
    if kind == "ordered":
        return f"{match['number']}\\{match['ordered']}"
    return "\\" + match.group()  # one backslash before the first character is enough for a block marker or `#` run


def md(value: Any) -> str:
    """One line of inert markdown: newlines folded, markup and table pipes escaped, HTML impossible; what Markdown
    would not misread (parentheses, an underscore inside a word) is left as it is, so the source reads as the page."""
    text = " ".join(str(value).split())
    return _MARKUP.sub(_escape, text)


def python_literal(value: str) -> str:
    """A Python string literal that cannot end the surrounding code fence or string."""
    return json.dumps(str(value)).replace("`", "\\u0060")


def is_number(value: Any) -> bool:
    """Whether `value` is a finite number (not a bool): a figure the card can state."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ----------------------------------------------------------------------------------------------------- rendering
def figure_text(value: Any, spec: str, suffix: str = "") -> str:
    """A measured figure formatted with `spec`, or "not measured" when there is none."""
    return f"{value:{spec}}{suffix}" if is_number(value) else NOT_MEASURED


EXTRA_SHAPE_COLUMNS = ("real_length", "real_length_tokenized", "batch_32")  # beside the fixed-length one


def result_rows(results: Results) -> list[dict[str, str]]:
    """The results table: one row per variant, every cell a measured figure or "not measured"."""
    return [
        {
            "label": md(variant_label(name)),
            "runtime": md(v.runtime or ("" if v.measured else NOT_MEASURED)),
            "metric": figure_text(100 * v.accuracy, ".2f", "%") if is_number(v.accuracy) else NOT_MEASURED,
            "latency": figure_text(v.latency_ms, ".2f"),
            **{
                shape: figure_text((v.shapes or {}).get(shape, {}).get("median_ms"), ".2f")
                for shape in EXTRA_SHAPE_COLUMNS
            },
            "speedup": figure_text(v.speedup_vs_teacher, ".2f", "x"),
            "size": figure_text(v.size_mb, ".1f"),
            "parameters": figure_text(v.parameters, ","),
        }
        for name, v in results.variants.items()
    ]


def transfer_set_line(aug: dict[str, Any]) -> str:
    """What built the transfer set, with each source's count, then its statistics. The sources are named as recorded
    (never described as in-domain: a source's domain is not checked against the task's)."""
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


def provenance_lines(results: Results) -> list[str]:
    """ "How this model was made": teacher, student, training, transfer set, selection, guard, quantization,
    precision and stage durations, each as recorded."""
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
                f"Quantization: {md(chosen['name'])} ({md(figure_text(chosen.get('speedup_vs_fp32'), '.2f', 'x'))} faster "
                f"than the FP32 ONNX graph), chosen by an accuracy-aware search over {len(quant.get('trials', []))} "
                "configurations; ONNX export checked against PyTorch (largest logit difference "
                f"{md(figure_text(quant.get('export_max_abs_logit_diff'), '.1e'))})."
            )
    if results.precision:
        chosen = ", ".join(f"{md(k)} {md(v.get('precision'))}" for k, v in results.precision.items())
        lines.append(f"Precision per stage (detected and measured on the training machine): {chosen}.")
        labelling = results.precision.get("transfer_labelling") or {}
        if labelling.get("requested") == "int8":  # opt-in: say whether the INT8 teacher labelled, and why
            lines.append(f"Transfer-set labelling ({md(labelling.get('precision'))}): {md(labelling.get('reason'))}.")
    if results.stages:
        stages = ", ".join(f"{md(k)} {v:.0f} s" for k, v in results.stages.items() if is_number(v))
        lines.append(f"Stage durations: {stages}.")
    return lines or ["Trained with trainer-ext."]


def candidate_rows(results: Results) -> list[dict[str, str]]:
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
                + (f" ({r['layers']} x {r['hidden_size']})" if is_number(r.get("layers")) else ""),
                "parameters": f"{r['parameters']:,}" if is_number(r.get("parameters")) else "-",
                "train_minutes": figure_text(
                    r["train_seconds"] / 60 if is_number(r.get("train_seconds")) else None, ".1f"
                ),
                "fp32": figure_text(100 * r["fp32_accuracy"] if is_number(r.get("fp32_accuracy")) else None, ".2f"),
                "int8": figure_text(100 * r["int8_accuracy"] if is_number(r.get("int8_accuracy")) else None, ".2f"),
                "ms": figure_text(r.get("int8_real_length_ms"), ".2f"),
                "status": md(status),
            }
        )
    return rows


def trial_rows(results: Results) -> list[dict[str, str]]:
    """The quantization search's configurations, fastest first, with the one kept and any inconsistent timing."""
    quant = results.quantization or {}
    rows = []
    for t in quant.get("trials", []):
        value = t.get("metric_value", t.get("accuracy"))
        rows.append(
            {
                "name": md(t.get("name", "?")),
                "latency": figure_text((t.get("latency") or {}).get("median_ms"), ".2f"),
                "metric": figure_text(value, ".4f") if is_number(value) else "not evaluated",
                "status": md(
                    ("kept; " if t.get("name") == quant.get("chosen", {}).get("name") else "")
                    + t.get("status", "")
                    + "".join(f"; inconsistent timing: {flag}" for flag in variant_warnings(t))
                ),
            }
        )
    return rows


def limitation_lines(results: Results, extra: Iterable[str]) -> list[str]:
    """The limitations: the accuracy's noise, where the latency was measured, what the model inherits, what is
    missing, then the caller's own lines (escaped)."""
    lines = []
    latency = results.latency
    n = results.evaluation.get("examples")
    acc = results.model.accuracy
    if is_number(n) and n and is_number(acc):
        se = 100 * math.sqrt(acc * (1 - acc) / n)
        lines.append(
            f"Accuracy was measured on {n:,} examples: one standard error is about {se:.1f} points, so smaller "
            "differences between rows are noise."
        )
    lines.append(
        "Latency depends on the CPU and its instruction sets (AVX-512 VNNI and AMX speed INT8 up, AVX512-BF16 and AMX "
        f"bf16): these figures come from {md(describe_cpu(latency) or 'the machine that trained it')} with "
        f"{md(latency.get('threads', '?'))} threads; measure on your own hardware before relying on them."
    )
    if results.distilled:
        lines.append(
            "A distilled student inherits its teacher's errors and biases, and can add its own on text unlike the "
            "training data."
        )
    else:
        lines.append(
            "The model inherits the errors and biases of its training data, and can add its own on text unlike it."
        )
    if not results.int8.measured:
        lines.append(f"No INT8 model is included: {md(results.int8.note or 'quantization was not run')}.")
    lines += [md(x) for x in extra or ()]
    return lines


def shape_pick_lines(quant: dict[str, Any]) -> list[str]:
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
            f"{md(figure_text(pick.get('median_ms'), '.2f'))} ms, {md(figure_text(pick.get('speedup_vs_fp32'), '.2f', 'x'))} "
            "the FP32 ONNX graph's speed in the search)"
        )
    return lines


def describe_cpu(latency: dict[str, Any]) -> str | None:
    """The measuring CPU as recorded: its name and instruction sets (`benchmark.cpu_description`); results written
    before the instruction sets were recorded say so, since the name alone does not decide the speed."""
    cpu = latency.get("cpu")
    if cpu and "cpu_features" not in latency:
        return f"{cpu} (instruction sets not recorded)"
    return cpu


def latency_warning_lines(results: Results) -> list[str]:
    """The flagged figures (`results.variant_warnings`), one line each, naming the variant: shown under the table."""
    return [
        f"{md(variant_label(name))}: {md(flag)}"
        for name, v in results.variants.items()
        for flag in variant_warnings(v)
    ]


def latency_description(latency: dict[str, Any], results: Results) -> str:
    """How the latency columns were measured: shapes, runs, threads, CPU, and each runtime's version."""
    versions = sorted({v.runtime_version for v in results.variants.values() if v.runtime_version})
    ort = latency.get("onnxruntime") or {}
    text = (
        f"median of {md(latency.get('runs', '?'))} runs after warm-up (batch 32: a tenth as many calls), "
        f"{md(latency.get('threads', '?'))} threads on {md(describe_cpu(latency) or platform.machine())}"
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
