"""Augmentation benchmarks on the offline default, all measured in one run and printed side by side.

1. throughput: accepted samples per second of TextGenerationAugmenter's batched sampling against a loop of
   one-prompt `pipeline("text-generation")` calls (the reference implementation's way), same model and settings.
2. quality: the packaged SmolLM2 fine-tuned on "label<TAB>text" lines, >= 2,000 kept sentences relabelled by the
   fine-tuned MiniLM teacher; agreement with the prompt label; ten samples per label.
3. effect: the same student distilled with and without the augmented sentences, accuracy on the test split (the
   student and its training settings are the offline recipe's, demo profile).

    python benchmarks/augmentation.py --teacher outputs/demo/teacher [--num-samples 2000]

Needs a fine-tuned teacher folder (`make demo` writes one to outputs/demo/teacher). Stages resume from
--output-dir: the fine-tuned generator and finished generation shards are reused.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    pipeline,
)
from transformers.utils import logging as hf_logging  # noqa: E402

from trainer_ext.data.assets import smollm2_gguf_path  # noqa: E402
from trainer_ext.data.loading import load_offline_rotten_tomatoes  # noqa: E402
from trainer_ext.data.transfer.augmentation import (  # noqa: E402
    AugmentationArguments,
    TextGenerationAugmenter,
    clean_generation,
    load_generator,
    merge_with_original,
)
from trainer_ext.deployment.benchmark import ClassifierRunner, accuracy  # noqa: E402
from trainer_ext.pipeline.recipe import load_recipe  # noqa: E402
from trainer_ext.training.students import build_student, calibration_batches  # noqa: E402
from trainer_ext.training.trainer import DistillationTrainer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def throughput(model, tokenizer, args: AugmentationArguments, label_names: list[str], n_loop: int, n_batched: int):
    """Accepted samples/s: batched `generate` vs one `pipeline` call per prompt, on the same model and settings."""
    augmenter = TextGenerationAugmenter(model, tokenizer, args)
    augmenter._min_words, augmenter._max_words, augmenter._max_new_tokens = 2, 60, args.max_new_tokens or 40

    def accepted(texts):
        return sum(augmenter._min_words <= len(t.split()) <= augmenter._max_words for t in texts)

    prompts = [f"{label_names[i % len(label_names)]}{args.separator}" for i in range(n_batched)]
    start = time.perf_counter()
    texts = []
    for i in range(0, n_batched, args.generation_batch_size):
        texts += augmenter.generate_batch(prompts[i : i + args.generation_batch_size], seed=i)
    batched_rate = accepted(texts) / (time.perf_counter() - start)

    generate = pipeline("text-generation", model=model, tokenizer=tokenizer, device=-1)
    start = time.perf_counter()
    loop_texts = []
    for prompt in prompts[:n_loop]:
        out = generate(
            prompt,
            do_sample=True,
            top_p=args.top_p,
            top_k=args.top_k,
            temperature=args.temperature,
            max_new_tokens=augmenter._max_new_tokens,
            return_full_text=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        loop_texts.append(clean_generation(out[0]["generated_text"], args.separator, tokenizer.eos_token))
    loop_rate = accepted(loop_texts) / (time.perf_counter() - start)
    return batched_rate, loop_rate, accepted(texts), accepted(loop_texts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="outputs/demo/teacher")
    parser.add_argument("--output-dir", default="outputs/bench_augmentation")
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--fine-tune-samples", type=int, default=2000)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--batch-size", type=int, default=48)
    parser.add_argument("--throughput-batch-size", type=int, default=48, help="batch of the batched side")
    parser.add_argument("--skip-effect", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--loop-prompts", type=int, default=8)
    parser.add_argument("--batched-prompts", type=int, default=96)
    cli = parser.parse_args()
    hf_logging.set_verbosity_error()
    out = Path(cli.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    data = load_offline_rotten_tomatoes()
    label_names = data["train"].features["label"].names
    teacher = AutoModelForSequenceClassification.from_pretrained(cli.teacher)
    teacher_tokenizer = AutoTokenizer.from_pretrained(cli.teacher)
    aug_args = AugmentationArguments(
        generator_name_or_path=str(smollm2_gguf_path()),
        num_samples=cli.num_samples,
        fine_tune=True,
        fine_tune_max_samples=cli.fine_tune_samples,
        fine_tune_learning_rate=1e-4,
        freeze_layers=10,  # of 30: the upper 20 layers and the head learn the label conditioning
        prompt_label_names="negative,positive",  # words the LM knows condition it much faster than "neg"/"pos"
        temperature=cli.temperature,
        generation_batch_size=cli.batch_size,
        top_p=0.9,
        output_dir=str(out / "augmentation"),
    )

    start = time.perf_counter()
    model, tokenizer = load_generator(aug_args.generator_name_or_path)
    print(f"generator loaded in {time.perf_counter() - start:.1f} s: {model.num_parameters():,} params")
    augmenter = TextGenerationAugmenter(model, tokenizer, aug_args)
    exclude = list(data["validation"]["text"]) + list(data["test"]["text"])
    generated = augmenter.augment(
        data["train"], teacher=teacher, teacher_tokenizer=teacher_tokenizer, exclude_texts=exclude
    )
    stats = augmenter.stats

    results = {"stats": stats}
    if not cli.skip_throughput:
        prompt_names = augmenter.prompt_names(label_names)
        bench_args = dataclasses.replace(aug_args, generation_batch_size=cli.throughput_batch_size)
        batched_rate, loop_rate, n_b, n_l = throughput(
            augmenter.model, augmenter.tokenizer, bench_args, prompt_names, cli.loop_prompts, cli.batched_prompts
        )
        results["throughput"] = {
            "batched_accepted_per_s": batched_rate,
            "pipeline_loop_accepted_per_s": loop_rate,
            "ratio": batched_rate / loop_rate,
        }
    print("\n== quality (fine-tuned SmolLM2-135M generator, MiniLM teacher relabels) ==")
    print(
        f"generated {stats['generated']}, kept {stats['kept']}, final {stats['final']}, rejected {stats['rejected']}"
    )
    print(
        f"teacher agrees with the prompt label on {100 * stats['teacher_agreement']:.1f}% "
        f"(per label: { {k: round(100 * v, 1) for k, v in stats['per_label_agreement'].items()} })"
    )
    print(
        f"generator fine-tuning {stats['fine_tune_seconds']:.0f} s, generation+filtering "
        f"{stats['generation_seconds']:.0f} s"
    )
    for i, name in enumerate(label_names):
        rows = generated.filter(lambda r, i=i: r["prompt_label"] == i).select(range(10))
        print(f"-- ten samples prompted with '{name}' (teacher label in brackets)")
        for text, label in zip(rows["text"], rows["label"]):
            print(f"   [{label_names[label]}] {text}")
    if not cli.skip_throughput:
        print("\n== throughput (same model, same sampling settings) ==")
        print(
            f"batched generate (batch {bench_args.generation_batch_size}, KV cache): {batched_rate:.2f} accepted/s "
            f"({n_b} accepted)"
        )
        print(f"one-prompt pipeline('text-generation') loop: {loop_rate:.2f} accepted/s ({n_l} accepted)")
        print(f"ratio: {batched_rate / loop_rate:.1f}x (target >= 8x)")

    if not cli.skip_effect:
        del augmenter, model
        # The student, its initialisation and its training settings are the offline recipe's (demo profile).
        recipe = load_recipe(ROOT / "recipes" / "rotten_tomatoes_minilm.yaml", profile="demo")
        original, test = data["train"], data["test"]
        with_generated = merge_with_original(original, generated.remove_columns("teacher_logits"))
        texts = original["text"][: recipe.run.student_init_samples]
        initial = build_student(
            teacher,
            preset=recipe.run.student[0],
            seed=recipe.run.seed,
            calibration_inputs=calibration_batches(teacher_tokenizer, texts, max_length=recipe.run.max_length),
        )
        rows = {}
        for name, train in (
            ("distilled, original data", original),
            ("distilled, original + generated", with_generated),
        ):
            student = copy.deepcopy(initial)
            args = dataclasses.replace(recipe.student_training, output_dir=str(out / "effect" / name))
            tokenized = train.map(
                lambda b: teacher_tokenizer(b["text"], truncation=True, max_length=recipe.run.max_length), batched=True
            )
            start = time.perf_counter()
            DistillationTrainer(
                model=student,
                args=args,
                train_dataset=tokenized,
                processing_class=teacher_tokenizer,
                data_collator=DataCollatorWithPadding(teacher_tokenizer),
                teacher_model=teacher,
            ).train()
            logits = ClassifierRunner(student, teacher_tokenizer).logits(list(test["text"]))
            rows[name] = {
                "accuracy": accuracy(logits, test["label"]),
                "train_examples": len(train),
                "train_seconds": time.perf_counter() - start,
            }
        teacher_logits = ClassifierRunner(teacher, teacher_tokenizer).logits(list(test["text"]))
        rows["teacher"] = {"accuracy": accuracy(teacher_logits, test["label"])}
        results["effect"] = rows
        t = recipe.student_training
        print(
            f"\n== effect ({recipe.run.student[0]} student, {t.distillation_loss} loss, distillation_weight "
            f"{t.distillation_weight}, T={t.temperature}, {t.num_train_epochs:g} epochs; test split) =="
        )
        for name, row in rows.items():
            print(
                f"{name:<34} accuracy {100 * row['accuracy']:.2f}%  "
                f"{'train examples ' + str(row.get('train_examples')) if 'train_examples' in row else ''}"
            )
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    torch.set_num_threads(torch.get_num_threads())


if __name__ == "__main__":
    main()
