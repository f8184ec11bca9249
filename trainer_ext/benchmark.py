"""Latency and size measurements for text classifiers (PyTorch for now; ONNX Runtime joins with quantization)."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .students import count_parameters


@dataclass
class LatencyResult:
    """Batch-1 latency in milliseconds over `runs` timed calls after `warmup` untimed ones."""

    median_ms: float
    p90_ms: float
    mean_ms: float
    runs: int
    batch_size: int
    sequence_length: int
    num_threads: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fixed_length_inputs(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], sequence_length: int = 64, batch_size: int = 1
) -> dict[str, torch.Tensor]:
    """Real sentences padded or truncated to exactly `sequence_length` tokens (the reference's setting)."""
    return dict(
        tokenizer(
            texts[:batch_size],
            padding="max_length",
            truncation=True,
            max_length=sequence_length,
            return_tensors="pt",
        )
    )


@torch.inference_mode()
def measure_pytorch_latency(
    model: PreTrainedModel,
    inputs: dict[str, torch.Tensor],
    *,
    runs: int = 100,
    warmup: int = 10,
) -> LatencyResult:
    """Time `model(**inputs)` alone: tokenization is excluded, as in the reference study."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    for _ in range(warmup):
        model(**inputs)
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        model(**inputs)
        timings.append((time.perf_counter() - start) * 1000.0)
    model.train(was_training)
    input_ids = inputs["input_ids"]
    return LatencyResult(
        median_ms=statistics.median(timings),
        p90_ms=float(np.percentile(timings, 90)),
        mean_ms=statistics.fmean(timings),
        runs=runs,
        batch_size=int(input_ids.shape[0]),
        sequence_length=int(input_ids.shape[1]),
        num_threads=torch.get_num_threads(),
    )


def model_size_mb(model: torch.nn.Module) -> float:
    """In-memory size of parameters and buffers, in MB (1e6 bytes)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors) / 1e6


def describe_model(model: PreTrainedModel) -> dict[str, Any]:
    return {"parameters": count_parameters(model), "size_mb": round(model_size_mb(model), 2)}
