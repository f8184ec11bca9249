"""Accuracy, latency and size of text classifiers, in PyTorch or ONNX Runtime, measured one way for every variant."""

from __future__ import annotations

import inspect
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging

from trainer_ext.training.students import count_parameters

logger = logging.get_logger(__name__)


def onnx_session_settings(num_threads: int | None = None) -> dict[str, Any]:
    """The ONNX Runtime settings every session here uses, as recorded beside its figures.

    Set explicitly rather than left to defaults that change between releases: intra-op threads equal to PyTorch's
    (ONNX Runtime's own default, 0, picks the physical core count; on the 2-vCPU machines that measured 20-30% slower
    than an explicit 2), with the intra-op pool spinning between calls (lower batch-1 latency: 1.93 ms against
    2.81 ms with spinning off, issue 13), one inter-op thread (a BERT graph is one chain of operators) and every
    graph optimization.
    """
    import onnxruntime

    return {
        "version": onnxruntime.__version__,
        "intra_op_num_threads": num_threads or torch.get_num_threads(),
        "inter_op_num_threads": 1,
        "intra_op_allow_spinning": True,
        "graph_optimization_level": "ORT_ENABLE_ALL",
    }


def onnx_session(path: str | os.PathLike, num_threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session with `onnx_session_settings` (threads as PyTorch's, spinning on, inter-op 1)."""
    import onnxruntime

    settings = onnx_session_settings(num_threads)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = settings["intra_op_num_threads"]
    options.inter_op_num_threads = settings["inter_op_num_threads"]
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class SentenceCalls:
    """Timed calls over a fixed list of sentences, addressed by position: `calls(i)` runs sentence `i % len(calls)`.

    An iterator advanced by every call would shift each variant's timed sentences by the number of warm-up calls it
    happened to make (a time-based warm-up runs a fast model more often than a slow one), so variants of one group
    were timed on different sentences. `interleaved_latency` instead passes every call of a group the same positions.
    """

    def __init__(self, calls: Sequence[Callable[[], Any]]) -> None:
        if not calls:
            raise ValueError("SentenceCalls needs at least one sentence's call.")
        self.calls = list(calls)

    def __len__(self) -> int:
        return len(self.calls)

    def __call__(self, index: int) -> Any:
        return self.calls[index % len(self.calls)]()


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
        self.num_threads = num_threads or torch.get_num_threads()
        if isinstance(model, (str, os.PathLike)) and Path(model).suffix == ".xml":
            from trainer_ext.deployment.openvino_backend import OpenVINOSession, version

            self.path, self.model = Path(model), None
            self.session = OpenVINOSession(model, self.num_threads)
            self.input_names = set(self.session.names)
            self.size_mb = (self.path.stat().st_size + self.path.with_suffix(".bin").stat().st_size) / 1e6
            precision = "INT8" if self.session.quantized else self.session.inference_precision.upper()
            self.runtime = f"OpenVINO {precision}"
            self.runtime_version = f"openvino {version()}"
        elif isinstance(model, (str, os.PathLike)):
            self.path, self.model = Path(model), None
            self.session = onnx_session(model, num_threads)
            self.input_names = {i.name for i in self.session.get_inputs()}
            self.size_mb = os.path.getsize(model) / 1e6
            self.runtime = "ONNX Runtime " + ("INT8" if "quantized" in self.path.name else "FP32")
            self.runtime_version = f"onnxruntime {onnx_session_settings()['version']}"
        else:
            self.path, self.model, self.session = None, model.eval(), None
            self.input_names = set(inspect.signature(model.forward).parameters)
            self.device = next(model.parameters()).device
            # In-memory size of parameters and buffers, in MB (1e6 bytes).
            self.size_mb = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]) / 1e6
            self.runtime, self.parameters = "PyTorch FP32", count_parameters(model)
            self.runtime_version = f"torch {torch.__version__}"

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
        if self.path is not None and self.path.suffix == ".xml":
            # OpenVINO serves a fixed shape fastest from a model compiled for it (a static reshape).
            from trainer_ext.deployment.openvino_backend import OpenVINOSession

            static = OpenVINOSession(self.path, self.num_threads, static_shape=(1, sequence_length))
            feed = {k: v for k, v in feed.items() if k in static.names}
            return lambda: static.run(["logits"], feed)[0]
        return lambda: self._forward(feed)

    def shape_call(
        self, shape: str, texts: list[str], *, max_length: int = 128, batch_size: int = 32
    ) -> SentenceCalls | Callable[[], np.ndarray]:
        """The timed call of a serving shape (`SERVING_SHAPES`). The batch-1 shapes are `SentenceCalls` over `texts`
        (call `i` runs sentence `i % len(texts)`), so the median covers the sentences' real lengths and every variant
        and shape of a group times the same sentences in the same order; `batch_32` is a no-argument call."""
        if shape == "batch_32":
            feed = self.encode(texts[:batch_size], max_length=max_length)
            return lambda: self._forward(feed)
        if shape == "real_length":
            feeds = [self.encode([t], max_length=max_length, padding=False) for t in texts]
            return SentenceCalls([partial(self._forward, feed) for feed in feeds])
        if shape == "real_length_tokenized":
            return SentenceCalls([partial(self._encode_and_forward, t, max_length) for t in texts])
        raise ValueError(f"Unknown serving shape {shape!r}; choose from {list(SERVING_SHAPES)}.")

    def _encode_and_forward(self, text: str, max_length: int) -> np.ndarray:
        return self._forward(self.encode([text], max_length=max_length, padding=False))


# How a model is served, each measured at batch 1 unless named: the default serving figure is real length.
SERVING_SHAPES = {
    "real_length": "batch 1 at the sentence's own length (no padding), tokenization excluded",
    "real_length_tokenized": "batch 1 at the sentence's own length, the fast tokenizer's call included",
    "fixed_length": "batch 1 padded to the fixed sequence length (64 by default: the reference's convention), "
    "tokenization excluded",
    "batch_32": "batches of 32 sentences padded to the longest, milliseconds per sentence",
}


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


# The /proc/cpuinfo flags that decide how fast these models run, and their names on the page, in this order. AVX2 vs
# AVX-512 sets the FP32 kernels' width; VNNI (AVX-512 or AVX) runs ONNX Runtime's and OpenVINO's INT8 matmuls in one
# instruction; AVX512-BF16 and AMX run bf16 (OpenVINO's default precision on AMX CPUs) and AMX also INT8. "AMD EPYC"
# alone names both a Zen 3 (AVX2 only) and a Zen 4 (AVX-512 VNNI, AVX512-BF16). amx_tile comes with AMX-BF16 and
# AMX-INT8, so it is not listed again. aarch64 kernels call the line "Features".
CPU_FEATURES = {
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX-512 VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX512-BF16",
    "amx_bf16": "AMX-BF16",
    "amx_int8": "AMX-INT8",
    "asimddp": "NEON dot product",
    "i8mm": "I8MM",
    "bf16": "BF16",
    "sve": "SVE",
    "sve2": "SVE2",
}


def cpu_flags(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> set[str] | None:
    """The CPU's feature flags (the first 'flags' line of /proc/cpuinfo, or 'Features' on aarch64); None where there
    is no such file or line (macOS, Windows, some containers), so 'unknown' is never mistaken for 'absent'."""
    try:
        with open(cpuinfo, encoding="utf-8") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return None


def cpu_features(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> list[str] | None:
    """The speed-deciding instruction sets the CPU has (`CPU_FEATURES`' names, in its order); None when the flags
    cannot be read. Two machines with the same model name but different lists give different latency ratios."""
    flags = cpu_flags(cpuinfo)
    return None if flags is None else [name for flag, name in CPU_FEATURES.items() if flag in flags]


def cpu_description(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> str:
    """The CPU's model name with its instruction sets, as every figure records it: "Intel(R) Xeon(R) Processor (AVX2,
    AVX-512, AVX-512 VNNI, ...)". Without readable flags it says so, with the widest ISA PyTorch dispatches to."""
    features = cpu_features(cpuinfo)
    if features is None:
        return (
            f"{cpu_name(cpuinfo)} (instruction sets unknown; PyTorch uses {torch.backends.cpu.get_cpu_capability()})"
        )
    return f"{cpu_name(cpuinfo)} ({', '.join(features) or 'no AVX2'})"


# The tokenizer adds work to the same forward on the same sentences, so a tokenized figure below the untokenized one
# is a measurement error, not a result. Medians of interleaved shapes still move by a few percent from call to call;
# beyond this share of the untokenized median, the gap is not noise.
TOKENIZER_NOISE = 0.10
TOKENIZED_SHAPES = {"real_length_tokenized": "real_length"}  # the shape with the tokenizer -> the same one without


def inconsistent_shapes(shapes: dict[str, dict[str, float]], tolerance: float = TOKENIZER_NOISE) -> list[str]:
    """Messages for the figures of one variant that contradict each other: a shape timed with the tokenizer whose
    median is below the same shape's without it by more than `tolerance` (a share of the latter). Such a pair was
    published once (OpenVINO student: 4.70 ms at real length, p90 10.1, but 1.61 ms with the tokenizer); flagged, it
    is shown beside the figures instead of published silently."""
    flags = []
    for tokenized, plain in TOKENIZED_SHAPES.items():
        with_tok, without = shapes.get(tokenized) or {}, shapes.get(plain) or {}
        tok_ms, plain_ms = with_tok.get("median_ms"), without.get("median_ms")
        if not (isinstance(tok_ms, (int, float)) and isinstance(plain_ms, (int, float))):
            continue
        if tok_ms < (1 - tolerance) * plain_ms:
            flags.append(
                f"{tokenized} {_ms(with_tok)} is faster than {plain} {_ms(without)} by more than the {tolerance:.0%} "
                "allowed for noise, though the tokenizer only adds work to the same sentences: one of the two figures "
                "is wrong (re-measure on a quiet machine)"
            )
    return flags


def _ms(figure: dict[str, float]) -> str:
    p90 = figure.get("p90_ms")
    return f"{figure['median_ms']:.2f} ms" + (f" (p90 {p90:.2f})" if isinstance(p90, (int, float)) else "")


def interleaved_latency(
    runners: dict[str, SentenceCalls | Callable[[], Any]],
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

    Every runner sees the same inputs in the same order: a `SentenceCalls` runner's timed call `j` of round `r` runs
    position `r * runs_per_round + j`, whatever its warm-up did (the warm-up walks the positions the burst is about
    to time, and does not move them), so the ratios compare models on the same sentences. A no-argument callable
    has one fixed input (a padded sentence, a batch) and is simply called.
    """
    timings: dict[str, list[float]] = {name: [] for name in runners}
    for round_index in range(rounds):
        first = round_index * runs_per_round  # the round's first position, the same for every runner
        for name, run in runners.items():
            call = run if isinstance(run, SentenceCalls) else _ignoring_position(run)
            start, done = time.perf_counter(), 0
            while done < warmup or time.perf_counter() - start < warmup_s:
                call(first + done)
                done += 1
            for position in range(first, first + runs_per_round):
                start = time.perf_counter()
                call(position)
                timings[name].append((time.perf_counter() - start) * 1000.0)
    return {
        name: {"median_ms": statistics.median(t), "p90_ms": float(np.percentile(t, 90)), "runs": len(t)}
        for name, t in timings.items()
    }


def _ignoring_position(run: Callable[[], Any]) -> Callable[[int], Any]:
    return lambda _position: run()


def latency_rounds(runs: int) -> tuple[int, int]:
    """`(rounds, runs per round)` for about `runs` timed calls: rounds of up to 20 (the timed count is their product)."""
    per_round = min(20, runs)
    return max(1, runs // per_round), per_round


def serving_latency(
    runners: dict[str, ClassifierRunner],
    texts: list[str],
    *,
    sequence_length: int = 64,
    runs: int = 100,
    batch_size: int = 32,
    max_length: int = 128,
    shapes: Sequence[str] = tuple(SERVING_SHAPES),
) -> dict[str, dict[str, dict[str, float]]]:
    """Latency of every runner in each of `shapes` (`SERVING_SHAPES`; the fixed length always):
    `{runner: {shape: {median_ms, p90_ms, runs}}}`.

    The batch-1 shapes of every runner are one interleaved group (`interleaved_latency`): each round times every
    runner in every shape in turn, so ratios hold across runners and across shapes. Timed as separate groups, the
    machine's drift over minutes made the full run's real-length figures 0.9-1.2x its length-64 ones, against
    0.5-0.7x in one group. The batch-1 shapes cycle through the first `batch_size` of `texts`, every runner and shape
    timing the same sentences in the same order (`SentenceCalls`); `batch_32` times one batch of them, in its own
    group from a tenth as many calls, and reports milliseconds per sentence.
    """
    unknown = sorted(set(shapes) - set(SERVING_SHAPES))
    if unknown:
        raise ValueError(f"Unknown serving shapes {unknown}; choose from {list(SERVING_SHAPES)}.")
    sample = texts[:batch_size] or ["a short example sentence"]
    batch1 = [s for s in SERVING_SHAPES if s != "batch_32" and (s in shapes or s == "fixed_length")]
    calls = {}
    for name, runner in runners.items():
        for shape in batch1:
            calls[name, shape] = (
                runner.fixed_length_call(sample[0], sequence_length)
                if shape == "fixed_length"
                else runner.shape_call(shape, sample, max_length=max_length)
            )
    rounds, per_round = latency_rounds(runs)
    warmup_s = 0.25 if runs >= 50 else 0.0  # short runs (under 50 calls, as in tests) skip the timed warm-up
    measured = interleaved_latency(calls, rounds=rounds, runs_per_round=per_round, warmup_s=warmup_s)
    out = {name: {shape: measured[name, shape] for shape in batch1} for name in runners}
    if "batch_32" in shapes:
        calls = {n: r.shape_call("batch_32", sample, max_length=max_length) for n, r in runners.items()}
        rounds, per_round = latency_rounds(max(runs // 10, 1))
        batched = interleaved_latency(calls, rounds=rounds, runs_per_round=per_round, warmup=1, warmup_s=0)
        for name, m in batched.items():
            out[name]["batch_32"] = {
                "median_ms": m["median_ms"] / len(sample),
                "p90_ms": m["p90_ms"] / len(sample),
                "runs": m["runs"],
            }
    return out


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
    """Accuracy on `eval_dataset` (when given), latency in every serving shape, size and parameters of each model.

    Every variant of a run is measured here, on the same sentences and settings, latency timed in alternation
    (`serving_latency`), so their rows compare. `latency_ms` is the reference's convention (batch 1, padded to
    `sequence_length`); `shapes` has every serving shape; `warnings` lists the figures that contradict each other
    (`inconsistent_shapes`), also logged.
    """
    texts = [str(t) for t in eval_dataset[text_column]] if eval_dataset is not None else ["a short example sentence"]
    labels = np.asarray(list(eval_dataset[label_column])) if eval_dataset is not None else None
    shapes = serving_latency(models, texts, sequence_length=sequence_length, runs=runs, max_length=max_length)
    out = {
        name: {
            "accuracy": None
            if labels is None
            else accuracy(runner.logits(texts, batch_size=batch_size, max_length=max_length), labels),
            "latency_ms": shapes[name]["fixed_length"]["median_ms"],
            "latency_p90_ms": shapes[name]["fixed_length"]["p90_ms"],
            "shapes": {shape: {k: m[k] for k in ("median_ms", "p90_ms")} for shape, m in shapes[name].items()},
            "size_mb": runner.size_mb,
            "parameters": runner.parameters,
            "runtime": runner.runtime,
            "runtime_version": runner.runtime_version,
            "eval_examples": 0 if labels is None else len(labels),
            "warnings": inconsistent_shapes(shapes[name]),
        }
        for name, runner in models.items()
    }
    for name, measured in out.items():
        for flag in measured["warnings"]:
            logger.warning(f"Inconsistent latency figures of {name}: {flag}.")
    return out


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
