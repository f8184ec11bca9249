"""Choosing the student: the fastest candidate whose INT8 model meets the user's budget, and never a distilled model
that plain fine-tuning beats.

The pipeline (`selection` and `guard` stages) trains and measures; this module holds the rules, so that they are
stated once and tested on their own:

- `int8_figures`: what a candidate's quantization report says about the model it ships (eval-split accuracy and
  batch-1 latency at each sentence's own length);
- `Budget.shortfall` / `pick`: which candidate is shipped, and why, when one meets the budget or none does;
- `guard`: the distilled or the undistilled student of the shipped shape, whichever is more accurate on the eval split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Budget", "guard", "int8_figures", "pick", "teacher_note"]


@dataclass(frozen=True)
class Budget:
    """`max_accuracy_drop`: points below the teacher on the eval split; `max_latency_ms`: batch 1, real length."""

    max_accuracy_drop: float | None = None
    max_latency_ms: float | None = None

    def __bool__(self) -> bool:
        return self.max_accuracy_drop is not None or self.max_latency_ms is not None

    def describe(self) -> str:
        parts = []
        if self.max_accuracy_drop is not None:
            parts.append(
                f"at most {self.max_accuracy_drop:g} point{'' if self.max_accuracy_drop == 1 else 's'} below the teacher"
            )
        if self.max_latency_ms is not None:
            parts.append(f"at most {self.max_latency_ms:g} ms at batch 1")
        return " and ".join(parts) or "no budget (the fastest candidate)"

    def shortfall(self, record: dict[str, Any], teacher_accuracy: float) -> tuple[float, float]:
        """`(milliseconds over the latency budget, points over the accuracy budget)`; `(0, 0)` meets it."""
        ms, accuracy = record["int8_real_length_ms"], record["int8_accuracy"]
        late = max(0.0, ms - self.max_latency_ms) if self.max_latency_ms is not None else 0.0
        drop = 100 * (teacher_accuracy - accuracy)
        short = max(0.0, drop - self.max_accuracy_drop) if self.max_accuracy_drop is not None else 0.0
        return late, short


def int8_figures(report: dict[str, Any]) -> dict[str, Any]:
    """The shipped INT8 model's eval-split accuracy and latency, from a `compression_report.json`.

    The real-length figures are those of the model served at batch 1 at each sentence's own length (the search's
    per-shape pick, which may be OpenVINO's); when that shape was not measured, those of `model_quantized.onnx`.
    A search that kept FP32 ships the FP32 ONNX graph, whose figures are then given.
    """
    chosen = report["chosen"]
    trial = next((t for t in report.get("trials", []) if t.get("name") == chosen["name"]), None)
    source = report["fp32"] if chosen["name"] == "fp32" or trial is None else trial
    real = (report.get("per_shape") or {}).get("real_length")
    fixed_ms = source["latency"]["median_ms"]
    return {
        "int8_model": chosen["name"],
        # A per-shape pick of the FP32 graph (faster than INT8 at real length, for the smallest students) has the
        # FP32 graph's accuracy, which the report keeps with the FP32 figures.
        "int8_accuracy": real.get("accuracy", report["fp32"]["accuracy"] if real["name"] == "fp32" else None)
        if real
        else chosen.get("accuracy", source.get("accuracy")),
        "int8_real_length_ms": real["median_ms"]
        if real
        else (source.get("shapes") or {}).get("real_length", {}).get("median_ms", fixed_ms),
        "int8_fixed_length_ms": fixed_ms,
        "fp32_accuracy": report["fp32"]["accuracy"],
        "fp32_onnx_real_length_ms": (report["fp32"].get("shapes") or {}).get("real_length", {}).get("median_ms"),
    }


def pick(records: list[dict[str, Any]], budget: Budget, teacher_accuracy: float) -> tuple[str | None, bool, str]:
    """`(shipped candidate, whether it meets the budget, why)` from the candidates in the order they were tried.

    The first trained candidate that meets the budget is shipped: candidates are tried fastest first, so it is the
    fastest that does. When none does, the closest: among those within the latency budget (all, without one), the
    most accurate INT8 model; when none is within it, the fastest. None when no candidate trained.
    """
    trained = [r for r in records if r.get("status") == "trained"]
    if not trained:
        return None, False, "no candidate trained"
    for record in trained:
        if record.get("meets_budget"):
            return record["student"], True, f"the fastest candidate within the budget ({budget.describe()})"
    in_time = [r for r in trained if budget.shortfall(r, teacher_accuracy)[0] == 0]
    if in_time:
        best = max(in_time, key=lambda r: r["int8_accuracy"])
        late, short = budget.shortfall(best, teacher_accuracy)
        why = f"{short:.2f} points short of the accuracy budget"
        scope = "within the latency budget" if budget.max_latency_ms is not None else "tried"
        return (
            best["student"],
            False,
            f"no candidate met the budget ({budget.describe()}); the most accurate {scope}, {why}",
        )
    best = min(trained, key=lambda r: r["int8_real_length_ms"])
    late, _ = budget.shortfall(best, teacher_accuracy)
    return (
        best["student"],
        False,
        f"no candidate met the budget ({budget.describe()}); the fastest, {late:.2f} ms over the latency budget",
    )


def guard(accuracies: dict[str, float]) -> tuple[str, str]:
    """`(shipped variant, why)` from the eval-split accuracy of `student_distilled` and `student_no_distillation`.

    The distilled student is shipped unless the undistilled one is strictly more accurate: a student that plain
    fine-tuning beats is never shipped under the name of distillation.
    """
    distilled, plain = accuracies["student_distilled"], accuracies["student_no_distillation"]
    if plain > distilled:
        return "student_no_distillation", (
            f"distillation did not help on this data: on the eval split the student trained on labels alone scored "
            f"{100 * plain:.2f}% against {100 * distilled:.2f}% distilled, so the undistilled student is shipped"
        )
    return "student_distilled", (
        f"distilled {100 * distilled:.2f}% against {100 * plain:.2f}% trained on labels alone, on the eval split"
    )


def teacher_note(teacher: float, plain: float) -> str | None:
    """One plain sentence when the teacher is no better on the eval split than the student trained on labels alone
    (distillation then has nothing to pass on), else None."""
    if teacher > plain:
        return None
    return (
        f"the teacher ({100 * teacher:.2f}%) is no better on the eval split than the student trained on labels alone "
        f"({100 * plain:.2f}%), so distillation has little to pass on: train the teacher longer or on more data, or "
        "use a stronger one"
    )
