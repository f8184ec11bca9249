import json

import numpy as np
import pytest
import torch
from conftest import LABELS, byte_level_tokenizer, make_bert, make_sentences, train_wordpiece_tokenizer
from datasets import Dataset
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from trainer_ext.data.transfer.augmentation import (
    GENERATOR_DIR,
    STATS_FILE,
    AugmentationArguments,
    AugmentationError,
    TextGenerationAugmenter,
    clean_generation,
    is_degenerate,
    merge_with_original,
    normalize_text,
    split_sentences,
)


def tiny_gpt2(tokenizer, seed=0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=64,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return GPT2LMHeadModel(config)


def make_args(tmp_path=None, **kw) -> AugmentationArguments:
    defaults = dict(
        num_samples=30,
        fine_tune=False,
        generation_batch_size=8,
        shard_size=16,
        max_new_tokens=12,
        min_words=1,
        max_words=40,
        max_attempts_factor=20,
        seed=7,
        output_dir=str(tmp_path) if tmp_path else None,
    )
    defaults.update(kw)
    return AugmentationArguments(**defaults)


def test_text_filters():
    assert normalize_text("  Great,  FILM!! ") == "great film"
    assert normalize_text("Café") == normalize_text("cafe")
    assert clean_generation(" a fine film<|endoftext|>pos\tmore", "\t", "<|endoftext|>") == "a fine film"
    assert clean_generation("first line\nsecond", "\t", None) == "first line"
    assert clean_generation("text\tneg\tother", "\t", None) == "text"
    assert is_degenerate("the the the the the film")
    assert is_degenerate("so good so good so good so good")
    assert not is_degenerate("a warm and funny film about a good dog")


def test_balanced_and_proportional_targets(gen_tokenizer):
    augmenter = TextGenerationAugmenter(tiny_gpt2(gen_tokenizer), gen_tokenizer, make_args(num_samples=10))
    assert augmenter._per_label_targets([0, 1, 2], 3, 10) == [4, 3, 3]
    augmenter.args.label_distribution = "proportional"
    assert augmenter._per_label_targets([0] * 6 + [1] * 3 + [2], 3, 10) == [6, 3, 1]


def test_augment_three_labels_with_teacher(tmp_path, corpus, gen_tokenizer):
    teacher_tok = train_wordpiece_tokenizer(list(corpus["text"]) + make_sentences(200, seed=5)[0])
    teacher = make_bert(teacher_tok, num_labels=3, id2label=dict(enumerate(LABELS)))
    args = make_args(tmp_path, fine_tune=True, fine_tune_epochs=1, fine_tune_batch_size=16)
    augmenter = TextGenerationAugmenter(tiny_gpt2(gen_tokenizer), gen_tokenizer, args)
    exclude = ["this is a held out test sentence"]
    out = augmenter.augment(corpus, teacher=teacher, teacher_tokenizer=teacher_tok, exclude_texts=exclude)

    assert set(out.column_names) == {"text", "label", "teacher_logits", "prompt_label", "source"}
    assert len(out) == 30
    assert set(out["source"]) == {"generated"}
    assert out.features["label"].names == LABELS
    # Balanced over the three prompt labels.
    assert np.bincount(list(out["prompt_label"]), minlength=3).tolist() == [10, 10, 10]
    # The label is the teacher's argmax over its logits.
    logits = np.asarray(list(out["teacher_logits"]))
    assert logits.shape == (30, 3)
    assert (logits.argmax(-1) == np.asarray(list(out["label"]))).all()
    with torch.no_grad():
        teacher.eval()
        direct = teacher(**teacher_tok(list(out["text"][:3]), padding=True, return_tensors="pt")).logits.numpy()
    assert np.allclose(logits[:3], direct, atol=1e-5)
    # Nothing from training or the excluded set, no duplicates after normalisation.
    keys = [normalize_text(t) for t in out["text"]]
    assert len(set(keys)) == len(keys)
    assert not set(keys) & {normalize_text(t) for t in corpus["text"]}
    stats = json.loads((tmp_path / STATS_FILE).read_text())["stats"]
    assert stats["kept"] == 30 and stats["generated"] >= 30
    # No teacher filters are set, so every relabelled row is kept and the agreement is over exactly these rows.
    prompt = np.asarray(list(out["prompt_label"]))
    agree = np.asarray(list(out["label"])) == prompt
    assert stats["dropped_by_teacher_filters"] == 0
    assert stats["teacher_agreement"] == pytest.approx(agree.mean(), abs=1e-12)
    expected_per_label = {name: agree[prompt == i].mean() for i, name in enumerate(LABELS)}
    assert stats["per_label_agreement"] == pytest.approx(expected_per_label, abs=1e-12)
    assert sum(stats["final_per_label"].values()) == 30
    assert (tmp_path / "generator" / "config.json").exists()


def test_leaked_and_duplicate_samples_are_dropped(corpus, gen_tokenizer):
    augmenter = TextGenerationAugmenter(tiny_gpt2(gen_tokenizer), gen_tokenizer, make_args(num_samples=4))
    augmenter._min_words, augmenter._max_words = 1, 40
    scripted = iter(
        [
            "A test sentence!",
            "fresh line one",
            "Fresh line ONE.",
            list(corpus["text"])[0],
            "another new line",
            "x y z w",
            "yet another line",
            "the last new line",
        ]
    )
    augmenter.generate_batch = lambda prompts, seed: [next(scripted) for _ in prompts]
    augmenter.args.shard_size = 2  # prompts per call: a call samples at most a shard
    excluded = {normalize_text("a test sentence"), normalize_text(list(corpus["text"])[0])}
    kept, stats = augmenter._generate_all(LABELS[:2], [2, 2], excluded, LABELS[:2], shard_dir=None, seed=7)
    texts = [t for t, _ in kept]
    assert "A test sentence!" not in texts and list(corpus["text"])[0] not in texts
    assert "Fresh line ONE." not in texts
    assert stats["rejected"]["in_train_or_eval"] == 2 and stats["rejected"]["duplicate"] == 1


def test_batches_are_sized_to_what_is_still_needed(gen_tokenizer):
    """The last calls ask for the shortfall at the acceptance rate seen so far, not for a full shard."""
    augmenter = TextGenerationAugmenter(tiny_gpt2(gen_tokenizer), gen_tokenizer, make_args(shard_size=8))
    augmenter._min_words, augmenter._max_words = 2, 40
    batches: list[int] = []
    counter = iter(range(10_000))

    def half_too_short(prompts, seed):
        batches.append(len(prompts))
        return [f"sentence number {next(counter)}" if i % 2 == 0 else "short" for i in range(len(prompts))]

    augmenter.generate_batch = half_too_short
    kept, stats = augmenter._generate_all(LABELS[:2], [5, 5], set(), LABELS[:2], shard_dir=None, seed=7)
    assert len(kept) == 10
    # First batch: 10 needed, at most 8 asked; half pass, so the rest are asked at twice the shortfall.
    assert batches[0] == 8 and all(b <= 8 for b in batches)
    assert stats["rejected"].get("label_full", 0) <= 2
    assert sum(batches) == stats["generated"] <= 22


def test_same_seed_same_output_and_resume(tmp_path, corpus, gen_tokenizer):
    model = tiny_gpt2(gen_tokenizer, seed=1)
    first = TextGenerationAugmenter(model, gen_tokenizer, make_args(tmp_path / "a")).augment(corpus)
    second = TextGenerationAugmenter(model, gen_tokenizer, make_args(tmp_path / "b")).augment(corpus)
    assert list(first["text"]) == list(second["text"])
    other = TextGenerationAugmenter(model, gen_tokenizer, make_args(tmp_path / "c", seed=8)).augment(corpus)
    assert list(other["text"]) != list(first["text"])

    # Interrupt a run after its first shard: the re-run keeps that shard and reaches the same result.
    calls = {"n": 0}
    interrupted = TextGenerationAugmenter(model, gen_tokenizer, make_args(tmp_path / "d"))
    original = interrupted.generate_batch

    def failing(prompts, seed):
        calls["n"] += 1
        if calls["n"] > 2:  # one call samples a 16-candidate shard: two shards are written
            raise KeyboardInterrupt
        return original(prompts, seed)

    interrupted.generate_batch = failing
    with pytest.raises(KeyboardInterrupt):
        interrupted.augment(corpus)
    assert (tmp_path / "d" / "shards" / "process_0" / "shard-00000.parquet").exists()
    resumed_augmenter = TextGenerationAugmenter(model, gen_tokenizer, make_args(tmp_path / "d"))
    generated = {"n": 0}
    inner = resumed_augmenter.generate_batch

    def counting(prompts, seed):
        generated["n"] += len(prompts)
        return inner(prompts, seed)

    resumed_augmenter.generate_batch = counting
    resumed = resumed_augmenter.augment(corpus)
    assert list(resumed["text"]) == list(first["text"])
    assert generated["n"] < json.loads((tmp_path / "a" / STATS_FILE).read_text())["stats"]["generated"]


def test_bad_input(tmp_path, corpus, gen_tokenizer):
    augmenter = TextGenerationAugmenter(tiny_gpt2(gen_tokenizer), gen_tokenizer, make_args())
    with pytest.raises(AugmentationError, match="no 'label' column"):
        augmenter.augment(corpus.remove_columns("label"))
    with pytest.raises(AugmentationError, match="empty"):
        augmenter.augment(corpus.select([]))
    no_eos = byte_level_tokenizer(["a b c"])
    no_eos.eos_token = None
    with pytest.raises(AugmentationError, match="end-of-sequence"):
        TextGenerationAugmenter(tiny_gpt2(gen_tokenizer), no_eos, make_args())
    with pytest.raises(AugmentationError, match="Cannot load the generator"):
        TextGenerationAugmenter(str(tmp_path / "missing"), args=make_args())
    # Filters nothing can pass: a clear error carrying the statistics, not an empty training set.
    strict = TextGenerationAugmenter(
        tiny_gpt2(gen_tokenizer), gen_tokenizer, make_args(min_words=500, max_words=600, max_attempts_factor=1)
    )
    with pytest.raises(AugmentationError, match="too_short"):
        strict.augment(corpus)
    with pytest.raises(ValueError, match="label_distribution"):
        make_args(label_distribution="uniform")


def test_merge_with_original(tmp_path, corpus, gen_tokenizer):
    augmented = TextGenerationAugmenter(tiny_gpt2(gen_tokenizer), gen_tokenizer, make_args()).augment(corpus)
    merged = merge_with_original(corpus, augmented)
    assert len(merged) == len(corpus) + len(augmented)
    assert merged.features["label"].names == LABELS
    assert list(merged["source"]).count("original") == len(corpus)


def test_distillation_trainer_augments_inside_train(tmp_path, corpus, gen_tokenizer, monkeypatch):
    from trainer_ext import DistillationTrainer, DistillationTrainingArguments

    student_tok = train_wordpiece_tokenizer(list(corpus["text"]) + make_sentences(200, seed=5)[0])
    teacher = make_bert(student_tok, hidden_size=48, num_labels=3, id2label=dict(enumerate(LABELS)), seed=1)
    student = make_bert(student_tok, num_labels=3, id2label=dict(enumerate(LABELS)), seed=2)
    train = corpus.map(lambda b: student_tok(b["text"], truncation=True, max_length=32), batched=True)
    generator_dir = tmp_path / "gen"
    tiny_gpt2(gen_tokenizer).save_pretrained(generator_dir)
    gen_tokenizer.save_pretrained(generator_dir)
    aug = make_args(tmp_path / "aug", generator_name_or_path=str(generator_dir), num_samples=24)
    trainer = DistillationTrainer(
        model=student,
        args=DistillationTrainingArguments(
            output_dir=str(tmp_path / "out"),
            per_device_train_batch_size=16,
            num_train_epochs=1,
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
            dataloader_pin_memory=False,
        ),
        train_dataset=train,
        eval_dataset=train.select(range(10)),
        processing_class=student_tok,
        teacher_model=teacher,
        augmentation_args=aug,
        augmentation_exclude_texts=["never generate this"],
    )
    trainer.train()
    assert len(trainer.train_dataset) == len(corpus) + 24
    assert trainer.augmentation_stats["kept"] == 24
    logits = np.asarray(list(trainer.train_dataset["teacher_logits"]))
    assert logits.shape == (len(corpus) + 24, 3) and np.isfinite(logits).all()
    # 114 examples, batch 16: 8 steps in the epoch, all on original plus generated data.
    assert trainer.state.global_step == 8


def test_augment_command(tmp_path, corpus, gen_tokenizer, capsys):
    from datasets import load_from_disk

    from trainer_ext.pipeline.cli import main

    generator_dir = tmp_path / "gen"
    tiny_gpt2(gen_tokenizer).save_pretrained(generator_dir)
    gen_tokenizer.save_pretrained(generator_dir)
    csv = tmp_path / "train.csv"
    corpus.to_pandas().assign(label=lambda df: df["label"].map(dict(enumerate(LABELS)))).to_csv(csv, index=False)
    code = main(
        [
            "augment",
            "--train_data",
            str(csv),
            "--generator_name_or_path",
            str(generator_dir),
            "--output_dir",
            str(tmp_path / "out"),
            "--num_samples",
            "12",
            "--fine_tune",
            "false",
            "--max_new_tokens",
            "12",
            "--min_words",
            "1",
            "--max_attempts_factor",
            "30",
            "--include_original",
            "true",
        ]
    )
    assert code == 0
    saved = load_from_disk(str(tmp_path / "out" / "augmented"))
    assert list(saved["source"]).count("generated") == 12
    assert "kept 12" in capsys.readouterr().out
    assert main(["augment", "--train_data", str(csv)]) == 2  # no --output_dir: one line, before any work
    assert "trainer-ext augment: error: --output_dir is missing. Pass --output_dir DIR" in capsys.readouterr().err


@pytest.mark.slow
def test_packaged_smollm2_gguf_loads_and_generates():
    """The real offline generator: GGUF through transformers (needs the gguf package), batched left-padded sampling."""
    from trainer_ext.data.assets import smollm2_gguf_path
    from trainer_ext.data.transfer.augmentation import load_generator

    model, tokenizer = load_generator(str(smollm2_gguf_path()))
    augmenter = TextGenerationAugmenter(model, tokenizer, make_args())
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    augmenter._max_new_tokens = 8
    texts = augmenter.generate_batch(["negative\t", "positive\t", "a longer prompt here\t"], seed=0)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert texts == augmenter.generate_batch(["negative\t", "positive\t", "a longer prompt here\t"], seed=0)


def test_a_gguf_generator_is_converted_once_into_the_cache(tmp_path, monkeypatch, gen_tokenizer):
    """The first load of a .gguf file saves the converted model and tokenizer; later loads read that folder."""
    from trainer_ext.data.transfer import generation

    monkeypatch.setenv("TRAINER_EXT_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "models" / "tiny.Q4.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF not really")
    calls = []
    real = generation._load_causal_lm

    def fake_gguf_load(name_or_path, gguf_file=None):
        calls.append((name_or_path, gguf_file))
        return (tiny_gpt2(gen_tokenizer), gen_tokenizer) if gguf_file else real(name_or_path)

    monkeypatch.setattr(generation, "_load_causal_lm", fake_gguf_load)
    first, _ = generation.load_generator(str(gguf))
    converted = tmp_path / "cache" / f"gguf-tiny.Q4-{gguf.stat().st_size}"
    assert calls == [(str(gguf.parent), gguf.name)] and (converted / "config.json").is_file()
    second, tokenizer = generation.load_generator(str(gguf))
    assert calls[-1] == (str(converted), None) and tokenizer.eos_token == gen_tokenizer.eos_token
    assert torch.equal(first.lm_head.weight, second.lm_head.weight)
    assert not list(converted.parent.glob(".*.tmp*"))  # written atomically: no temporary folder left


def test_split_sentences():
    review = 'A slow start.<br /><br />Then it flies!  "Great" fun? yes, mostly. 3 stars.'
    assert split_sentences(review) == ["A slow start.", "Then it flies!", '"Great" fun? yes, mostly.', "3 stars."]


def test_unlabeled_texts_join_the_transfer_set_relabelled_filtered_and_capped(tmp_path, corpus, gen_tokenizer):
    teacher_tok = train_wordpiece_tokenizer(list(corpus["text"]) + make_sentences(200, seed=5)[0])
    teacher = make_bert(teacher_tok, num_labels=3, id2label=dict(enumerate(LABELS)))
    test_sentence = "this is a held out test sentence."
    fresh = make_sentences(40, seed=21)[0]
    reviews = [
        f"{fresh[i].capitalize()}.<br />{fresh[i + 1].capitalize()}. {fresh[i + 2].capitalize()}!"
        for i in range(0, 36, 3)
    ]
    reviews.append(f"{corpus['text'][0].capitalize()}. {test_sentence.capitalize()} {fresh[0].capitalize()}.")
    source = tmp_path / "reviews.csv"
    Dataset.from_dict({"review": reviews}).to_csv(str(source), index=False)

    def run(**kw):
        args = make_args(num_samples=6, unlabeled_texts=str(source), unlabeled_text_column="review", **kw)
        augmenter = TextGenerationAugmenter(tiny_gpt2(gen_tokenizer), gen_tokenizer, args)
        out = augmenter.augment(corpus, teacher=teacher, teacher_tokenizer=teacher_tok, exclude_texts=[test_sentence])
        return out, augmenter.stats

    out, stats = run()
    unlabeled = out.filter(lambda r: r["source"] == "unlabeled")
    assert len(out.filter(lambda r: r["source"] == "generated")) == 6
    # 39 sentences: the training sentence, the test sentence and one repeat are dropped and counted.
    assert stats["unlabeled"]["sentences"] == 39 and len(unlabeled) == stats["unlabeled"]["kept"] == 36
    assert stats["unlabeled"]["rejected"] == {"in_train_or_eval": 2, "duplicate": 1}
    keys = {normalize_text(t) for t in unlabeled["text"]}
    assert normalize_text(test_sentence) not in keys and normalize_text(corpus["text"][0]) not in keys
    assert not any("<br" in t for t in unlabeled["text"])
    # Labelled by the teacher; no prompt, so outside the agreement statistic.
    logits = np.asarray(list(unlabeled["teacher_logits"]))
    assert (logits.argmax(-1) == np.asarray(list(unlabeled["label"]))).all()
    assert set(unlabeled["prompt_label"]) == {-1}
    generated = out.filter(lambda r: r["source"] == "generated")
    assert stats["teacher_agreement"] == pytest.approx(
        np.mean(np.asarray(generated["label"]) == np.asarray(generated["prompt_label"]))
    )
    capped, capped_stats = run(max_transfer_samples=10)
    assert len(capped) == 10 and capped_stats["unlabeled"]["kept"] == 4
    assert "short_of_cap" not in capped_stats["unlabeled"]
    # A cap above what the source holds: what there is is used, and the shortfall said, not a late failure.
    more, more_stats = run(max_transfer_samples=100)
    assert len(more) == 6 + 36 and more_stats["unlabeled"]["short_of_cap"] == 100 - 6 - 36


def test_bad_unlabeled_sources_fail_before_any_generation(tmp_path, corpus, gen_tokenizer, monkeypatch):
    from trainer_ext.data.loading import DataValidationError

    teacher_tok = train_wordpiece_tokenizer(list(corpus["text"]))
    teacher = make_bert(teacher_tok, num_labels=3, id2label=dict(enumerate(LABELS)))
    empty, numbers = tmp_path / "empty.jsonl", tmp_path / "numbers.csv"
    Dataset.from_dict({"text": ["", ""]}).to_json(str(empty))
    Dataset.from_dict({"text": [1, 2]}).to_csv(str(numbers), index=False)
    augmenter = TextGenerationAugmenter(tiny_gpt2(gen_tokenizer), gen_tokenizer, make_args())
    monkeypatch.setattr(augmenter, "generate_batch", lambda *a, **k: pytest.fail("generation started"))
    for path, column, match in (
        (empty, "text", "holds no text"),
        (numbers, "text", "not text"),
        (numbers, "review", "no column 'review'"),
    ):
        augmenter.args = make_args(unlabeled_texts=str(path), unlabeled_text_column=column)
        with pytest.raises(DataValidationError, match=match):
            augmenter.augment(corpus, teacher=teacher, teacher_tokenizer=teacher_tok)
    augmenter.args = make_args(unlabeled_texts=str(numbers))
    with pytest.raises(AugmentationError, match="needs a teacher"):
        augmenter.augment(corpus)


def test_packaged_imdb_reviews_are_read_without_the_rotten_tomatoes_rows():
    from trainer_ext.data.loading import OFFLINE_UNLABELED_NAME, load_offline_rotten_tomatoes, load_unlabeled_texts

    texts = load_unlabeled_texts(OFFLINE_UNLABELED_NAME)
    assert len(texts) == 25_000
    splits = load_offline_rotten_tomatoes()
    ours = {normalize_text(t) for split in splits.values() for t in split["text"]}
    assert not ours & {normalize_text(t) for t in texts[:2000]}


def test_a_fine_tuned_generator_is_reused_only_with_the_settings_and_data_it_was_tuned_with(
    tmp_path, corpus, gen_tokenizer
):
    """A re-run of the augmentation (a resumed or redone stage) used to crash on a folder holding a fine-tuned
    generator (its tokenizer was dropped), and would have reused a generator tuned with other settings."""
    base = tmp_path / "base"
    tiny_gpt2(gen_tokenizer).save_pretrained(base)
    gen_tokenizer.save_pretrained(base)
    out = tmp_path / "aug"

    def tuned(**kw) -> TextGenerationAugmenter:
        args = make_args(out, fine_tune=True, fine_tune_epochs=1, fine_tune_max_samples=32, **kw)
        augmenter = TextGenerationAugmenter(str(base), args=args)
        augmenter.fine_tune(corpus, LABELS)
        return augmenter

    def weights(model) -> torch.Tensor:
        return model.get_input_embeddings().weight.detach().clone()

    first = weights(tuned().model)
    assert not torch.equal(first, weights(GPT2LMHeadModel.from_pretrained(base)))  # it trained
    again = tuned()  # the same settings and data: loaded from the folder, not trained again
    assert again.model.name_or_path == str(out / GENERATOR_DIR)
    assert torch.equal(weights(again.model), first)

    other = weights(tuned(fine_tune_learning_rate=5e-3).model)  # another setting: tuned again from the base
    assert not torch.equal(other, first)
    assert torch.equal(weights(AutoModelForCausalLM.from_pretrained(out / GENERATOR_DIR)), other)

    augmenter = TextGenerationAugmenter(
        str(base),
        args=make_args(
            out, fine_tune=True, fine_tune_epochs=1, fine_tune_max_samples=32, fine_tune_learning_rate=5e-3
        ),
    )
    augmenter.fine_tune(corpus.select(range(60)), LABELS)  # other data, same settings: tuned again
    assert not torch.equal(weights(augmenter.model), other)


# ------------------------------------------------------------------------------------ the teacher's labelling form
def _labelling_setup(corpus):
    teacher_tok = train_wordpiece_tokenizer(list(corpus["text"]) + make_sentences(200, seed=5)[0])
    teacher = make_bert(teacher_tok, num_labels=3, id2label=dict(enumerate(LABELS)))
    check = make_sentences(60, seed=9, num_labels=3)[0]  # stands for the validation split
    return teacher, teacher_tok, check


def test_an_int8_labelling_teacher_that_agrees_with_fp32_labels_the_transfer_set(tmp_path, corpus, gen_tokenizer):
    from trainer_ext.deployment.benchmark import ClassifierRunner

    teacher, teacher_tok, check = _labelling_setup(corpus)
    args = make_args(tmp_path, num_samples=12, teacher_labelling="int8")
    augmenter = TextGenerationAugmenter(tiny_gpt2(gen_tokenizer), gen_tokenizer, args)
    out = augmenter.augment(corpus, teacher=teacher, teacher_tokenizer=teacher_tok, labelling_texts=check)

    record = json.loads((tmp_path / STATS_FILE).read_text())["stats"]["teacher_labelling"]
    assert record["form"] == "int8" and record["requested"] == "int8" and record["fallback"] is None
    assert record["agreement"] >= 0.99 and record["sentences"] == 60 and record["min_agreement"] == 0.99
    assert set(record["seconds_per_10k"]) == {"fp32", "int8"} and all(
        s > 0 for s in record["seconds_per_10k"].values()
    )
    # The INT8 files sit under the augmentation folder, with the teacher they were made from.
    int8 = tmp_path / "teacher_int8" / "model_quantized.onnx"
    assert record["int8_model"] == str(int8) and (tmp_path / "teacher_int8" / "labeller.json").exists()
    # The transfer set carries the INT8 model's logits, not FP32's, and its labels are their argmax.
    logits = np.asarray(list(out["teacher_logits"]))
    runner_logits = ClassifierRunner(int8, teacher_tok).logits(list(out["text"]), max_length=args.max_length)
    assert np.allclose(logits, runner_logits, atol=1e-5)
    with torch.no_grad():
        teacher.eval()
        fp32 = teacher(**teacher_tok(list(out["text"]), padding=True, return_tensors="pt")).logits.numpy()
    assert not np.allclose(logits, fp32, atol=1e-6)
    assert (logits.argmax(-1) == np.asarray(list(out["label"]))).all()


def test_an_int8_labelling_teacher_that_disagrees_falls_back_before_generation_and_says_why(
    tmp_path, corpus, gen_tokenizer, monkeypatch
):
    import trainer_ext.data.transfer.labelling as labelling

    teacher, teacher_tok, check = _labelling_setup(corpus)
    real, calls = labelling.int8_logits, []

    def one_label_flipped(*args, **kwargs):
        logits = real(*args, **kwargs)
        logits[0] = -logits[0]  # the INT8 teacher now disagrees with FP32 on the first check sentence: 59 of 60
        calls.append(len(logits))
        return logits

    monkeypatch.setattr(labelling, "int8_logits", one_label_flipped)
    args = make_args(tmp_path, num_samples=12, teacher_labelling="int8")
    augmenter = TextGenerationAugmenter(tiny_gpt2(gen_tokenizer), gen_tokenizer, args)
    generate = augmenter.generate_batch

    def checked_first(*a, **k):
        assert calls == [60], "the INT8 teacher must be checked before any sentence is generated"
        return generate(*a, **k)

    monkeypatch.setattr(augmenter, "generate_batch", checked_first)
    out = augmenter.augment(corpus, teacher=teacher, teacher_tokenizer=teacher_tok, labelling_texts=check)

    record = augmenter.stats["teacher_labelling"]
    assert record["form"] == "fp32" and record["requested"] == "int8"
    assert record["agreement"] == pytest.approx(59 / 60)
    assert (
        record["fallback"]
        == record["reason"]
        == (
            "the INT8 teacher agreed with FP32 on 98.33% of 60 validation sentences, below min_labelling_agreement "
            "99.00%: labelled in FP32 instead"
        )
    )
    assert calls == [60]  # the transfer set was not labelled by INT8
    # Labelled by the FP32 teacher: its logits, exactly.
    with torch.no_grad():
        teacher.eval()
        fp32 = teacher(**teacher_tok(list(out["text"]), padding=True, return_tensors="pt")).logits.numpy()
    assert np.allclose(np.asarray(list(out["teacher_logits"])), fp32, atol=1e-5)
    assert json.loads((tmp_path / STATS_FILE).read_text())["stats"]["teacher_labelling"] == record


def test_bad_teacher_labelling_settings_are_refused_with_a_clear_message(corpus, gen_tokenizer, monkeypatch):
    with pytest.raises(
        ValueError, match=r"teacher_labelling must be one of \('auto', 'fp32', 'bf16', 'int8'\), got 'int4'"
    ):
        make_args(teacher_labelling="int4")
    for bad in (1.01, -0.1):
        with pytest.raises(ValueError, match=rf"min_labelling_agreement must be in \[0, 1\].*got {bad}"):
            make_args(min_labelling_agreement=bad)
    # INT8 without sentences to check it on, or without a folder for its files: refused before any generation.
    teacher, teacher_tok, check = _labelling_setup(corpus)
    augmenter = TextGenerationAugmenter(tiny_gpt2(gen_tokenizer), gen_tokenizer, make_args(teacher_labelling="int8"))
    monkeypatch.setattr(augmenter, "generate_batch", lambda *a, **k: pytest.fail("generation started"))
    for texts in (None, check):
        with pytest.raises(
            AugmentationError, match="teacher_labelling='int8' needs validation sentences .* output_dir"
        ):
            augmenter.augment(corpus, teacher=teacher, teacher_tokenizer=teacher_tok, labelling_texts=texts)


def test_fp32_bf16_and_auto_labelling_forms_and_bf16_without_fast_bf16_is_used_as_asked_with_its_reason(
    corpus, monkeypatch
):
    """As run.precision: bf16 set in the recipe on a CPU without fast bf16 is used, with a warning and the reason."""
    import trainer_ext.data.transfer.labelling as labelling

    teacher, teacher_tok, _ = _labelling_setup(corpus)
    assert labelling.choose_labelling("auto", teacher, teacher_tok, auto_bf16=True).form == "bf16"
    assert labelling.choose_labelling("auto", teacher, teacher_tok).form == "fp32"
    assert labelling.choose_labelling("fp32", teacher, teacher_tok, auto_bf16=True).form == "fp32"
    monkeypatch.setattr(
        labelling, "bf16_support", lambda _device: (False, "CPU has no AMX or AVX512-BF16 (AVX2 only)")
    )
    choice = labelling.choose_labelling("bf16", teacher, teacher_tok)
    assert choice.form == "bf16" and choice.fallback is None
    assert (
        choice.reason
        == "set in the recipe, although CPU has no AMX or AVX512-BF16 (AVX2 only) (likely slower than fp32)"
    )


def test_opening_word_prompts_continue_training_openings_and_never_one_that_begins_an_eval_sentence(
    corpus, gen_tokenizer
):
    texts, labels = list(corpus["text"]), list(corpus["label"])
    leaking = texts[0]  # an eval sentence that begins like the first training sentence
    opening = " ".join(leaking.split()[:2])
    augmenter = TextGenerationAugmenter(
        tiny_gpt2(gen_tokenizer), gen_tokenizer, make_args(num_samples=12, prompt_opening_words=2)
    )
    prompts_seen: list[str] = []
    generate = augmenter.generate_batch

    def recording(prompts, seed):
        prompts_seen.extend(prompts)
        return generate(prompts, seed)

    augmenter.generate_batch = recording
    generated = augmenter.augment(corpus, exclude_texts=[leaking + " and more words"])
    stats = augmenter.stats["prompt_openings"]
    same_opening = sum(" ".join(t.split()[:2]).lower() == opening.lower() for t in texts if len(t.split()) > 2)
    assert stats["words"] == 2 and stats["dropped"]["leaks_validation_or_test"] == same_opening >= 1
    assert stats["openings"] + sum(stats["dropped"].values()) == len(texts)
    bodies = [p.split("\t", 1)[1] for p in prompts_seen]
    assert all(len(b.split()) == 2 for b in bodies) and opening not in bodies
    pools = {lab: {" ".join(t.split()[:2]) for t, y in zip(texts, labels) if y == lab} for lab in range(3)}
    names = augmenter.prompt_names(LABELS)
    assert all(p.split("\t", 1)[1] in pools[names.index(p.split("\t", 1)[0])] for p in prompts_seen)
    assert all(any(t.startswith(b) for b in bodies) for t in generated["text"])  # the opening is part of the text


def test_a_generator_context_too_short_for_the_sentences_bounds_the_budget_and_counts_the_cut_lines(
    tmp_path, corpus, gen_tokenizer
):
    long_corpus = corpus.map(lambda row: {"text": " ".join([row["text"]] * 4)})
    model = tiny_gpt2(gen_tokenizer)
    model.config.n_positions = 24  # the embeddings cover more; the config is what is read
    args = make_args(tmp_path, num_samples=6, max_new_tokens=40, fine_tune=True, fine_tune_epochs=1)
    augmenter = TextGenerationAugmenter(model, gen_tokenizer, args)
    augmenter.augment(long_corpus)
    context = augmenter.stats["context"]
    assert context["context"] == 24 and context["max_new_tokens_asked"] == 40
    assert context["max_new_tokens"] == 24 - context["longest_prompt"] == augmenter._max_new_tokens
    assert augmenter.stats["fine_tune_lines_cut"] == len(long_corpus)  # every 4x sentence is over 24 tokens


def test_without_unlabelled_text_the_transfer_set_is_generated_at_the_cap_and_the_sources_are_counted(
    corpus, gen_tokenizer
):
    assert AugmentationArguments(max_transfer_samples=300).num_samples == 300
    assert AugmentationArguments().num_samples == 20_000
    assert AugmentationArguments(unlabeled_texts="x.txt").num_samples == 0
    with pytest.raises(ValueError, match="num_samples"):
        AugmentationArguments(num_samples=0)
    augmenter = TextGenerationAugmenter(tiny_gpt2(gen_tokenizer), gen_tokenizer, make_args(num_samples=None))
    augmenter.args.max_transfer_samples = None
    augmenter.args.num_samples = 10
    generated = augmenter.augment(corpus)
    assert augmenter.stats["sources"] == {"generated": len(generated)} == {"generated": 10}
    quality = augmenter.stats["quality"]
    assert quality["compared_sentences"] == 10 and 0 < quality["distinct_2"]["generated"] <= 1
    assert quality["length"]["training"]["mean_words"] > 0
