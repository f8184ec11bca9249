"""Latency, throughput and size measurements for text classifiers in PyTorch and ONNX Runtime."""

from __future__ import annotations

import os
import platform
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


# ------------------------------------------------------------------------------------------------- full profiles
def _timed(fn, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        timings.append((time.perf_counter() - start) * 1000.0)
    return timings


def _summary(timings: list[float]) -> dict[str, float]:
    return {"median_ms": statistics.median(timings), "p90_ms": float(np.percentile(timings, 90))}


def profile_model(
    run: Any,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    *,
    tensor_type: str,
    sequence_length: int = 64,
    runs: int = 100,
    warmup: int = 10,
    throughput_batch: int = 32,
    size_bytes: int | None = None,
) -> dict[str, Any]:
    """Latency and throughput of `run(**encoded_inputs)` (a PyTorch model or an ONNX Runtime session wrapper).

    - `latency_fixed`: batch 1 padded to `sequence_length` (the reference's setting), tokenization excluded;
    - `latency_real`: batch 1 at each sentence's own length (cycling through `texts`), tokenization excluded;
    - `latency_end_to_end`: tokenization included, real lengths;
    - `throughput`: sentences per second at batch `throughput_batch`, padded to the longest in the batch.
    """

    def encode(batch: list[str], fixed: bool) -> dict[str, Any]:
        enc = tokenizer(
            batch,
            padding="max_length" if fixed else True,
            truncation=True,
            max_length=sequence_length,
            return_tensors=tensor_type,
        )
        return {k: (v.astype(np.int64) if tensor_type == "np" else v) for k, v in enc.items()}

    fixed = encode(texts[:1], fixed=True)
    real = [encode([t], fixed=False) for t in texts[:runs]]
    cursor = {"i": 0}

    def next_real():
        cursor["i"] = (cursor["i"] + 1) % len(real)
        return real[cursor["i"]]

    def end_to_end():
        cursor["i"] = (cursor["i"] + 1) % len(texts)
        run(**encode([texts[cursor["i"]]], fixed=False))

    batches = [encode(texts[i : i + throughput_batch], fixed=False) for i in range(0, len(texts), throughput_batch)]
    batches = [b for b in batches if len(next(iter(b.values()))) == throughput_batch][:4] or batches[:1]
    start = time.perf_counter()
    for batch in batches:
        run(**batch)
    seconds = time.perf_counter() - start
    return {
        "latency_fixed": _summary(_timed(lambda: run(**fixed), runs, warmup)),
        "latency_real": _summary(_timed(lambda: run(**next_real()), runs, warmup)),
        "latency_end_to_end": _summary(_timed(end_to_end, runs, warmup)),
        "throughput_per_s": sum(len(next(iter(b.values()))) for b in batches) / seconds,
        "sequence_length": sequence_length,
        "num_threads": torch.get_num_threads(),
        "size_mb": None if size_bytes is None else size_bytes / 1e6,
    }


def profile_pytorch(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], **kwargs) -> dict:
    model.eval()

    @torch.inference_mode()
    def run(**inputs):
        return model(**inputs)

    size = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    return profile_model(run, tokenizer, texts, tensor_type="pt", size_bytes=size, **kwargs)


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


def profile_onnx(path: str, tokenizer: PreTrainedTokenizerBase, texts: list[str], **kwargs) -> dict:
    session = onnx_session(path)
    names = {i.name for i in session.get_inputs()}

    def run(**inputs):
        return session.run(None, {k: v for k, v in inputs.items() if k in names})

    result = profile_model(run, tokenizer, texts, tensor_type="np", size_bytes=os.path.getsize(path), **kwargs)
    result["intra_op_threads"] = session.get_session_options().intra_op_num_threads
    return result


# ------------------------------------------------------------------------------------------- one variant, measured
def classifier_logits(
    run: Any,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    *,
    tensor_type: str,
    batch_size: int,
    max_length: int,
) -> np.ndarray:
    """Logits of `run(**encoded)` over `texts`, in order, batch by batch (padded to the longest in each batch)."""
    outputs = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(
            texts[i : i + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors=tensor_type
        )
        enc = {k: (v.astype(np.int64) if tensor_type == "np" else v) for k, v in enc.items()}
        outputs.append(np.asarray(run(**enc)))
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), dtype=np.float32)


def measure_classifier(
    model: PreTrainedModel | str | os.PathLike,
    tokenizer: PreTrainedTokenizerBase,
    eval_dataset: Any = None,
    *,
    text_column: str = "text",
    label_column: str = "label",
    sequence_length: int = 64,
    max_length: int = 128,
    runs: int = 100,
    batch_size: int = 32,
    parameters: int | None = None,
) -> dict[str, Any]:
    """Accuracy on `eval_dataset` (when given), batch-1 latency at `sequence_length`, size and parameters.

    `model` is a PyTorch model or the path of an `.onnx` file (run with `onnx_session`). Every variant of a run is
    measured by this one function, on the same sentences and settings, so their rows compare.
    """
    texts = [str(t) for t in eval_dataset[text_column]] if eval_dataset is not None else ["a short example sentence"]
    fixed = tokenizer(texts[:1], padding="max_length", truncation=True, max_length=sequence_length)
    if isinstance(model, (str, os.PathLike)):
        session = onnx_session(model)
        names = {i.name for i in session.get_inputs()}

        def run(**inputs):
            return session.run(["logits"], {k: v for k, v in inputs.items() if k in names})[0]

        tensor_type, size_mb = "np", os.path.getsize(model) / 1e6
        feed = {k: np.asarray(v, dtype=np.int64) for k, v in fixed.items()}
        runtime = "ONNX Runtime " + ("INT8" if "quantized" in os.path.basename(str(model)) else "FP32")
    else:
        model.eval()

        @torch.inference_mode()
        def run(**inputs):
            device = next(model.parameters()).device
            return model(**{k: v.to(device) for k, v in inputs.items()}).logits.float().cpu().numpy()

        tensor_type, size_mb = "pt", model_size_mb(model)
        feed = {k: torch.tensor(v) for k, v in fixed.items()}
        runtime, parameters = "PyTorch FP32", count_parameters(model)
    timings = _timed(lambda: run(**feed), runs, warmup=10)
    result: dict[str, Any] = {
        "accuracy": None,
        "latency_ms": statistics.median(timings),
        "latency_p90_ms": float(np.percentile(timings, 90)),
        "size_mb": size_mb,
        "parameters": parameters,
        "runtime": runtime,
        "eval_examples": 0,
    }
    if eval_dataset is not None:
        logits = classifier_logits(
            run, tokenizer, texts, tensor_type=tensor_type, batch_size=batch_size, max_length=max_length
        )
        labels = np.asarray(list(eval_dataset[label_column]))
        result["accuracy"] = float((logits.argmax(-1) == labels).mean())
        result["eval_examples"] = len(labels)
    return result


def fixed_length_runner(
    model: PreTrainedModel | str | os.PathLike,
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    sequence_length: int = 64,
) -> Any:
    """A no-argument callable running one batch-1 forward of `text` padded to `sequence_length` (PyTorch or ONNX)."""
    enc = tokenizer([text], padding="max_length", truncation=True, max_length=sequence_length)
    if isinstance(model, (str, os.PathLike)):
        session = onnx_session(model)
        names = {i.name for i in session.get_inputs()}
        feed = {k: np.asarray(v, dtype=np.int64) for k, v in enc.items() if k in names}
        return lambda: session.run(None, feed)
    model.eval()
    inputs = {k: torch.tensor(v) for k, v in enc.items()}

    def run() -> Any:
        with torch.inference_mode():
            return model(**inputs)

    return run


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what `platform` knows. Latency ratios depend on it: measured
    here, the same models gave 8.4-10.7x on an AMD EPYC and 5.0x on an Intel Xeon (INT8 student vs FP32 teacher)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def interleaved_latency(
    runners: dict[str, Any], *, rounds: int = 10, runs_per_round: int = 20, warmup: int = 5, warmup_s: float = 0.25
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
    return {name: {**_summary(t), "runs": len(t)} for name, t in timings.items()}
