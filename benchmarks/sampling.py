"""Accepted generated sentences per second, by sampling setting, on a run's fine-tuned generator (issue 12, 4a).

Every setting goes through the augmenter's own loop (`TextGenerationAugmenter._generate_all`: batched `generate`
with the KV cache, the length bounds drawn from the training sentences, the filters), on the same generator, the
same targets and seed, one after the other in one process. Printed side by side, with the share of sampled token
slots that were real tokens rather than padding after a row had finished.

    python benchmarks/sampling.py outputs/rotten_tomatoes_offline          # after `make run`
    python benchmarks/sampling.py RUN_DIR --per-label 48 --settings batch96,batch32,stop_newline

Settings (name: what changes from the recipe's):
  batch96, batch48, batch32, batch16   generation_batch_size
  fixed64                              max_new_tokens 64 instead of the bound drawn from the training lengths
  stop_newline                         newline tokens end a row too (eos_token_id list), batch 96
  int8_dynamic                         the generator's Linear layers quantized to dynamic INT8 (torch), batch 96
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from datasets import load_from_disk  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer_ext.augmentation import AugmentationArguments, TextGenerationAugmenter, load_generator  # noqa: E402
from trainer_ext.benchmark import cpu_description  # noqa: E402

SETTINGS = ("batch96", "batch48", "batch32", "batch16", "fixed64", "stop_newline", "int8_dynamic")


def _augmentation_args(run_dir: Path) -> AugmentationArguments:
    stats = json.loads((run_dir / "augmentation" / "augmentation_stats.json").read_text())
    fields = {f.name for f in dataclasses.fields(AugmentationArguments)}
    return AugmentationArguments(**{k: v for k, v in stats["args"].items() if k in fields})


def measure(augmenter: TextGenerationAugmenter, train_texts, label_names, per_label: int, seed: int) -> dict:
    slots = {"real": 0, "all": 0}
    sample = augmenter._sample

    def counting_sample(enc):
        out = sample(enc)
        new = out[:, enc["input_ids"].shape[1] :]
        pad = augmenter.tokenizer.pad_token_id
        # A finished row is padded with pad_token_id (the eos here): count up to and including its first one.
        finished = (new == pad).int().cumsum(dim=1)
        slots["real"] += int(((finished == 0) | ((finished == 1) & (new == pad))).sum())
        slots["all"] += new.numel()
        return out

    augmenter._sample = counting_sample
    augmenter._set_length_bounds(train_texts)
    prompt_names = augmenter.prompt_names(label_names)
    start = time.perf_counter()
    kept, stats = augmenter._generate_all(label_names, [per_label] * len(label_names), set(), prompt_names, None, seed)
    seconds = time.perf_counter() - start
    augmenter._sample = sample
    return {
        "accepted": len(kept),
        "generated": stats["generated"],
        "seconds": round(seconds, 1),
        "accepted_per_s": round(len(kept) / seconds, 3),
        "real_token_share": round(slots["real"] / max(slots["all"], 1), 3),
        "max_new_tokens": augmenter._max_new_tokens,
        "rejected": stats["rejected"],
        "mean_words": round(sum(len(t.split()) for t, _ in kept) / max(len(kept), 1), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--per-label", type=int, default=48, help="Accepted sentences to reach per label.")
    parser.add_argument("--settings", default="batch96,batch32,fixed64,stop_newline,int8_dynamic")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path)
    parsed = parser.parse_args(argv)
    settings = parsed.settings.split(",")
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        parser.error(f"unknown settings {unknown}; choose from {list(SETTINGS)}")
    run_dir = parsed.run_dir
    generator_dir = run_dir / "augmentation" / "generator"
    if not (generator_dir / "config.json").exists():
        parser.error(f"{generator_dir} has no fine-tuned generator: run the recipe with augment: true first")
    base_args = _augmentation_args(run_dir)
    base_args.output_dir = None
    train = load_from_disk(str(run_dir / "data" / "splits"))["train"]
    label_names = list(train.features["label"].names)
    train_texts = [str(t) for t in train["text"]]
    print(
        f"CPU: {cpu_description()}, {torch.get_num_threads()} threads, {platform.machine()}; torch {torch.__version__}, "
        f"transformers {transformers.__version__}; generator {generator_dir}"
    )

    results = {}
    model, tokenizer = load_generator(str(generator_dir))
    for name in settings:
        args = copy.deepcopy(base_args)
        generator = model
        if name.startswith("batch"):
            args.generation_batch_size = int(name.removeprefix("batch"))
        elif name == "fixed64":
            args.max_new_tokens = 64
        elif name == "int8_dynamic":
            generator = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, torch.qint8)
        augmenter = TextGenerationAugmenter(generator, tokenizer, args)
        if name == "stop_newline":
            newline_ids = [
                i for t, i in tokenizer.get_vocab().items() if "\n" in tokenizer.convert_tokens_to_string([t])
            ]
            generate = generator.generate

            def generate_until_newline(*a, _generate=generate, _stops=(tokenizer.eos_token_id, *newline_ids), **kw):
                return _generate(*a, **{**kw, "eos_token_id": list(_stops)})

            augmenter.model = copy.copy(generator)
            augmenter.model.generate = generate_until_newline
        results[name] = measure(augmenter, train_texts, label_names, parsed.per_label, parsed.seed)
        print(name, json.dumps(results[name]), flush=True)

    print("\n| setting | batch | max new tokens | accepted/s | real-token share | generated | seconds | mean words |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        batch = int(name.removeprefix("batch")) if name.startswith("batch") else base_args.generation_batch_size
        print(
            f"| {name} | {batch} | {r['max_new_tokens']} | {r['accepted_per_s']:.2f} | {r['real_token_share']:.2f} "
            f"| {r['generated']} | {r['seconds']} | {r['mean_words']} |"
        )
    if parsed.json:
        parsed.json.write_text(json.dumps({"cpu": cpu_description(), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
