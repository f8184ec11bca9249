"""Per-epoch training time of DistillationTrainer (cached teacher logits) divided by that of plain Trainer.

Same student initialisation, same data, same settings, measured in one process, runs interleaved so that machine
noise hits both. Target: at most 1.10. Uses the real packaged MiniLM teacher backbone and the built-in offline
movie-review data; the teacher's classifier head is untrained (its logits' values do not change the cost).

    python benchmarks/distillation_overhead.py [--train-samples 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.utils import logging as hf_logging  # noqa: E402

from trainer_ext import DistillationTrainer, DistillationTrainingArguments, build_student  # noqa: E402
from trainer_ext.data.assets import minilm_teacher_path  # noqa: E402
from trainer_ext.data.loading import load_offline_rotten_tomatoes  # noqa: E402


class EpochTimer(TrainerCallback):
    def __init__(self) -> None:
        self.epochs: list[float] = []

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.epochs.append(time.perf_counter() - self._start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of each trainer")
    parser.add_argument("--output-dir", default="outputs/bench_overhead")
    cli = parser.parse_args()
    hf_logging.set_verbosity_error()

    data = load_offline_rotten_tomatoes()["train"].shuffle(seed=0).select(range(cli.train_samples))
    tokenizer = AutoTokenizer.from_pretrained(minilm_teacher_path())
    data = data.map(lambda b: tokenizer(b["text"], truncation=True, max_length=64), batched=True)
    teacher = AutoModelForSequenceClassification.from_pretrained(minilm_teacher_path(), num_labels=2)
    student = build_student(teacher, preset="bert-mini", seed=0)
    common = dict(
        num_train_epochs=1,
        per_device_train_batch_size=32,
        learning_rate=1e-4,
        report_to="none",
        save_strategy="no",
        logging_steps=10_000,
        disable_tqdm=True,
        dataloader_pin_memory=False,
        seed=0,
    )

    # Compute and cache the teacher logits once, outside the timed epochs: that is the point of the cache.
    warm = DistillationTrainer(
        model=copy.deepcopy(student),
        args=DistillationTrainingArguments(output_dir=cli.output_dir, **common),
        train_dataset=data,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        teacher_model=teacher,
    )
    start = time.perf_counter()
    warm.prepare_teacher_logits()
    teacher_pass = time.perf_counter() - start

    times: dict[str, list[float]] = {"Trainer": [], "DistillationTrainer": []}
    for _ in range(cli.repeats):
        for name in times:
            timer = EpochTimer()
            if name == "Trainer":
                trainer = Trainer(
                    model=copy.deepcopy(student),
                    args=TrainingArguments(output_dir=cli.output_dir, **common),
                    train_dataset=data,
                    processing_class=tokenizer,
                    data_collator=DataCollatorWithPadding(tokenizer),
                    callbacks=[timer],
                )
            else:
                trainer = DistillationTrainer(
                    model=copy.deepcopy(student),
                    args=DistillationTrainingArguments(output_dir=cli.output_dir, **common),
                    train_dataset=data,
                    processing_class=tokenizer,
                    data_collator=DataCollatorWithPadding(tokenizer),
                    teacher_model=teacher,
                    callbacks=[timer],
                )
            trainer.train()
            times[name].extend(timer.epochs)

    plain, distil = statistics.median(times["Trainer"]), statistics.median(times["DistillationTrainer"])
    print(
        f"data: {len(data)} training sentences, student {student.num_parameters():,} params, batch 32, 1 epoch x {cli.repeats}"
    )
    print(f"teacher logits, computed once and cached: {teacher_pass:.1f} s")
    print(f"{'trainer':<22} {'median epoch s':>15}  all epochs")
    for name, values in times.items():
        print(f"{name:<22} {statistics.median(values):>15.2f}  {', '.join(f'{v:.2f}' for v in values)}")
    print(f"ratio DistillationTrainer / Trainer per epoch: {distil / plain:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
