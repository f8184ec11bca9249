"""Run by tests/test_distributed.py under `torchrun --nproc_per_node 2`: one tiny distillation run, with each rank's
teacher work and the final teacher logits written to OUT_DIR for the test to check."""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from conftest import make_bert, make_dataset, make_sentences, train_wordpiece_tokenizer  # noqa: E402

from trainer_ext import DistillationTrainer, DistillationTrainingArguments  # noqa: E402


def main(out_dir: str) -> None:
    tokenizer = train_wordpiece_tokenizer(make_sentences(400, seed=1)[0])
    data = make_dataset(tokenizer, n=50)
    teacher = make_bert(tokenizer, hidden_size=48, num_hidden_layers=3, seed=1)
    examples = []
    teacher.register_forward_hook(lambda m, a, o: examples.append(o.logits.shape[0]))
    args = DistillationTrainingArguments(
        output_dir=out_dir,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        num_train_epochs=2,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_pin_memory=False,
        ddp_backend="gloo",
        use_cpu=True,  # without it, Trainer on CPU under torchrun does not enter DDP mode
        hidden_distillation_weight=1.0,
        pooled_distillation_weight=1.0,
        distillation_weight=0.5,
    )
    trainer = DistillationTrainer(
        model=make_bert(tokenizer, seed=2),
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        teacher_model=teacher,
    )
    trainer.prepare_teacher_logits()  # the cache pass alone, so its per-rank work can be counted
    cache_examples = sum(examples)
    trainer.train()
    rank = trainer.args.process_index
    projection = trainer.accelerator.unwrap_model(trainer.hidden_projection).weight.detach().numpy()
    pooled = trainer.accelerator.unwrap_model(trainer.pooled_projection).weight.detach().numpy()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(
            {
                "rank": rank,
                "world_size": trainer.args.world_size,
                "cache_examples": int(cache_examples),
                "global_step": trainer.state.global_step,
                "projection_sum": float(projection.sum()),
                "pooled_projection_sum": float(pooled.sum()),
            },
            f,
        )
    logits = np.asarray(list(trainer.train_dataset["teacher_logits"]), dtype=np.float32)
    np.save(os.path.join(out_dir, f"logits_rank{rank}.npy"), logits)
    torch.distributed.barrier()


if __name__ == "__main__":
    main(sys.argv[1])
