"""Per-stage precision: detection, measurement, and that measuring leaves the model as it was."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, TrainingArguments

from trainer_ext.training import precision
from trainer_ext.training.precision import (
    PrecisionChoice,
    autocast,
    bf16_flags_support,
    bf16_support,
    choose_precision,
    training_precision_kwargs,
)


def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37
    )
    return BertForSequenceClassification(config)


def batch() -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(0, 100, (4, 12)), "labels": torch.tensor([0, 1, 0, 1])}


class Exploding(torch.nn.Module):
    """Fails on any forward pass: proves that a choice was made without measuring."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)

    def forward(self, **inputs):
        raise AssertionError("measured although it should not have")


@pytest.mark.parametrize("requested", ["fp32", "bf16"])
def test_explicit_precision_is_returned_without_measuring(requested):
    choice = choose_precision("teacher", Exploding(), batch(), requested, support=(True, "forced"))
    assert (choice.precision, choice.reason) == (requested, "set in the recipe")
    assert choice.fp32_seconds is None and choice.bf16_seconds is None
    assert choice.bf16 == (requested == "bf16")


def test_explicit_bf16_without_support_is_honoured_with_a_warning():
    choice = choose_precision("student", Exploding(), batch(), "bf16", support=(False, "CPU has no AMX (AVX2 only)"))
    assert choice.precision == "bf16"
    assert "CPU has no AMX (AVX2 only)" in choice.reason and "slower" in choice.reason


def test_auto_without_support_is_fp32_and_measures_nothing():
    choice = choose_precision("student", Exploding(), batch(), support=(False, "CPU has no AMX or AVX512-BF16"))
    assert choice.precision == "fp32"
    assert "CPU has no AMX or AVX512-BF16" in choice.reason
    assert choice.fp32_seconds is None and choice.bf16_seconds is None
    assert choice.to_dict() == {
        "stage": "student",
        "precision": "fp32",
        "reason": choice.reason,
        "fp32_seconds": None,
        "bf16_seconds": None,
    }


@pytest.mark.parametrize("train", [True, False])
def test_auto_with_support_measures_both_and_applies_the_margin(train):
    model, dtypes = tiny_bert(), []
    model.classifier.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    choice = choose_precision("teacher", model, batch(), train=train, steps=2, support=(True, "forced"))
    assert choice.fp32_seconds > 0 and choice.bf16_seconds > 0
    assert dtypes.count(torch.bfloat16) == dtypes.count(torch.float32) == 3  # warm-up + 2 steps, really both ways
    assert choice.bf16 == (choice.bf16_seconds < 0.9 * choice.fp32_seconds)
    assert f"{choice.fp32_seconds:.3g} s" in choice.reason and f"{choice.bf16_seconds:.3g} s" in choice.reason
    # The margin decides: bf16 can never be 0 times as fast, and is always faster than 1e9 times fp32.
    never = choose_precision("teacher", tiny_bert(), batch(), train=train, steps=1, margin=0, support=(True, "forced"))
    always = choose_precision("teacher", tiny_bert(), batch(), train=train, steps=1, margin=1e9, support=(True, "f"))
    assert (never.precision, always.precision) == ("fp32", "bf16")


@pytest.mark.parametrize("train", [True, False])
def test_measuring_leaves_the_model_as_it_was(train):
    model = tiny_bert().eval()
    model.bert.encoder.train()  # mixed modes must come back module by module
    model.classifier.weight.grad = torch.ones_like(model.classifier.weight)
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    modes = {name: m.training for name, m in model.named_modules()}
    inputs = batch()
    rng = torch.random.get_rng_state()  # dropout draws must not shift the seeded stream training then uses

    choose_precision("teacher", model, inputs, train=train, steps=1, support=(True, "forced"))

    for name, p in model.named_parameters():
        assert torch.equal(p, params[name]), name
        if name == "classifier.weight":
            assert torch.equal(p.grad, torch.ones_like(p))
        else:
            assert p.grad is None, name
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert torch.equal(torch.random.get_rng_state(), rng)


def test_flags_parsing():
    assert bf16_flags_support("flags\t\t: fpu vme avx2 avx512f amx_bf16 avx512_bf16 amx_tile") == (
        True,
        "CPU has amx_bf16, avx512_bf16",
    )
    assert bf16_flags_support("fpu sse2 avx512f avx512_bf16") == (True, "CPU has avx512_bf16")
    assert bf16_flags_support("flags : fpu avx2 fma") == (False, "CPU has no AMX or AVX512-BF16 (AVX2 only)")
    assert bf16_flags_support("fpu avx2 avx512f") == (False, "CPU has no AMX or AVX512-BF16 (AVX512 only)")


def test_bf16_support_on_cpu_and_fallback(monkeypatch):
    supported, why = bf16_support("cpu")
    assert isinstance(supported, bool) and why.startswith("CPU")
    monkeypatch.setattr(precision, "_read_cpu_flags", lambda: None)
    supported, why = bf16_support("cpu")
    assert not supported and torch.backends.cpu.get_cpu_capability() in why
    assert bf16_support("meta")[0] is False


def test_autocast_context():
    linear = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with autocast(PrecisionChoice("teacher_logits", "bf16", "forced")):
        assert linear(x).dtype == torch.bfloat16
    with autocast(PrecisionChoice("teacher_logits", "fp32", "forced")):
        assert linear(x).dtype == torch.float32
    with autocast("fp32"):
        assert linear(x).dtype == torch.float32


def test_training_precision_kwargs_build_cpu_arguments(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # TrainingArguments writes it; restored after the test
    assert training_precision_kwargs(PrecisionChoice("student", "fp32", "x")) == {}
    kwargs = training_precision_kwargs(PrecisionChoice("student", "bf16", "x"), device="cpu")
    assert kwargs == {"bf16": True, "use_cpu": True}
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], **kwargs)
    assert args.bf16 and args.device.type == "cpu"
    assert training_precision_kwargs("bf16", device="cuda") == {"bf16": True}
