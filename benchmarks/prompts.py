"""Prompting the generator with the label alone against the label plus the opening words of a training sentence
(issue 23): teacher agreement, distinct-2, lengths and the share each filter drops, side by side in one run.

Every setting samples the same number of sentences from the run's fine-tuned generator through the augmenter itself
(`TextGenerationAugmenter.augment` with fine-tuning off, no unlabelled text, the validation and test sentences
excluded), and the run's teacher labels them (bf16 autocast where the CPU has it).

    python benchmarks/prompts.py outputs/rotten_tomatoes_offline                # after `make run`
    python benchmarks/prompts.py RUN_DIR --samples 1000 --opening-words 0 3 5 --json prompts.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from datasets import load_from_disk  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer_ext.data.transfer.augmentation import AugmentationArguments, TextGenerationAugmenter  # noqa: E402
from trainer_ext.deployment.benchmark import cpu_description  # noqa: E402
from trainer_ext.training.precision import bf16_support  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--opening-words", type=int, nargs="+", default=[0, 3])
    parser.add_argument("--json", type=Path)
    parsed = parser.parse_args(argv)
    run = parsed.run_dir
    stats = json.loads((run / "augmentation" / "augmentation_stats.json").read_text())
    fields = {f.name for f in dataclasses.fields(AugmentationArguments)}
    base = {k: v for k, v in stats["args"].items() if k in fields}
    splits = load_from_disk(str(run / "data" / "splits"))
    exclude = list(splits["validation"]["text"]) + list(splits["test"]["text"])
    teacher = AutoModelForSequenceClassification.from_pretrained(run / "teacher").eval()
    teacher_tokenizer = AutoTokenizer.from_pretrained(run / "teacher")
    bf16 = bf16_support()[0]
    print(
        f"CPU: {cpu_description()}, {torch.get_num_threads()} threads; torch {torch.__version__}, transformers "
        f"{transformers.__version__}; generator {run / 'augmentation' / 'generator'}; teacher {run / 'teacher'}"
    )
    results = {}
    for words in parsed.opening_words:
        args = AugmentationArguments(
            **{
                **base,
                "generator_name_or_path": str(run / "augmentation" / "generator"),
                "gguf_file": None,
                "fine_tune": False,
                "unlabeled_texts": None,
                "max_transfer_samples": None,
                "num_samples": parsed.samples,
                "output_dir": None,
                "prompt_opening_words": words,
                "generation_batch_size": 256,
            }
        )
        augmenter = TextGenerationAugmenter(args.generator_name_or_path, args=args)
        start = time.perf_counter()
        augmenter.augment(splits["train"], teacher, teacher_tokenizer, exclude, teacher_bf16=bf16)
        s = augmenter.stats
        results[words] = {
            "seconds": round(time.perf_counter() - start, 1),
            "accepted_per_s": round(s["accepted_per_second"], 2),
            "teacher_agreement": s["teacher_agreement"],
            "per_label_agreement": s["per_label_agreement"],
            "quality": s["quality"],
            "prompt_openings": s["prompt_openings"],
            "sampling": s["sampling"],
        }
        print(words, json.dumps(results[words]), flush=True)
    print(
        "\n| prompt | agreement | distinct-2 (generated / training) | mean words (gen / train) | p10-p90 gen | dropped |"
    )
    print("|---|---|---|---|---|---|")
    for words, r in results.items():
        q = r["quality"]
        gen, train = q["length"]["generated"], q["length"]["training"]
        dropped = ", ".join(f"{k} {v:.1%}" for k, v in q.get("rejected_share", {}).items())
        print(
            f"| {'label' if not words else f'label + {words} words'} | {r['teacher_agreement']:.3f} "
            f"| {q['distinct_2']['generated']:.3f} / {q['distinct_2']['training']:.3f} "
            f"| {gen['mean_words']} / {train['mean_words']} | {gen['p10_words']}-{gen['p90_words']} | {dropped} |"
        )
    if parsed.json:
        parsed.json.write_text(json.dumps({"cpu": cpu_description(), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
