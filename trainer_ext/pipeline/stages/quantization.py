"""The quantization stages: the accuracy-aware INT8 search (`deployment.quantization.quantize_model`) on the shipped
student (quantization) and, as the reference's second row, on the teacher (teacher_quantization, dynamic only)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import AutoTokenizer

from trainer_ext.deployment.quantization import REPORT_FILE, QuantizationArguments, quantize_model
from trainer_ext.pipeline.runner import PipelineError, Stage

if TYPE_CHECKING:
    from trainer_ext.pipeline.pipeline import Pipeline


def quantization_args(p: Pipeline) -> QuantizationArguments:
    """The recipe's INT8 search at the run's one sequence length (`run.max_length`)."""
    return replace(p.recipe.quantization.whole("sequence_length"), sequence_length=p.args.max_length)


def teacher_quantization_args(p: Pipeline) -> QuantizationArguments:
    # The reference row "teacher, ONNX Runtime INT8" was dynamic quantization; the same search, dynamic only, and
    # without the node-by-node repair: a reference row, and for a 12-layer teacher about a hundred probes.
    return replace(
        quantization_args(p),
        approach="dynamic",
        sensitivity_top_k=0,
        serving_shapes=["fixed_length"],
        backends=["onnxruntime"],
    )


def quantize(p: Pipeline, source: Path, output: Path, args: Any, calibrate: bool = False) -> None:
    """The accuracy-aware INT8 search on a finished stage's model (`source`, which exists), on the main process
    only; every process fails alike when it fails."""
    failed = None
    if p.is_main:
        tokenizer = AutoTokenizer.from_pretrained(source)
        eval_data = p.data[p.args.eval_split]
        calibration = p.data["train"] if calibrate else None
        try:
            quantize_model(str(source), tokenizer, eval_data, output, args, calibration_dataset=calibration)
        except Exception as err:  # noqa: BLE001 - re-raised below, on every process alike
            failed = err
    # The other processes wait here for the report, and fail with the main process when it failed.
    error = p.broadcast(None if failed is None else f"{type(failed).__name__}: {failed}")
    if failed is not None:
        raise failed
    if error is not None:
        raise PipelineError(f"The INT8 search of {source} failed on the main process: {error}")


def stage_quantization(p: Pipeline) -> None:
    path = p.out / p.shipped
    if p.selecting and p.shipped == "student_distilled" and (path / REPORT_FILE).exists():
        # The selection stage ran this search on this model with these settings (its key holds them).
        p.progress(f"[quantization] the selection stage's INT8 search of {p.shape} is reused")
        return
    if not (path / "config.json").exists():
        raise PipelineError(f"There is no trained student in {path} to quantize; run the distillation stage.")
    quantize(p, path, path, quantization_args(p), calibrate=True)


def stage_teacher_quantization(p: Pipeline) -> None:
    """The teacher as an INT8 ONNX model too (the reference's second row), in `teacher_int8/`."""
    path = p.out / "teacher"
    if not (path / "config.json").exists():
        raise p.missing(str(path), "teacher")
    quantize(p, path, p.out / "teacher_int8", teacher_quantization_args(p))


STAGE = Stage("quantization", stage_quantization, ("data", "guard"))
TEACHER = Stage("teacher_quantization", stage_teacher_quantization, ("data", "teacher"))
