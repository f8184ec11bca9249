"""Validation accuracy of a BERT-Mini-shaped student by initialisation: random encoder vs the teacher's layers projected.

Each student is built from the same fine-tuned teacher and trained the same way without distillation (plain
cross-entropy on the offline rotten-tomatoes training split, batch 32, length 64); the script prints the validation
accuracy before training and after every epoch, one row per initialisation, all in one run:

    python benchmarks/student_init.py --teacher outputs/rotten_tomatoes_offline/teacher [--epochs 3]

- random: PCA-projected embeddings, random encoder (`encoder_init="random"`), at lr 3e-4 (its best of the recipe's
  history) and at the projected students' lr;
- projected (embeddings basis): teacher layers projected onto the word embeddings' principal directions;
- projected (hidden-state basis): onto the principal directions of the teacher's hidden states on 512 training
  sentences (what `trainer-ext run` does).
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)
from transformers.utils import logging as hf_logging  # noqa: E402

from trainer_ext import build_student  # noqa: E402
from trainer_ext.data.loading import load_offline_rotten_tomatoes  # noqa: E402
from trainer_ext.training.students import calibration_batches  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, help="a fine-tuned classifier folder, e.g. from `make run`")
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate of the projected students")
    parser.add_argument("--output-dir", default="outputs/bench_student_init")
    cli = parser.parse_args()
    hf_logging.set_verbosity_error()

    teacher = AutoModelForSequenceClassification.from_pretrained(cli.teacher).eval()
    tokenizer = AutoTokenizer.from_pretrained(cli.teacher)
    data = load_offline_rotten_tomatoes(seed=42)
    tokenized = {
        split: data[split].map(lambda b: tokenizer(b["text"], truncation=True, max_length=64), batched=True)
        for split in ("train", "validation")
    }
    texts = data["train"]["text"][:512]
    variants = {
        "random encoder, lr 3e-4": (dict(encoder_init="random"), 3e-4),
        f"random encoder, lr {cli.lr:g}": (dict(encoder_init="random"), cli.lr),
        f"projected, embeddings basis, lr {cli.lr:g}": (dict(encoder_init="projected"), cli.lr),
        f"projected, hidden-state basis, lr {cli.lr:g}": (
            dict(calibration_inputs=calibration_batches(tokenizer, texts, max_length=64)),
            cli.lr,
        ),
    }

    def accuracy(prediction) -> dict[str, float]:
        return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}

    rows = []
    for name, (kwargs, lr) in variants.items():
        student = build_student(teacher, preset="bert-mini", seed=42, **kwargs)
        args = TrainingArguments(
            output_dir=os.path.join(cli.output_dir, name.replace(" ", "_").replace(",", "")),
            num_train_epochs=cli.epochs,
            learning_rate=lr,
            per_device_train_batch_size=32,
            per_device_eval_batch_size=128,
            eval_strategy="epoch",
            save_strategy="no",
            report_to=[],
            seed=42,
            disable_tqdm=True,
            use_cpu=True,
        )
        trainer = Trainer(
            model=student,
            args=args,
            train_dataset=tokenized["train"],
            eval_dataset=tokenized["validation"],
            processing_class=tokenizer,
            data_collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=accuracy,
        )
        before = trainer.evaluate()["eval_accuracy"]
        start = time.perf_counter()
        trainer.train()
        epochs = [log["eval_accuracy"] for log in trainer.state.log_history if "eval_accuracy" in log]
        rows.append({"init": name, "before": before, "epochs": epochs, "seconds": time.perf_counter() - start})
        print(json.dumps(rows[-1]), flush=True)

    print(f"\nvalidation accuracy (%), {len(data['validation'])} sentences, no distillation")
    print(f"{'initialisation':45} {'before':>7} " + " ".join(f"{'ep ' + str(i + 1):>7}" for i in range(len(epochs))))
    for row in rows:
        cells = " ".join(f"{100 * a:7.2f}" for a in row["epochs"])
        print(f"{row['init']:45} {100 * row['before']:7.2f} {cells}")


if __name__ == "__main__":
    main()
