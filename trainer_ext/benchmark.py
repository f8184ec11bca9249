"""Accuracy, latency and size of text classifiers, in PyTorch or ONNX Runtime, measured one way for every variant."""

from __future__ import annotations

import inspect
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .students import count_parameters


def onnx_session(path: str | os.PathLike, num_threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session with the same intra-op thread count as PyTorch (`torch.get_num_threads()`).

    ONNX Runtime's own default (0) picks its thread pool from the physical core count; on this 2-vCPU machine that
    measured 20-30% slower than an explicit 2 for both BERT-Base and the student, so every ONNX figure here uses an
    explicit count, recorded next to it, and PyTorch and ONNX rows run on the same number of threads.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = num_threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class ClassifierRunner:
    """One text classifier to measure: a PyTorch model or an ONNX file run by an ONNX Runtime session (`onnx_session`).

    Calls take tokenizer outputs, keep the inputs the model or session accepts, and return the logits as a NumPy array.
    """

    def __init__(
        self,
        model: PreTrainedModel | str | os.PathLike,
        tokenizer: PreTrainedTokenizerBase,
        *,
        parameters: int | None = None,
        num_threads: int | None = None,
    ) -> None:
        self.tokenizer, self.parameters = tokenizer, parameters
        if isinstance(model, (str, os.PathLike)):
            self.path, self.model = Path(model), None
            self.session = onnx_session(model, num_threads)
            self.input_names = {i.name for i in self.session.get_inputs()}
            self.size_mb = os.path.getsize(model) / 1e6
            self.runtime = "ONNX Runtime " + ("INT8" if "quantized" in self.path.name else "FP32")
        else:
            self.path, self.model, self.session = None, model.eval(), None
            self.input_names = set(inspect.signature(model.forward).parameters)
            self.device = next(model.parameters()).device
            # In-memory size of parameters and buffers, in MB (1e6 bytes).
            self.size_mb = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]) / 1e6
            self.runtime, self.parameters = "PyTorch FP32", count_parameters(model)

    def _feed(self, inputs: dict[str, Any]) -> dict[str, Any]:
        if self.session is not None:
            return {k: np.asarray(v, dtype=np.int64) for k, v in inputs.items() if k in self.input_names}
        return {k: torch.as_tensor(v).to(self.device) for k, v in inputs.items() if k in self.input_names}

    def _forward(self, feed: dict[str, Any]) -> np.ndarray:
        if self.session is not None:
            return self.session.run(["logits"], feed)[0]
        with torch.inference_mode():
            return self.model(**feed).logits.float().cpu().numpy()

    def __call__(self, inputs: dict[str, np.ndarray | torch.Tensor]) -> np.ndarray:
        return self._forward(self._feed(inputs))

    def encode(self, texts: list[str], *, max_length: int, padding: bool | str = True) -> dict[str, Any]:
        """Tokenized `texts` as this runner's inputs (int64 NumPy arrays for ONNX Runtime, tensors for PyTorch)."""
        return self._feed(
            self.tokenizer(
                list(texts),
                padding=padding,
                truncation=True,
                max_length=max_length,
                return_tensors="np" if self.session is not None else "pt",
            )
        )

    def logits(self, texts: list[str], *, batch_size: int = 32, max_length: int = 128) -> np.ndarray:
        """Logits over `texts`, in order, batch by batch (padded to the longest in each batch)."""
        outputs = [
            self._forward(self.encode(texts[i : i + batch_size], max_length=max_length))
            for i in range(0, len(texts), batch_size)
        ]
        return np.concatenate(outputs) if outputs else np.zeros((0, 0), dtype=np.float32)

    def fixed_length_call(self, text: str, sequence_length: int = 64) -> Callable[[], np.ndarray]:
        """A no-argument callable running one batch-1 forward of `text` padded to `sequence_length` (the reference's
        setting); tokenization is done once, outside the timed call."""
        feed = self.encode([text], max_length=sequence_length, padding="max_length")
        return lambda: self._forward(feed)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose argmax is the label."""
    return float((np.asarray(logits).argmax(-1) == np.asarray(labels)).mean())


def cpu_name(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what `platform` knows. Latency ratios depend on it: measured
    here, the same models gave 8.4-10.7x on an AMD EPYC and 5.0x on an Intel Xeon (INT8 student vs FP32 teacher)."""
    try:
        with open(cpuinfo, encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def interleaved_latency(
    runners: dict[str, Callable[[], Any]],
    *,
    rounds: int = 10,
    runs_per_round: int = 20,
    warmup: int = 5,
    warmup_s: float = 0.25,
) -> dict[str, dict[str, float]]:
    """Median / p90 latency (ms) of several models measured in alternation, round by round.

    On a shared machine the speed of the CPU drifts over minutes (measured here: the same INT8 student at 1.4 ms in
    one minute and 2.2 ms a few minutes later). Timing model A for a minute and then model B puts that drift into
    the A/B ratio; alternating short bursts exposes every model to the same conditions, so the ratios hold. Each
    burst starts with untimed runs (at least `warmup` runs and `warmup_s` seconds): the previous model's thread
    pool keeps spinning for a while after its last call (ONNX Runtime and OpenMP both spin-wait) and its weights
    have evicted the next model's from the CPU caches. Measured: the INT8 student's p90 was 5.4 ms after 5 warm-up
    runs and 1.5 ms after 50 (median 1.4 ms alone). Steady-state latency is what a serving process with one model
    sees, and what the reference measured.
    """
    timings: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            start, done = time.perf_counter(), 0
            while done < warmup or time.perf_counter() - start < warmup_s:
                run()
                done += 1
            for _ in range(runs_per_round):
                start = time.perf_counter()
                run()
                timings[name].append((time.perf_counter() - start) * 1000.0)
    return {
        name: {"median_ms": statistics.median(t), "p90_ms": float(np.percentile(t, 90)), "runs": len(t)}
        for name, t in timings.items()
    }


def fixed_length_latency(
    runners: dict[str, ClassifierRunner], text: str, *, sequence_length: int = 64, runs: int = 100
) -> dict[str, dict[str, float]]:
    """`interleaved_latency` of each runner's `fixed_length_call(text, sequence_length)`: `runs` timed calls each, in
    rounds of up to 20. Short runs (under 50 calls, as in tests) skip the time-based warm-up."""
    rounds, per_round = latency_rounds(runs)
    calls = {name: runner.fixed_length_call(text, sequence_length) for name, runner in runners.items()}
    warmup_s = 0.25 if runs >= 50 else 0.0
    return interleaved_latency(calls, rounds=rounds, runs_per_round=per_round, warmup_s=warmup_s)


def latency_rounds(runs: int) -> tuple[int, int]:
    """`(rounds, runs per round)` for about `runs` timed calls: rounds of up to 20 (the timed count is their product)."""
    per_round = min(20, runs)
    return max(1, runs // per_round), per_round


def measure_variants(
    models: dict[str, ClassifierRunner],
    eval_dataset: Any = None,
    *,
    text_column: str = "text",
    label_column: str = "label",
    sequence_length: int = 64,
    runs: int = 100,
    batch_size: int = 32,
    max_length: int = 128,
) -> dict[str, dict[str, Any]]:
    """Accuracy on `eval_dataset` (when given), batch-1 latency at `sequence_length`, size and parameters of each model.

    Every variant of a run is measured here, on the same sentences and settings, latency timed in alternation
    (`fixed_length_latency`), so their rows compare.
    """
    texts = [str(t) for t in eval_dataset[text_column]] if eval_dataset is not None else ["a short example sentence"]
    labels = np.asarray(list(eval_dataset[label_column])) if eval_dataset is not None else None
    latency = fixed_length_latency(models, texts[0], sequence_length=sequence_length, runs=runs)
    return {
        name: {
            "accuracy": None
            if labels is None
            else accuracy(runner.logits(texts, batch_size=batch_size, max_length=max_length), labels),
            "latency_ms": latency[name]["median_ms"],
            "latency_p90_ms": latency[name]["p90_ms"],
            "size_mb": runner.size_mb,
            "parameters": runner.parameters,
            "runtime": runner.runtime,
            "eval_examples": 0 if labels is None else len(labels),
        }
        for name, runner in models.items()
    }


def measure_classifier(
    model: PreTrainedModel | str | os.PathLike,
    tokenizer: PreTrainedTokenizerBase,
    eval_dataset: Any = None,
    *,
    parameters: int | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """`measure_variants` of one model: a PyTorch model or the path of an `.onnx` file."""
    runner = ClassifierRunner(model, tokenizer, parameters=parameters)
    return measure_variants({"model": runner}, eval_dataset, **kwargs)["model"]
