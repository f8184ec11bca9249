"""The selection stage (several `run.student` candidates): train candidates fastest first, each distilled on the
shared transfer set and quantized, until one's INT8 model meets the budget; the rules that decide (budget, pick) are
`pipeline.rules`. `candidates/selection.json` records every candidate and the one shipped, which the student stages
then train (the distillation stage copies it)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from datasets import Dataset
from transformers.utils import logging

from trainer_ext.deployment.benchmark import ClassifierRunner, serving_latency
from trainer_ext.deployment.quantization import REPORT_FILE
from trainer_ext.files import write_json
from trainer_ext.pipeline.rules import int8_figures, pick
from trainer_ext.pipeline.runner import PipelineError, Stage, dataclass_settings, stage_hash
from trainer_ext.pipeline.shared import CANDIDATES_DIR, SELECTION_FILE, candidate_dir, selection_record
from trainer_ext.pipeline.stages.distillation import distillation_inputs, distillation_train, save_distillation_data
from trainer_ext.pipeline.stages.quantization import quantization_args, quantize
from trainer_ext.pipeline.stages.students import initial_student, student_settings, train_student
from trainer_ext.pipeline.stages.teacher import load_teacher, teacher_eval_accuracy

if TYPE_CHECKING:
    from trainer_ext.pipeline.pipeline import Pipeline

logger = logging.get_logger(__name__)


def fastest_first(p: Pipeline, shapes: list[str], records: dict[str, dict[str, Any]]) -> list[str]:
    """The candidates that build, ordered by their measured batch-1 latency (PyTorch FP32, real length, before
    training: the shape sets the time, not the weights); one that fails to build is recorded as failed."""
    runners = {}
    for shape in shapes:
        try:
            model, tokenizer = initial_student(p, shape, candidate_dir(p, shape, init=True))
        except Exception as err:  # noqa: BLE001 - a candidate that cannot be built is recorded, the others run
            logger.warning(f"Candidate {shape} could not be built", exc_info=True)
            records[shape] |= {"status": "failed", "error": f"building it failed: {type(err).__name__}: {err}"}
            continue
        runners[shape] = ClassifierRunner(model.eval(), tokenizer)
        config = model.config
        records[shape] |= {
            "parameters": runners[shape].parameters,
            "layers": config.num_hidden_layers,
            "hidden_size": config.hidden_size,
            "initialised_from": str(getattr(config, "trainer_ext_student_init", config.name_or_path)),
        }
    texts = list(p.data[p.args.eval_split]["text"])
    # Timed on the main process alone (two processes timing at once would slow each other), and the order it measured
    # is every process's: ranks that ordered apart would train different candidates.
    timed = (
        serving_latency(runners, texts, runs=40, shapes=("real_length",), max_length=p.args.max_length)
        if runners and p.is_main
        else {}
    )
    timed = p.broadcast(timed)
    for shape, shapes_ms in timed.items():
        records[shape]["untrained_fp32_real_length_ms"] = shapes_ms["real_length"]["median_ms"]
    return sorted(timed, key=lambda shape: timed[shape]["real_length"]["median_ms"])


def train_candidate(p: Pipeline, shape: str, train: Dataset, teacher: tuple[Any, Any]) -> dict[str, Any]:
    """Distil one candidate into its folder, run the INT8 search there, and return what was measured."""
    folder = candidate_dir(p, shape)
    start = time.perf_counter()
    name = str(folder.relative_to(p.out))
    train_student(p, name, train, teacher, shape=shape, path=candidate_dir(p, shape, init=True))
    measured = {"train_seconds": time.perf_counter() - start}
    start = time.perf_counter()
    if not (folder / "config.json").exists():
        raise PipelineError(f"{folder} was not saved")
    quantize(p, folder, folder, quantization_args(p), calibrate=True)
    measured["quantization_seconds"] = time.perf_counter() - start
    # The search ran on the main process; its figures (and the main process's timings) are every process's.
    figures = int8_figures(json.loads((folder / REPORT_FILE).read_text())) if p.is_main else None
    return p.broadcast(measured | figures if p.is_main else None)


def _measured_candidate(p: Pipeline, shape: str, train: Dataset, teacher: tuple[Any, Any]) -> dict[str, Any] | str:
    """A candidate's figures: reused when it was trained and measured with these settings on these inputs (keyed
    like a stage, so a resumed selection, or one with more candidates or another budget, reuses it), else trained and
    measured now. A failure is returned as its message, the same on every process."""
    folder = candidate_dir(p, shape)
    inputs = {stage: p.keys[stage] for stage in distillation_inputs(p)}
    key = stage_hash([student_settings(p, shape), dataclass_settings(quantization_args(p)), inputs])
    saved_file = folder.parent / f"{folder.name}.json"
    saved = json.loads(saved_file.read_text()) if saved_file.exists() else {}
    if saved.get("key") == key and (folder / "config.json").exists():
        p.progress(f"[selection] {shape}: trained and measured in an earlier run, reused")
        return saved["measured"]
    p.progress(f"[selection] {shape}: distilling, then the INT8 search")
    error = None
    try:
        measured = train_candidate(p, shape, train, teacher)
    except Exception as err:  # noqa: BLE001 - a candidate that fails is recorded, the others still run
        logger.warning(f"Candidate {shape} failed", exc_info=True)
        error = f"{type(err).__name__}: {err}"
    # Every process records the same status: failed when it failed on any of them.
    error = next((e for e in p.gather(error) if e is not None), None)
    if error is not None:
        return error
    if p.is_main:
        write_json(saved_file, {"key": key, "measured": measured})
    return measured


def stage_selection(p: Pipeline) -> None:
    """Train candidates fastest first until one's INT8 model meets the budget; record them all and the one shipped."""
    teacher = load_teacher(p)
    teacher_accuracy = teacher_eval_accuracy(p, *teacher)
    train = distillation_train(p, *teacher)
    save_distillation_data(p, "transfer" if p.args.augment else "original", train)
    records: dict[str, dict[str, Any]] = {shape: {"student": shape} for shape in p.args.student}
    order = fastest_first(p, p.args.student, records)
    chosen = too_slow = None
    for shape in order:
        record = records[shape]
        if chosen is not None:
            record["status"] = f"not trained: {chosen}, a faster candidate, met the budget"
            continue
        if too_slow is not None:  # candidates are in order of latency: this one would be over the budget too
            record["status"] = f"not trained: slower than {too_slow}, which is already over the latency budget"
            continue
        measured = _measured_candidate(p, shape, train, teacher)
        if isinstance(measured, str):
            record |= {"status": "failed", "error": measured}
            continue
        record |= measured
        late, short = p.budget.shortfall(record, teacher_accuracy)
        record |= {"status": "trained", "meets_budget": late == 0 and short == 0}
        record |= {"ms_over_budget": late, "points_over_budget": short}
        p.progress(
            f"[selection] {shape}: INT8 {100 * record['int8_accuracy']:.2f}% on {p.args.eval_split} (teacher "
            f"{100 * teacher_accuracy:.2f}%), {record['int8_real_length_ms']:.2f} ms; "
            + ("meets the budget" if record["meets_budget"] else "outside the budget")
        )
        if record["meets_budget"]:
            chosen = shape
        elif late > 0:
            too_slow = shape
    ordered = [records[s] for s in order] + [r for s, r in records.items() if s not in order]
    _ship(p, ordered, teacher_accuracy)


def _ship(p: Pipeline, ordered: list[dict[str, Any]], teacher_accuracy: float) -> None:
    """Pick the candidate to ship (`rules.pick`) and write `candidates/selection.json`."""
    shipped, met, reason = pick(ordered, p.budget, teacher_accuracy)
    if shipped is None:
        failures = "; ".join(f"{r['student']}: {r.get('error')}" for r in ordered)
        raise PipelineError(f"No candidate student could be trained ({failures}). Fix or remove them in run.student.")
    p.shipped_shape = shipped
    if p.is_main:
        selection = {
            "budget": asdict(p.budget),
            "teacher_accuracy": teacher_accuracy,
            "split": p.args.eval_split,
            "candidates": ordered,
            "shipped": shipped,
            "met": met,
            "reason": reason,
        }
        write_json(p.out / CANDIDATES_DIR / SELECTION_FILE, selection)
    p.progress(f"[selection] shipping {shipped}: {reason}")


def reload_selection(p: Pipeline) -> None:
    """A reused selection stage's shipped shape, which the student stages train."""
    p.shipped_shape = selection_record(p)["shipped"]


STAGE = Stage(
    "selection",
    stage_selection,
    distillation_inputs,
    skip=lambda p: None if p.selecting else "one student",
    reload=reload_selection,
)
