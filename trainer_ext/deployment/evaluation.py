"""What the INT8 search measures every graph with: `EvalSet` (the labelled sentences and the metric; a graph's logits,
scores and latencies) and `flag_timing` (a timed graph's figures that contradict each other, recorded and logged).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging

from trainer_ext.deployment.benchmark import ClassifierRunner, accuracy, inconsistent_shapes, serving_latency
from trainer_ext.deployment.quantization_args import MetricFn, QuantizationArguments

logger = logging.get_logger(__name__)


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


def flag_timing(record: dict[str, Any], name: str | None = None) -> None:
    """Record in a timed graph's `warnings` (and log) its figures that contradict each other (`inconsistent_shapes`),
    so the report never carries them silently."""
    flags = inconsistent_shapes(record.get("shapes") or {})
    if flags:
        record["warnings"] = flags
        for flag in flags:
            logger.warning(f"Inconsistent latency figures of {name or record.get('name')}: {flag}.")
