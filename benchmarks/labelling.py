"""Which form of a run's teacher labels the transfer set fastest without changing its labels (issue 22, item 2).

    python benchmarks/labelling.py RUN_DIR                 # a finished run: its teacher/ and teacher_int8/
    python benchmarks/labelling.py RUN_DIR --sentences 2000 --batch-size 128

For each form (PyTorch FP32, PyTorch bf16 autocast, ONNX Runtime INT8 when the run kept one) it labels the same
sentences of the run's eval split as the teacher-logit pass does (length-sorted batches, the run's max_length) and
prints seconds per 10,000 sentences and the share of argmax labels that agree with FP32, plus the mean absolute
difference of the logits (distillation learns the logits, not only the labels). A form is faithful at 99% agreement.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from datasets import load_from_disk
from transformers import AutoModelForSequenceClassification, AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer_ext.deployment.benchmark import ClassifierRunner, cpu_description  # noqa: E402
from trainer_ext.training.precision import bf16_support  # noqa: E402
from trainer_ext.training.teacher_logits import compute_teacher_logits  # noqa: E402

FAITHFUL = 0.99


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--split", default=None, help="Default: the run's eval split.")
    parser.add_argument("--sentences", type=int, default=None, help="Default: the whole split.")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    transformers.logging.set_verbosity_error()

    run = args.run_dir
    recipe = json.loads((run / "results.json").read_text())["recipe"]["values"].get("run", {})
    max_length = int(recipe.get("max_length", 64))
    split = args.split or recipe.get("eval_split", "validation")
    data = load_from_disk(str(run / "data" / "splits"))[split]
    if args.sentences:
        data = data.select(range(min(args.sentences, len(data))))
    teacher = AutoModelForSequenceClassification.from_pretrained(run / "teacher").eval()
    tokenizer = AutoTokenizer.from_pretrained(run / "teacher")

    def pytorch(bf16: bool) -> np.ndarray:
        return compute_teacher_logits(
            teacher, data, batch_size=args.batch_size, teacher_tokenizer=tokenizer, max_length=max_length, bf16=bf16
        )

    forms = {"PyTorch FP32": lambda: pytorch(False), "PyTorch bf16 autocast": lambda: pytorch(True)}
    int8 = run / "teacher_int8" / "onnx" / "model_quantized.onnx"
    if int8.exists():
        runner = ClassifierRunner(int8, tokenizer)
        texts = sorted(data["text"], key=len)  # length-sorted like the PyTorch pass, then put back in order
        order = np.argsort([len(t) for t in data["text"]], kind="stable")

        def onnx_int8() -> np.ndarray:
            logits = runner.logits(texts, batch_size=args.batch_size, max_length=max_length)
            out = np.empty_like(logits)
            out[order] = logits
            return out

        forms["ONNX Runtime INT8"] = onnx_int8
    print(
        f"CPU: {cpu_description()}; {torch.get_num_threads()} threads; bf16: {bf16_support()[1]}; "
        f"{len(data):,} {split} sentences, max_length {max_length}, batch {args.batch_size}",
        flush=True,
    )
    rows, reference = {}, None
    for name, label in forms.items():
        label()  # warm-up (first-call allocations, ONNX Runtime's session start)
        start = time.perf_counter()
        logits = label()
        seconds = time.perf_counter() - start
        reference = logits if reference is None else reference
        agreement = float((logits.argmax(-1) == reference.argmax(-1)).mean())
        rows[name] = {
            "seconds_per_10k": 10_000 * seconds / len(data),
            "agreement_with_fp32": agreement,
            "mean_abs_logit_diff": float(np.abs(logits - reference).mean()),
            "faithful": agreement >= FAITHFUL,
        }
        r = rows[name]
        print(
            f"{name:<24} {r['seconds_per_10k']:8.1f} s per 10k  agreement {100 * agreement:6.2f}%  "
            f"mean |logit diff| {r['mean_abs_logit_diff']:.4f}  {'faithful' if r['faithful'] else 'NOT faithful'}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_description(), "split": split, "forms": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
