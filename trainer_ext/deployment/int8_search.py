"""The accuracy-aware INT8 search as an object: `Int8Search` holds the search's state and its methods are the steps.

In `run`'s order: `export` (FP32 ONNX, checked against PyTorch; the baseline metric), `optimize_graphs`
(ORTOptimizer's levels), `build` (the INT8 candidates, ONNX Runtime's then OpenVINO's), `time_graphs` (every graph
in every serving shape, one interleaved group), `evaluate_fastest_first` (the saved INT8 model, `chosen`),
`retry_sensitive_nodes` (only when nothing passed), `pick_per_shape` and `finish` (the report); then `save` writes
the output folders.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging

from trainer_ext.deployment import openvino_backend
from trainer_ext.deployment.benchmark import (
    ClassifierRunner,
    accuracy,
    cpu_description,
    cpu_features,
    inconsistent_shapes,
    onnx_session_settings,
    serving_latency,
)
from trainer_ext.deployment.candidates import (
    CalibrationSet,
    CandidateBuilder,
    candidate_list,
    ort_config_file,
    quantizable_nodes,
)
from trainer_ext.deployment.export import export_onnx, optimize_graph
from trainer_ext.deployment.quantization_args import (
    FP32_FILE,
    INT8_FILE,
    ONNX_SUBFOLDER,
    OPENVINO_SUBFOLDER,
    ORT_CONFIG_FILE,
    SHAPE_PICK_MARGIN,
    MetricFn,
    QuantizationArguments,
)
from trainer_ext.files import atomic_path

logger = logging.get_logger(__name__)

# One configuration failing to build (say, a calibration method on degenerate activations) is a trial result.
_BUILD_ERRORS = (ValueError, RuntimeError, onnxruntime.capi.onnxruntime_pybind11_state.Fail)
# What a candidate's build, timing and evaluation add to its description.
_MEASURED = ("accuracy", "metric_value", "passed", "status", "latency", "shapes", "warnings", "file", "size_mb")


@dataclass
class EvalSet:
    """The labelled sentences every graph is evaluated and timed on, and the metric the search keeps in check."""

    texts: list[str]
    labels: np.ndarray
    tokenizer: PreTrainedTokenizerBase
    args: QuantizationArguments
    metric: tuple[str, MetricFn]  # (name, fn(logits, labels) -> float), as `resolve_metric` returns it

    def logits(self, model: PreTrainedModel | Path, samples: int | None = None) -> np.ndarray:
        """Logits of a PyTorch model or ONNX file over the first `samples` evaluation sentences (default: all)."""
        runner = ClassifierRunner(model, self.tokenizer)
        texts = self.texts[:samples]
        return runner.logits(texts, batch_size=self.args.eval_batch_size, max_length=self.args.sequence_length)

    def scores(self, logits: np.ndarray) -> tuple[float, float]:
        """(metric value, accuracy) of the logits of the first `len(logits)` sentences."""
        labels = self.labels[: len(logits)]
        return self.metric[1](logits, labels), accuracy(logits, labels)

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


class Int8Search:
    """One search in the work folder `work` (export/, optimized_<level>/, candidates/), removed by the caller.

    Its state, filled in by the steps: `candidates` (built; each with its fixed-length `latency` and per-shape
    `shapes`, and once evaluated its `metric_value`, `accuracy` and `passed`), `failed` (not built), `notes`, `fp32`
    (the fastest FP32 graph's record: metric, latencies, file), `optimization` (FP32 median ms per optimisation level),
    `chosen` (the candidate saved as model_quantized.onnx, or None), the budgets' counters `evaluated` (trials) and
    `start` (the time budget counts from the first build), and `report`.
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
            if self._out_of_time():
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
            _flag_timing(candidate)
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
            elif self._out_of_budget():
                candidate["status"] = "not evaluated (trial or time budget)"
            else:
                self.evaluated += 1
                self._evaluate(candidate)
                candidate["status"] = "evaluated"
                if candidate["passed"]:
                    self.chosen = candidate

    def retry_sensitive_nodes(self) -> None:
        """When no candidate passed: keep the `sensitivity_top_k` nodes that matter most in FP32 in the fastest
        rejected candidate and try that configuration too."""
        rejected = [c for c in self.candidates if c.get("passed") is False and c.get("backend") != "openvino"]
        if not rejected:
            return
        excluded = self._most_sensitive_nodes(rejected[0])
        if not excluded:
            return
        retry = self._retry_without(rejected[0], excluded)
        self.candidates.append(retry)
        if retry["passed"] and retry["faster_than_fp32"]:
            self.chosen = retry

    def pick_per_shape(self) -> dict[str, dict[str, Any]]:
        """The fastest candidate within the criterion for each serving shape (FP32 when none passes and is faster); the
        saved INT8 model (`chosen`) unless the fastest is clearly faster (`SHAPE_PICK_MARGIN`).

        `evaluate_fastest_first` walks the candidates in fixed-length order; a candidate it skipped because a faster
        one passed may be the fastest at real length or in batches, so each shape walks its own order and evaluates
        (once, within the same trial and time budgets) what it needs.
        """
        picks: dict[str, dict[str, Any]] = {}
        for shape in self.fp32["shapes"]:
            pick = self._fastest_passing(shape)
            if self.chosen is not None and pick["name"] not in ("fp32", self.chosen["name"]):
                pick = self._unless_clearly_faster(shape, pick)
            picks[shape] = pick
        return picks

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
            self._save_shape_picks(staged, "onnxruntime")
            tokenizer.save_pretrained(staged)
        if any(p.get("backend") == "openvino" for p in self.report["per_shape"].values()):
            # optimum-intel's layout: openvino_model.xml/.bin beside config.json and the tokenizer.
            with atomic_path(output_dir / OPENVINO_SUBFOLDER) as staged:
                shutil.copytree(self.builder.export_dir, staged, ignore=shutil.ignore_patterns("*.onnx"))
                self._save_shape_picks(staged, "openvino")
                tokenizer.save_pretrained(staged)
        elif (output_dir / OPENVINO_SUBFOLDER).exists():
            shutil.rmtree(output_dir / OPENVINO_SUBFOLDER)  # an earlier search's pick, not this one's

    # --------------------------------------------------------------------------------------------------- helpers
    def _out_of_time(self) -> bool:
        return time.perf_counter() - self.start > self.args.time_budget_s

    def _out_of_budget(self) -> bool:
        """No evaluation left: `max_trials` made, or the time budget spent."""
        return self.evaluated >= self.args.max_trials or self._out_of_time()

    def _scores(self, candidate: dict[str, Any], samples: int | None = None) -> tuple[float, float]:
        """(metric value, accuracy) of a candidate's file over the first `samples` evaluation sentences."""
        return self.evaluation.scores(self.evaluation.logits(self.builder.cand_dir / candidate["file"], samples))

    def _evaluate(self, candidate: dict[str, Any]) -> None:
        value, acc = self._scores(candidate)
        candidate["accuracy"], candidate["metric_value"] = acc, value
        candidate["passed"] = self.args.within_criterion(self.fp32["metric_value"], value)

    def _build_openvino(self) -> None:
        reason = openvino_backend.unavailable_reason()
        if reason:
            self.notes.append(reason)
        elif self._out_of_time():
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
        _flag_timing(self.fp32, "fp32")
        if self.notes:
            self.report["notes"] = self.notes

    def _most_sensitive_nodes(self, base: dict[str, Any]) -> list[str]:
        """Measure, node by node, how much keeping it in FP32 in `base` recovers of the metric (on the first
        `sensitivity_samples` sentences); the `sensitivity_top_k` that recover most.

        A BERT-Base-class model has about a hundred quantizable nodes, each probe a quantization and an evaluation:
        the probing stops at the search's time budget and works with the nodes measured by then.
        """
        operators = self.args.operators_to_quantize or ["MatMul", "Gemm", "Attention"]
        nodes = quantizable_nodes(self.builder.source_graph(base), operators)
        seen = min(self.args.sensitivity_samples, len(self.evaluation.labels))
        base_value, _ = self._scores(base, seen)
        gains = {}
        for i, node in enumerate(nodes):
            if self._out_of_time():
                self.report["sensitivity_stopped"] = f"time budget: {i} of {len(nodes)} nodes probed"
                break
            probe = {**base, "name": f"{base['name']}_probe{i}", "exclude": base.get("exclude", []) + [node]}
            try:
                self.builder.build(probe)
            except (ValueError, RuntimeError):
                continue
            gains[node] = self._scores(probe, seen)[0] - base_value
            os.remove(self.builder.cand_dir / probe["file"])
        worst = sorted(gains, key=lambda n: -gains[n])[: self.args.sensitivity_top_k]
        self.report["sensitivity"] = {
            "base": base["name"],
            "base_subset_metric_value": base_value,
            "samples": seen,
            "gain_when_kept_fp32": gains,
            "excluded": worst,
        }
        return worst

    def _retry_without(self, base: dict[str, Any], excluded: list[str]) -> dict[str, Any]:
        """`base` with the `excluded` nodes kept in FP32: built, timed, evaluated."""
        name, exclude = f"{base['name']}_exclude{len(excluded)}", base.get("exclude", []) + excluded
        retry = {**base, "name": name, "exclude": exclude}
        for key in _MEASURED:
            retry.pop(key, None)
        self.builder.build(retry)
        # Timed against FP32 in the same interleaved group, for the same reason as the candidates.
        shaped = self.evaluation.latencies(
            {"retry": self.builder.cand_dir / retry["file"], "fp32": self.work / self.fp32["file"]}
        )
        retry["latency"], retry["shapes"] = shaped["retry"]["fixed_length"], shaped["retry"]
        self._evaluate(retry)
        _flag_timing(retry)
        fp32_ms = shaped["fp32"]["fixed_length"]["median_ms"]
        retry["faster_than_fp32"] = (not self.args.require_speedup) or retry["latency"]["median_ms"] < fp32_ms
        retry["status"] = "evaluated (after excluding the most sensitive nodes)"
        return retry

    def _fastest_passing(self, shape: str) -> dict[str, Any]:
        """The fastest candidate in `shape` within the criterion and (with `require_speedup`) faster than FP32,
        evaluating the ones not evaluated yet while the budgets last; FP32 when there is none."""
        fp32_ms = self.fp32["shapes"][shape]["median_ms"]
        timed = [c for c in self.candidates if shape in c.get("shapes", {})]
        for candidate in sorted(timed, key=lambda c: c["shapes"][shape]["median_ms"]):
            ms = candidate["shapes"][shape]["median_ms"]
            if self.args.require_speedup and ms >= fp32_ms:
                break
            if "passed" not in candidate:
                if self._out_of_budget():
                    break
                self.evaluated += 1
                value, acc = self._scores(candidate)
                candidate["metric_value"], candidate["accuracy"] = value, acc  # the report's order of these keys
                candidate["passed"] = self.args.within_criterion(self.fp32["metric_value"], value)
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
                    pick["static_shape"] = [1, self.args.sequence_length]  # measured compiled for that fixed shape
                return pick
        return {"name": "fp32", "backend": "onnxruntime", "median_ms": fp32_ms, "speedup_vs_fp32": 1.0}

    def _unless_clearly_faster(self, shape: str, pick: dict[str, Any]) -> dict[str, Any]:
        """The saved INT8 model in `shape`, with `pick` recorded as `fastest_other`, unless `pick` is clearly faster."""
        # Another file only for a real gain: the saved INT8 model serves this shape unless the other candidate is
        # clearly faster (measured: same-family candidates 5-7% apart, within one run's noise).
        fp32_ms = self.fp32["shapes"][shape]["median_ms"]
        chosen_ms = self.chosen["shapes"][shape]["median_ms"]
        chosen_not_faster = self.args.require_speedup and chosen_ms >= fp32_ms
        if pick["median_ms"] > SHAPE_PICK_MARGIN * chosen_ms and not chosen_not_faster:
            return {
                "name": self.chosen["name"],
                "backend": "onnxruntime",
                "median_ms": chosen_ms,
                "speedup_vs_fp32": fp32_ms / chosen_ms,
                "accuracy": self.chosen["accuracy"],
                "fastest_other": {"name": pick["name"], "median_ms": pick["median_ms"]},
            }
        return pick

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

    def _save_shape_picks(self, staged: Path, backend: str) -> None:
        """Copy each serving shape's pick of `backend` into the staged folder and record where (`file`) in the report.

        ONNX Runtime: FP32 is `model.onnx`, the search's chosen INT8 `model_quantized.onnx`, another shape's different
        pick `model_quantized_<name>.onnx`. OpenVINO: the first pick (shapes in order, real length first) is
        `openvino_model.xml` (optimum-intel's default name), another `openvino_model_<name>.xml`.
        """
        folder = ONNX_SUBFOLDER if backend == "onnxruntime" else OPENVINO_SUBFOLDER
        saved: dict[str, str] = {"fp32": FP32_FILE} if backend == "onnxruntime" else {}
        if backend == "onnxruntime" and self.chosen is not None:
            saved[self.chosen["name"]] = INT8_FILE
        trials = {t["name"]: t for t in self.report["trials"]}
        for pick in self.report["per_shape"].values():
            if pick.get("backend", "onnxruntime") != backend:
                continue
            name = pick["name"]
            if name not in saved:
                source = self.builder.cand_dir / trials[name]["file"]
                if backend == "openvino":
                    saved[name] = openvino_backend.OV_FILE if not saved else f"openvino_model_{name}.xml"
                    openvino_backend.save_model_folder(source, staged, saved[name])
                else:
                    saved[name] = f"model_quantized_{name}.onnx"
                    shutil.copy2(source, staged / saved[name])
            pick["file"] = f"{folder}/{saved[name]}"


def _flag_timing(record: dict[str, Any], name: str | None = None) -> None:
    """Record in a timed graph's `warnings` (and log) its figures that contradict each other (`inconsistent_shapes`),
    so the report never carries them silently."""
    flags = inconsistent_shapes(record.get("shapes") or {})
    if flags:
        record["warnings"] = flags
        for flag in flags:
            logger.warning(f"Inconsistent latency figures of {name or record.get('name')}: {flag}.")
