"""The teacher-logit pass with teachers whose forward names no inputs: a wrapper and a `torch.compile`d model."""

import time

import numpy as np
import pytest
import torch
from conftest import args_for, make_bert, make_dataset, make_sentences, train_wordpiece_tokenizer
from torch import nn
from transformers import DataCollatorWithPadding

from trainer_ext.training.teacher_logits import compute_teacher_logits, forward_input_names
from trainer_ext.training.trainer import DistillationTrainer


class Wrapped(nn.Module):
    """A wrapper whose forward takes only `*args, **kwargs`; it records the keyword names of every call."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[set[str]] = []

    @property
    def config(self):
        return self.inner.config

    def forward(self, *args, **kwargs):
        self.seen.append(set(kwargs))
        return self.inner(*args, **kwargs)


@pytest.fixture
def teacher(tokenizer):
    return make_bert(tokenizer, hidden_size=48, num_hidden_layers=2, seed=1)


@pytest.fixture
def data(tokenizer):
    return make_dataset(tokenizer, n=40)


def _logits(teacher, data, tokenizer, **kwargs):
    return compute_teacher_logits(teacher, data, batch_size=8, collate=DataCollatorWithPadding(tokenizer), **kwargs)


def test_forward_input_names_falls_back_for_a_forward_without_named_inputs(tokenizer, teacher):
    plain = forward_input_names(teacher)
    assert {"input_ids", "attention_mask", "token_type_ids", "labels"} <= plain
    wrapped = Wrapped(teacher)
    assert forward_input_names(wrapped) == {"input_ids", "attention_mask", "token_type_ids"}
    assert forward_input_names(wrapped, tokenizer) == set(tokenizer.model_input_names)
    wrapped.main_input_name = "pixel_values"
    assert forward_input_names(wrapped) == {"pixel_values", "input_ids", "attention_mask", "token_type_ids"}


def test_wrapped_teacher_reads_the_token_columns_and_matches_the_plain_teacher(tokenizer, teacher, data):
    assert {"text", "label"} <= set(data.column_names)  # columns the teacher must not be given
    expected = _logits(teacher, data, tokenizer)
    wrapped = Wrapped(teacher)
    got = _logits(wrapped, data, tokenizer)
    assert got.shape == (40, 2)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert wrapped.seen and all(seen == {"input_ids", "attention_mask", "token_type_ids"} for seen in wrapped.seen)


def test_wrapped_teacher_with_its_own_tokenizer_matches_the_plain_teacher(tokenizer, data):
    teacher_tok = train_wordpiece_tokenizer(make_sentences(300, seed=4)[0], vocab_size=150)
    teacher = make_bert(teacher_tok, seed=5)
    expected = compute_teacher_logits(teacher, data, batch_size=8, teacher_tokenizer=teacher_tok)
    wrapped = Wrapped(teacher)
    got = compute_teacher_logits(wrapped, data, batch_size=8, teacher_tokenizer=teacher_tok)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert wrapped.seen and all(seen == set(teacher_tok.model_input_names) for seen in wrapped.seen)


def test_compiled_teacher_matches_the_plain_teacher(tokenizer, teacher, data):
    expected = _logits(teacher, data, tokenizer)
    # The eager backend skips code generation (slow on CPU and needing a compiler) but gives the same wrapper, an
    # OptimizedModule whose forward is `(*args, **kwargs)`.
    try:
        compiled = torch.compile(teacher, backend="eager")
    except Exception as err:  # pragma: no cover - depends on the torch build
        pytest.skip(f"torch.compile is unavailable: {err}")
    assert forward_input_names(compiled) == forward_input_names(teacher)
    start = time.perf_counter()
    try:
        got = _logits(compiled, data, tokenizer)
    finally:
        torch._dynamo.reset()
    if time.perf_counter() - start > 20:  # pragma: no cover - a slow shared machine
        pytest.skip("torch.compile took over 20 s on this machine")
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("cache_teacher_logits", [True, False])
def test_distillation_trainer_trains_with_a_wrapped_teacher(tmp_path, tokenizer, teacher, data, cache_teacher_logits):
    wrapped = Wrapped(teacher)
    trainer = DistillationTrainer(
        model=make_bert(tokenizer, seed=2),
        args=args_for(tmp_path, num_train_epochs=1, max_steps=3, cache_teacher_logits=cache_teacher_logits),
        train_dataset=data,
        processing_class=tokenizer,
        teacher_model=wrapped,
    )
    trainer.train()
    assert trainer.state.global_step == 3
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logged) == 3 and all(np.isfinite(e["distill_loss"]) for e in logged)
    assert wrapped.seen and all({"input_ids", "attention_mask"} <= seen for seen in wrapped.seen)
    if cache_teacher_logits:
        column = trainer.train_dataset[trainer.logits_column]
        np.testing.assert_allclose(np.asarray(column), _logits(teacher, data, tokenizer), rtol=0, atol=1e-6)


def test_cached_logits_survive_a_moved_tokenizer_but_not_a_changed_one(tmp_path, tokenizer, teacher, data):
    """The cache is keyed by what the teacher's tokenizer does, not where it was loaded from: an output folder that
    is copied elsewhere keeps its logits; a tokenizer with other settings does not reuse them."""
    from transformers import AutoTokenizer

    for folder in ("a", "b"):
        tokenizer.save_pretrained(tmp_path / folder)
    first, moved = (AutoTokenizer.from_pretrained(tmp_path / f) for f in ("a", "b"))
    cache = tmp_path / "cache"
    logits = compute_teacher_logits(teacher, data, batch_size=8, teacher_tokenizer=first, cache_dir=cache)
    assert len(list(cache.glob("*.npy"))) == 1
    again = compute_teacher_logits(teacher, data, batch_size=8, teacher_tokenizer=moved, cache_dir=cache)
    np.testing.assert_array_equal(again, logits)
    assert len(list(cache.glob("*.npy"))) == 1
    lower = AutoTokenizer.from_pretrained(tmp_path / "a", do_lower_case=False)
    compute_teacher_logits(teacher, data, batch_size=8, teacher_tokenizer=lower, cache_dir=cache)
    assert len(list(cache.glob("*.npy"))) == 2
