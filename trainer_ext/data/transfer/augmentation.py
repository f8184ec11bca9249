"""Label-conditioned text generation for data augmentation (Kumar et al. 2020; Tang et al. 2019): fine-tune a causal
LM on lines "{label}{separator}{text}{eos}", sample new sentences with each label as the prompt, filter them, and let
the teacher relabel them so a small student can learn from far more data than was labelled.

`TextGenerationAugmenter` runs the transfer set's sources side by side (`sources.py`): the generator (`prompts.py`,
`generation.py`) fills the per-label targets (`targets.py`, in shards that resume an interrupted run: `shards.py`),
unlabelled text (`unlabeled.py`) what it leaves; every candidate passes one filter (`sources.SentenceFilter`), the
teacher labels the kept ones once (`labelling.relabel`), and the statistics go to augmentation_stats.json."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from accelerate.utils import gather_object
from datasets import ClassLabel, Dataset, Features, Value, concatenate_datasets
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging

# The names marked noqa stay importable from here, where tests, benchmarks and the pipeline import them.
from trainer_ext.data.loading import load_unlabeled_texts  # noqa: F401
from trainer_ext.data.transfer.arguments import AugmentationArguments, AugmentationError
from trainer_ext.data.transfer.generation import GENERATOR_DIR, TextGenerator, load_generator  # noqa: F401
from trainer_ext.data.transfer.labelling import INT8_LABELLER_DIR, LabellingChoice, choose_labelling, relabel
from trainer_ext.data.transfer.prompts import GeneratedSource, opening_pools, prompt_names
from trainer_ext.data.transfer.shards import SHARD_DIR, sampling_manifest
from trainer_ext.data.transfer.sources import SentenceFilter, TransferSource
from trainer_ext.data.transfer.targets import fill_targets, merge_process_shares
from trainer_ext.data.transfer.text import (  # noqa: F401
    clean_generation,
    generation_quality,
    is_degenerate,
    normalize_text,
    split_sentences,
)
from trainer_ext.data.transfer.unlabeled import UnlabeledSource
from trainer_ext.files import write_json
from trainer_ext.training.distributed import process_state

logger = logging.get_logger(__name__)

STATS_FILE = "augmentation_stats.json"
AUGMENTATION_DIR = "augmentation"  # where DistillationTrainer(augmentation_args=...) writes under its output_dir


class TextGenerationAugmenter:
    """Generate labelled training sentences with a (fine-tuned) causal LM and relabel them with a teacher.

    ```python
    augmenter = TextGenerationAugmenter("gpt2", args=AugmentationArguments(num_samples=5000, output_dir="aug"))
    augmented = augmenter.augment(train, teacher=teacher, teacher_tokenizer=tok,
                                  exclude_texts=validation["text"] + test["text"])
    ```

    The result has columns `text`, `label` (the teacher's argmax when a teacher is given, else the prompt label),
    `teacher_logits`, `prompt_label` and `source` ("generated"). With `output_dir`, candidates are written in shards as
    they are generated; a re-run with the same settings resumes after the last finished shard.
    """

    def __init__(
        self,
        generator: PreTrainedModel | str,
        tokenizer: PreTrainedTokenizerBase | None = None,
        args: AugmentationArguments | None = None,
    ) -> None:
        self.generator = TextGenerator(generator, tokenizer, args or AugmentationArguments())
        self.stats: dict[str, Any] = {}
        self._teacher_bf16 = False  # set per call of augment()
        self.labelling: LabellingChoice | None = None  # the teacher's labelling form, chosen per call of augment()
        self._openings: list[list[str]] | None = None  # per label, the opening words prompts may carry
        self._min_words: int | None = None  # the kept sentences' length bounds (`_set_length_bounds`)
        self._max_words: int | None = None

    @property
    def args(self) -> AugmentationArguments:
        """The settings, one object shared with the generator."""
        return self.generator.args

    @args.setter
    def args(self, args: AugmentationArguments) -> None:
        self.generator.args = args

    @property
    def model(self) -> PreTrainedModel:
        return self.generator.model

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.generator.tokenizer

    @property
    def _max_new_tokens(self) -> int | None:
        """The generator's token budget per sample (tests and benchmarks read and set it here)."""
        return self.generator.max_new_tokens

    @_max_new_tokens.setter
    def _max_new_tokens(self, value: int | None) -> None:
        self.generator.max_new_tokens = value

    @property
    def fine_tune(self) -> Callable[..., None]:
        """Fine-tune the generator on "{label}{sep}{text}{eos}" lines: `TextGenerator.fine_tune`."""
        return self.generator.fine_tune

    def generate_batch(self, prompts: list[str], seed: int) -> list[str]:
        """One sampled continuation per prompt (`TextGenerator.generate_batch`); every generated candidate is drawn
        through here."""
        return self.generator.generate_batch(prompts, seed)

    def prompt_names(self, label_names: list[str]) -> list[str]:
        """The words that stand for each label in the generator's lines (see `prompt_names`)."""
        return prompt_names(self.args.prompt_label_names, label_names)

    def filling_sources(self) -> list[TransferSource]:
        """The sources that fill what generation leaves, in order, read now (a bad one fails before any long work).
        A new source of the transfer set is added here."""
        args = self.args
        return [UnlabeledSource.read(args.unlabeled_texts, args.unlabeled_text_column)] if args.unlabeled_texts else []

    def relabel(self, dataset: Dataset, teacher, teacher_tokenizer, label_names, stats: dict) -> Dataset:
        """The teacher's logits and labels for the transfer set, in this run's labelling form (`labelling.relabel`)."""
        return relabel(
            dataset,
            teacher,
            teacher_tokenizer,
            label_names,
            stats,
            self.args,
            labelling=self.labelling,
            teacher_bf16=self._teacher_bf16,
        )

    def _set_length_bounds(self, texts: Sequence[str]) -> None:
        """Word-length bounds and the token budget per sample, from the settings or else the training texts."""
        args = self.args
        words = np.array([len(t.split()) for t in texts])
        tokens = np.array(
            [len(ids) for ids in self.tokenizer(list(texts[:2000]), add_special_tokens=False)["input_ids"]]
        )
        self._min_words = args.min_words if args.min_words is not None else max(1, int(np.percentile(words, 1)))
        self._max_words = args.max_words if args.max_words is not None else int(np.percentile(words, 99))
        self.generator.max_new_tokens = args.max_new_tokens or int(np.percentile(tokens, 99)) + 2

    def _per_label_targets(self, labels: Sequence[int], num_labels: int, total: int) -> list[int]:
        if self.args.label_distribution == "balanced":
            shares = np.full(num_labels, 1.0 / num_labels)
        else:
            counts = np.bincount(np.asarray(labels), minlength=num_labels).astype(float)
            shares = counts / counts.sum()
        targets = np.floor(shares * total).astype(int)
        for i in np.argsort(-(shares * total - targets))[: total - targets.sum()]:
            targets[i] += 1  # hand out the remainder to the largest fractional parts
        return targets.tolist()

    def augment(
        self,
        train_dataset: Dataset,
        teacher: PreTrainedModel | None = None,
        teacher_tokenizer: PreTrainedTokenizerBase | None = None,
        exclude_texts: Iterable[str] | None = None,
        text_column: str = "text",
        label_column: str = "label",
        *,
        generator_bf16: bool = False,
        teacher_bf16: bool = False,
        labelling_texts: Sequence[str] | None = None,
    ) -> Dataset:
        """Fine-tune (optionally), generate per label, filter, relabel with the teacher; return the kept samples.

        `generator_bf16` / `teacher_bf16` run the generator's fine-tuning and sampling / the teacher's labelling under
        bf16 autocast (the pipeline decides by measurement, `precision.choose_precision`). `args.teacher_labelling`
        may choose another labelling form (`labelling.choose_labelling`), before any generation: 'int8' is checked
        against FP32 on `labelling_texts` (validation sentences) and its ONNX files go to `output_dir/teacher_int8`.

        Under `torchrun` / `accelerate launch` the generator fine-tunes data-parallel, each process samples its share
        of `num_samples` with its own seed (shards in `output_dir/shards/process_<rank>`), the shares are gathered
        and cross-process duplicates dropped, and the teacher relabels them in shares: every process returns the
        same dataset, and only the main process writes shared files.
        """
        args = self.args
        self.generator.bf16, self._teacher_bf16 = generator_bf16, teacher_bf16
        _check_inputs(args, train_dataset, teacher, teacher_tokenizer, text_column, label_column, labelling_texts)
        # Read before any long work, so a bad source fails first.
        fillers = self.filling_sources()
        # The labelling form too: an INT8 teacher that does not agree falls back now, not after generation.
        self.labelling = None
        if teacher is not None:
            self.labelling = choose_labelling(
                args.teacher_labelling,
                teacher,
                teacher_tokenizer,
                auto_bf16=teacher_bf16,
                check_texts=list(labelling_texts or []),
                min_agreement=args.min_labelling_agreement,
                max_length=args.max_length,
                folder=Path(args.output_dir) / INT8_LABELLER_DIR if args.output_dir else None,
            )
        feature = train_dataset.features[label_column]
        label_names = (
            list(feature.names)
            if isinstance(feature, ClassLabel)
            else [str(i) for i in range(int(max(train_dataset[label_column])) + 1)]
        )
        train_texts = [str(t) for t in train_dataset[text_column]]
        train_labels = [int(y) for y in train_dataset[label_column]]
        self._set_length_bounds(train_texts)
        exclude_texts = list(exclude_texts or [])
        # Before any long work: the openings prompts may carry, and the prompt and budget inside the context.
        self._openings, openings = opening_pools(
            train_texts, train_labels, len(label_names), exclude_texts, args.prompt_opening_words
        )
        prompt_names = self.prompt_names(label_names)
        generated = self._generated_source(prompt_names)
        context = self.generator.bound_to_context(generated.every_prompt())
        state = process_state()
        start = time.perf_counter()
        if args.fine_tune and args.num_samples > 0:
            self.generator.fine_tune(train_dataset, prompt_names, text_column, label_column)
        fine_tune_seconds = time.perf_counter() - start

        excluded = {normalize_text(t) for t in train_texts}
        excluded.update(normalize_text(t) for t in exclude_texts)
        rank, world = state.process_index, state.num_processes
        share = args.num_samples // world + (1 if rank < args.num_samples % world else 0)
        targets = self._per_label_targets(train_labels, len(label_names), share)
        shard_dir = Path(args.output_dir) / SHARD_DIR / f"process_{rank}" if args.output_dir else None
        sampling = self.generator.choose_sampling(prompt_names).to_dict() if share > 0 else None
        kept, stats = self._generate_all(
            label_names, targets, excluded, prompt_names, shard_dir, args.seed + 1009 * rank
        )
        stats["generation_seconds"] = time.perf_counter() - start - fine_tune_seconds
        kept, stats = merge_process_shares(gather_object([kept]), gather_object([stats]), label_names)
        stats.update(sampling=sampling, prompt_openings=openings, context=context)
        stats["fine_tune_lines_cut"] = self.generator.fine_tune_lines_cut
        stats["quality"] = generation_quality([t for t, _ in kept], train_texts, args.seed)
        if stats["generated"]:
            stats["quality"]["rejected_share"] = {
                k: round(v / stats["generated"], 4) for k, v in stats["rejected"].items()
            }
        rows = [(text, label, generated.kind) for text, label in kept]
        for source in fillers:  # the same on every process: read and filtered deterministically
            excluded.update(normalize_text(text) for text, _, _ in rows)
            cap = None if args.max_transfer_samples is None else max(0, args.max_transfer_samples - len(rows))
            rows += [(text, -1, source.kind) for text in self.fill(source, excluded, cap, stats)]  # -1: no prompt
        dataset = Dataset.from_dict(
            {"text": [r[0] for r in rows], "prompt_label": [r[1] for r in rows], "source": [r[2] for r in rows]},
            features=Features(
                {"text": Value("string"), "prompt_label": ClassLabel(names=label_names), "source": Value("string")}
            ),
        )
        if len(dataset) == 0:
            raise AugmentationError(
                f"No generated sample survived the filters: {json.dumps(stats)}. Loosen the "
                "length bounds, raise max_attempts_factor, or fine-tune the generator longer."
            )
        dataset = self.relabel(dataset, teacher, teacher_tokenizer, label_names, stats)
        counts = Counter(dataset["source"])
        stats.update(
            fine_tune_seconds=fine_tune_seconds,
            accepted_per_second=stats["kept"] / max(stats["generation_seconds"], 1e-9),
            # What built the transfer set, after every filter: the card and results.json name each with its count.
            sources={source.name: counts[source.kind] for source in (generated, *fillers) if counts[source.kind]},
        )
        self.stats = stats
        if args.output_dir and state.is_main_process:
            write_json(Path(args.output_dir) / STATS_FILE, {"stats": stats, "args": asdict(args)})
        return dataset

    def _generated_source(self, prompt_names: list[str]) -> GeneratedSource:
        # Sampled through self.generate_batch, looked up now: a replaced generate_batch samples instead.
        return GeneratedSource(prompt_names, self.args.separator, self._openings, self.generate_batch)

    def _generate_all(
        self,
        label_names: list[str],
        targets: list[int],
        excluded: set[str],
        prompt_names: list[str],
        shard_dir: Path | None,
        seed: int,
    ) -> tuple[list[tuple[str, int]], dict[str, Any]]:
        """This process's generated sentences, as (text, prompt label), up to `targets` per label, and their
        statistics: candidates asked in calls of up to a shard, filtered, written per shard to `shard_dir`."""
        args = self.args
        manifest = sampling_manifest(
            args, self.generator.sampler_choice, prompt_names, targets, seed, self.generator.max_new_tokens
        )
        return fill_targets(
            self._generated_source(prompt_names),
            SentenceFilter(self._min_words, self._max_words, excluded),
            targets,
            label_names,
            seed=seed,
            shard_size=args.shard_size,
            max_attempts_factor=args.max_attempts_factor,
            shard_dir=shard_dir,
            manifest=manifest,
        )

    def fill(self, source: TransferSource, excluded: set[str], cap: int | None, stats: dict[str, Any]) -> list[str]:
        """The candidates of a filling source (`filling_sources`) that pass the filter, in the source's seeded order,
        at most `cap`; its record goes to `stats[source.kind]`."""
        candidates = source.candidates(None, self.args.seed)
        check = SentenceFilter(self._min_words, self._max_words, excluded)
        kept = check.take(candidates, cap)
        record = stats[source.kind] = {
            **source.record(),
            "sentences": len(candidates),
            "kept": len(kept),
            "rejected": dict(check.rejected),
        }
        if cap is not None and len(kept) < cap:
            # A cap above what the source holds: the run goes on with what there is, and says how many.
            record["short_of_cap"] = cap - len(kept)
            logger.warning(
                f"augmentation.max_transfer_samples asked for {cap:,} unlabelled sentences, but "
                f"{record.get('source', source.name)} holds {len(kept):,} that pass the filters: using those "
                f"({dict(check.rejected)} rejected)."
            )
        return kept


def _check_inputs(
    args: AugmentationArguments,
    train_dataset: Dataset,
    teacher: PreTrainedModel | None,
    teacher_tokenizer: PreTrainedTokenizerBase | None,
    text_column: str,
    label_column: str,
    labelling_texts: Sequence[str] | None,
) -> None:
    """Settings and data that cannot work, refused before any long work with what to do about it."""
    for column in (text_column, label_column):
        if column not in train_dataset.column_names:
            raise AugmentationError(
                f"The training data has no {column!r} column (it has {train_dataset.column_names}); pass "
                f"text_column=/label_column= or rename it."
            )
    if len(train_dataset) == 0:
        raise AugmentationError("The training data is empty: there is nothing to learn to generate from.")
    if teacher is not None and teacher_tokenizer is None:
        raise AugmentationError("Pass teacher_tokenizer= with the teacher: it relabels raw generated text.")
    if teacher is not None and args.teacher_labelling == "int8" and not (labelling_texts and args.output_dir):
        raise AugmentationError(
            "teacher_labelling='int8' needs validation sentences to check the INT8 teacher's labels against "
            "FP32's (labelling_texts=, which the pipeline and DistillationTrainer fill from the eval split) and "
            "an output_dir for its ONNX files. Pass both, or set teacher_labelling to 'auto'."
        )
    if args.unlabeled_texts and teacher is None:
        raise AugmentationError("unlabeled_texts needs a teacher: it is what labels the unlabelled sentences.")


def merge_with_original(
    original: Dataset,
    generated: Dataset,
    text_column: str = "text",
    label_column: str = "label",
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    max_length: int = 64,
    logits_column: str = "teacher_logits",
) -> Dataset:
    """The training data with the generated rows appended, in the original's columns and features, plus `source`
    ('original' or 'generated'): the one way generated data joins a training set.

    Generated `text`/`label` take the original's column names; when the original is tokenized (`input_ids`), the
    generated text is tokenized with `tokenizer`; when it carries teacher logits (`logits_column`), the generated
    rows keep the logits the teacher gave them when relabelling, so the teacher never runs on them twice.
    """
    generated = generated.rename_columns(
        {
            k: v
            for k, v in (("text", text_column), ("label", label_column), ("teacher_logits", logits_column))
            if k != v
        }
    )
    if "input_ids" in original.column_names:
        if tokenizer is None:
            raise AugmentationError("The training data is tokenized: pass the tokenizer to tokenize generated text.")
        generated = generated.map(
            lambda b: tokenizer(b[text_column], truncation=True, max_length=max_length), batched=True
        )
    if "source" not in original.column_names:
        original = original.add_column("source", ["original"] * len(original))
    missing = [c for c in original.column_names if c not in generated.column_names]
    if missing:
        raise AugmentationError(
            f"Generated rows cannot fill the training data's columns {missing}: keep only text, label, token and "
            "teacher-logit columns in the training data."
        )
    generated = generated.select_columns(original.column_names).cast(original.features)
    return concatenate_datasets([original, generated])


def augment_training_data(
    train_dataset: Dataset,
    args: AugmentationArguments,
    *,
    teacher: PreTrainedModel,
    teacher_tokenizer: PreTrainedTokenizerBase,
    exclude_texts: Iterable[str] = (),
    text_column: str = "text",
    label_column: str = "label",
    tokenizer: PreTrainedTokenizerBase | None = None,
    logits_column: str = "teacher_logits",
    labelling_texts: Sequence[str] | None = None,
) -> tuple[Dataset, dict[str, Any]]:
    """Generate with `args`, relabel with the teacher, and return the training data with the generated rows appended
    (`merge_with_original`) and the augmentation statistics. `labelling_texts`: the validation sentences an INT8
    labelling teacher is checked on (`args.teacher_labelling`)."""
    augmenter = TextGenerationAugmenter(args.generator_name_or_path, args=args)
    generated = augmenter.augment(
        train_dataset,
        teacher,
        teacher_tokenizer,
        exclude_texts,
        text_column,
        label_column,
        labelling_texts=labelling_texts,
    )
    merged = merge_with_original(
        train_dataset,
        generated,
        text_column,
        label_column,
        tokenizer=tokenizer,
        max_length=args.max_length,
        logits_column=logits_column,
    )
    return merged, augmenter.stats


def read_stats(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The statistics an augmentation run with this `output_dir` wrote, or None when there are none."""
    path = Path(output_dir) / STATS_FILE
    return json.loads(path.read_text())["stats"] if path.exists() else None


__all__ = [
    "AugmentationArguments",
    "AugmentationError",
    "TextGenerationAugmenter",
    "augment_training_data",
    "load_generator",
    "merge_with_original",
    "normalize_text",
    "read_stats",
]
