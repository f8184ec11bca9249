"""TrainerCallbacks that run compression steps at the end of training, on the main process only."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.utils import logging

from .quantization import QuantizationArguments, quantize_model

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
        from .quantization import _check_eval_dataset

        _check_eval_dataset(eval_dataset, "text", "label")  # fail at construction, not after hours of training
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
                 license="apache-2.0", dataset_id="rotten_tomatoes", dataset_split="test")]
    trainer = DistillationTrainer(..., teacher_model=teacher, callbacks=callbacks)
    trainer.train()
    trainer.push_to_hub()  # DistillationTrainer keeps this card; a plain Trainer would replace README.md with its own
    ```

    Measured here: the student (PyTorch FP32) and, when given or known to the DistillationTrainer, the teacher
    (PyTorch FP32), plus `onnx/model_quantized.onnx` when quantization kept one; each gets accuracy on
    `eval_dataset` (raw `text` and `label`; without it, latency and size only) and batch-1 latency at length 64.
    `card_fields` go to `write_model_card` (model_name, repo_id, license, language, dataset_id, dataset_name,
    dataset_config, dataset_split, base_model, base_model_relation, tags, limitations).
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
        from .cards import write_model_card
        from .quantization import _check_eval_dataset

        if eval_dataset is not None:
            _check_eval_dataset(eval_dataset, "text", "label")
        unknown = set(card_fields) - set(write_model_card.__kwdefaults__)
        if unknown:
            raise TypeError(
                f"Unknown model card field(s) {sorted(unknown)}; valid: {sorted(write_model_card.__kwdefaults__)}."
            )
        self.eval_dataset = eval_dataset
        self.teacher_model = teacher_model
        self.teacher_tokenizer = teacher_tokenizer
        self.latency_runs = latency_runs
        self.sequence_length = sequence_length
        self.card_fields = card_fields
        self.results: dict[str, Any] | None = None
        # Set by DistillationTrainer: returns its augmentation statistics once train() has produced them.
        self.augmentation_stats_getter: Any = None

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        found = _model_and_tokenizer(state, kwargs, "ModelCardCallback")
        if found is None:
            return
        model, tokenizer = found
        self.results = collect_results(
            args.output_dir,
            model,
            tokenizer,
            self.eval_dataset,
            teacher_model=self.teacher_model,
            teacher_tokenizer=self.teacher_tokenizer,
            training_args=args,
            latency_runs=self.latency_runs,
            sequence_length=self.sequence_length,
            augmentation=self.augmentation_stats_getter() if self.augmentation_stats_getter else None,
        )
        from .cards import write_model_card

        write_model_card(args.output_dir, self.results, **self.card_fields)
        logger.warning(f"Wrote the model card {args.output_dir}/README.md.")


def collect_results(
    output_dir: str,
    model: Any,
    tokenizer: Any,
    eval_dataset: Any,
    *,
    teacher_model: Any = None,
    teacher_tokenizer: Any = None,
    training_args: TrainingArguments | None = None,
    latency_runs: int = 100,
    sequence_length: int = 64,
    augmentation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Measure the student, teacher and INT8 file of one output directory and save `results.json` there."""
    import json
    import os
    from pathlib import Path

    import torch

    from .benchmark import cpu_name, measure_classifier
    from .cards import INT8_VARIANT, RESULTS_FILE
    from .quantization import INT8_FILE, ONNX_SUBFOLDER, REPORT_FILE

    out = Path(output_dir)
    measure = {"eval_dataset": eval_dataset, "runs": latency_runs, "sequence_length": sequence_length}
    was_training = model.training
    variants: dict[str, Any] = {}
    if teacher_model is not None:
        variants["teacher"] = measure_classifier(teacher_model, teacher_tokenizer or tokenizer, **measure)
    else:
        variants["teacher"] = {"note": "no teacher was given to the callback"}
    student = measure_classifier(model, tokenizer, **measure)
    model.train(was_training)
    variants["student_distilled" if teacher_model is not None else "student"] = student
    report = json.loads((out / REPORT_FILE).read_text()) if (out / REPORT_FILE).exists() else None
    int8 = out / ONNX_SUBFOLDER / INT8_FILE
    if int8.exists():
        variants[INT8_VARIANT] = measure_classifier(int8, tokenizer, parameters=student["parameters"], **measure)
    elif report is not None:
        variants[INT8_VARIANT] = {"note": report["chosen"].get("reason", "quantization kept FP32")}
    else:
        variants[INT8_VARIANT] = {"note": "quantization was not run (add QuantizationCallback before this one)"}
    results: dict[str, Any] = {
        "variants": variants,
        "model_variant": "student_distilled" if teacher_model is not None else "student",
        "metric": "accuracy",
        "evaluation": {"examples": len(eval_dataset) if eval_dataset is not None else 0},
        "latency": {
            "batch_size": 1,
            "sequence_length": sequence_length,
            "runs": latency_runs,
            "threads": torch.get_num_threads(),
            "cpu": cpu_name(),
        },
        "quantization": report,
    }
    if teacher_model is not None:
        results["teacher"] = getattr(teacher_model.config, "_name_or_path", None) or type(teacher_model).__name__
    if training_args is not None:
        keys = (
            "distillation_loss",
            "temperature",
            "distillation_weight",
            "hidden_distillation_weight",
            "num_train_epochs",
            "learning_rate",
            "per_device_train_batch_size",
            "seed",
        )
        results["distillation"] = {k: getattr(training_args, k) for k in keys if hasattr(training_args, k)}
    if augmentation:
        results["augmentation"] = augmentation
    tmp = out / (RESULTS_FILE + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str))
    os.replace(tmp, out / RESULTS_FILE)
    return results
