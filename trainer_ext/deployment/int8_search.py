"""The accuracy-aware INT8 search as an object: `Int8Search` holds the search's state and its methods are the steps.

In `run`'s order: `export` (FP32 ONNX, checked against PyTorch; the baseline metric), `optimize_graphs`
(ORTOptimizer's levels), `build` (the INT8 candidates, ONNX Runtime's then OpenVINO's), `time_graphs` (every graph
in every serving shape, one interleaved group), `evaluate_fastest_first` (the saved INT8 model, `chosen`),
`retry_sensitive_nodes` (only when nothing passed), `pick_per_shape` and `finish` (the report); then `save` writes
the output folders. Two step groups have their own modules, which work on the search: `sensitivity` (the node
probing and retry) and `shape_picks` (each serving shape's pick and its file); `evaluation` holds `EvalSet`, what
every graph is evaluated and timed on.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel
from transformers.utils import logging

from trainer_ext.deployment import openvino_backend, sensitivity, shape_picks
from trainer_ext.deployment.benchmark import cpu_description, cpu_features, onnx_session_settings
from trainer_ext.deployment.candidates import CalibrationSet, CandidateBuilder, candidate_list, ort_config_file
from trainer_ext.deployment.evaluation import EvalSet, flag_timing
from trainer_ext.deployment.export import export_onnx, optimize_graph
from trainer_ext.deployment.quantization_args import (
    FP32_FILE,
    INT8_FILE,
    ONNX_SUBFOLDER,
    OPENVINO_SUBFOLDER,
    ORT_CONFIG_FILE,
    QuantizationArguments,
)
from trainer_ext.files import atomic_path

__all__ = ["EvalSet", "Int8Search"]  # EvalSet: moved to `evaluation`, still importable from here

logger = logging.get_logger(__name__)

# One configuration failing to build (say, a calibration method on degenerate activations) is a trial result.
_BUILD_ERRORS = (ValueError, RuntimeError, onnxruntime.capi.onnxruntime_pybind11_state.Fail)


class Int8Search:
    """One search in the work folder `work` (export/, optimized_<level>/, candidates/), removed by the caller.

    Its state, filled in by the steps: `candidates` (built; each with its fixed-length `latency` and per-shape
    `shapes`, and once evaluated its `metric_value`, `accuracy` and `passed`), `failed` (not built), `notes`, `fp32`
    (the fastest FP32 graph's record: metric, latencies, file), `optimization` (FP32 median ms per optimisation level),
    `chosen` (the candidate saved as model_quantized.onnx, or None), the budgets' counters `evaluated` (trials) and
    `start` (the time budget counts from the first build), and `report`. The budget checks (`out_of_time`,
    `out_of_budget`) and a candidate's evaluation (`scores`, `evaluate`) are public: `sensitivity` and `shape_picks`
    use them too.
    """

    def __init__(
        self, work: Path, args: QuantizationArguments, evaluation: EvalSet, calibration: CalibrationSet | None
    ) -> None:
        self.work = work
        self.args = args
        self.evaluation = evaluation
        self.builder = CandidateBuilder(work / "export", work / "candidates", args, calibration)
        self.fp32_path: Path | None = None  # the exported graph
        self.candidates: list[dict[str, Any]] = []
        self.failed: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.optimization: dict[str, Any] = {}  # level -> FP32 median ms, or "failed"
        self.fp32: dict[str, Any] = {}
        self.chosen: dict[str, Any] | None = None
        self.evaluated = 0
        self.start: float | None = None
        self.report: dict[str, Any] = {}

    def run(self, model_or_dir: PreTrainedModel | str | os.PathLike) -> dict[str, Any]:
        """Every step but `save`; returns the report."""
        self.export(model_or_dir)
        self.optimize_graphs()
        self.build()
        self.time_graphs()
        self.evaluate_fastest_first()
        if self.chosen is None and self.args.sensitivity_top_k > 0:
            self.retry_sensitive_nodes()
        self.report["per_shape"] = self.pick_per_shape()
        return self.finish()

    # ------------------------------------------------------------------------------------------------- the steps
    def export(self, model_or_dir: PreTrainedModel | str | os.PathLike) -> None:
        """The model as FP32 ONNX, its logits checked against PyTorch's on the same batches; the FP32 metric value is
        the baseline of the criterion."""
        if isinstance(model_or_dir, (str, os.PathLike)):
            model_dir = Path(model_or_dir)
            torch_model = AutoModelForSequenceClassification.from_pretrained(model_dir)
        else:
            torch_model = model_or_dir
            model_dir = self.work / "torch"
            torch_model.save_pretrained(model_dir)
        self.fp32_path = export_onnx(model_dir, self.builder.export_dir)
        self.builder.cand_dir.mkdir()
        torch_logits, fp32_logits = self.evaluation.logits(torch_model), self.evaluation.logits(self.fp32_path)
        baseline, fp32_accuracy = self.evaluation.scores(fp32_logits)
        torch_value, torch_accuracy = self.evaluation.scores(torch_logits)
        self.fp32 = {"accuracy": fp32_accuracy, "metric_value": baseline}
        self.report = {
            "metric": self.evaluation.metric[0],
            "eval_examples": len(self.evaluation.texts),
            "pytorch_accuracy": torch_accuracy,
            "pytorch_metric_value": torch_value,
            "export_max_abs_logit_diff": float(np.abs(fp32_logits - torch_logits).max()),
        }

    def optimize_graphs(self) -> None:
        """The exported graph optimised by ORTOptimizer at each of `optimization_levels` (0: the export itself)."""
        for level in map(str, self.args.optimization_levels):
            if level == "0":
                continue
            optimized = optimize_graph(self.builder.export_dir, self.work / f"optimized_{level}", int(level))
            if optimized is None:
                self.optimization[level] = "failed"
            else:
                self.builder.optimized_graphs[level] = optimized

    def build(self) -> None:
        """Build every candidate `args` asks for, then OpenVINO's, within the time budget (which starts here)."""
        have_calibration = self.builder.calibration.dataset is not None
        candidates = candidate_list(self.args, have_calibration, sorted(self.builder.optimized_graphs))
        self.start = time.perf_counter()
        for candidate in candidates:
            if self.out_of_time():
                candidate["status"] = "not built (time budget)"
                self.failed.append(candidate)
                continue
            try:
                self.builder.build(candidate)
            except _BUILD_ERRORS as err:
                candidate["status"] = f"failed: {type(err).__name__}: {err}"
                self.failed.append(candidate)
                continue
            self.candidates.append(candidate)
        if "openvino" in self.args.backends and self.args.approach != "none":
            self._build_openvino()
        if self.args.approach in ("static", "auto") and not have_calibration:
            self.notes.append("static quantization skipped: no calibration_dataset was given")

    def time_graphs(self) -> None:
        """Time every FP32 graph and candidate in each serving shape; the fastest FP32 graph is the reference."""
        # Every FP32 graph and INT8 candidate is timed in one interleaved group: this machine's speed drifts over
        # minutes, and timing them one after another ranked them by when they were measured as much as by speed.
        fp32_graphs = [("0", self.fp32_path), *self.builder.optimized_graphs.items()]
        graphs = {f"fp32_{level}": path for level, path in fp32_graphs}
        graphs |= {c["name"]: self.builder.cand_dir / c["file"] for c in self.candidates}
        shaped = self.evaluation.latencies(graphs)
        # "latency" is the fixed length's (the search's order and the reference's convention); "shapes" has every one.
        for candidate in self.candidates:
            by_shape = shaped[candidate["name"]]
            candidate["latency"], candidate["shapes"] = by_shape["fixed_length"], by_shape
            flag_timing(candidate)
        self.optimization |= {
            name[len("fp32_") :]: by_shape["fixed_length"]["median_ms"]
            for name, by_shape in shaped.items()
            if name.startswith("fp32_")
        }
        measured = [level for level, ms in self.optimization.items() if ms != "failed"]
        best_level = min(measured, key=lambda level: self.optimization[level])
        best = graphs[f"fp32_{best_level}"]
        self.fp32 |= {
            "latency": shaped[f"fp32_{best_level}"]["fixed_length"],
            "shapes": shaped[f"fp32_{best_level}"],
            "size_mb": best.stat().st_size / 1e6,
            "optimization_level": int(best_level),
            "file": str(best.relative_to(self.work)),
        }
        self._describe_setup()

    def evaluate_fastest_first(self) -> None:
        """Evaluate the ONNX Runtime candidates in fixed-length order until one is within the criterion: the fastest
        acceptable one is `chosen` (the saved INT8 model). OpenVINO's are left to `pick_per_shape`."""
        # Fastest first: the first candidate within the criterion is the fastest acceptable one.
        self.candidates.sort(key=lambda c: c["latency"]["median_ms"])
        for candidate in self.candidates:
            if candidate.get("backend") == "openvino":
                continue  # another runtime: picked per serving shape below, never saved as model_quantized.onnx
            if self.chosen is not None:
                candidate["status"] = "not evaluated (a faster candidate passed)"
            elif self.args.require_speedup and candidate["latency"]["median_ms"] >= self.fp32["latency"]["median_ms"]:
                # INT8 that is not faster than FP32 on this CPU is no gain (the reference's ONNX Runtime INT8 was slower).
                candidate["status"] = "not evaluated (not faster than FP32)"
            elif self.out_of_budget():
                candidate["status"] = "not evaluated (trial or time budget)"
            else:
                self.evaluated += 1
                self.evaluate(candidate)
                candidate["status"] = "evaluated"
                if candidate["passed"]:
                    self.chosen = candidate

    def retry_sensitive_nodes(self) -> None:
        """When no candidate passed: the fastest rejected one again with its most sensitive nodes kept in FP32
        (`sensitivity.retry_sensitive_nodes`)."""
        sensitivity.retry_sensitive_nodes(self)

    def pick_per_shape(self) -> dict[str, dict[str, Any]]:
        """The fastest candidate within the criterion for each serving shape (`shape_picks.pick_per_shape`)."""
        return shape_picks.pick_per_shape(self)

    def finish(self) -> dict[str, Any]:
        """Complete the report: every trial with its status, and the chosen INT8 model or why FP32 is kept."""
        for candidate in self.candidates:
            candidate.setdefault("status", "not evaluated (a faster candidate passed in every serving shape)")
        if any(c.get("backend") == "openvino" for c in self.candidates):
            self.report["openvino"] = {"version": openvino_backend.version()}
        self.report["trials"] = self.candidates + self.failed
        self.report["chosen"] = self._fp32_kept() if self.chosen is None else self._chosen_record()
        return self.report

    def save(self, output_dir: Path) -> None:
        """`output_dir/onnx/` (the FP32 and chosen INT8 models, other shapes' picks, config and tokenizer) and, when
        OpenVINO is some shape's pick, `output_dir/openvino/`; each folder staged and moved into place complete."""
        tokenizer = self.evaluation.tokenizer
        with atomic_path(output_dir / ONNX_SUBFOLDER) as staged:
            shutil.copytree(self.builder.export_dir, staged, ignore=shutil.ignore_patterns("*.onnx"))
            # model.onnx is the fastest FP32 graph measured (as exported, or optimised by ORTOptimizer).
            shutil.copy2(self.work / self.fp32["file"], staged / FP32_FILE)
            if self.chosen is not None:
                shutil.copy2(self.builder.cand_dir / self.chosen["file"], staged / INT8_FILE)
                # Optimum's record of how the INT8 model was made, kept next to it as ORTQuantizer leaves it.
                shutil.copy2(self.builder.cand_dir / ort_config_file(self.chosen["name"]), staged / ORT_CONFIG_FILE)
            shape_picks.save_shape_picks(self, staged, "onnxruntime")
            tokenizer.save_pretrained(staged)
        if any(p.get("backend") == "openvino" for p in self.report["per_shape"].values()):
            # optimum-intel's layout: openvino_model.xml/.bin beside config.json and the tokenizer.
            with atomic_path(output_dir / OPENVINO_SUBFOLDER) as staged:
                shutil.copytree(self.builder.export_dir, staged, ignore=shutil.ignore_patterns("*.onnx"))
                shape_picks.save_shape_picks(self, staged, "openvino")
                tokenizer.save_pretrained(staged)
        elif (output_dir / OPENVINO_SUBFOLDER).exists():
            shutil.rmtree(output_dir / OPENVINO_SUBFOLDER)  # an earlier search's pick, not this one's

    # ------------------------------------------------------- budgets and evaluation (`sensitivity`, `shape_picks` too)
    def out_of_time(self) -> bool:
        """The time budget, counted from the first build, is spent."""
        return time.perf_counter() - self.start > self.args.time_budget_s

    def out_of_budget(self) -> bool:
        """No evaluation left: `max_trials` made, or the time budget spent."""
        return self.evaluated >= self.args.max_trials or self.out_of_time()

    def scores(self, candidate: dict[str, Any], samples: int | None = None) -> tuple[float, float]:
        """(metric value, accuracy) of a candidate's file over the first `samples` evaluation sentences."""
        return self.evaluation.scores(self.evaluation.logits(self.builder.cand_dir / candidate["file"], samples))

    def evaluate(self, candidate: dict[str, Any]) -> None:
        """A candidate's `accuracy`, `metric_value` and `passed` (within the criterion of the FP32 metric value)."""
        value, acc = self.scores(candidate)
        candidate["accuracy"], candidate["metric_value"] = acc, value
        candidate["passed"] = self.args.within_criterion(self.fp32["metric_value"], value)

    # --------------------------------------------------------------------------------------------------- helpers
    def _build_openvino(self) -> None:
        reason = openvino_backend.unavailable_reason()
        if reason:
            self.notes.append(reason)
        elif self.out_of_time():
            self.failed += [
                {"name": name, "backend": "openvino", "status": "not built (time budget)"}
                for name in openvino_backend.CANDIDATES
            ]
        else:
            feeds = self.builder.calibration.feeds()
            built, failed = openvino_backend.build_candidates(self.fp32_path, self.builder.cand_dir, feeds)
            self.candidates += built
            self.failed += failed

    def _describe_setup(self) -> None:
        """The report's record of the machine, the FP32 reference, the criterion and the settings."""
        args = self.args
        self.report |= {
            "onnx_threads": torch.get_num_threads(),
            "onnxruntime": onnx_session_settings(),
            "cpu": cpu_description(),  # model name and instruction sets (AVX2, AVX-512 VNNI, AMX, ...)
            "cpu_features": cpu_features(),
            "fp32": self.fp32,
            "optimization_latency_ms": self.optimization,
            "criterion": {"max_relative_drop": args.max_relative_drop, "max_absolute_drop": args.max_absolute_drop},
            "args": asdict(args),
            "trials": [],
        }
        flag_timing(self.fp32, "fp32")
        if self.notes:
            self.report["notes"] = self.notes

    def _fp32_kept(self) -> dict[str, str]:
        if self.args.approach == "none":
            reason = "quantization disabled (approach='none')"
        elif not self.candidates:
            reason = "no INT8 candidate was built (" + "; ".join(sorted({t["status"] for t in self.failed})) + ")"
        else:
            metric = self.report["metric"]
            reason = f"no ONNX Runtime INT8 candidate was faster than FP32 and met the {metric} criterion"
        logger.warning(f"Kept the FP32 ONNX model: {reason}.")
        return {"name": "fp32", "reason": reason}

    def _chosen_record(self) -> dict[str, Any]:
        chosen = self.chosen
        return {
            "name": chosen["name"],
            "file": chosen["file"],
            "accuracy": chosen["accuracy"],
            "metric_value": chosen["metric_value"],
            "latency": chosen["latency"],
            "shapes": chosen["shapes"],
            "size_mb": chosen["size_mb"],
            "speedup_vs_fp32": self.fp32["latency"]["median_ms"] / chosen["latency"]["median_ms"],
            **({"warnings": chosen["warnings"]} if chosen.get("warnings") else {}),
        }
