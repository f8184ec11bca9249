"""FP32 against bf16 autocast, per stage model, on this machine: the measurement `precision: auto` makes.

`precision: auto` measures only where the hardware has bf16 instructions (AMX, AVX512-BF16, a bf16 GPU) and keeps
FP32 elsewhere without timing it. This script times both everywhere (support forced), so the detection rule itself
can be checked: on a CPU without those instructions bf16 should measure slower.

    python benchmarks/precision.py                  # the offline default's models, training and inference steps
    python benchmarks/precision.py --steps 5 --batch-size 32

For each model and step kind it prints seconds per step in FP32 and in bf16 (median of `--steps`, alternated), the
ratio, and what `auto` would choose here (detection first, then the measurement).
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForSequenceClassification, AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer_ext.data.assets import packaged_source  # noqa: E402
from trainer_ext.data.loading import load_text_classification_dataset  # noqa: E402
from trainer_ext.data.transfer.augmentation import load_generator  # noqa: E402
from trainer_ext.deployment.benchmark import cpu_description  # noqa: E402
from trainer_ext.training.precision import bf16_support, choose_precision  # noqa: E402
from trainer_ext.training.students import build_student  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    args = parser.parse_args(argv)
    transformers.logging.set_verbosity_error()

    texts = load_text_classification_dataset("rotten_tomatoes_offline")["train"]["text"][: args.batch_size]
    labels = torch.zeros(len(texts), dtype=torch.long)

    def batch(tokenizer, lm: bool = False) -> dict[str, torch.Tensor]:
        enc = dict(tokenizer(texts, padding=True, truncation=True, max_length=args.max_length, return_tensors="pt"))
        enc["labels"] = enc["input_ids"].clone() if lm else labels
        return enc

    mpnet_path = packaged_source("packaged:mpnet")
    mpnet = AutoModelForSequenceClassification.from_pretrained(mpnet_path, num_labels=2)
    mpnet_tok = AutoTokenizer.from_pretrained(mpnet_path)
    minilm_path = packaged_source("packaged:minilm")
    minilm = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2)
    minilm_tok = AutoTokenizer.from_pretrained(minilm_path)
    student = build_student(minilm, preset="bert-mini", encoder_init="random")
    generator, generator_tok = load_generator(packaged_source("packaged:smollm2"))
    generator_tok.pad_token = generator_tok.pad_token or generator_tok.eos_token
    cases = [
        ("teacher fine-tuning (MPNet-base)", mpnet, batch(mpnet_tok), True),
        ("teacher logits (MPNet-base)", mpnet, batch(mpnet_tok), False),
        ("student training (BERT-Mini)", student, batch(minilm_tok), True),
        ("student inference (BERT-Mini)", student, batch(minilm_tok), False),
        ("generator fine-tuning (SmolLM2-135M)", generator, batch(generator_tok, lm=True), True),
        ("generator forward (SmolLM2-135M)", generator, batch(generator_tok, lm=True), False),
    ]
    supported, why = bf16_support("cpu")
    print(
        f"CPU: {cpu_description()} ({platform.machine()}); {why}; torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"batch {args.batch_size}, up to {args.max_length} tokens, median of {args.steps} steps each, alternated\n")
    print(f"{'stage model':<38} {'FP32 s/step':>11} {'bf16 s/step':>11} {'bf16 speed':>10}  auto here")
    for name, model, inputs, train in cases:
        measured = choose_precision(
            name, model, inputs, "auto", train=train, steps=args.steps, support=(True, "forced")
        )
        ratio = measured.fp32_seconds / measured.bf16_seconds
        auto = measured.precision if supported else "fp32 (not measured: no bf16 instructions)"
        print(f"{name:<38} {measured.fp32_seconds:>11.3f} {measured.bf16_seconds:>11.3f} {ratio:>9.2f}x  {auto}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
