"""Sampling many short continuations from a small causal LM fast on a CPU: continuous batching, and the engine and
weight precision chosen by measurement.

`model.generate` on a left-padded batch keeps every row in the batch until the longest one ends: at batch 96, 64% of
the sampled token slots were padding behind rows that had already finished (benchmarks/sampling.py). Under bf16
autocast it also casts every weight on every step, which on a 135M-parameter generator costs more than the matrix
products (171 ms against 58 ms per step at batch 32 with bf16 weights, AMX Xeon). `ContinuousSampler` is a small
sampling loop over the model's own forward and `DynamicCache`:

- a row leaves the batch (and its cache) the step it samples its end token or reaches its token budget, so finished
  rows cost nothing more;
- the freed slots are refilled from the queue of prompts: the new prompts are pre-filled together and their cache is
  joined to the running one, left-padded to the same length and masked; cache columns that no row attends to any more
  are dropped;
- the next token is drawn as `generate` draws it (temperature, top-k, top-p, repetition penalty), the nucleus looked
  for among the likeliest tokens first and found by transformers' own `TopPLogitsWarper` where it lies beyond them.

`choose_sampler` decides, per machine and generator, between this loop and `model.generate` and between FP32 and bf16
weights, by timing a few decode steps of each on the real model, and falls back to `model.generate` with the reason
recorded when the loop cannot run the model (a cache that is not a plain `DynamicCache`, say).
"""

from __future__ import annotations

import copy
import statistics
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor, TopPLogitsWarper
from transformers.utils import logging

from trainer_ext.training.precision import bf16_support

logger = logging.get_logger(__name__)

ENGINES = ("auto", "continuous", "generate")
CANDIDATES = 256  # tokens the nucleus is first looked for in (see ContinuousSampler._draw)


class SamplerError(RuntimeError):
    """The continuous sampler cannot run this model; the message says why (the caller falls back to `generate`)."""


@dataclass
class SamplingSettings:
    """What every engine samples with."""

    max_new_tokens: int
    top_p: float = 1.0
    top_k: int = 0
    temperature: float = 1.0
    repetition_penalty: float = 1.0


class ContinuousSampler:
    """Sample one continuation per prompt with at most `batch_size` rows in flight, refilled as rows finish.

    ```python
    sampler = ContinuousSampler(model, SamplingSettings(max_new_tokens=40, top_p=0.9), pad_token_id=tok.pad_token_id,
                                eos_token_ids=[tok.eos_token_id], batch_size=128)
    new_tokens = sampler.sample([tok("positive\t")["input_ids"], ...], seed=0)  # one list of token ids per prompt
    ```

    The returned ids exclude the prompt and include the end token when one was sampled. A fixed seed and the same
    prompts give the same samples. Rows are admitted in prompt order; `refill_at` free slots (a quarter of the batch
    by default) trigger the next pre-fill, so pre-fills are batched rather than one prompt at a time.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        settings: SamplingSettings,
        *,
        pad_token_id: int,
        eos_token_ids: Sequence[int],
        batch_size: int = 128,
        refill_at: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.settings = settings
        self.pad_token_id = pad_token_id
        self.eos = set(eos_token_ids)
        self.batch_size = batch_size
        self.refill_at = refill_at or max(1, batch_size // 4)
        self.steps = 0  # forward passes of the last call (pre-fills included)
        self.token_slots = (
            0  # row-steps computed in the last call: what continuous batching keeps near the real tokens
        )

    @torch.inference_mode()
    def sample(self, prompts: Sequence[Sequence[int]], seed: int) -> list[list[int]]:
        if any(len(p) == 0 for p in prompts):
            raise ValueError("Every prompt needs at least one token.")
        device = next(self.model.parameters()).device
        generator = torch.Generator(device="cpu").manual_seed(seed)
        queue = deque(range(len(prompts)))
        results: list[list[int]] = [[] for _ in prompts]
        rows: list[int] = []  # prompt index of each row in flight
        history: list[list[int]] = []  # each row's prompt and sampled tokens (for the repetition penalty)
        cache: DynamicCache | None = None
        mask = torch.zeros(0, 0, dtype=torch.long, device=device)
        pending = torch.zeros(0, dtype=torch.long)  # each row's last sampled token, not yet fed to the model
        self.steps = self.token_slots = 0
        was_training = self.model.training
        self.model.eval()
        try:
            while queue or rows:
                if queue and self.batch_size - len(rows) >= min(self.refill_at, len(queue)):
                    admit = [queue.popleft() for _ in range(min(self.batch_size - len(rows), len(queue)))]
                    new_cache, new_mask, logits = self._prefill([prompts[i] for i in admit], device)
                    new_tokens = self._draw(logits, [list(prompts[i]) for i in admit], generator)
                    cache, mask = _join(cache, mask, new_cache, new_mask)
                    rows += admit
                    history += [list(prompts[i]) for i in admit]
                    pending = torch.cat([pending, new_tokens])
                    fresh = range(len(rows) - len(admit), len(rows))  # the running rows' tokens are recorded already
                    self.token_slots += int(new_mask.sum())
                else:
                    mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
                    positions = mask.sum(dim=1, keepdim=True) - 1
                    out = self.model(
                        input_ids=pending[:, None].to(device),
                        attention_mask=mask,
                        position_ids=positions,
                        past_key_values=cache,
                        use_cache=True,
                        logits_to_keep=1,
                    )
                    cache = out.past_key_values
                    pending = self._draw(out.logits[:, -1], history, generator)
                    fresh = range(len(rows))
                    self.token_slots += len(rows)
                self.steps += 1
                finished = []
                tokens = pending.tolist()
                for j in fresh:
                    token = tokens[j]
                    results[rows[j]].append(token)
                    history[j].append(token)
                    if token in self.eos or len(results[rows[j]]) >= self.settings.max_new_tokens:
                        finished.append(j)
                if finished:
                    done = set(finished)
                    keep = [j for j in range(len(rows)) if j not in done]
                    rows = [rows[j] for j in keep]
                    history = [history[j] for j in keep]
                    index = torch.tensor(keep, dtype=torch.long)
                    pending = pending[index]
                    mask = mask[index.to(device)]
                    if keep:
                        cache.batch_select_indices(index.to(device))
                        cache, mask = _drop_unused_columns(cache, mask)
                    else:
                        cache, mask = None, mask.new_zeros(0, 0)
        finally:
            self.model.train(was_training)
        return results

    def _prefill(self, prompts: list[Sequence[int]], device: torch.device) -> tuple[DynamicCache, torch.Tensor, Any]:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(prompts), width, dtype=torch.long)
        for i, prompt in enumerate(prompts):  # left padding: every row's next token goes in the same column
            ids[i, width - len(prompt) :] = torch.tensor(list(prompt))
            mask[i, width - len(prompt) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=DynamicCache(),
            use_cache=True,
            logits_to_keep=1,
        )
        cache = out.past_key_values
        if not isinstance(cache, DynamicCache) or any(type(layer) is not DynamicLayer for layer in cache.layers):
            raise SamplerError(
                f"{type(self.model).__name__} keeps a {type(cache).__name__} cache with "
                f"{sorted({type(layer).__name__ for layer in getattr(cache, 'layers', [])})} layers; the continuous "
                "sampler only joins and prunes plain DynamicCache layers"
            )
        return cache, mask, out.logits[:, -1]

    def _draw(self, logits: torch.Tensor, history: list[list[int]], generator: torch.Generator) -> torch.Tensor:
        """One token per row from temperature, top-k and nucleus sampling, as `generate` draws it.

        transformers' TopPLogitsWarper sorts the whole vocabulary, and `multinomial` over it is slow too: 217 ms and
        135 ms per step for 128 rows of SmolLM2's 49,152 tokens on 2 vCPUs, twice the forward pass. So the nucleus is
        drawn from the `CANDIDATES` likeliest tokens whenever they carry at least `top_p` of the probability, where the
        nucleus lies inside them and the result is the same; the rows where they do not go through the full warper."""
        s = self.settings
        scores = logits.float().cpu()
        if s.repetition_penalty != 1.0:
            width = max(len(h) for h in history)
            ids = torch.tensor([[self.pad_token_id] * (width - len(h)) + h for h in history])
            scores = RepetitionPenaltyLogitsProcessor(s.repetition_penalty)(ids, scores)
        if s.temperature != 1.0:
            scores = scores / s.temperature
        if s.top_k:  # TopKLogitsWarper then TopPLogitsWarper: the nucleus of the top-k, renormalised
            top_scores, top_ids = scores.topk(min(s.top_k, scores.shape[-1]))
            probs = torch.softmax(top_scores, dim=-1)
            inside = torch.ones(len(scores), dtype=torch.bool)
        else:
            probs, top_ids = torch.softmax(scores, dim=-1).topk(min(CANDIDATES, scores.shape[-1]))
            inside = probs.sum(dim=-1) >= s.top_p if s.top_p < 1.0 else torch.zeros(len(scores), dtype=torch.bool)
        if s.top_p < 1.0:
            before = probs.cumsum(dim=-1) - probs  # the probability of the likelier tokens
            probs = probs.masked_fill(before >= s.top_p, 0.0)
        tokens = top_ids.gather(1, torch.multinomial(probs, 1, generator=generator)).squeeze(1)
        outside = (~inside).nonzero().squeeze(1)
        if len(outside):
            rest = scores[outside]
            if s.top_p < 1.0:
                rest = TopPLogitsWarper(s.top_p)(None, rest)
            tokens[outside] = torch.multinomial(torch.softmax(rest, dim=-1), 1, generator=generator).squeeze(1)
        return tokens


def _join(
    cache: DynamicCache | None, mask: torch.Tensor, new_cache: DynamicCache, new_mask: torch.Tensor
) -> tuple[DynamicCache, torch.Tensor]:
    """The running rows' cache and the newly pre-filled rows' cache as one batch: the shorter one left-padded with
    masked zero columns, so every row's next token goes in the same column."""
    if cache is None or mask.shape[0] == 0:
        return new_cache, new_mask
    old_len, new_len = mask.shape[1], new_mask.shape[1]
    width = max(old_len, new_len)

    def pad(t: torch.Tensor, length: int) -> torch.Tensor:
        return t if length == width else torch.nn.functional.pad(t, (0, 0, width - length, 0))

    for layer, new_layer in zip(cache.layers, new_cache.layers):
        layer.keys = torch.cat([pad(layer.keys, old_len), pad(new_layer.keys, new_len)])
        layer.values = torch.cat([pad(layer.values, old_len), pad(new_layer.values, new_len)])
    mask = torch.cat(
        [
            torch.nn.functional.pad(mask, (width - old_len, 0)),
            torch.nn.functional.pad(new_mask, (width - new_len, 0)),
        ]
    )
    return cache, mask


def _drop_unused_columns(cache: DynamicCache, mask: torch.Tensor) -> tuple[DynamicCache, torch.Tensor]:
    """Drop the leading cache columns that no remaining row attends to (the prompts of rows that have left)."""
    used = mask.any(dim=0).nonzero()
    start = int(used[0]) if len(used) else mask.shape[1]
    if start == 0:
        return cache, mask
    for layer in cache.layers:
        layer.keys = layer.keys[:, :, start:]
        layer.values = layer.values[:, :, start:]
    return cache, mask[:, start:]


# ------------------------------------------------------------------------------------------------- the choice
@dataclass
class SamplerChoice:
    """How the transfer set is sampled on this machine, and why; recorded beside the stages' precisions."""

    engine: str  # "continuous" or "generate"
    precision: str  # the generator's weights while sampling: "fp32" or "bf16"
    reason: str
    requested: str = "auto"
    fallback: str | None = None  # why the requested engine was not used
    seconds_per_step: dict[str, float] | None = None  # measured decode step, per engine and precision

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sampling_model(model: PreTrainedModel, precision: str) -> PreTrainedModel:
    """The model to sample with: `model` itself in FP32, else a bf16 copy (the FP32 weights stay for saving)."""
    if precision == "bf16" and model.dtype != torch.bfloat16:
        return copy.deepcopy(model).to(torch.bfloat16).eval()
    return model


def _probe_prompts(prompt_ids: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    return [list(prompt_ids[i % len(prompt_ids)]) for i in range(batch_size)]


def _decode_step_seconds(model: PreTrainedModel, prompts: list[list[int]], pad: int, steps: int = 4) -> float:
    """Median seconds of one decode step of `len(prompts)` rows after a pre-fill, on `model` as it is."""
    sampler = ContinuousSampler(
        model, SamplingSettings(max_new_tokens=1), pad_token_id=pad, eos_token_ids=[], batch_size=len(prompts)
    )
    device = next(model.parameters()).device
    with torch.inference_mode():
        cache, mask, _ = sampler._prefill(prompts, device)
        token = torch.zeros(len(prompts), 1, dtype=torch.long, device=device)
        times = []
        for _ in range(steps + 1):
            mask = torch.cat([mask, mask.new_ones(len(prompts), 1)], dim=1)
            start = time.perf_counter()
            out = model(
                input_ids=token,
                attention_mask=mask,
                position_ids=mask.sum(dim=1, keepdim=True) - 1,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            times.append(time.perf_counter() - start)
            cache = out.past_key_values
    return statistics.median(times[1:])  # the first step warms up


def choose_sampler(
    model: PreTrainedModel,
    prompt_ids: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    batch_size: int,
    engine: str = "auto",
    precision: str = "auto",
    margin: float = 0.9,
) -> SamplerChoice:
    """The sampling engine and the generator's weight precision, by detection and measurement on `model`.

    The continuous loop is tried first on a few prompts (a model it cannot run falls back to `generate`, with the
    reason); with `precision` 'auto' and fast bf16 on the device, a decode step of `batch_size` rows is timed with
    FP32 and with bf16 weights, and bf16 is kept when it is faster by the `margin`. `engine` 'generate' or precision
    'fp32'/'bf16' are used as given."""
    if engine not in ENGINES:
        raise ValueError(f"sampling engine must be one of {ENGINES}, got {engine!r}")
    device = next(model.parameters()).device
    prompts = _probe_prompts(prompt_ids, batch_size)
    supported, why = bf16_support(device)
    fallback = None
    if engine != "generate":
        try:
            ContinuousSampler(
                model, SamplingSettings(max_new_tokens=2), pad_token_id=pad_token_id, eos_token_ids=[], batch_size=2
            ).sample(prompts[:3], seed=0)
        except Exception as error:  # noqa: BLE001 - any failure of the loop means: use generate, and say why
            fallback = f"the continuous sampler cannot run {type(model).__name__}: {error}"
            logger.warning(f"{fallback}; sampling with model.generate instead.")
    chosen_engine = "generate" if engine == "generate" or fallback else "continuous"
    if precision in ("fp32", "bf16"):
        return SamplerChoice(chosen_engine, precision, "set in the recipe", engine, fallback)
    if not supported:
        return SamplerChoice(chosen_engine, "fp32", f"{why}, so bf16 weights would be slow", engine, fallback)
    if chosen_engine == "generate":
        # generate runs the FP32 model under bf16 autocast on a bf16 CPU (the run's generator precision).
        return SamplerChoice(
            chosen_engine, "fp32", "model.generate with the generator's own precision", engine, fallback
        )
    bf16_model = sampling_model(model, "bf16")
    times = {
        "fp32": _decode_step_seconds(model, prompts, pad_token_id),
        "bf16": _decode_step_seconds(bf16_model, prompts, pad_token_id),
    }
    faster = times["bf16"] < margin * times["fp32"]
    reason = (
        f"bf16 weights measured {times['fp32'] / times['bf16']:.2f}x the FP32 speed per decode step of {batch_size} "
        f"rows ({times['bf16'] * 1000:.1f} ms vs {times['fp32'] * 1000:.1f} ms, {why})"
    )
    return SamplerChoice(
        chosen_engine,
        "bf16" if faster else "fp32",
        reason,
        engine,
        fallback,
        {f"continuous_{k}": round(v, 5) for k, v in times.items()},
    )


__all__ = ["ContinuousSampler", "SamplerChoice", "SamplerError", "SamplingSettings", "choose_sampler"]
