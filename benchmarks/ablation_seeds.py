"""The student rows of a finished run's ablation, repeated over seeds: mean and standard deviation of accuracy.

A single run's ablation (results.json) compares one training of each student; differences of a point or two are
within seed noise on 1,066 test sentences (one standard error of an accuracy near 85% is about 1.1 points). This
script retrains the student rows from the run's own saved inputs, so nothing upstream is redone and every row starts
from the same initial student and the same teacher logits:

- `no_distillation`: labels only (`Trainer`);
- `distilled_original`: distilled on the original training sentences (`distillation_data/original`);
- `distilled_transfer`: distilled on original + transfer set (`distillation_data/transfer`);
- with `--by-source`, also `distilled_unlabeled` and `distilled_generated`: the transfer set's two sources apart;
- with `--min-confidence P`, also `distilled_confident`: the transfer rows whose teacher probability is at least P
  (teacher-confidence filtering, measured without re-running the teacher).

Each row is trained with the recipe's student settings and the seed changed, then measured (PyTorch FP32, batch 32)
on the run's validation and test splits. The teacher is not needed: its logits are columns of the saved data.

    python benchmarks/ablation_seeds.py outputs/rotten_tomatoes_offline --seeds 1 2 3
    python benchmarks/ablation_seeds.py RUN_DIR --rows no_distillation distilled_original --json out.json
    python benchmarks/ablation_seeds.py --merge seed1.json seed2.json seed3.json   # seeds run apart, summarized

It prints one line per row (mean ± standard deviation over seeds, and each seed), the device, the CPU and the
versions, and writes the same as JSON with `--json`.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from datasets import Dataset, concatenate_datasets, load_from_disk
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer_ext.benchmark import ClassifierRunner, accuracy, cpu_description  # noqa: E402
from trainer_ext.recipe import load_recipe  # noqa: E402
from trainer_ext.trainer import DistillationTrainer  # noqa: E402

ROWS = ("no_distillation", "distilled_original", "distilled_transfer")
SOURCE_ROWS = {"distilled_unlabeled": "unlabeled", "distilled_generated": "generated"}


def training_data(run_dir: Path, row: str, splits: Any, min_confidence: float | None = None) -> Dataset:
    """The rows a student row trains on (text, label and, when distilled, teacher_logits)."""
    if row == "no_distillation":
        return splits["train"]
    saved = run_dir / "distillation_data"
    if row == "distilled_original" and (saved / "original").exists():
        return load_from_disk(str(saved / "original"))
    transfer = load_from_disk(str(saved / "transfer"))
    if row == "distilled_original":  # the same rows and logits (the pipeline test checks it): one folder less to copy
        return transfer.filter(lambda s: s == "original", input_columns="source")
    if row == "distilled_transfer":
        return transfer
    if row == "distilled_confident":
        logits = np.asarray(transfer["teacher_logits"], dtype=np.float64)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        confident = (probs / probs.sum(-1, keepdims=True)).max(-1) >= min_confidence
        keep = confident | (np.asarray(transfer["source"]) == "original")
        return transfer.select(np.flatnonzero(keep).tolist())
    source = SOURCE_ROWS[row]
    original = transfer.filter(lambda s: s == "original", input_columns="source")
    extra = transfer.filter(lambda s: s == source, input_columns="source")
    if len(extra) == 0:
        raise SystemExit(f"The run's transfer set has no {source!r} rows: drop {row} from --rows.")
    return concatenate_datasets([original, extra])


def train_row(
    run_dir: Path,
    row: str,
    seed: int,
    recipe: Any,
    splits: Any,
    work: Path,
    min_confidence: float | None = None,
    init: Path | None = None,
) -> dict[str, Any]:
    init = init or run_dir / "student_init"
    tokenizer = AutoTokenizer.from_pretrained(init)
    model = AutoModelForSequenceClassification.from_pretrained(init, dtype=torch.float32)
    train = training_data(run_dir, row, splits, min_confidence)
    max_length = recipe.run.max_length
    train = train.map(lambda b: tokenizer(b["text"], truncation=True, max_length=max_length), batched=True)
    args = replace(
        recipe.student_training,
        output_dir=str(work / f"{row}_{seed}"),
        seed=seed,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
    )
    start = time.perf_counter()
    trainer = DistillationTrainer(
        model=model,
        args=args,
        train_dataset=train,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    trainer.train()
    seconds = time.perf_counter() - start
    runner = ClassifierRunner(trainer.model.eval(), tokenizer)
    scores = {}
    for split in (recipe.run.eval_split, recipe.run.test_split):
        data = splits[split]
        with torch.no_grad():
            logits = runner.logits(list(data["text"]), batch_size=128, max_length=max_length)
        scores[split] = accuracy(logits, np.asarray(data["label"]))
    return {"row": row, "seed": seed, "train_rows": len(train), "seconds": seconds, **scores}


def summarize(results: list[dict[str, Any]], rows: list[str], splits: list[str]) -> dict[str, Any]:
    summary = {}
    for row in rows:
        mine = [r for r in results if r["row"] == row]
        summary[row] = {
            split: {
                "mean": statistics.mean(r[split] for r in mine),
                "std": statistics.stdev([r[split] for r in mine]) if len(mine) > 1 else 0.0,
                "per_seed": [r[split] for r in mine],
            }
            for split in splits
        } | {"train_rows": mine[0]["train_rows"], "seconds": statistics.mean(r["seconds"] for r in mine)}
    return summary


def report(
    results: list[dict[str, Any]], rows: list[str], splits: list[str], seeds: list[int], device: str, path: Path | None
) -> None:
    summary = summarize(results, rows, splits)
    print(
        f"\n{len(seeds)} seeds {seeds}; {device}; torch {torch.__version__}, transformers "
        f"{transformers.__version__}, Python {platform.python_version()}"
    )
    header = f"{'row':<22} {'train rows':>10} " + " ".join(f"{s + ' mean ± std':>22}" for s in splits)
    print(header + "\n" + "-" * len(header))
    for row, s in summary.items():
        cells = " ".join(f"{100 * s[sp]['mean']:>13.2f} ± {100 * s[sp]['std']:.2f}" for sp in splits)
        print(f"{row:<22} {s['train_rows']:>10} {cells}")
    if path is not None:
        path.write_text(json.dumps({"device": device, "seeds": seeds, "runs": results, "summary": summary}, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, nargs="?", help="A finished run's run.output_dir.")
    parser.add_argument("--recipe", type=Path, help="The run's recipe (default: the one its results.json names).")
    parser.add_argument("--profile", help="The recipe profile the run used (default: from results.json).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=[*ROWS, *SOURCE_ROWS])
    parser.add_argument("--by-source", action="store_true", help="Add the transfer set's sources as separate rows.")
    parser.add_argument("--init", type=Path, help="Another initial student (default: the run's student_init).")
    parser.add_argument("--min-confidence", type=float, help="Add distilled_confident with this threshold.")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    parser.add_argument("--merge", type=Path, nargs="+", help="Summarize the --json files of earlier runs instead.")
    args = parser.parse_args(argv)
    if args.merge:
        files = [json.loads(path.read_text()) for path in args.merge]
        runs = [run for f in files for run in f["runs"]]
        rows = list(dict.fromkeys(r["row"] for r in runs))
        splits = [k for k in runs[0] if k not in ("row", "seed", "train_rows", "seconds")]
        report(runs, rows, splits, sorted({r["seed"] for r in runs}), files[0]["device"], args.json)
        return 0
    if args.run_dir is None:
        parser.error("Give a run directory, or --merge.")

    run_dir = args.run_dir
    missing = [p for p in ("data/splits", "student_init") if not (run_dir / p).exists()]
    if missing:
        parser.error(f"{run_dir} has no {', '.join(missing)}: give the output_dir of a finished `trainer-ext run`.")
    results_file = run_dir / "results.json"
    saved = json.loads(results_file.read_text()).get("recipe", {}) if results_file.exists() else {}
    recipe_path = args.recipe or (Path(saved["source"]) if saved.get("source") else None)
    if recipe_path is None:
        parser.error("Give --recipe: the run has no results.json naming its recipe.")
    recipe = load_recipe(recipe_path, profile=args.profile or saved.get("profile"))
    rows = (
        list(args.rows)
        + (list(SOURCE_ROWS) if args.by_source else [])
        + (["distilled_confident"] if args.min_confidence is not None else [])
    )
    splits = load_from_disk(str(run_dir / "data" / "splits"))
    eval_splits = [recipe.run.eval_split, recipe.run.test_split]
    transformers.logging.set_verbosity_error()

    results = []
    for seed in args.seeds:
        for row in rows:
            work = run_dir / "ablation_seeds" / (args.init.name if args.init else "student_init")
            result = train_row(run_dir, row, seed, recipe, splits, work, args.min_confidence, args.init)
            results.append(result)
            print(
                f"seed {seed} {row:<20} "
                + " ".join(f"{s} {100 * result[s]:.2f}%" for s in eval_splits)
                + f" ({result['train_rows']} rows, {result['seconds']:.0f} s)",
                flush=True,
            )
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU: {cpu_description()}"
    report(results, rows, eval_splits, args.seeds, device, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
