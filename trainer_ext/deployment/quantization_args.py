"""The INT8 search's settings (`QuantizationArguments`), its error type and the names of the files it writes.

The layer every deployment module imports; `quantization` re-exports all of it, which is where callers import it from.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from trainer_ext.deployment.benchmark import SERVING_SHAPES

REPORT_FILE = "compression_report.json"
ONNX_SUBFOLDER = "onnx"
OPENVINO_SUBFOLDER = "openvino"
FP32_FILE = "model.onnx"
INT8_FILE = "model_quantized.onnx"
ORT_CONFIG_FILE = "ort_config.json"
Approach = Literal["auto", "dynamic", "static", "none"]
APPROACHES = typing.get_args(Approach)
CALIBRATION_METHODS = ("minmax", "entropy", "percentiles")
BACKENDS = ("onnxruntime", "openvino")
# A serving shape gets its own file only when that candidate takes under this share of the saved INT8 model's time.
SHAPE_PICK_MARGIN = 0.9


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


# The search's metric as `resolve_metric` returns it: fn(logits, labels) -> value.
MetricFn = Callable[[np.ndarray, np.ndarray], float]
