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
on the run's validation and test splits. Two more knobs make the transfer-set curve and the objective comparison of
issue 22:

- `--transfer-size N`: `distilled_transfer` trains on a transfer set of N sentences instead of the run's own. The
  run's generated rows stay; the unlabelled sentences are drawn exactly as the pipeline draws them (same seeded order
  and filters, so the run's own are the first ones), and only the new ones are labelled by the run's teacher (bf16
  autocast where the CPU has it, else FP32), cached in `ablation_seeds/transfer_N`.
- `--set FIELD=VALUE`: a student_training setting changed for every row (e.g. `--set distillation_loss=mse
  distillation_weight=1.0`, the reference's objective); `--bf16` trains under bf16 autocast as the pipeline does on
  a bf16 CPU. The teacher's logits are columns of the saved data, so it is not loaded, except for the objectives that
  read its hidden states on every batch (`pooled_distillation_weight`, `hidden_distillation_weight` > 0): the
  distilled rows then load the run's teacher (`run_dir/teacher`) and its tokenizer, as the pipeline does.

    python benchmarks/ablation_seeds.py outputs/rotten_tomatoes_offline --seeds 1 2 3
    python benchmarks/ablation_seeds.py RUN_DIR --rows no_distillation distilled_original --json out.json
    python benchmarks/ablation_seeds.py --merge seed1.json seed2.json seed3.json   # seeds run apart, summarized
    python benchmarks/ablation_seeds.py RUN_DIR --seeds 42 --rows distilled_transfer --transfer-size 50000 --bf16
    python benchmarks/ablation_seeds.py RUN_DIR --seeds 42 --rows distilled_transfer --first 2000  # a curve's point
    python benchmarks/ablation_seeds.py RUN_DIR --rows distilled_transfer --first 2000 --first-from OTHER_RUN \
        --first-source unlabeled                                     # another run's unlabelled sentences, same size
    python benchmarks/ablation_seeds.py RUN_DIR --rows distilled_transfer --set distillation_loss=mse \
        distillation_weight=1.0 --bf16
    python benchmarks/ablation_seeds.py RUN_DIR --rows distilled_transfer --set pooled_distillation_weight=1.0

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
import yaml
from datasets import Dataset, concatenate_datasets, load_from_disk
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer_ext.deployment.benchmark import ClassifierRunner, accuracy, cpu_description  # noqa: E402
from trainer_ext.pipeline.recipe import load_recipe  # noqa: E402
from trainer_ext.training.precision import training_precision_kwargs  # noqa: E402
from trainer_ext.training.trainer import DistillationTrainer  # noqa: E402

ROWS = ("no_distillation", "distilled_original", "distilled_transfer")
SOURCE_ROWS = {"distilled_unlabeled": "unlabeled", "distilled_generated": "generated"}


def training_data(
    run_dir: Path, row: str, splits: Any, min_confidence: float | None = None, transfer: Dataset | None = None
) -> Dataset:
    """The rows a student row trains on (text, label and, when distilled, teacher_logits); `transfer` replaces the
    run's own transfer set (see `extended_transfer`)."""
    if row == "no_distillation":
        return splits["train"]
    saved = run_dir / "distillation_data"
    if row == "distilled_original" and (saved / "original").exists():
        return load_from_disk(str(saved / "original"))
    transfer = transfer if transfer is not None else load_from_disk(str(saved / "transfer"))
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


def first_transfer(run_dir: Path, size: int, source_run: Path | None = None, source: str | None = None) -> Dataset:
    """The original rows and the first `size` transfer sentences of the run's own transfer set (or `source_run`'s,
    same teacher), in the order the run made them, only those of `source` when given: a transfer-set curve's points,
    and another source at an equal size."""
    own = load_from_disk(str(run_dir / "distillation_data" / "transfer"))
    donor = load_from_disk(str(source_run / "distillation_data" / "transfer")) if source_run else own
    sources = np.asarray(donor["source"])
    extra = np.flatnonzero((sources == source) if source else (sources != "original"))
    if len(extra) < size:
        raise SystemExit(f"--first {size}: the transfer set holds {len(extra)} {source or 'transfer'} sentences.")
    original = own.select(np.flatnonzero(np.asarray(own["source"]) == "original").tolist())
    return concatenate_datasets([original, donor.select(extra[:size].tolist()).cast(original.features)])


def extended_transfer(run_dir: Path, recipe: Any, size: int, splits: Any) -> Dataset:
    """The run's transfer set grown (or cut) to `size` transfer sentences: its generated rows, then unlabelled
    sentences in the pipeline's own seeded order and filters, the new ones labelled by the run's teacher."""
    from trainer_ext.data.loading import load_unlabeled_texts
    from trainer_ext.data.transfer.augmentation import TextGenerationAugmenter
    from trainer_ext.data.transfer.text import normalize_text
    from trainer_ext.data.transfer.unlabeled import UnlabeledSource
    from trainer_ext.training.precision import bf16_support
    from trainer_ext.training.teacher_logits import compute_teacher_logits

    cached = run_dir / "ablation_seeds" / f"transfer_{size}"
    if (cached / "dataset_info.json").exists():
        return load_from_disk(str(cached))
    run_transfer = load_from_disk(str(run_dir / "distillation_data" / "transfer"))
    sources = np.asarray(run_transfer["source"])
    # A larger set labelled before holds this one's sentences first (the same seeded order): its logits are reused.
    larger = sorted(cached.parent.glob("transfer_*"), key=lambda d: int(d.name.split("_")[1]))
    labelled = load_from_disk(str(larger[-1])) if larger else run_transfer
    labelled = labelled.select(np.flatnonzero(np.asarray(labelled["source"]) == "unlabeled").tolist())
    original = run_transfer.select(np.flatnonzero(sources == "original").tolist())
    generated = run_transfer.select(np.flatnonzero(sources == "generated").tolist())
    args = replace(
        recipe.augmentation,
        output_dir=str(run_dir / "augmentation"),
        max_length=recipe.run.max_length,
        max_transfer_samples=size,
    )
    # The run's fine-tuned generator is loaded only for its tokenizer (the length bounds count its tokens, as the run's).
    augmenter = TextGenerationAugmenter(str(run_dir / "augmentation" / "generator"), args=args)
    train_texts = [str(t) for t in splits["train"]["text"]]
    augmenter._set_length_bounds(train_texts)
    excluded = {normalize_text(t) for t in train_texts}
    for split in (recipe.run.eval_split, recipe.run.test_split):
        excluded.update(normalize_text(t) for t in splits[split]["text"])
    excluded.update(normalize_text(t) for t in generated["text"])
    stats: dict[str, Any] = {}
    unlabeled = load_unlabeled_texts(args.unlabeled_texts, args.unlabeled_text_column)
    source = UnlabeledSource(unlabeled, args.unlabeled_texts)
    sentences = augmenter.fill(source, excluded, max(0, size - len(generated)), stats)
    known = list(labelled["text"])
    shared = min(len(known), len(sentences))
    if sentences[:shared] != known[:shared]:
        raise SystemExit("The pipeline's sentence order no longer reproduces the run's transfer set: rerun the run.")
    logits = list(labelled["teacher_logits"])[:shared]
    new = sentences[shared:]
    if new:
        path = run_dir / "teacher"
        teacher = AutoModelForSequenceClassification.from_pretrained(path).eval()
        bf16 = bf16_support("cpu")[0] and not torch.cuda.is_available()
        start = time.perf_counter()
        new_logits = compute_teacher_logits(
            teacher.to("cuda" if torch.cuda.is_available() else "cpu"),
            Dataset.from_dict({"text": new}),
            teacher_tokenizer=AutoTokenizer.from_pretrained(path),
            max_length=recipe.run.max_length,
            bf16=bf16,
            batch_size=128,
        )
        print(
            f"labelled {len(new):,} new sentences in {time.perf_counter() - start:.0f} s "
            f"({'bf16 autocast' if bf16 else 'FP32'})",
            flush=True,
        )
        logits += new_logits.tolist()
    extra = Dataset.from_dict(
        {
            "text": sentences,
            "label": [int(np.argmax(row)) for row in logits],
            "teacher_logits": logits,
            "source": ["unlabeled"] * len(sentences),
        },
        features=original.features,
    )
    dataset = concatenate_datasets([original, generated, extra])
    dataset.save_to_disk(str(cached))
    return dataset


def train_row(
    run_dir: Path,
    row: str,
    seed: int,
    recipe: Any,
    splits: Any,
    work: Path,
    min_confidence: float | None = None,
    init: Path | None = None,
    transfer: Dataset | None = None,
    overrides: dict[str, Any] | None = None,
    bf16: bool = False,
) -> dict[str, Any]:
    init = init or run_dir / "student_init"
    tokenizer = AutoTokenizer.from_pretrained(init)
    model = AutoModelForSequenceClassification.from_pretrained(init, dtype=torch.float32)
    train = training_data(run_dir, row, splits, min_confidence, transfer)
    max_length = recipe.run.max_length
    train = train.map(lambda b: tokenizer(b["text"], truncation=True, max_length=max_length), batched=True)
    args = replace(
        recipe.student_training,
        output_dir=str(work / f"{row}_{seed}"),
        **{
            "seed": seed,
            "use_cpu": not torch.cuda.is_available(),
            "disable_tqdm": True,
            "teacher_max_length": max_length,  # used only when the teacher runs (below), as in the pipeline
            **(overrides or {}),
            **training_precision_kwargs("bf16" if bf16 else "fp32"),
        },
    )
    teacher = teacher_tokenizer = None
    if row != "no_distillation" and (args.pooled_distillation_weight > 0 or args.hidden_distillation_weight > 0):
        # These terms read the teacher's hidden states, which no saved column holds: it runs on every batch (reading
        # the raw text with its own tokenizer when that differs), at the run's length, as in the pipeline.
        teacher = AutoModelForSequenceClassification.from_pretrained(run_dir / "teacher", dtype=torch.float32)
        teacher_tokenizer = AutoTokenizer.from_pretrained(run_dir / "teacher")
    start = time.perf_counter()
    trainer = DistillationTrainer(
        model=model,
        args=args,
        train_dataset=train,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        teacher_model=teacher,
        teacher_tokenizer=teacher_tokenizer,
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
    parser.add_argument("--transfer-size", type=int, help="Train distilled_transfer on this many transfer sentences.")
    parser.add_argument(
        "--first", type=int, help="Train distilled_transfer on the first N sentences of the run's own transfer set."
    )
    parser.add_argument("--first-from", type=Path, help="With --first: another run's transfer set (same teacher).")
    parser.add_argument("--first-source", choices=["generated", "unlabeled"], help="With --first: only this source.")
    parser.add_argument(
        "--set", nargs="+", default=[], metavar="FIELD=VALUE", help="student_training settings changed for every row."
    )
    parser.add_argument("--bf16", action="store_true", help="Train under bf16 autocast (a bf16 CPU or a GPU).")
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

    overrides = {}
    for setting in args.set:
        field, sep, value = setting.partition("=")
        if not sep or not hasattr(recipe.student_training, field):
            parser.error(f"--set {setting!r}: give FIELD=VALUE with a student_training field.")
        overrides[field] = yaml.safe_load(value)
    transfer = extended_transfer(run_dir, recipe, args.transfer_size, splits) if args.transfer_size else None
    if args.first:
        if transfer is not None:
            parser.error("Give --transfer-size or --first, not both.")
        transfer = first_transfer(run_dir, args.first, args.first_from, args.first_source)
    tag = ",".join(
        ([f"transfer={args.transfer_size}"] if args.transfer_size else [])
        + ([f"first={args.first}"] if args.first else [])
        + ([f"from={args.first_from.name}"] if args.first and args.first_from else [])
        + ([f"source={args.first_source}"] if args.first and args.first_source else [])
        + list(args.set)
        + (["bf16"] if args.bf16 else [])
    )
    results = []
    for seed in args.seeds:
        for row in rows:
            work = run_dir / "ablation_seeds" / (args.init.name if args.init else "student_init") / (tag or "recipe")
            result = train_row(
                run_dir,
                row,
                seed,
                recipe,
                splits,
                work,
                args.min_confidence,
                args.init,
                transfer,
                overrides,
                args.bf16,
            )
            result["row"] = f"{row}[{tag}]" if tag else row
            results.append(result)
            print(
                f"seed {seed} {result['row']:<20} "
                + " ".join(f"{s} {100 * result[s]:.2f}%" for s in eval_splits)
                + f" ({result['train_rows']} rows, {result['seconds']:.0f} s)",
                flush=True,
            )
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU: {cpu_description()}"
    report(results, list(dict.fromkeys(r["row"] for r in results)), eval_splits, args.seeds, device, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
