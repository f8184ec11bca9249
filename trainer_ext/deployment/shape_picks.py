"""The INT8 search's pick for each serving shape: `pick_per_shape` (the report's `per_shape`: the fastest graph
within the criterion in each shape, evaluating what it needs) and `save_shape_picks` (each pick's file in the output
folders, recorded in its `file`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer_ext.deployment import openvino_backend
from trainer_ext.deployment.quantization_args import (
    FP32_FILE,
    INT8_FILE,
    ONNX_SUBFOLDER,
    OPENVINO_SUBFOLDER,
    SHAPE_PICK_MARGIN,
)

if TYPE_CHECKING:
    from trainer_ext.deployment.int8_search import Int8Search


def pick_per_shape(search: Int8Search) -> dict[str, dict[str, Any]]:
    """The fastest candidate within the criterion for each serving shape (FP32 when none passes and is faster); the
    saved INT8 model (`chosen`) unless the fastest is clearly faster (`SHAPE_PICK_MARGIN`).

    `evaluate_fastest_first` walks the candidates in fixed-length order; a candidate it skipped because a faster
    one passed may be the fastest at real length or in batches, so each shape walks its own order and evaluates
    (once, within the same trial and time budgets) what it needs.
    """
    picks: dict[str, dict[str, Any]] = {}
    for shape in search.fp32["shapes"]:
        pick = _fastest_passing(search, shape)
        if search.chosen is not None and pick["name"] not in ("fp32", search.chosen["name"]):
            pick = _unless_clearly_faster(search, shape, pick)
        picks[shape] = pick
    return picks


def _fastest_passing(search: Int8Search, shape: str) -> dict[str, Any]:
    """The fastest candidate in `shape` within the criterion and (with `require_speedup`) faster than FP32,
    evaluating the ones not evaluated yet while the budgets last; FP32 when there is none."""
    args = search.args
    fp32_ms = search.fp32["shapes"][shape]["median_ms"]
    timed = [c for c in search.candidates if shape in c.get("shapes", {})]
    for candidate in sorted(timed, key=lambda c: c["shapes"][shape]["median_ms"]):
        ms = candidate["shapes"][shape]["median_ms"]
        if args.require_speedup and ms >= fp32_ms:
            break
        if "passed" not in candidate:
            if search.out_of_budget():
                break
            search.evaluated += 1
            value, acc = search.scores(candidate)
            candidate["metric_value"], candidate["accuracy"] = value, acc  # the report's order of these keys
            candidate["passed"] = args.within_criterion(search.fp32["metric_value"], value)
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
            return pick
    return {"name": "fp32", "backend": "onnxruntime", "median_ms": fp32_ms, "speedup_vs_fp32": 1.0}


def _unless_clearly_faster(search: Int8Search, shape: str, pick: dict[str, Any]) -> dict[str, Any]:
    """The saved INT8 model in `shape`, with `pick` recorded as `fastest_other`, unless `pick` is clearly faster."""
    # Another file only for a real gain: the saved INT8 model serves this shape unless the other candidate is
    # clearly faster (measured: same-family candidates 5-7% apart, within one run's noise).
    chosen = search.chosen
    fp32_ms = search.fp32["shapes"][shape]["median_ms"]
    chosen_ms = chosen["shapes"][shape]["median_ms"]
    chosen_not_faster = search.args.require_speedup and chosen_ms >= fp32_ms
    if pick["median_ms"] > SHAPE_PICK_MARGIN * chosen_ms and not chosen_not_faster:
        return {
            "name": chosen["name"],
            "backend": "onnxruntime",
            "median_ms": chosen_ms,
            "speedup_vs_fp32": fp32_ms / chosen_ms,
            "accuracy": chosen["accuracy"],
            "fastest_other": {"name": pick["name"], "median_ms": pick["median_ms"]},
        }
    return pick


def save_shape_picks(search: Int8Search, staged: Path, backend: str) -> None:
    """Copy each serving shape's pick of `backend` into the staged folder and record where (`file`) in the report.

    ONNX Runtime: FP32 is `model.onnx`, the search's chosen INT8 `model_quantized.onnx`, another shape's different
    pick `model_quantized_<name>.onnx`. OpenVINO: the first pick (shapes in order, real length first) is
    `openvino_model.xml` (optimum-intel's default name), another `openvino_model_<name>.xml`.
    """
    folder = ONNX_SUBFOLDER if backend == "onnxruntime" else OPENVINO_SUBFOLDER
    saved: dict[str, str] = {"fp32": FP32_FILE} if backend == "onnxruntime" else {}
    if backend == "onnxruntime" and search.chosen is not None:
        saved[search.chosen["name"]] = INT8_FILE
    trials = {t["name"]: t for t in search.report["trials"]}
    for pick in search.report["per_shape"].values():
        if pick.get("backend", "onnxruntime") != backend:
            continue
        name = pick["name"]
        if name not in saved:
            source = search.builder.cand_dir / trials[name]["file"]
            if backend == "openvino":
                saved[name] = openvino_backend.OV_FILE if not saved else f"openvino_model_{name}.xml"
                openvino_backend.save_model_folder(source, staged, saved[name])
            else:
                saved[name] = f"model_quantized_{name}.onnx"
                shutil.copy2(source, staged / saved[name])
        pick["file"] = f"{folder}/{saved[name]}"
