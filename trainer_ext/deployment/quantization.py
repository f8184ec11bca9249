"""ONNX export and accuracy-aware INT8 quantization through Optimum and ONNX Runtime: `quantize_model`.

The idea taken from Intel Neural Compressor: try quantization configurations, fastest first by measured latency, and
keep the fastest whose metric stays within a criterion of the FP32 model's; if none does, keep the most sensitive
nodes in FP32 and retry; if that fails too, keep FP32 and say so. The metric is accuracy for now (issue 4 is open:
`evaluate` metrics need a local metric path offline).

This module is the entry point and where callers import from; the work is done in `export` (ONNX export, graph
optimisation), `candidates` (the INT8 configurations and how each is built), `int8_search` (`Int8Search`: the
search's state and steps; `sensitivity` its node-by-node retry, `shape_picks` its pick per serving shape,
`evaluation` the data it evaluates and times on) and `quantization_args` (the settings, error type and file names,
re-exported here).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from transformers import EvalPrediction, PreTrainedModel, PreTrainedTokenizerBase

from trainer_ext.deployment.benchmark import ClassifierRunner, accuracy
from trainer_ext.deployment.candidates import CalibrationSet, dynamic_int8
from trainer_ext.deployment.evaluation import EvalSet
from trainer_ext.deployment.export import export_onnx
from trainer_ext.deployment.int8_search import Int8Search
from trainer_ext.deployment.quantization_args import (
    APPROACHES,
    BACKENDS,
    CALIBRATION_METHODS,
    FP32_FILE,
    INT8_FILE,
    ONNX_SUBFOLDER,
    OPENVINO_SUBFOLDER,
    ORT_CONFIG_FILE,
    REPORT_FILE,
    SHAPE_PICK_MARGIN,
    Approach,
    MetricFn,
    QuantizationArguments,
    QuantizationError,
)
from trainer_ext.files import write_json

__all__ = [
    "APPROACHES",
    "BACKENDS",
    "CALIBRATION_METHODS",
    "FP32_FILE",
    "INT8_FILE",
    "ONNX_SUBFOLDER",
    "OPENVINO_SUBFOLDER",
    "ORT_CONFIG_FILE",
    "REPORT_FILE",
    "SHAPE_PICK_MARGIN",
    "Approach",
    "ClassifierRunner",
    "MetricFn",
    "QuantizationArguments",
    "QuantizationError",
    "check_eval_dataset",
    "dynamic_int8",
    "export_onnx",
    "quantize_model",
    "resolve_metric",
]


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
    partial one. The search itself is `Int8Search`'s.
    """
    args = args or QuantizationArguments()
    check_eval_dataset(eval_dataset, text_column, label_column)
    metric = resolve_metric(args, compute_metrics)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(output_dir, os.W_OK):
        raise QuantizationError(f"Cannot write to {output_dir}; pass a writable output directory.")
    if args.max_eval_samples:
        eval_dataset = eval_dataset.select(range(min(args.max_eval_samples, len(eval_dataset))))
    texts = [str(t) for t in eval_dataset[text_column]]
    labels = np.asarray(list(eval_dataset[label_column]))
    evaluation = EvalSet(texts, labels, tokenizer, args, metric)
    calibration = CalibrationSet(calibration_dataset, tokenizer, text_column, args)
    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=".onnx-", dir=output_dir))
    try:
        search = Int8Search(work, args, evaluation, calibration)
        report = search.run(model_or_dir)
        search.save(output_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["seconds"] = time.perf_counter() - start
    write_json(output_dir / REPORT_FILE, report)
    return report
