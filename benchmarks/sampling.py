"""Accepted generated sentences per second, by sampling engine, on a run's fine-tuned generator (issues 12 and 23).

Every setting goes through the augmenter's own loop (`TextGenerationAugmenter._generate_all`: the length bounds drawn
from the training sentences, the filters, the same targets and seed), on the same fine-tuned generator, one after the
other in one process, so the rates are comparable within one run. Printed side by side with the share of computed
token slots that were real tokens rather than padding behind a finished row.

    python benchmarks/sampling.py outputs/rotten_tomatoes_offline          # after `make run`
    python benchmarks/sampling.py RUN_DIR --per-label 256 --settings generate32,continuous_bf16_256

Settings:
  generate32                    model.generate on padded batches of 32 under the run's generator precision (bf16
                                autocast on a bf16 CPU): the loop before issue 23
  generate32_fp32               the same in FP32 (what a CPU without fast bf16 runs)
  static_compile32              the same with a static KV cache and torch.compile of the forward (transformers'
                                CompileConfig, on CPU too), bf16 weights instead of autocast on a bf16 CPU
  continuous_<fp32|bf16>_<B>    trainer_ext.data.transfer.sampling.ContinuousSampler with B rows in flight and FP32 or bf16 weights
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

from trainer_ext.data.transfer.augmentation import AugmentationArguments, TextGenerationAugmenter, load_generator  # noqa: E402
from trainer_ext.data.transfer.sampling import sampling_model  # noqa: E402
from trainer_ext.deployment.benchmark import cpu_description  # noqa: E402

DEFAULT = "generate32,static_compile32,continuous_fp32_128,continuous_bf16_64,continuous_bf16_128,continuous_bf16_256"


def _augmentation_args(run_dir: Path) -> AugmentationArguments:
    stats = json.loads((run_dir / "augmentation" / "augmentation_stats.json").read_text())
    fields = {f.name for f in dataclasses.fields(AugmentationArguments)}
    args = {k: v for k, v in stats["args"].items() if k in fields}
    args.update(unlabeled_texts=None, num_samples=1, output_dir=None, prompt_opening_words=0)
    return AugmentationArguments(**args)


def _cpu_compile_config() -> transformers.CompileConfig:
    """transformers compiles generate's forward only on CUDA unless flagged; 'reduce-overhead' means CUDA graphs."""
    config = transformers.CompileConfig(mode="default")
    config._compile_all_devices = True
    return config


def _generator_bf16(run_dir: Path) -> bool:
    path = run_dir / "precision.json"
    return path.exists() and json.loads(path.read_text()).get("generator", {}).get("precision") == "bf16"


def measure(augmenter: TextGenerationAugmenter, train_texts, label_names, per_label: int, seed: int) -> dict:
    """Accepted sentences per second through the augmenter's loop, and the real share of computed token slots."""
    slots = {"real": 0, "all": 0}
    generator = augmenter.generator  # the generation source: its sampler, or generate's call
    if generator._sampler is None:
        sample = generator._sample

        def counting_sample(enc):
            out = sample(enc)
            new = out[:, enc["input_ids"].shape[1] :]
            pad = augmenter.tokenizer.pad_token_id
            finished = (new == pad).int().cumsum(dim=1)  # a finished row is padded with pad (the eos here)
            slots["real"] += int(((finished == 0) | ((finished == 1) & (new == pad))).sum())
            slots["all"] += new.numel()
            return out

        generator._sample = counting_sample
    else:
        sampler, inner = generator._sampler, generator._sampler.sample

        def counting(prompts, seed):
            out = inner(prompts, seed)
            # Every computed slot is a prompt token or a sampled token fed back (the last one never is fed).
            slots["real"] += sum(len(p) for p in prompts) + sum(len(o) - 1 for o in out)
            slots["all"] += sampler.token_slots
            return out

        sampler.sample = counting
    start = time.perf_counter()
    names = augmenter.prompt_names(label_names)
    kept, stats = augmenter._generate_all(label_names, [per_label] * len(label_names), set(), names, None, seed)
    seconds = time.perf_counter() - start
    return {
        "accepted": len(kept),
        "generated": stats["generated"],
        "seconds": round(seconds, 1),
        "accepted_per_s": round(len(kept) / seconds, 2),
        "real_token_share": round(slots["real"] / max(slots["all"], 1), 3),
        "max_new_tokens": augmenter._max_new_tokens,
        "rejected": stats["rejected"],
        "mean_words": round(sum(len(t.split()) for t, _ in kept) / max(len(kept), 1), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--per-label", type=int, default=256, help="Accepted sentences to reach per label.")
    parser.add_argument("--settings", default=DEFAULT)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path)
    parsed = parser.parse_args(argv)
    run_dir = parsed.run_dir
    generator_dir = run_dir / "augmentation" / "generator"
    if not (generator_dir / "config.json").exists():
        parser.error(f"{generator_dir} has no fine-tuned generator: run the recipe with augment: true first")
    base_args = _augmentation_args(run_dir)
    train = load_from_disk(str(run_dir / "data" / "splits"))["train"]
    label_names = list(train.features["label"].names)
    train_texts = [str(t) for t in train["text"]]
    print(
        f"CPU: {cpu_description()}, {torch.get_num_threads()} threads, {platform.machine()}; torch {torch.__version__}, "
        f"transformers {transformers.__version__}; generator {generator_dir}"
    )
    results = {}
    model, tokenizer = load_generator(str(generator_dir))
    for name in parsed.settings.split(","):
        args = copy.deepcopy(base_args)
        if name in ("generate32", "generate32_fp32", "static_compile32"):
            args.sampling_engine, args.generation_batch_size = "generate", 32
        elif name.startswith("continuous_"):
            _, precision, batch = name.split("_")
            args.sampling_engine, args.sampling_precision, args.generation_batch_size = (
                "continuous",
                precision,
                int(batch),
            )
        else:
            parser.error(f"unknown setting {name!r}")
        # The static cache is allocated in the weights' dtype: it cannot run under autocast, so it gets bf16 weights
        # where the run's generator ran under bf16 autocast.
        static_bf16 = name == "static_compile32" and _generator_bf16(run_dir)
        augmenter = TextGenerationAugmenter(sampling_model(model, "bf16") if static_bf16 else model, tokenizer, args)
        augmenter.generator.bf16 = _generator_bf16(run_dir) and not static_bf16 and name != "generate32_fp32"
        augmenter._set_length_bounds(train_texts)
        augmenter.generator.choose_sampling(augmenter.prompt_names(label_names))
        if name == "static_compile32":

            def static_sample(enc, _generator=augmenter.generator):
                static = {"cache_implementation": "static", "compile_config": _cpu_compile_config()}
                return _generator.model.generate(**enc, **_generator.generate_kwargs(), **static)

            augmenter.generator._sample = static_sample
            compile_start = time.perf_counter()
            augmenter.generate_batch(["negative\t"] * 32, seed=0)  # compiles (the first call's cost, reported apart)
            print(
                f"static_compile32: first call (compilation) {time.perf_counter() - compile_start:.1f} s", flush=True
            )
        results[name] = measure(augmenter, train_texts, label_names, parsed.per_label, parsed.seed)
        print(name, json.dumps(results[name]), flush=True)

    print("\n| setting | accepted/s | real-token share | generated | seconds | mean words |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['accepted_per_s']:.2f} | {r['real_token_share']:.2f} | {r['generated']} | {r['seconds']} "
            f"| {r['mean_words']} |"
        )
    if parsed.json:
        parsed.json.write_text(json.dumps({"cpu": cpu_description(), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
