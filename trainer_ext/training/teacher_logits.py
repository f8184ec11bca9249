"""Teacher-logit cache: run the teacher once per training example, store the logits keyed to the data and the teacher,
and reuse them across epochs, resumes and processes."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import gather_object
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging

from trainer_ext.files import write_atomic, write_json
from trainer_ext.training.distributed import process_state

logger = logging.get_logger(__name__)

CACHE_FORMAT_VERSION = 1


def teacher_fingerprint(teacher: PreTrainedModel) -> str:
    """Hash of the teacher's config and every parameter and buffer, so a retrained teacher never reuses stale logits.

    Hashing weights costs about a second for BERT-Base, far less than one teacher pass over a training set.
    """
    digest = hashlib.sha256()
    digest.update(teacher.config.to_json_string(use_diff=False).encode())
    for name, tensor in teacher.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """Hash of what the tokenizer does (its fast tokenizer's JSON, or its vocabulary, and its settings), not of where
    it was loaded from: a copied or moved output folder keeps its cached logits."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    rules = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    settings = {k: str(v) for k, v in tokenizer.init_kwargs.items() if k != "name_or_path" and not k.endswith("_file")}
    return hashlib.sha256((rules + json.dumps(settings, sort_keys=True)).encode()).hexdigest()[:16]


def dataset_fingerprint(dataset: Any) -> str | None:
    """The `datasets` fingerprint (it changes with every transform), or None for data we cannot key reliably."""
    fingerprint = getattr(dataset, "_fingerprint", None)
    return f"{fingerprint}-{len(dataset)}" if fingerprint else None


# Inputs of a BERT-style text classifier, assumed when a forward's signature names none of its inputs.
_USUAL_TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def forward_input_names(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase | None = None) -> set[str]:
    """Names the model's forward accepts, so extra dataset columns are never passed to it.

    A `torch.compile`d model is read through the module it compiled. A forward that names no inputs (a wrapper whose
    forward is `(*args, **kwargs)`) falls back to what `tokenizer` produces (its `model_input_names`), or without a
    tokenizer to the model's `main_input_name` and the usual BERT inputs.
    """
    forward = getattr(model, "_orig_mod", model).forward
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    names = {p.name for p in inspect.signature(forward).parameters.values() if p.kind not in variadic}
    if names:
        return names
    if tokenizer is not None:
        return set(tokenizer.model_input_names)
    return {getattr(model, "main_input_name", None) or "input_ids", *_USUAL_TEXT_INPUTS}


class TeacherLogitsCache:
    """A folder of `.npy` files, one per (data, teacher, settings) key, written atomically."""

    def __init__(self, cache_dir: str | os.PathLike) -> None:
        self.cache_dir = Path(cache_dir)

    def path(self, key: str) -> Path:
        return self.cache_dir / f"{key}.npy"

    def load(self, key: str, expected_shape: tuple[int, int] | None = None) -> np.ndarray | None:
        path = self.path(key)
        if not path.exists():
            return None
        try:
            logits = np.load(path)
        except (OSError, ValueError) as err:  # a corrupt file is recomputed, not trusted
            logger.warning(f"Ignoring unreadable teacher-logit cache {path}: {err}")
            return None
        if expected_shape is not None and tuple(logits.shape) != tuple(expected_shape):
            logger.warning(f"Ignoring teacher-logit cache {path}: shape {logits.shape}, expected {expected_shape}.")
            return None
        return logits

    def save(self, key: str, logits: np.ndarray, metadata: dict[str, Any] | None = None) -> Path:
        # Written atomically: a reader never sees a half-written cache.
        path = write_atomic(self.path(key), partial(np.save, arr=logits))
        if metadata is not None:
            write_json(path.with_suffix(".json"), metadata)
        return path


def cache_key(dataset: Any, teacher: PreTrainedModel, settings: dict[str, Any]) -> str | None:
    data_fp = dataset_fingerprint(dataset)
    if data_fp is None:
        return None
    payload = json.dumps(
        {"version": CACHE_FORMAT_VERSION, "data": data_fp, "teacher": teacher_fingerprint(teacher), **settings},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


@torch.no_grad()
def _run_teacher(
    teacher: PreTrainedModel,
    dataset: Any,
    indices: Sequence[int],
    *,
    batch_size: int,
    device: torch.device,
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    lengths: Sequence[int],
    input_names: set[str],
    show_progress: bool,
    bf16: bool = False,
) -> np.ndarray:
    """Logits for `indices`, in that order. Batches are formed from length-sorted examples to cut padding."""
    num_labels = teacher.config.num_labels
    out = np.zeros((len(indices), num_labels), dtype=np.float32)
    order = sorted(range(len(indices)), key=lambda i: lengths[indices[i]])
    was_training = teacher.training
    teacher.eval()
    try:
        for start in tqdm(
            range(0, len(order), batch_size), desc="Teacher logits", disable=not show_progress, unit="batch"
        ):
            positions = order[start : start + batch_size]
            batch = collate([dataset[int(indices[p])] for p in positions])
            batch = {k: v.to(device) for k, v in batch.items() if k in input_names and isinstance(v, torch.Tensor)}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = teacher(**batch).logits
            out[positions] = logits.float().cpu().numpy()
    finally:
        teacher.train(was_training)
    return out


def teacher_encode(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int, **kwargs: Any
) -> dict[str, Any]:
    """The teacher's own tokens for raw text, truncated to `max_length`: one definition for every place the teacher
    reads text itself (its cached logits, and the batches of a distillation that runs it on every step)."""
    return tokenizer(list(texts), truncation=True, max_length=max_length, **kwargs)


def compute_teacher_logits(
    teacher: PreTrainedModel,
    dataset: Any,
    *,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    teacher_tokenizer: PreTrainedTokenizerBase | None = None,
    text_column: str = "text",
    max_length: int = 128,
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]] | None = None,
    cache_dir: str | os.PathLike | None = None,
    bf16: bool = False,
) -> np.ndarray:
    """Teacher logits for every row of `dataset`, as a float32 array `(len(dataset), num_labels)`.

    `bf16=True` runs the teacher under bf16 autocast (see `precision.choose_precision`); the cache keeps such logits
    apart from FP32 ones.

    Two modes:
    - `teacher_tokenizer` given: the teacher tokenizes `dataset[text_column]` itself (tokenizers may differ).
    - otherwise the teacher reads the dataset's own token columns (`input_ids`, ...), batched with `collate`.

    Under `torchrun`/`accelerate launch` every process computes a contiguous share and the shares are gathered, so all
    processes return the same full array. With `cache_dir`, the array is stored under a key made of the dataset
    fingerprint, a hash of the teacher's weights and these settings, and reused when the key matches.
    """
    state = process_state()
    device = torch.device(device) if device is not None else next(teacher.parameters()).device
    num_rows = len(dataset)
    num_labels = teacher.config.num_labels

    if teacher_tokenizer is not None:
        if text_column not in dataset.column_names:
            raise ValueError(
                f"The teacher uses its own tokenizer, so it needs the raw text column {text_column!r}, but the "
                f"dataset has only {dataset.column_names}. Keep the text column (tokenize with `map(..., "
                "remove_columns=None)`) or set `teacher_text_column`."
            )
        texts = list(dataset[text_column])
        lengths = [len(t) for t in texts]
        text_dataset = [{"text": t} for t in texts]

        def collate_text(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
            texts = [r["text"] for r in rows]
            return dict(teacher_encode(teacher_tokenizer, texts, max_length, padding=True, return_tensors="pt"))

        source, collate_fn = text_dataset, collate_text
        settings = {
            "mode": "text",
            "column": text_column,
            "max_length": max_length,
            "tokenizer": tokenizer_fingerprint(teacher_tokenizer),
        }
    else:
        if collate is None:
            raise ValueError("Pass `collate` (the student's data collator) or a `teacher_tokenizer`.")
        if "input_ids" not in dataset.column_names:
            raise ValueError(
                f"The teacher shares the student's tokenizer and reads 'input_ids', but the dataset has only "
                f"{dataset.column_names}. Tokenize the dataset first, or pass the teacher's own tokenizer."
            )
        input_columns = [c for c in dataset.column_names if c in forward_input_names(teacher) and c != "labels"]
        source = dataset.select_columns(input_columns)
        lengths = [len(ids) for ids in list(dataset["input_ids"])]
        collate_fn = collate
        settings = {"mode": "tokens", "columns": sorted(input_columns)}

    if bf16:
        settings["bf16"] = True
    cache = TeacherLogitsCache(cache_dir) if cache_dir is not None else None
    key = cache_key(dataset, teacher, settings) if cache is not None else None
    if cache is not None and key is not None:
        cached = cache.load(key, expected_shape=(num_rows, num_labels))
        if cached is not None:
            logger.info(f"Reusing cached teacher logits {cache.path(key)} ({num_rows} rows).")
            return cached
    elif cache is not None:
        logger.warning("The training data has no `datasets` fingerprint: teacher logits are computed but not cached.")

    # Contiguous, ordered shares (the first `num_rows % world` ranks take one more), so concatenating the gathered
    # shares by rank restores row order.
    with state.split_between_processes(list(range(num_rows))) as my_indices:
        mine = _run_teacher(
            teacher,
            source,
            my_indices,
            batch_size=batch_size,
            device=device,
            collate=collate_fn,
            lengths=lengths,
            input_names=forward_input_names(teacher, teacher_tokenizer),
            show_progress=state.is_main_process,
            bf16=bf16,
        )
    # Each process's share as one object, so the gathered list holds one array per process, in rank order.
    logits = np.concatenate(gather_object([mine]), axis=0)
    if logits.shape != (num_rows, num_labels):
        raise RuntimeError(f"Gathered teacher logits have shape {logits.shape}, expected {(num_rows, num_labels)}.")
    if cache is not None and key is not None:
        if state.is_main_process:
            path = cache.save(key, logits, metadata={"rows": num_rows, "num_labels": num_labels, **settings})
            logger.info(f"Cached teacher logits at {path}.")
        state.wait_for_everyone()
    return logits
