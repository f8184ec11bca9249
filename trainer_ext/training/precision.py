"""FP32 or bf16 autocast, chosen per stage by detection and measurement rather than by assumption.

bf16 autocast only pays off where the hardware has fast bf16 arithmetic (AMX or AVX512-BF16 on CPU, bf16 tensor cores
on GPU), and even there it depends on the model: on an AMX CPU it trains a 110M-parameter model ~2.6x faster than FP32
but makes small models slower (0.6x), since casting costs more than it saves. So: detect; without fast bf16, choose FP32
without measuring; with it, time a few steps both ways on the real model and batch, and keep the faster one.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from transformers.utils import logging

from trainer_ext.deployment.benchmark import cpu_flags

logger = logging.get_logger(__name__)

Precision = Literal["auto", "fp32", "bf16"]
_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def bf16_flags_support(flags: str) -> tuple[bool, str]:
    """(supported, why) from the text of a /proc/cpuinfo 'flags' line (with or without the 'flags :' prefix)."""
    found = set(flags.split(":", 1)[-1].split())
    bf16 = [flag for flag in _BF16_FLAGS if flag in found]
    if bf16:
        return True, f"CPU has {', '.join(bf16)}"
    best = "AVX512" if "avx512f" in found else "AVX2" if "avx2" in found else "no AVX2"
    return False, f"CPU has no AMX or AVX512-BF16 ({best} only)"


def _read_cpu_flags() -> str | None:
    """The CPU's flags as one line, read where every figure's CPU record reads them (`benchmark.cpu_flags`)."""
    flags = cpu_flags()
    return None if flags is None else " ".join(sorted(flags))


def bf16_support(device: torch.device | str = "cpu") -> tuple[bool, str]:
    """(supported, why): whether `device` has fast bf16 arithmetic, and what that was decided from."""
    kind = torch.device(device).type
    if kind == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return True, f"GPU {torch.cuda.get_device_name(device)} supports bf16"
        return False, "GPU does not support bf16"
    if kind != "cpu":
        return False, f"bf16 support on {kind} devices is not detected"
    flags = _read_cpu_flags()
    if flags is not None:
        return bf16_flags_support(flags)
    # torch's capability names the widest vector ISA (e.g. 'AVX512'), which does not say whether AVX512-BF16 is there.
    return False, f"CPU flags unreadable; torch reports {torch.backends.cpu.get_cpu_capability()}, not AMX/AVX512-BF16"


@dataclass
class PrecisionChoice:
    stage: str
    precision: Literal["fp32", "bf16"]
    reason: str  # one sentence: why this precision
    fp32_seconds: float | None = None  # median seconds per step measured in FP32, when measured
    bf16_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"


def _step_seconds(model, inputs, device: torch.device, bf16: bool, train: bool) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        out = model(**inputs)
    if train:
        loss = getattr(out, "loss", None)
        if loss is None:
            loss = (out if isinstance(out, torch.Tensor) else out[0]).float().sum()
        loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _measure(model, inputs, device: torch.device, train: bool, steps: int) -> tuple[float, float]:
    """Median seconds per step in (fp32, bf16), leaving the model, its gradients and the RNG as they were."""
    modes = {module: module.training for module in model.modules()}
    grads = {param: param.grad for param in model.parameters()}
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}  # e.g. BatchNorm running statistics
    times: dict[bool, list[float]] = {False: [], True: []}
    try:
        model.train(train)
        # Dropout draws random numbers: measuring must not shift the seeded stream the training run then uses.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            with contextlib.nullcontext() if train else torch.no_grad():
                for i in range(steps + 1):  # step 0 warms up both precisions and is not counted
                    # Interleave, alternating which goes first, so a change in machine load hits both precisions.
                    for bf16 in (False, True) if i % 2 else (True, False):
                        for param in model.parameters():
                            param.grad = None  # each backward starts from none, as after zero_grad(set_to_none=True)
                        seconds = _step_seconds(model, inputs, device, bf16, train)
                        if i:
                            times[bf16].append(seconds)
    finally:
        for module, training in modes.items():
            module.training = training
        for param, grad in grads.items():
            param.grad = grad
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(buffers[name])
    return statistics.median(times[False]), statistics.median(times[True])


def choose_precision(
    stage: str,
    model: torch.nn.Module,
    inputs: Mapping[str, torch.Tensor],
    requested: Precision = "auto",
    *,
    train: bool = True,
    device: torch.device | str | None = None,
    steps: int = 3,
    margin: float = 0.9,
    support: tuple[bool, str] | None = None,
) -> PrecisionChoice:
    """The precision for `stage`: as `requested`, or for 'auto' the faster of FP32 and bf16 autocast on `inputs`.

    'auto' measures only where `support` (default: `bf16_support(device)`) says bf16 is fast, and picks bf16 only when
    it is faster by more than the `margin` (bf16 seconds < margin * fp32 seconds), since timings of a few steps are
    noisy and FP32 is the safer numerics. `train=True` times forward plus backward, `train=False` forward only.
    """
    if requested not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', not {requested!r}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if requested == "fp32":
        return PrecisionChoice(stage, "fp32", "set in the recipe")
    if requested == "bf16":
        supported, why = support or bf16_support(device)
        if supported:
            return PrecisionChoice(stage, "bf16", "set in the recipe")
        logger.warning(
            f"{stage}: bf16 is set in the recipe but {why}, so bf16 autocast will likely be slower than fp32."
        )
        return PrecisionChoice(stage, "bf16", f"set in the recipe, although {why} (likely slower than fp32)")
    supported, why = support or bf16_support(device)
    if not supported:
        return PrecisionChoice(stage, "fp32", f"{why}, so bf16 autocast would be slow")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, not {steps}")
    model_device = next(model.parameters()).device  # where the steps run, whatever device support was detected for
    inputs = {k: v.to(model_device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    fp32, bf16 = _measure(model, inputs, model_device, train, steps)
    kind = "training step" if train else "forward pass"
    timing = f"({bf16:.3g} s vs {fp32:.3g} s per {kind}, median of {steps})"
    if bf16 < margin * fp32:
        reason = f"bf16 autocast measured {fp32 / bf16:.2f}x faster {timing}"
    else:
        reason = (
            f"bf16 autocast measured {fp32 / bf16:.2f}x the fp32 speed, not faster by the {margin:g} margin {timing}"
        )
    choice = PrecisionChoice(stage, "bf16" if bf16 < margin * fp32 else "fp32", reason, fp32, bf16)
    logger.info(f"{stage}: {choice.precision}: {reason}")
    return choice


_ACCELERATE_PRECISION = "ACCELERATE_MIXED_PRECISION"


def autocast(choice: PrecisionChoice | str, device: torch.device | str = "cpu") -> contextlib.AbstractContextManager:
    """The context to run an inference stage (teacher logits, sampling) in: bf16 autocast, or nothing for FP32."""
    precision = choice.precision if isinstance(choice, PrecisionChoice) else choice
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def training_precision_kwargs(
    choice: PrecisionChoice | str, device: torch.device | str | None = None
) -> dict[str, bool]:
    """TrainingArguments kwargs for a training stage: {} for FP32; for bf16 {"bf16": True}, plus "use_cpu": True when
    training on CPU, since transformers 4.57 rejects bf16 without use_cpu on a machine without a bf16 GPU
    ("Your setup doesn't support bf16/gpu"); with use_cpu the Trainer then autocasts to bf16 on CPU itself.

    Call it right before building the stage's TrainingArguments: TrainingArguments(bf16=True) exports
    ACCELERATE_MIXED_PRECISION=bf16, and an FP32 TrainingArguments built later in the same process would inherit it
    (its Accelerator would autocast to bf16), so for FP32 this removes a bf16 value left there.
    """
    precision = choice.precision if isinstance(choice, PrecisionChoice) else choice
    if precision != "bf16":
        if os.environ.get(_ACCELERATE_PRECISION) == "bf16":
            del os.environ[_ACCELERATE_PRECISION]
        return {}
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return {"bf16": True, "use_cpu": True} if torch.device(device).type == "cpu" else {"bf16": True}
