"""TrainerCallbacks that run compression steps at the end of training, on the main process only."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.utils import logging

from trainer_ext.data.transfer.augmentation import AUGMENTATION_DIR, read_stats
from trainer_ext.deployment.benchmark import ClassifierRunner
from trainer_ext.deployment.quantization import (
    INT8_FILE,
    ONNX_SUBFOLDER,
    REPORT_FILE,
    QuantizationArguments,
    check_eval_dataset,
    quantize_model,
)
from trainer_ext.reporting.cards import DISTILLATION_SETTINGS, CardArguments, write_model_card
from trainer_ext.reporting.results import INT8_VARIANT, Results, measure

logger = logging.get_logger(__name__)


def _model_and_tokenizer(state: TrainerState, kwargs: dict[str, Any], who: str) -> tuple[Any, Any] | None:
    """The trainer's model and tokenizer, on the main process only (None elsewhere, or with a warning if missing)."""
    if not state.is_world_process_zero:
        return None
    model, tokenizer = kwargs.get("model"), kwargs.get("processing_class")
    if model is None or tokenizer is None:
        logger.warning(f"{who} needs the trainer's model and tokenizer (processing_class); skipped.")
        return None
    return model, tokenizer


class QuantizationCallback(TrainerCallback):
    """At the end of training, export the final (or, with `load_best_model_at_end`, the best) model to ONNX and run
    the accuracy-aware INT8 search; writes `<output_dir>/onnx/` and `compression_report.json`.

    ```python
    trainer = DistillationTrainer(..., callbacks=[QuantizationCallback(eval_dataset=validation_text,
                                                                       calibration_dataset=train_text)])
    ```

    `eval_dataset` needs raw `text` and `label` columns (the search tokenizes with the trainer's tokenizer).
    """

    def __init__(
        self,
        eval_dataset: Any,
        args: QuantizationArguments | None = None,
        calibration_dataset: Any = None,
        output_dir: str | None = None,
        compute_metrics: Any = None,
    ) -> None:
        check_eval_dataset(eval_dataset)  # fail at construction, not after hours of training
        self.eval_dataset = eval_dataset
        self.quantization_args = args or QuantizationArguments()
        self.calibration_dataset = calibration_dataset
        self.output_dir = output_dir
        # A Trainer-style compute_metrics; the metric named by `args.metric_key` is kept within the criterion.
        self.compute_metrics = compute_metrics
        self.report: dict[str, Any] | None = None

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        found = _model_and_tokenizer(state, kwargs, "QuantizationCallback")
        if found is None:
            return
        model, tokenizer = found
        was_training = model.training
        self.report = quantize_model(
            model,
            tokenizer,
            self.eval_dataset,
            self.output_dir or args.output_dir,
            self.quantization_args,
            calibration_dataset=self.calibration_dataset,
            compute_metrics=self.compute_metrics,
        )
        model.train(was_training)
        chosen = self.report["chosen"]
        logger.warning(f"Quantization kept {chosen['name']} ({chosen.get('reason', '')}).")


class ModelCardCallback(TrainerCallback):
    """At the end of training (after `QuantizationCallback`, so list it second), measure every variant on the same
    data and write a Hub-ready `README.md`, `accuracy_vs_latency.png` and `results.json` into the output directory.

    ```python
    callbacks = [QuantizationCallback(eval_dataset=validation_text), ModelCardCallback(eval_dataset=test_text,
                 teacher_model=teacher, license="apache-2.0", dataset_id="rotten_tomatoes", dataset_split="test")]
    trainer = DistillationTrainer(..., teacher_model=teacher, callbacks=callbacks)
    trainer.train()
    trainer.push_to_hub()  # DistillationTrainer keeps this card; a plain Trainer would replace README.md with its own
    ```

    Measured here (`results.measure`): the student (PyTorch FP32), the teacher (PyTorch FP32) when given, and
    `onnx/model_quantized.onnx` when quantization kept one; each gets accuracy on `eval_dataset` (raw `text` and
    `label`; without it, latency and size only) and batch-1 latency at length 64, timed in alternation. Augmentation
    statistics are read from `<output_dir>/augmentation` (where `DistillationTrainer(augmentation_args=...)` writes
    them by default). `card_fields` are `CardArguments` fields, passed to `write_model_card`.
    """

    def __init__(
        self,
        eval_dataset: Any = None,
        teacher_model: Any = None,
        teacher_tokenizer: Any = None,
        latency_runs: int = 100,
        sequence_length: int = 64,
        **card_fields: Any,
    ) -> None:
        if eval_dataset is not None:
            check_eval_dataset(eval_dataset)
        valid = {f.name for f in fields(CardArguments)}
        if set(card_fields) - valid:
            raise TypeError(f"Unknown model card field(s) {sorted(set(card_fields) - valid)}; valid: {sorted(valid)}.")
        self.eval_dataset = eval_dataset
        self.teacher_model = teacher_model
        self.teacher_tokenizer = teacher_tokenizer
        self.latency_runs = latency_runs
        self.sequence_length = sequence_length
        self.card_fields = card_fields
        self.results: Results | None = None

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        found = _model_and_tokenizer(state, kwargs, "ModelCardCallback")
        if found is None:
            return
        model, tokenizer = found
        out = Path(args.output_dir)
        was_training = model.training
        student = "student_distilled" if self.teacher_model is not None else "student"
        models: dict[str, Any] = {
            "teacher": ClassifierRunner(self.teacher_model, self.teacher_tokenizer or tokenizer)
            if self.teacher_model is not None
            else "no teacher was given to the callback",
            student: ClassifierRunner(model, tokenizer),
        }
        report_path = out / REPORT_FILE
        report = json.loads(report_path.read_text()) if report_path.exists() else None
        int8 = out / ONNX_SUBFOLDER / INT8_FILE
        if int8.exists():
            models[INT8_VARIANT] = ClassifierRunner(int8, tokenizer, parameters=models[student].parameters)
        elif report is not None:
            models[INT8_VARIANT] = report["chosen"].get("reason", "quantization kept FP32")
        else:
            models[INT8_VARIANT] = "quantization was not run (add QuantizationCallback before this one)"
        variants, latency = measure(
            models, self.eval_dataset, runs=self.latency_runs, sequence_length=self.sequence_length
        )
        model.train(was_training)
        keys = DISTILLATION_SETTINGS + ("hidden_distillation_weight", "pooled_distillation_weight", "seed")
        self.results = Results(
            variants=variants,
            model_variant=student,
            evaluation={"examples": len(self.eval_dataset) if self.eval_dataset is not None else 0},
            latency=latency,
            teacher=getattr(self.teacher_model.config, "_name_or_path", None) or type(self.teacher_model).__name__
            if self.teacher_model is not None
            else None,
            distillation={k: getattr(args, k) for k in keys if hasattr(args, k)},
            augmentation=read_stats(out / AUGMENTATION_DIR),
            quantization=report,
        )
        self.results.save(out)
        write_model_card(out, self.results, **self.card_fields)
        logger.warning(f"Wrote the model card {out}/README.md.")
