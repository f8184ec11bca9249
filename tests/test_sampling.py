"""The continuous sampler (trainer_ext.data.transfer.sampling): the same tokens as generate, finished rows cost nothing, exact
nucleus sampling on its fast path, and the engine choice with its fallback."""

import pytest
import torch
from test_augmentation import make_args, tiny_gpt2
from transformers import GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from trainer_ext.data.transfer.augmentation import TextGenerationAugmenter
from trainer_ext.data.transfer.sampling import CANDIDATES, ContinuousSampler, SamplingSettings, choose_sampler


def tiny_llama(tokenizer, seed=0) -> LlamaForCausalLM:
    """Random weights with a wide initialisation, so greedy continuations differ from prompt to prompt."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=0.5,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config).eval()


PROMPTS = ["neg\t", "pos\ta longer prompt here", "neutral\t", "pos\tthe", "neg\tsome words that run on and on"]


def test_continuous_batches_give_generate_s_tokens_while_rows_leave_and_join(gen_tokenizer):
    """Greedy decoding through 2 slots refilled 4 times (prompts of 2 to 12 tokens, cache columns joined, pruned and
    trimmed) gives each prompt exactly what model.generate gives it alone."""
    model = tiny_llama(gen_tokenizer)
    ids = [gen_tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    eos = gen_tokenizer.eos_token_id
    sampler = ContinuousSampler(
        model, SamplingSettings(max_new_tokens=10, top_k=1), pad_token_id=eos, eos_token_ids=[eos], batch_size=2
    )
    out = sampler.sample(ids, seed=0)
    for prompt, tokens in zip(ids, out):
        alone = model.generate(
            torch.tensor([prompt]), do_sample=False, max_new_tokens=10, pad_token_id=eos, eos_token_id=eos
        )[0, len(prompt) :].tolist()
        assert tokens == alone
    assert len({tuple(t) for t in out}) > 1  # the check means something: the continuations differ


def test_a_finished_row_costs_no_more_compute(gen_tokenizer):
    """Rows that end (at a stop token or the budget) leave the batch: the token slots computed are the prompts'
    tokens plus one per sampled token after the first, where a padded batch pays the longest row for every row."""
    model = tiny_llama(gen_tokenizer, seed=1)
    ids = [gen_tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS * 4]
    vocab = range(len(gen_tokenizer))
    stops = [i for i in vocab if i % 7 == 0]  # many stop tokens: rows end after very different lengths
    sampler = ContinuousSampler(
        model, SamplingSettings(max_new_tokens=16), pad_token_id=0, eos_token_ids=stops, batch_size=8
    )
    out = sampler.sample(ids, seed=3)
    lengths = [len(o) for o in out]
    assert min(lengths) < max(lengths)
    assert all(o[-1] in stops or len(o) == 16 for o in out)
    assert all(t not in stops for o in out for t in o[:-1])
    assert sampler.token_slots == sum(len(p) for p in ids) + sum(n - 1 for n in lengths)
    assert sampler.sample(ids, seed=3) == out and sampler.sample(ids, seed=4) != out


def test_the_fast_nucleus_draws_only_what_transformers_top_p_keeps():
    """The nucleus is looked for among the likeliest CANDIDATES tokens when they hold top_p of the mass, else found
    by transformers' own warper: every drawn token is one TopPLogitsWarper keeps, on both paths."""
    torch.manual_seed(0)
    vocab = 4 * CANDIDATES
    peaked = torch.randn(6, vocab) * 6  # the nucleus lies inside the candidates
    flat = torch.randn(6, vocab) * 0.1  # it does not: the full warper decides
    logits = torch.cat([peaked, flat])
    settings = SamplingSettings(max_new_tokens=1, top_p=0.9, temperature=0.7)
    sampler = ContinuousSampler(torch.nn.Linear(1, 1), settings, pad_token_id=0, eos_token_ids=[])
    scaled = TemperatureLogitsWarper(0.7)(None, logits)
    top = torch.softmax(scaled, -1).topk(CANDIDATES).values.sum(-1)
    assert (top[:6] >= 0.9).all() and (top[6:] < 0.9).all()
    kept = TopPLogitsWarper(0.9)(None, scaled.clone()) > -float("inf")
    generator = torch.Generator().manual_seed(0)
    drawn = torch.stack([sampler._draw(logits, [[0]] * 12, generator) for _ in range(200)])
    assert kept.gather(1, drawn.T).all()
    assert len(set(drawn[:, 0].tolist())) > 1 and len(set(drawn[:, 8].tolist())) > 10


class NoLogitsToKeep(GPT2LMHeadModel):
    """A causal LM whose forward takes no `logits_to_keep` (as custom and older models do)."""

    def forward(self, input_ids=None, past_key_values=None, attention_mask=None, token_type_ids=None, **kwargs):
        if "logits_to_keep" in kwargs:
            raise TypeError(f"{type(self).__name__}.forward() got an unexpected keyword argument 'logits_to_keep'")
        return super().forward(
            input_ids=input_ids,
            past_key_values=past_key_values,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            **kwargs,
        )


def test_a_model_the_continuous_sampler_cannot_run_falls_back_to_generate_with_the_reason(corpus, gen_tokenizer):
    model = NoLogitsToKeep(tiny_gpt2(gen_tokenizer).config)
    choice = choose_sampler(model, [[1, 2], [3]], pad_token_id=0, batch_size=4)
    assert choice.engine == "generate" and "logits_to_keep" in choice.fallback and "NoLogitsToKeep" in choice.fallback
    augmenter = TextGenerationAugmenter(model, gen_tokenizer, make_args(num_samples=6))
    generated = augmenter.augment(corpus)
    assert len(generated) == 6 and augmenter.stats["sampling"]["engine"] == "generate"
    assert "logits_to_keep" in augmenter.stats["sampling"]["fallback"]


def test_the_augmenter_samples_with_the_continuous_engine_and_records_the_choice(corpus, gen_tokenizer):
    augmenter = TextGenerationAugmenter(tiny_llama(gen_tokenizer), gen_tokenizer, make_args(num_samples=12))
    generated = augmenter.augment(corpus)
    sampling = augmenter.stats["sampling"]
    assert len(generated) == 12 and sampling["engine"] == "continuous" and sampling["fallback"] is None
    assert sampling["precision"] in ("fp32", "bf16") and sampling["reason"]
    forced = TextGenerationAugmenter(
        tiny_llama(gen_tokenizer), gen_tokenizer, make_args(num_samples=12, sampling_precision="fp32")
    )
    forced.augment(corpus)
    assert (
        forced.stats["sampling"]["precision"] == "fp32" and forced.stats["sampling"]["reason"] == "set in the recipe"
    )
    with pytest.raises(ValueError, match="sampling_engine"):
        make_args(sampling_engine="vllm")
