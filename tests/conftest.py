"""Shared fixtures: tiny tokenizers, models and data built on the spot, so no test downloads anything."""

from __future__ import annotations

import os
import random
import socket
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import pytest  # noqa: E402
import torch  # noqa: E402
from datasets import ClassLabel, Dataset, Features, Value  # noqa: E402
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    PreTrainedTokenizerFast,
    TrainingArguments,
)

from trainer_ext import DistillationTrainingArguments  # noqa: E402

POSITIVE = ["great", "wonderful", "moving", "funny", "brilliant", "charming", "fresh", "smart"]
NEGATIVE = ["dull", "awful", "boring", "messy", "stupid", "tired", "bland", "lazy"]
NEUTRAL = ["plot", "film", "actor", "scene", "story", "director", "script", "cast", "movie", "ending"]
LABEL_NAMES = ["neg", "pos"]

# Tiny models run fastest on one thread, and two test processes on a 2-core machine must not fight over OpenMP.
torch.set_num_threads(1)


def free_port() -> int:
    """A TCP port free right now (the OS picks it), for `torchrun --master_port`, so concurrent runs never collide.

    The port is released before it is returned, so another process could still take it before torchrun binds it;
    that window is short, unlike a fixed port that every concurrent run shares.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def make_sentences(n: int, seed: int = 0, num_labels: int = 2) -> tuple[list[str], list[int]]:
    """Short review-like sentences whose label is carried by a few sentiment words, learnable in a few steps."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % num_labels
        words = rng.sample(NEUTRAL, 3)
        cue = POSITIVE if label == 1 else NEGATIVE
        if num_labels > 2 and label == 2:
            cue = NEUTRAL
        words += rng.sample(cue, 2)
        rng.shuffle(words)
        texts.append(f"the {' '.join(words)} {i % 7}")
        labels.append(label)
    return texts, labels


def train_wordpiece_tokenizer(texts: list[str], vocab_size: int = 200) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=64,
    )


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    texts, _ = make_sentences(400, seed=1)
    return train_wordpiece_tokenizer(texts)


def make_bert(
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    num_labels: int = 2,
    id2label: dict[int, str] | None = None,
    seed: int = 0,
) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    id2label = id2label or {i: LABEL_NAMES[i] if num_labels == 2 else f"c{i}" for i in range(num_labels)}
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=2,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=64,
        num_labels=num_labels,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
        pad_token_id=tokenizer.pad_token_id,
    )
    return BertForSequenceClassification(config)


def make_dataset(tokenizer: PreTrainedTokenizerFast, n: int = 64, seed: int = 0, num_labels: int = 2) -> Dataset:
    texts, labels = make_sentences(n, seed=seed, num_labels=num_labels)
    names = LABEL_NAMES if num_labels == 2 else [f"c{i}" for i in range(num_labels)]
    features = Features({"text": Value("string"), "label": ClassLabel(names=names)})
    dataset = Dataset.from_dict({"text": texts, "label": labels}, features=features)
    return dataset.map(lambda b: tokenizer(b["text"], truncation=True, max_length=32), batched=True)


@dataclass
class _TinyRun:
    """Defaults of a tiny test run, redeclared over TrainingArguments' (as the recipe's stage defaults are)."""

    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 16
    num_train_epochs: float = 2
    learning_rate: float = 5e-3
    report_to: str | None = "none"
    logging_steps: float = 1
    save_strategy: str = "no"
    seed: int = 0
    disable_tqdm: bool | None = True
    dataloader_pin_memory: bool = False


@dataclass
class TinyTrainingArguments(_TinyRun, TrainingArguments):
    pass


@dataclass
class TinyDistillationArguments(_TinyRun, DistillationTrainingArguments):
    pass


def args_for(tmp_path, cls=None, **kwargs):
    """Tiny-run training arguments (no saving, no reporting, no pin memory); `kwargs` override them. `cls` is
    `TrainingArguments` for a plain Trainer's, else they are `DistillationTrainingArguments`."""
    tiny = TinyTrainingArguments if cls is TrainingArguments else TinyDistillationArguments
    return tiny(**{"output_dir": str(tmp_path / "out"), **kwargs})


# The generator tests' corpus (three labels) and byte-level BPE tokenizer, shared by test_augmentation and test_sampling.
LABELS = ["neg", "pos", "neutral"]


def byte_level_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts + LABELS,
        trainers.BpeTrainer(
            vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def make_corpus() -> Dataset:
    texts, labels = make_sentences(90, seed=3, num_labels=3)
    return Dataset.from_dict(
        {"text": texts, "label": labels},
        features=Features({"text": Value("string"), "label": ClassLabel(names=LABELS)}),
    )


@pytest.fixture(scope="module")
def corpus() -> Dataset:
    return make_corpus()


@pytest.fixture(scope="module")
def gen_tokenizer(corpus):
    return byte_level_tokenizer(list(corpus["text"]))
