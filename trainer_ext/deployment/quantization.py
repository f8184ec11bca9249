"""ONNX export and accuracy-aware INT8 quantization through Optimum and ONNX Runtime.

The idea taken from Intel Neural Compressor: try quantization configurations, fastest first by measured latency, and
keep the fastest whose metric stays within a criterion of the FP32 model's; if none does, keep the most sensitive
nodes in FP32 and retry; if that fails too, keep FP32 and say so. The metric is accuracy for now (issue 4 is open:
`evaluate` metrics need a local metric path offline).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime
import torch
from transformers import AutoModelForSequenceClassification, EvalPrediction, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging

from trainer_ext.deployment import openvino_backend
from trainer_ext.deployment.benchmark import (
    SERVING_SHAPES,
    ClassifierRunner,
    accuracy,
    cpu_description,
    cpu_features,
    inconsistent_shapes,
    onnx_session_settings,
    serving_latency,
)
from trainer_ext.files import atomic_path, write_json

logger = logging.get_logger(__name__)

REPORT_FILE = "compression_report.json"
ONNX_SUBFOLDER = "onnx"
FP32_FILE = "model.onnx"
INT8_FILE = "model_quantized.onnx"
ORT_CONFIG_FILE = "ort_config.json"
Approach = Literal["auto", "dynamic", "static", "none"]
APPROACHES = typing.get_args(Approach)
CALIBRATION_METHODS = ("minmax", "entropy", "percentiles")


BACKENDS = ("onnxruntime", "openvino")
# A serving shape gets its own file only when that candidate takes under this share of the saved INT8 model's time.
SHAPE_PICK_MARGIN = 0.9
OPENVINO_SUBFOLDER = "openvino"


class QuantizationError(ValueError):
    """Export or quantization cannot run as asked; the message says how to fix it."""


@dataclass
class QuantizationArguments:
    """Settings of `quantize_model` and `QuantizationCallback`; each field is also a CLI flag / recipe key."""

    approach: Approach = field(
        default="auto",
        metadata={
            "help": "'auto' tries dynamic and static configurations (accuracy-aware search), 'dynamic' or 'static' "
            "restrict the search, 'none' only exports FP32."
        },
    )
    per_channel: bool | None = field(
        default=None,
        metadata={
            "help": "Weight quantization granularity: true (per channel), false (per tensor); unset (null) tries both."
        },
    )
    calibration_methods: list[str] = field(
        default_factory=lambda: list(CALIBRATION_METHODS),
        metadata={"help": "Static-quantization calibration methods to try.", "choices": CALIBRATION_METHODS},
    )
    calibration_samples: int = field(default=128, metadata={"help": "Training examples used for calibration."})
    operators_to_quantize: list[str] | None = field(
        default=None,
        metadata={
            "help": "ONNX operator types to quantize. Default: Optimum's for dynamic candidates; "
            "'MatMul' for static ones (the attention-mask Add carries float-min values that break histogram "
            "calibration, and quantizing Adds measured slower than leaving them in FP32)."
        },
    )
    nodes_to_exclude: list[str] | None = field(
        default=None, metadata={"help": "ONNX node names kept in FP32 in every candidate."}
    )
    metric: str = field(
        default="accuracy",
        metadata={
            "help": "Metric kept within the criterion: 'accuracy' (built in) or an `evaluate` metric name or local "
            "script path, computed on argmax predictions. Offline, Hub names need evaluate's cache: use a path."
        },
    )
    metric_key: str | None = field(
        default=None, metadata={"help": "Key of the metric's result dict to use (default: the metric's name)."}
    )
    max_relative_drop: float | None = field(
        default=0.01, metadata={"help": "Largest accepted metric drop relative to FP32 (0.01 = 1% relative)."}
    )
    max_absolute_drop: float | None = field(
        default=None, metadata={"help": "Largest accepted absolute metric drop; overrides the relative one."}
    )
    optimization_levels: list[int] = field(
        default_factory=lambda: [0, 1, 2],
        metadata={
            "help": "ORTOptimizer levels to measure for the FP32 ONNX model (0 = as exported); the fastest is kept. "
            "Dynamic INT8 candidates are built from the exported graph and from each optimised one."
        },
    )
    require_speedup: bool = field(
        default=True, metadata={"help": "Only keep an INT8 model that is faster than the FP32 ONNX model here."}
    )
    sensitivity_top_k: int = field(
        default=4,
        metadata={
            "help": "When no candidate passes: keep each quantized node alone in FP32 in the fastest failed "
            "candidate, measure the metric, exclude the k nodes that matter most, and try again (0 disables it)."
        },
    )
    sensitivity_samples: int = field(default=256, metadata={"help": "Evaluation examples for the node sensitivity."})
    max_trials: int = field(default=8, metadata={"help": "Most candidates whose metric is evaluated."})
    time_budget_s: float = field(
        default=900.0,
        metadata={"help": "Stop building and evaluating candidates this many seconds after the search started."},
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on at most this many examples."})
    sequence_length: int = field(default=64, metadata={"help": "Fixed length for latency measurements."})
    latency_runs: int = field(default=100, metadata={"help": "Timed batch-1 runs per candidate (after warm-up)."})
    backends: list[str] = field(
        default_factory=lambda: list(BACKENDS),
        metadata={
            "help": "Runtimes whose candidates the search tries: 'onnxruntime', and 'openvino' when the extra is "
            "installed (pip install 'trainer-ext[openvino]'; skipped, with the reason in the report, otherwise). "
            "OpenVINO candidates are picked per serving shape; the saved ONNX INT8 model is ONNX Runtime's pick.",
            "choices": BACKENDS,
        },
    )
    serving_shapes: list[str] = field(
        default_factory=lambda: list(SERVING_SHAPES),
        metadata={
            "help": "Serving shapes each candidate is timed in and picked for (benchmark.SERVING_SHAPES: real_length, "
            "real_length_tokenized, fixed_length, batch_32); the fixed length always, as the search's order.",
        },
    )
    eval_batch_size: int = field(default=32, metadata={"help": "Batch size for metric evaluation."})

    def __post_init__(self) -> None:
        if self.approach not in APPROACHES:
            raise ValueError(f"approach must be one of {APPROACHES}, got {self.approach!r}.")
        if not (self.per_channel is None or isinstance(self.per_channel, bool)):
            raise ValueError(
                f"per_channel is now true (per channel), false (per tensor) or null (try both); got {self.per_channel!r}."
            )
        examples = {
            "calibration_methods": "[minmax, entropy]",
            "optimization_levels": "[0, 2]",
            "backends": "[onnxruntime]",
            "serving_shapes": "[real_length, fixed_length]",
        }
        optional = {"operators_to_quantize": "[MatMul]", "nodes_to_exclude": "[/classifier/Gemm]"}
        for name, example in (examples | optional).items():
            value = getattr(self, name)
            if not isinstance(value, list) and not (value is None and name in optional):
                raise ValueError(f"{name} is now a list, e.g. {example}; got {value!r}.")
        for name, allowed in (
            ("calibration_methods", CALIBRATION_METHODS),
            ("backends", BACKENDS),
            ("serving_shapes", tuple(SERVING_SHAPES)),
        ):
            unknown = set(getattr(self, name)) - set(allowed)
            if unknown:
                raise ValueError(f"Unknown {name} {sorted(unknown)}; choose from {list(allowed)}.")
        if self.max_relative_drop is None and self.max_absolute_drop is None:
            raise ValueError("Set max_relative_drop or max_absolute_drop: the search needs an accuracy criterion.")
        if self.max_trials < 1 or self.latency_runs < 1 or self.calibration_samples < 1:
            raise ValueError("max_trials, latency_runs and calibration_samples must be >= 1.")

    def within_criterion(self, baseline: float, value: float) -> bool:
        drop = baseline - value
        if self.max_absolute_drop is not None:
            return drop <= self.max_absolute_drop + 1e-12
        return drop <= self.max_relative_drop * abs(baseline) + 1e-12


MetricFn = Callable[[np.ndarray, np.ndarray], float]


def resolve_metric(args: QuantizationArguments, compute_metrics: Callable | None = None) -> tuple[str, MetricFn]:
    """The search metric as `(name, fn(logits, labels) -> float)`; loaded now so that a bad name fails before export.

    `compute_metrics` is a Trainer-style function (EvalPrediction -> dict); `args.metric_key` (default `args.metric`,
    or the only key) picks the value. Otherwise `args.metric` is 'accuracy' or an `evaluate` metric.
    """
    key = args.metric_key or args.metric
    if compute_metrics is not None:

        def from_compute_metrics(logits: np.ndarray, labels: np.ndarray) -> float:
            result = compute_metrics(EvalPrediction(predictions=logits, label_ids=labels))
            name = key if key in result else (next(iter(result)) if len(result) == 1 else None)
            if name is None:
                raise QuantizationError(
                    f"compute_metrics returned {sorted(result)}; set metric_key to the one the search should keep."
                )
            return float(result[name])

        return key, from_compute_metrics
    if args.metric == "accuracy":
        return "accuracy", accuracy
    import evaluate

    try:
        metric = evaluate.load(args.metric)
    except Exception as err:  # evaluate raises many types (FileNotFoundError, ConnectionError, ImportError, ...)
        raise QuantizationError(
            f"Could not load the evaluate metric {args.metric!r}: {type(err).__name__}: {err}. Offline, a Hub metric "
            "name only works from evaluate's cache: pass a local metric script path, or compute_metrics=."
        ) from err
    key = args.metric_key or Path(args.metric).stem

    def from_evaluate(logits: np.ndarray, labels: np.ndarray) -> float:
        result = metric.compute(predictions=logits.argmax(-1), references=labels)
        if key not in result:
            raise QuantizationError(
                f"Metric {args.metric!r} returned {sorted(result)}; set metric_key to one of them."
            )
        return float(result[key])

    return key, from_evaluate


# ----------------------------------------------------------------------------------------------------- pipeline
def check_eval_dataset(eval_dataset: Any, text_column: str = "text", label_column: str = "label") -> None:
    """Raise `QuantizationError` unless `eval_dataset` is a non-empty `datasets.Dataset` with both columns."""
    columns = getattr(eval_dataset, "column_names", None)
    if columns is None or len(eval_dataset) == 0:
        raise QuantizationError(
            "The evaluation set is empty or not a datasets.Dataset; the search needs labelled data."
        )
    missing = [c for c in (text_column, label_column) if c not in columns]
    if missing:
        raise QuantizationError(
            f"The evaluation set has no {missing} column(s) (it has {columns}). Quantization keeps accuracy in check "
            "by measuring it, so pass labelled data with raw text."
        )


def export_onnx(model_dir: str | os.PathLike, save_dir: str | os.PathLike) -> Path:
    """Export a saved text-classification model with Optimum; raise a clear error for unsupported architectures."""
    from optimum.onnxruntime import ORTModelForSequenceClassification

    try:
        ort_model = ORTModelForSequenceClassification.from_pretrained(model_dir, export=True)
    except (ValueError, KeyError, NotImplementedError) as err:
        config = (
            json.loads((Path(model_dir) / "config.json").read_text())
            if (Path(model_dir) / "config.json").exists()
            else {}
        )
        raise QuantizationError(
            f"Optimum cannot export this model to ONNX (model_type={config.get('model_type')!r}, architectures="
            f"{config.get('architectures')}): {err}. Use an architecture Optimum supports (BERT, RoBERTa, "
            "DistilBERT, ...) or export it yourself and pass the folder."
        ) from err
    ort_model.save_pretrained(save_dir)
    return Path(save_dir) / FP32_FILE


def quantize_model(
    model_or_dir: PreTrainedModel | str | os.PathLike,
    tokenizer: PreTrainedTokenizerBase,
    eval_dataset: Any,
    output_dir: str | os.PathLike,
    args: QuantizationArguments | None = None,
    *,
    calibration_dataset: Any = None,
    text_column: str = "text",
    label_column: str = "label",
    compute_metrics: Callable | None = None,
) -> dict[str, Any]:
    """Export to ONNX, try INT8 candidates fastest first, keep the fastest within the metric criterion.

    Writes `<output_dir>/onnx/` (model.onnx; model_quantized.onnx and Optimum's ort_config.json when one passes;
    another serving shape's different pick as model_quantized_<name>.onnx; config and tokenizer), `<output_dir>/
    openvino/` when an OpenVINO candidate is the fastest in some serving shape (optimum-intel's layout), and
    `<output_dir>/compression_report.json` (with `per_shape`: each shape's pick and its file); returns the report.
    Each folder is built under a temporary name and moved into place only when complete, so a failure never leaves a
    partial one.
    """
    args = args or QuantizationArguments()
    check_eval_dataset(eval_dataset, text_column, label_column)
    metric = resolve_metric(args, compute_metrics)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(output_dir, os.W_OK):
        raise QuantizationError(f"Cannot write to {output_dir}; pass a writable output directory.")
    if eval_dataset is not None and args.max_eval_samples:
        eval_dataset = eval_dataset.select(range(min(args.max_eval_samples, len(eval_dataset))))
    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=".onnx-", dir=output_dir))
    try:
        report = _search(
            model_or_dir, tokenizer, eval_dataset, work, args, calibration_dataset, text_column, label_column, metric
        )
        with atomic_path(output_dir / ONNX_SUBFOLDER) as staged:
            shutil.copytree(work / "export", staged, ignore=shutil.ignore_patterns("*.onnx"))
            # model.onnx is the fastest FP32 graph measured (as exported, or optimised by ORTOptimizer).
            shutil.copy2(work / report["fp32"]["file"], staged / FP32_FILE)
            chosen = report["chosen"]["name"]
            if chosen != "fp32":
                shutil.copy2(work / "candidates" / report["chosen"]["file"], staged / INT8_FILE)
                # Optimum's record of how the INT8 model was made, kept next to it as ORTQuantizer leaves it.
                shutil.copy2(work / "candidates" / _ort_config_file(chosen), staged / ORT_CONFIG_FILE)
            _save_shape_picks(report, work, staged, "onnxruntime")
            tokenizer.save_pretrained(staged)
        if any(p.get("backend") == "openvino" for p in report["per_shape"].values()):
            # optimum-intel's layout: openvino_model.xml/.bin beside config.json and the tokenizer.
            with atomic_path(output_dir / OPENVINO_SUBFOLDER) as staged:
                shutil.copytree(work / "export", staged, ignore=shutil.ignore_patterns("*.onnx"))
                _save_shape_picks(report, work, staged, "openvino")
                tokenizer.save_pretrained(staged)
        elif (output_dir / OPENVINO_SUBFOLDER).exists():
            shutil.rmtree(output_dir / OPENVINO_SUBFOLDER)  # an earlier search's pick, not this one's
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["seconds"] = time.perf_counter() - start
    write_json(output_dir / REPORT_FILE, report)
    return report


def dynamic_int8(
    model_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    optimization_level: int = 2,
    per_channel: bool = True,
) -> tuple[Path, str]:
    """`model_dir` exported to ONNX and dynamically quantized to INT8, one configuration and no search: the search's
    `optimized_o<level>_dynamic_<granularity>` candidate, which it picked for the MPNet teacher (3x faster than the
    exported graph's dynamic INT8, and 2 points more accurate per channel than per tensor). For an INT8 model whose
    fitness is checked another way (the labelling teacher's agreement with FP32, `labelling`). A graph optimisation
    that fails falls back to the exported graph, as in the search.

    Writes `output_dir` (model_quantized.onnx, its ort_config.json, the config) atomically; returns the INT8 file and
    the configuration's name.
    """
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    args = QuantizationArguments(approach="dynamic", per_channel=per_channel)
    granularity = "per_channel" if per_channel else "per_tensor"
    with tempfile.TemporaryDirectory(prefix=".onnx-", dir=output_dir.parent) as tmp, atomic_path(output_dir) as staged:
        work = Path(tmp)
        export_dir = work / "export"
        export_onnx(model_dir, export_dir)
        optimized = _optimize(export_dir, work / "optimized", optimization_level) if optimization_level else None
        candidate = {"static": False, "per_channel": per_channel, "calibration": None}
        if optimized is not None:
            candidate |= {"name": f"optimized_o{optimization_level}_dynamic_{granularity}"}
            candidate["graph_level"] = str(optimization_level)
            _build_optimized_dynamic(candidate, optimized, work, args)
        else:
            candidate["name"] = f"dynamic_{granularity}"
            _build_candidate(candidate, export_dir, work, args, lambda: None, {})
        shutil.copytree(export_dir, staged, ignore=shutil.ignore_patterns("*.onnx"))
        shutil.copy2(work / candidate["file"], staged / INT8_FILE)
        shutil.copy2(work / _ort_config_file(candidate["name"]), staged / ORT_CONFIG_FILE)
    return output_dir / INT8_FILE, candidate["name"]


def _search(
    model_or_dir,
    tokenizer,
    eval_dataset,
    work: Path,
    args: QuantizationArguments,
    calibration_dataset,
    text_column: str,
    label_column: str,
    metric: tuple[str, MetricFn],
) -> dict[str, Any]:
    metric_name, metric_fn = metric
    if isinstance(model_or_dir, (str, os.PathLike)):
        model_dir = Path(model_or_dir)
        torch_model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    else:
        torch_model = model_or_dir
        model_dir = work / "torch"
        torch_model.save_pretrained(model_dir)
    export_dir = work / "export"
    fp32_path = export_onnx(model_dir, export_dir)

    texts = [str(t) for t in eval_dataset[text_column]]
    labels = np.asarray(list(eval_dataset[label_column]))
    cand_dir = work / "candidates"
    cand_dir.mkdir()
    builder = _CandidateBuilder(export_dir, cand_dir, args, {}, calibration_dataset, tokenizer, text_column, texts)
    # Export check: ONNX logits against PyTorch on the same batches.
    torch_logits, fp32_logits = builder.logits(torch_model), builder.logits(fp32_path)
    max_diff = float(np.abs(fp32_logits - torch_logits).max())
    baseline = metric_fn(fp32_logits, labels)
    optimization: dict[str, Any] = {}
    optimized_graphs = builder.optimized_graphs
    for level in map(str, args.optimization_levels):
        if level == "0":
            continue
        optimized = _optimize(export_dir, work / f"optimized_{level}", int(level))
        if optimized is None:
            optimization[level] = "failed"
            continue
        optimized_graphs[level] = optimized
    candidates = _candidates(args, calibration_dataset is not None, sorted(optimized_graphs))
    failed = []
    search_start = time.perf_counter()
    for candidate in candidates:
        if time.perf_counter() - search_start > args.time_budget_s:
            candidate["status"] = "not built (time budget)"
            failed.append(candidate)
            continue
        try:
            builder.build(candidate)
        except (ValueError, RuntimeError, onnxruntime.capi.onnxruntime_pybind11_state.Fail) as err:
            # One configuration failing (say, a calibration method on degenerate activations) is a trial result.
            candidate["status"] = f"failed: {type(err).__name__}: {err}"
            failed.append(candidate)
    candidates = [c for c in candidates if c not in failed]
    notes: list[str] = []
    if "openvino" in args.backends and args.approach != "none":
        reason = openvino_backend.unavailable_reason()
        if reason:
            notes.append(reason)
        elif time.perf_counter() - search_start > args.time_budget_s:
            failed += [
                {"name": name, "backend": "openvino", "status": "not built (time budget)"}
                for name in openvino_backend.CANDIDATES
            ]
        else:
            built, ov_failed = openvino_backend.build_candidates(fp32_path, cand_dir, builder.calibration_feeds())
            candidates += built
            failed += ov_failed
    # Every FP32 graph and INT8 candidate is timed in one interleaved group: this machine's speed drifts over
    # minutes, and timing them one after another ranked them by when they were measured as much as by speed.
    graphs = {f"fp32_{level}": path for level, path in [("0", fp32_path), *optimized_graphs.items()]}
    graphs |= {c["name"]: cand_dir / c["file"] for c in candidates}
    shaped = builder.latencies(graphs)
    # "latency" is the fixed length's (the search's order and the reference's convention); "shapes" has every one.
    latencies = {name: by_shape["fixed_length"] for name, by_shape in shaped.items()}
    for candidate in candidates:
        candidate["latency"], candidate["shapes"] = latencies[candidate["name"]], shaped[candidate["name"]]
        _flag_timing(candidate)
    optimization |= {
        name[len("fp32_") :]: lat["median_ms"] for name, lat in latencies.items() if name.startswith("fp32_")
    }
    best_level = min((k for k, v in optimization.items() if v != "failed"), key=lambda k: optimization[k])
    fp32_best, fp32_latency = graphs[f"fp32_{best_level}"], latencies[f"fp32_{best_level}"]
    fp32_shapes = shaped[f"fp32_{best_level}"]
    report: dict[str, Any] = {
        "metric": metric_name,
        "eval_examples": len(texts),
        "pytorch_accuracy": accuracy(torch_logits, labels),
        "pytorch_metric_value": metric_fn(torch_logits, labels),
        "export_max_abs_logit_diff": max_diff,
        "onnx_threads": torch.get_num_threads(),
        "onnxruntime": onnx_session_settings(),
        "cpu": cpu_description(),  # model name and instruction sets (AVX2, AVX-512 VNNI, AMX, ...)
        "cpu_features": cpu_features(),
        "fp32": {
            "accuracy": accuracy(fp32_logits, labels),
            "metric_value": baseline,
            "latency": fp32_latency,
            "shapes": fp32_shapes,
            "size_mb": fp32_best.stat().st_size / 1e6,
            "optimization_level": int(best_level),
            "file": str(fp32_best.relative_to(work)),
        },
        "optimization_latency_ms": optimization,
        "criterion": {"max_relative_drop": args.max_relative_drop, "max_absolute_drop": args.max_absolute_drop},
        "args": asdict(args),
        "trials": [],
    }
    _flag_timing(report["fp32"], "fp32")
    if args.approach in ("static", "auto") and calibration_dataset is None:
        notes.append("static quantization skipped: no calibration_dataset was given")
    if notes:
        report["notes"] = notes
    # Fastest first: the first candidate within the criterion is the fastest acceptable one.
    candidates.sort(key=lambda c: c["latency"]["median_ms"])
    chosen = None
    evaluated = 0
    for candidate in candidates:
        if candidate.get("backend") == "openvino":
            continue  # another runtime: picked per serving shape below, never saved as model_quantized.onnx
        if chosen is not None:
            candidate["status"] = "not evaluated (a faster candidate passed)"
            continue
        if args.require_speedup and candidate["latency"]["median_ms"] >= fp32_latency["median_ms"]:
            # INT8 that is not faster than FP32 on this CPU is no gain (the reference's ONNX Runtime INT8 was slower).
            candidate["status"] = "not evaluated (not faster than FP32)"
            continue
        if evaluated >= args.max_trials or time.perf_counter() - search_start > args.time_budget_s:
            candidate["status"] = "not evaluated (trial or time budget)"
            continue
        evaluated += 1
        logits = builder.logits(cand_dir / candidate["file"])
        value = metric_fn(logits, labels)
        candidate["accuracy"] = accuracy(logits, labels)
        candidate["metric_value"] = value
        candidate["passed"] = args.within_criterion(baseline, value)
        candidate["status"] = "evaluated"
        if candidate["passed"]:
            chosen = candidate
    if chosen is None and args.sensitivity_top_k > 0:
        rejected = [c for c in candidates if c.get("passed") is False and c.get("backend") != "openvino"]
        if rejected:
            deadline = search_start + args.time_budget_s
            retry = _sensitivity_retry(
                rejected[0], builder, labels, baseline, fp32_latency, report, metric_fn, deadline=deadline
            )
            if retry is not None:
                candidates.append(retry)
                if retry.get("passed") and retry.get("faster_than_fp32", True):
                    chosen = retry
    report["per_shape"] = _pick_per_shape(
        candidates, chosen, fp32_shapes, builder, labels, baseline, metric_fn, args, search_start, evaluated
    )
    for candidate in candidates:
        candidate.setdefault("status", "not evaluated (a faster candidate passed in every serving shape)")
    if any(c.get("backend") == "openvino" for c in candidates):
        report["openvino"] = {"version": openvino_backend.version()}
    report["trials"] = candidates + failed
    if chosen is None:
        if args.approach == "none":
            reason = "quantization disabled (approach='none')"
        elif not candidates:
            reason = "no INT8 candidate was built (" + "; ".join(sorted({t["status"] for t in failed})) + ")"
        else:
            reason = f"no ONNX Runtime INT8 candidate was faster than FP32 and met the {metric_name} criterion"
        report["chosen"] = {"name": "fp32", "reason": reason}
        logger.warning(f"Kept the FP32 ONNX model: {report['chosen']['reason']}.")
    else:
        report["chosen"] = {
            "name": chosen["name"],
            "file": chosen["file"],
            "accuracy": chosen["accuracy"],
            "metric_value": chosen["metric_value"],
            "latency": chosen["latency"],
            "shapes": chosen["shapes"],
            "size_mb": chosen["size_mb"],
            "speedup_vs_fp32": fp32_latency["median_ms"] / chosen["latency"]["median_ms"],
            **({"warnings": chosen["warnings"]} if chosen.get("warnings") else {}),
        }
    return report


def _flag_timing(record: dict[str, Any], name: str | None = None) -> None:
    """Record in a timed graph's `warnings` (and log) its figures that contradict each other (`inconsistent_shapes`),
    so the report never carries them silently."""
    flags = inconsistent_shapes(record.get("shapes") or {})
    if flags:
        record["warnings"] = flags
        for flag in flags:
            logger.warning(f"Inconsistent latency figures of {name or record.get('name')}: {flag}.")


def _save_shape_picks(report: dict[str, Any], work: Path, staged: Path, backend: str) -> None:
    """Copy each serving shape's pick of `backend` into the staged folder and record where (`file`) in the report.

    ONNX Runtime: FP32 is `model.onnx`, the search's chosen INT8 `model_quantized.onnx`, another shape's different
    pick `model_quantized_<name>.onnx`. OpenVINO: the first pick (shapes in order, real length first) is
    `openvino_model.xml` (optimum-intel's default name), another `openvino_model_<name>.xml`.
    """
    folder = ONNX_SUBFOLDER if backend == "onnxruntime" else OPENVINO_SUBFOLDER
    saved: dict[str, str] = {"fp32": FP32_FILE} if backend == "onnxruntime" else {}
    if backend == "onnxruntime" and report["chosen"]["name"] != "fp32":
        saved[report["chosen"]["name"]] = INT8_FILE
    trials = {t["name"]: t for t in report["trials"]}
    for pick in report["per_shape"].values():
        if pick.get("backend", "onnxruntime") != backend:
            continue
        name = pick["name"]
        if name not in saved:
            source = work / "candidates" / trials[name]["file"]
            if backend == "openvino":
                saved[name] = openvino_backend.OV_FILE if not saved else f"openvino_model_{name}.xml"
                openvino_backend.save_model_folder(source, staged, saved[name])
            else:
                saved[name] = f"model_quantized_{name}.onnx"
                shutil.copy2(source, staged / saved[name])
        pick["file"] = f"{folder}/{saved[name]}"


def _pick_per_shape(
    candidates, chosen, fp32_shapes, builder, labels, baseline, metric_fn, args, search_start, evaluated
) -> dict[str, dict[str, Any]]:
    """The fastest candidate within the criterion for each serving shape (FP32 when none passes and is faster); the
    saved INT8 model (`chosen`) unless the fastest is clearly faster (`SHAPE_PICK_MARGIN`).

    The search above walks the candidates in fixed-length order; a candidate it skipped because a faster one passed
    may be the fastest at real length or in batches, so each shape walks its own order and evaluates (once, within
    the same trial and time budgets) what it needs.
    """
    picks: dict[str, dict[str, Any]] = {}
    for shape in fp32_shapes:
        fp32_ms = fp32_shapes[shape]["median_ms"]
        pick: dict[str, Any] = {"name": "fp32", "backend": "onnxruntime", "median_ms": fp32_ms, "speedup_vs_fp32": 1.0}
        for candidate in sorted(
            (c for c in candidates if shape in c.get("shapes", {})), key=lambda c: c["shapes"][shape]["median_ms"]
        ):
            ms = candidate["shapes"][shape]["median_ms"]
            if args.require_speedup and ms >= fp32_ms:
                break
            if "passed" not in candidate:
                if evaluated >= args.max_trials or time.perf_counter() - search_start > args.time_budget_s:
                    break
                evaluated += 1
                logits = builder.logits(builder.cand_dir / candidate["file"])
                candidate["metric_value"] = metric_fn(logits, labels)
                candidate["accuracy"] = accuracy(logits, labels)
                candidate["passed"] = args.within_criterion(baseline, candidate["metric_value"])
                candidate["status"] = f"evaluated (for {shape})"
            if candidate["passed"]:
                pick = {
                    "name": candidate["name"],
                    "backend": candidate.get("backend", "onnxruntime"),
                    "median_ms": ms,
                    "speedup_vs_fp32": fp32_ms / ms,
                    "accuracy": candidate["accuracy"],
                }
                if pick["backend"] == "openvino" and shape == "fixed_length":
                    pick["static_shape"] = [1, args.sequence_length]  # measured compiled for that fixed shape
                break
        if chosen is not None and pick["name"] not in ("fp32", chosen["name"]):
            # Another file only for a real gain: the saved INT8 model serves this shape unless the other candidate is
            # clearly faster (measured: same-family candidates 5-7% apart, within one run's noise).
            chosen_ms = chosen["shapes"][shape]["median_ms"]
            if pick["median_ms"] > SHAPE_PICK_MARGIN * chosen_ms and not (
                args.require_speedup and chosen_ms >= fp32_ms
            ):
                pick = {
                    "name": chosen["name"],
                    "backend": "onnxruntime",
                    "median_ms": chosen_ms,
                    "speedup_vs_fp32": fp32_ms / chosen_ms,
                    "accuracy": chosen["accuracy"],
                    "fastest_other": {"name": pick["name"], "median_ms": pick["median_ms"]},
                }
        picks[shape] = pick
    return picks


def _optimize(export_dir: Path, save_dir: Path, level: int) -> Path | None:
    from optimum.onnxruntime import ORTOptimizer
    from optimum.onnxruntime.configuration import OptimizationConfig

    try:
        optimizer = ORTOptimizer.from_pretrained(export_dir, file_names=[FP32_FILE])
        optimizer.optimize(
            save_dir=save_dir, optimization_config=OptimizationConfig(optimization_level=level, optimize_for_gpu=False)
        )
    except (ValueError, KeyError, NotImplementedError, RuntimeError) as err:
        logger.warning(f"ONNX graph optimisation level {level} failed: {err}")
        return None
    return save_dir / "model_optimized.onnx"


def _build_candidate(
    candidate, export_dir, cand_dir, args, calibration_set: Callable[[], Any], calibration_cache
) -> None:
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoCalibrationConfig, AutoQuantizationConfig

    quantizer = ORTQuantizer.from_pretrained(export_dir, file_name=FP32_FILE)
    operators = args.operators_to_quantize or (["MatMul"] if candidate["static"] else None)
    qconfig = AutoQuantizationConfig.avx2(
        is_static=candidate["static"],
        per_channel=candidate["per_channel"],
        operators_to_quantize=operators,
        nodes_to_exclude=(args.nodes_to_exclude or []) + candidate.get("exclude", []),
    )
    ranges = None
    if candidate["static"]:
        method = candidate["calibration"]
        if method not in calibration_cache:
            calib = calibration_set()
            config = getattr(AutoCalibrationConfig, method)(calib)
            calibration_cache[method] = quantizer.fit(
                dataset=calib,
                calibration_config=config,
                operators_to_quantize=qconfig.operators_to_quantize,
                onnx_augmented_model_name=str(cand_dir / f"augmented_{method}.onnx"),
            )
        ranges = calibration_cache[method]
    quantizer.quantize(
        quantization_config=qconfig, save_dir=cand_dir, file_suffix=candidate["name"], calibration_tensors_range=ranges
    )
    os.replace(cand_dir / ORT_CONFIG_FILE, cand_dir / _ort_config_file(candidate["name"]))
    onnx_file = cand_dir / f"model_{candidate['name']}.onnx"
    candidate.update(file=onnx_file.name, size_mb=onnx_file.stat().st_size / 1e6)


def _ort_config_file(candidate_name: str) -> str:
    """Each candidate's `ORTConfig` is kept under its own name in the candidates folder; the chosen one is copied."""
    return f"ort_config_{candidate_name}.json"


@dataclass
class _CandidateBuilder:
    """Builds one INT8 candidate file from its description, whichever graph and quantizer it needs."""

    export_dir: Path
    cand_dir: Path
    args: QuantizationArguments
    optimized_graphs: dict[str, Path]
    calibration_dataset: Any
    tokenizer: PreTrainedTokenizerBase
    text_column: str
    texts: list[str]  # the evaluation sentences
    calibration_cache: dict[str, Any] = field(default_factory=dict)
    _calibration_tokens: Any = None

    def calibration_set(self) -> Any:
        """The calibration sentences tokenized once (padded to `sequence_length`) for every static ONNX Runtime
        method and for NNCF."""
        if self._calibration_tokens is None:
            self._calibration_tokens = _calibration_set(
                self.calibration_dataset, self.tokenizer, self.args, self.text_column
            )
        return self._calibration_tokens

    def logits(self, model: PreTrainedModel | Path, samples: int | None = None) -> np.ndarray:
        """Logits of a PyTorch model or ONNX file over the first `samples` evaluation sentences (default: all)."""
        runner = ClassifierRunner(model, self.tokenizer)
        texts = self.texts[:samples]
        return runner.logits(texts, batch_size=self.args.eval_batch_size, max_length=self.args.sequence_length)

    def latencies(self, graphs: dict[str, Path]) -> dict[str, dict[str, dict[str, float]]]:
        """Latency of ONNX files in each serving shape (`serving_latency`), timed in alternation:
        `{graph: {shape: {median_ms, p90_ms, runs}}}`."""
        runners = {name: ClassifierRunner(path, self.tokenizer) for name, path in graphs.items()}
        return serving_latency(
            runners,
            self.texts,
            sequence_length=self.args.sequence_length,
            runs=self.args.latency_runs,
            shapes=self.args.serving_shapes,
        )

    def calibration_feeds(self) -> list[dict[str, np.ndarray]] | None:
        """The calibration sentences as batch-1 NumPy feeds (padded to `sequence_length`), for NNCF."""
        if self.calibration_dataset is None:
            return None
        data = self.calibration_set()
        return [{k: np.asarray([row[k]], dtype=np.int64) for k in data.column_names} for row in data]

    def source_graph(self, candidate: dict) -> Path:
        level = candidate.get("graph_level")
        return self.optimized_graphs[level] if level else self.export_dir / FP32_FILE

    def build(self, candidate: dict) -> None:
        if candidate.get("graph_level"):
            _build_optimized_dynamic(candidate, self.source_graph(candidate), self.cand_dir, self.args)
        else:
            _build_candidate(
                candidate,
                self.export_dir,
                self.cand_dir,
                self.args,
                self.calibration_set,
                self.calibration_cache,
            )


def _quantizable_nodes(graph: Path, operators: list[str]) -> list[str]:
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    return [n.name for n in model.graph.node if n.op_type in operators and n.name]


def _sensitivity_retry(
    base: dict,
    builder: _CandidateBuilder,
    labels: np.ndarray,
    baseline: float,
    fp32_latency: dict,
    report: dict[str, Any],
    metric_fn: MetricFn = accuracy,
    deadline: float = float("inf"),
) -> dict | None:
    """Measure, node by node, how much keeping it in FP32 recovers; exclude the top-k from the base config.

    A BERT-Base-class model has about a hundred quantizable nodes, each probe a quantization and an evaluation: the
    probing stops at `deadline` (the search's time budget) and works with the nodes measured by then.
    """
    args, cand_dir, build = builder.args, builder.cand_dir, builder.build
    graph = builder.source_graph(base)
    operators = args.operators_to_quantize or ["MatMul", "Gemm", "Attention"]
    nodes = _quantizable_nodes(graph, operators)
    seen = min(args.sensitivity_samples, len(labels))
    subset_labels = labels[:seen]
    base_value = metric_fn(builder.logits(cand_dir / base["file"], seen), subset_labels)

    gains = {}
    for i, node in enumerate(nodes):
        if time.perf_counter() > deadline:
            report["sensitivity_stopped"] = f"time budget: {i} of {len(nodes)} nodes probed"
            break
        probe = {**base, "name": f"{base['name']}_probe{i}", "exclude": base.get("exclude", []) + [node]}
        try:
            build(probe)
        except (ValueError, RuntimeError):
            continue
        gains[node] = metric_fn(builder.logits(cand_dir / probe["file"], seen), subset_labels) - base_value
        os.remove(cand_dir / probe["file"])
    worst = sorted(gains, key=lambda n: -gains[n])[: args.sensitivity_top_k]
    report["sensitivity"] = {
        "base": base["name"],
        "base_subset_metric_value": base_value,
        "samples": seen,
        "gain_when_kept_fp32": gains,
        "excluded": worst,
    }
    if not worst:
        return None
    retry = {**base, "name": f"{base['name']}_exclude{len(worst)}", "exclude": base.get("exclude", []) + worst}
    for key in ("accuracy", "metric_value", "passed", "status", "latency", "shapes", "warnings", "file", "size_mb"):
        retry.pop(key, None)
    build(retry)
    # Timed against FP32 in the same interleaved group, for the same reason as the candidates.
    fp32_file = builder.cand_dir.parent / report["fp32"]["file"]
    shaped = builder.latencies({"retry": cand_dir / retry["file"], "fp32": fp32_file})
    retry["latency"], retry["shapes"], fp32_latency = (
        shaped["retry"]["fixed_length"],
        shaped["retry"],
        shaped["fp32"]["fixed_length"],
    )
    logits = builder.logits(cand_dir / retry["file"])
    retry["accuracy"] = accuracy(logits, labels)
    retry["metric_value"] = metric_fn(logits, labels)
    retry["passed"] = args.within_criterion(baseline, retry["metric_value"])
    _flag_timing(retry)
    retry["faster_than_fp32"] = (not args.require_speedup) or retry["latency"]["median_ms"] < fp32_latency["median_ms"]
    retry["status"] = "evaluated (after excluding the most sensitive nodes)"
    return retry


def _build_optimized_dynamic(candidate: dict, graph: Path, cand_dir: Path, args: QuantizationArguments) -> None:
    """Dynamic INT8 of an ORTOptimizer-fused graph, through ONNX Runtime's quantizer.

    Optimum's ORTQuantizer cannot pass ONNX Runtime's `DefaultTensorType` option, without which the fused graph's
    contrib ops fail type inference. Signed INT8 weights (u8 activations x s8 weights): measured 1.6x faster than
    u8 x u8 for the same graph on an AVX2 CPU.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.registry import IntegerOpsRegistry
    from optimum.onnxruntime.configuration import AutoQuantizationConfig, OptimizationConfig, ORTConfig

    # Optimum's arm64 preset is the configuration quantize_dynamic runs here (u8 x s8, QOperator, IntegerOps); with
    # no operators given, quantize_dynamic quantizes every type in its IntegerOps registry.
    qconfig = AutoQuantizationConfig.arm64(
        is_static=False,
        per_channel=candidate["per_channel"],
        operators_to_quantize=args.operators_to_quantize or list(IntegerOpsRegistry),
        nodes_to_exclude=(args.nodes_to_exclude or []) + candidate.get("exclude", []),
    )
    target = cand_dir / f"model_{candidate['name']}.onnx"
    quantize_dynamic(
        model_input=str(graph),
        model_output=str(target),
        per_channel=qconfig.per_channel,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=qconfig.operators_to_quantize,
        nodes_to_exclude=qconfig.nodes_to_exclude,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    optimization = OptimizationConfig(optimization_level=int(candidate["graph_level"]), optimize_for_gpu=False)
    ORTConfig(quantization=qconfig, optimization=optimization).to_json_file(
        cand_dir / _ort_config_file(candidate["name"])
    )
    candidate.update(file=target.name, size_mb=target.stat().st_size / 1e6)


def _candidates(
    args: QuantizationArguments, have_calibration: bool, optimized_levels: list[str] = ()
) -> list[dict[str, Any]]:
    if args.approach == "none":
        return []
    channels = [False, True] if args.per_channel is None else [args.per_channel]
    out = []
    if args.approach in ("auto", "dynamic"):
        out += [
            {
                "name": f"optimized_o{level}_dynamic_{'per_channel' if pc else 'per_tensor'}",
                "static": False,
                "per_channel": pc,
                "calibration": None,
                "graph_level": level,
            }
            for level in optimized_levels
            for pc in channels
        ]
        out += [
            {
                "name": f"dynamic_{'per_channel' if pc else 'per_tensor'}",
                "static": False,
                "per_channel": pc,
                "calibration": None,
            }
            for pc in channels
        ]
    if args.approach in ("auto", "static") and have_calibration:
        out += [
            {
                "name": f"static_{m}_{'per_channel' if pc else 'per_tensor'}",
                "static": True,
                "per_channel": pc,
                "calibration": m,
            }
            for m in args.calibration_methods
            for pc in channels
        ]
    if args.approach == "static" and not have_calibration:
        raise QuantizationError("approach='static' needs calibration_dataset= (a few hundred training examples).")
    return out


def _calibration_set(
    dataset: Any, tokenizer: PreTrainedTokenizerBase, args: QuantizationArguments, text_column: str
) -> Any:
    data = dataset.select(range(min(args.calibration_samples, len(dataset))))
    return data.map(
        lambda b: tokenizer(b[text_column], padding="max_length", truncation=True, max_length=args.sequence_length),
        batched=True,
        remove_columns=data.column_names,
    )
