"""The results of a run: one typed schema (what `results.json` holds and the model card states) and the one function
that measures a run's variants. `ModelCardCallback`, `trainer-ext run` and `trainer-ext card` all go through it."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainer_ext.deployment.benchmark import (
    SERVING_SHAPES,
    ClassifierRunner,
    cpu_description,
    cpu_features,
    inconsistent_shapes,
    latency_rounds,
    measure_variants,
    onnx_session_settings,
)
from trainer_ext.files import write_json

RESULTS_FILE = "results.json"
INT8_VARIANT = "student_int8"
OPENVINO_VARIANT = "student_openvino"  # the search's OpenVINO pick of the shipped student, when it made one
LATENCY_METHOD = (
    "interleaved rounds of up to 20 runs per variant, each after at least 5 runs (and 0.25 s) of warm-up; every variant "
    "and shape timed on the same sentences in the same order"
)


class ResultsError(ValueError):
    """Results that cannot be read or stated; the message says what to pass instead."""


@dataclass
class Variant:
    """One measured form of the model: a row of the card's table. A variant that was not measured has only a note."""

    runtime: str | None = None
    accuracy: float | None = None
    latency_ms: float | None = None
    latency_p90_ms: float | None = None
    size_mb: float | None = None
    parameters: int | None = None
    eval_examples: int | None = None
    speedup_vs_teacher: float | None = None
    runtime_version: str | None = None  # "onnxruntime 1.32.0", "torch 2.13.0+cpu"
    # Latency by serving shape (benchmark.SERVING_SHAPES): {"real_length": {"median_ms": ..., "p90_ms": ...}, ...}
    shapes: dict[str, dict[str, float]] | None = None
    note: str | None = None
    # Figures of this variant that contradict each other (benchmark.inconsistent_shapes), stated beside them.
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Checked again here, so results written before the check (without `warnings`) are not published silently.
        self.warnings = variant_warnings(self)

    @property
    def measured(self) -> bool:
        return self.accuracy is not None or self.latency_ms is not None


def variant_warnings(variant: Variant | Mapping[str, Any]) -> list[str]:
    """A variant's flags: those recorded and those its shapes show (`inconsistent_shapes`), each once. Takes a
    `Variant` or its dict (a `results.json` entry, with or without `warnings`)."""
    values = vars(variant) if isinstance(variant, Variant) else variant
    recorded = values.get("warnings") or []
    return list(dict.fromkeys([*recorded, *inconsistent_shapes(values.get("shapes") or {})]))


def latency_warnings(variants: Mapping[str, Variant | Mapping[str, Any]]) -> list[str]:
    """One line per flag of every variant, "<variant>: <what is wrong>", for the run's summary and the card."""
    return [f"{name}: {flag}" for name, variant in variants.items() for flag in variant_warnings(variant)]


@dataclass
class Results:
    """Every number a run measured, and where it came from. `results.json` is `asdict` of this."""

    variants: dict[str, Variant]
    model_variant: str = "student_distilled"  # the FP32 weights in the output folder
    metric: str = "accuracy"
    evaluation: dict[str, Any] = field(
        default_factory=dict
    )  # dataset_id, dataset_name, dataset_config, split, examples
    latency: dict[str, Any] = field(default_factory=dict)  # batch_size, sequence_length, runs, threads, cpu, method
    teacher: str | None = None
    student_base: str | None = None
    base_model: str | None = None  # the Hub model this one was made from, for the card's base_model
    distillation: dict[str, Any] | None = None
    augmentation: dict[str, Any] | None = None
    quantization: dict[str, Any] | None = None  # compression_report.json's content
    recipe: dict[str, Any] | None = None
    processes: int | None = None
    precision: dict[str, dict[str, Any]] | None = None  # stage -> precision.PrecisionChoice.to_dict()
    stages: dict[str, float] | None = None
    # The student selection (pipeline, several candidates): budget, every candidate's record, the one shipped and why
    selection: dict[str, Any] | None = None
    # The guard (pipeline): the student shipped, distilled or not, with both eval-split accuracies and the reason
    guard: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.variants = {k: v if isinstance(v, Variant) else Variant(**(v or {})) for k, v in self.variants.items()}
        if not self.variants:
            raise ResultsError("The results have no variants: nothing was measured, so there is nothing to state.")
        teacher_ms = self.variants.get("teacher", Variant()).latency_ms
        for variant in self.variants.values():
            if teacher_ms and variant.latency_ms:
                variant.speedup_vs_teacher = teacher_ms / variant.latency_ms

    @property
    def model(self) -> Variant:
        """The variant whose FP32 weights the folder holds."""
        name = self._model_name()
        return self.variants[name] if name else Variant()

    def _model_name(self) -> str | None:
        """`model_variant`, or for results that do not hold it, the student they do hold."""
        return next((n for n in (self.model_variant, "student_distilled", "student") if n in self.variants), None)

    @property
    def int8(self) -> Variant:
        return self.variants.get(INT8_VARIANT) or Variant()

    @property
    def distilled(self) -> bool:
        """Whether the folder's weights were distilled from a teacher: not a folder quantized alone, nor the student
        trained on labels alone that the guard shipped instead."""
        return self.model_variant.startswith("student_distilled")

    def forms(self) -> dict[str, Variant]:
        """The measured forms of the model in the folder, by variant name: its FP32 weights, its INT8 ONNX model and
        its OpenVINO model, where each was measured."""
        names = (self._model_name(), INT8_VARIANT, OPENVINO_VARIANT)
        return {n: self.variants[n] for n in names if n in self.variants and self.variants[n].measured}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Results:
        """Results from `results.json`'s content, or from the report `quantize_model` returns."""
        if "variants" not in values and "chosen" in values and "fp32" in values:
            return cls.from_compression_report(values)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown or "variants" not in values:
            raise ResultsError(
                f"Not a results dict (unknown keys {unknown}, or no 'variants'): pass the content of results.json or "
                "the report quantize_model returns."
            )
        return cls(**values)

    @classmethod
    def from_compression_report(cls, report: dict[str, Any]) -> Results:
        """Results of a folder quantized alone (`quantize_model`, `trainer-ext quantize`): the search's FP32 graph
        and its chosen INT8 graph, both ONNX Runtime, on the search's evaluation set. The teacher was not measured."""
        fp32, chosen = report["fp32"], report["chosen"]

        def row(measured: dict[str, Any], runtime: str) -> Variant:
            return Variant(
                runtime=runtime,
                accuracy=measured.get("accuracy"),
                latency_ms=measured["latency"]["median_ms"],
                size_mb=measured.get("size_mb"),
                shapes=measured.get("shapes"),
                runtime_version=f"onnxruntime {report['onnxruntime']['version']}" if "onnxruntime" in report else None,
            )

        int8 = (
            row(chosen, "ONNX Runtime INT8")
            if chosen["name"] != "fp32"
            else Variant(note=chosen.get("reason", "quantization kept FP32"))
        )
        args = report.get("args", {})
        return cls(
            variants={"student": row(fp32, "ONNX Runtime FP32"), "teacher": Variant(), INT8_VARIANT: int8},
            model_variant="student",
            evaluation={"examples": report.get("eval_examples")},
            latency={
                "batch_size": 1,
                "sequence_length": args.get("sequence_length"),
                "runs": args.get("latency_runs"),
                "threads": report.get("onnx_threads"),
                "cpu": report.get("cpu"),
                **({"cpu_features": report["cpu_features"]} if "cpu_features" in report else {}),
            },
            quantization=report,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, folder: str | os.PathLike) -> Path:
        return write_json(Path(folder) / RESULTS_FILE, self.to_dict())

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Results:
        """`results.json` of a folder, or what its `compression_report.json` alone supports."""
        from trainer_ext.deployment.quantization import REPORT_FILE

        folder = Path(folder)
        for name in (RESULTS_FILE, REPORT_FILE):
            if (folder / name).exists():
                return cls.from_dict(json.loads((folder / name).read_text()))
        raise ResultsError(
            f"{folder} has neither {RESULTS_FILE} nor {REPORT_FILE}: a card only states measured numbers. Train with "
            "ModelCardCallback / QuantizationCallback, run `trainer-ext quantize`, or pass the results."
        )


def measure(
    models: dict[str, ClassifierRunner | str],
    eval_dataset: Any = None,
    *,
    runs: int = 100,
    sequence_length: int = 64,
    max_length: int = 128,
) -> tuple[dict[str, Variant], dict[str, Any]]:
    """Measure a run's variants in one interleaved group; a string instead of a runner is a note saying why that
    variant was not measured. Returns the variants (in the given order) and the latency settings they share.

    `sequence_length` is the fixed-length shape's padded length; `max_length` truncates the sentences for accuracy and
    the real-length shapes. A pipeline run passes its one `run.max_length` as both; both are recorded."""
    runners = {name: m for name, m in models.items() if isinstance(m, ClassifierRunner)}
    measured = measure_variants(
        runners, eval_dataset, runs=runs, sequence_length=sequence_length, max_length=max_length
    )
    variants = {name: Variant(**measured[name]) if name in measured else Variant(note=m) for name, m in models.items()}
    rounds, per_round = latency_rounds(runs)
    latency = {
        "batch_size": 1,
        "sequence_length": sequence_length,  # the fixed_length shape's padded length
        "max_length": max_length,  # truncation for accuracy and the real-length shapes
        "runs": rounds * per_round,
        "threads": torch.get_num_threads(),
        "cpu": cpu_description(),  # model name and instruction sets: "AMD EPYC" alone names machines unlike in speed
        "cpu_features": cpu_features(),
        "method": LATENCY_METHOD,
        "shapes": dict(SERVING_SHAPES),
        "onnxruntime": onnx_session_settings(),
    }
    return variants, latency


__all__ = [
    "INT8_VARIANT",
    "OPENVINO_VARIANT",
    "RESULTS_FILE",
    "Results",
    "ResultsError",
    "Variant",
    "latency_warnings",
    "measure",
    "variant_warnings",
]
