"""TrainerCallbacks that run compression steps at the end of training, on the main process only."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.utils import logging

from .quantization import QuantizationArguments, quantize_model

logger = logging.get_logger(__name__)


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
        if not state.is_world_process_zero:
            return
        model, tokenizer = kwargs.get("model"), kwargs.get("processing_class")
        if model is None or tokenizer is None:
            logger.warning("QuantizationCallback needs the trainer's model and tokenizer (processing_class); skipped.")
            return
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
