"""Build a smaller student classifier from a teacher: a subset of its layers, or a narrower model that shares its
vocabulary and starts from the teacher's weights projected onto a principal subspace of its hidden states."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import logging

from trainer_ext.training.narrowing import (
    hidden_state_projection,
    pca_projection,
    project_embeddings,
    project_encoder,
    projection_basis,
)

logger = logging.get_logger(__name__)

__all__ = [
    "BERT_MEDIUM",
    "BERT_MINI",
    "BERT_SMALL",
    "BERT_TINY",
    "STUDENT_PRESETS",
    "build_student",
    "calibration_batches",
    "count_parameters",
    "evenly_spaced_layers",
    "hidden_state_projection",
    "pca_projection",
    "pretrained_student",
    "teacher_layers",
]

# Shapes of the BERT miniatures from "Well-Read Students Learn Better" (Turc et al., 2019).
BERT_TINY: dict[str, int] = dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2, intermediate_size=512)
BERT_MINI: dict[str, int] = dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=1024)
BERT_SMALL: dict[str, int] = dict(num_hidden_layers=4, hidden_size=512, num_attention_heads=8, intermediate_size=2048)
BERT_MEDIUM: dict[str, int] = dict(num_hidden_layers=8, hidden_size=512, num_attention_heads=8, intermediate_size=2048)
STUDENT_PRESETS: dict[str, dict[str, int]] = {
    "bert-tiny": BERT_TINY,
    "bert-mini": BERT_MINI,
    "bert-small": BERT_SMALL,
    "bert-medium": BERT_MEDIUM,
}
# "teacher-layers-6": the teacher's own width, 6 of its layers (evenly spaced, the last one kept).
_TEACHER_LAYERS = re.compile(r"teacher-layers-(\d+)")
# Pre-trained students used in their own shape: the packaged MiniLM whole ("minilm", 6 x 384), or K of its layers at
# its width ("minilm-layers-3"), named like teacher-layers-K. The value is the packaged model's name.
PRETRAINED_STUDENTS: dict[str, str] = {"minilm": "packaged:minilm"}
_PRETRAINED_LAYERS = re.compile(r"(minilm)-layers-(\d+)")
ENCODER_INITS = ("projected", "random")

# The group is only anchored at the start of a key or after a dot so that names like "conv_layers.0." never match;
# the first match in a key is the encoder layer index (nothing inside a BERT-style layer is itself numbered).
_LAYER_KEY = re.compile(r"(^|\.)(encoder\.layer|transformer\.layer|layers?)\.(\d+)\.")
# DistilBERT calls the feed-forward width `hidden_dim`; everything else in scope uses `intermediate_size`.
_INTERMEDIATE_ATTRS = ("intermediate_size", "hidden_dim")


def teacher_layers(name: str) -> int | None:
    """K of a `teacher-layers-K` student name (K of the teacher's layers at its width); None for any other name."""
    match = _TEACHER_LAYERS.fullmatch(name)
    return int(match.group(1)) if match else None


def pretrained_student(name: str) -> tuple[str, int | None] | None:
    """(the packaged model, K or None) for a pre-trained student name: `minilm` (the packaged MiniLM whole, also
    `packaged:minilm`) or `minilm-layers-K` (K of its layers, evenly spaced, the last kept); None for any other name."""
    if name in PRETRAINED_STUDENTS.values():
        return name, None
    if name in PRETRAINED_STUDENTS:
        return PRETRAINED_STUDENTS[name], None
    match = _PRETRAINED_LAYERS.fullmatch(name)
    if match and int(match.group(2)) >= 1:
        return PRETRAINED_STUDENTS[match.group(1)], int(match.group(2))
    return None


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of `model`, trainable or not; tied parameters are counted once."""
    return sum(p.numel() for p in model.parameters())


def evenly_spaced_layers(num_teacher_layers: int, num_student_layers: int) -> list[int]:
    """0-based teacher layers a `num_student_layers`-deep student keeps by default.

    Layer `i` of the student takes teacher layer `(i + 1) * n // k - 1`: the layers are evenly spaced and the last
    teacher layer is always kept, since its output is what the pooler and classifier head were trained on. For example
    6 -> 3 keeps [1, 3, 5], 12 -> 6 keeps [1, 3, 5, 7, 9, 11] and 6 -> 4 keeps [0, 2, 3, 5].
    """
    n, k = num_teacher_layers, num_student_layers
    if not 1 <= k <= n:
        raise ValueError(f"num_hidden_layers must be between 1 and the teacher's {n} layers, got {k}.")
    return [(i + 1) * n // k - 1 for i in range(k)]


def calibration_batches(
    tokenizer: Any, texts: Iterable[str], *, max_length: int, batch_size: int = 64
) -> Iterator[dict[str, torch.Tensor]]:
    """Tokenized batches of `texts` for `build_student(..., calibration_inputs=...)`, made lazily."""
    texts = list(texts)
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        yield dict(tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt"))


def build_student(
    teacher: PreTrainedModel,
    *,
    preset: str | None = None,
    num_hidden_layers: int | None = None,
    layers: list[int] | None = None,
    hidden_size: int | None = None,
    num_attention_heads: int | None = None,
    intermediate_size: int | None = None,
    seed: int = 42,
    encoder_init: str | None = None,
    calibration_inputs: Iterable[Mapping[str, torch.Tensor]] | None = None,
) -> PreTrainedModel:
    """Build a smaller student of the same class as `teacher` that can be distilled from it.

    The student always shares the teacher's tokenizer (vocabulary, special tokens, positions, token types) and
    copies its `id2label`, `label2id`, `num_labels` and `problem_type`. `config.trainer_ext_student_of` records the
    teacher's name or path and `config.trainer_ext_student_init` how the student was initialised;
    `config.trainer_ext_teacher_layers` the 0-based teacher layer each student layer started from (not set for a
    random encoder), which DistillationTrainer's default hidden-state layer map follows.

    Two modes, chosen from the requested shape:

    * **Layer subset** (DistilBERT-style), when the width is unchanged (`hidden_size` omitted or equal to the
      teacher's): the student keeps `layers` (0-based teacher indices, kept in teacher order) or, given only
      `num_hidden_layers`, the layers from `evenly_spaced_layers`. Every weight is copied from the teacher: embeddings,
      the kept encoder layers, pooler and classification head; nothing is left random.
    * **Narrower model**, when `hidden_size` is smaller than the teacher's: a model of the new shape.
      `num_hidden_layers` defaults to the teacher's, `num_attention_heads` to keeping the teacher's head size and
      `intermediate_size` to keeping the teacher's feed-forward ratio. Every weight that touches the hidden width is
      the teacher's seen through an orthonormal basis `P` (`teacher_hidden x hidden_size`): embeddings `E @ P`.
      With `encoder_init="projected"` the encoder is the teacher's too: student layer `i` is teacher layer
      `layers[i]` (default `evenly_spaced_layers`) with its most important attention heads and feed-forward neurons
      (largest product of input and output weight norms) and the hidden side projected, `W_in @ P` and
      `P.T @ W_out`; LayerNorm scales become `diag(P.T diag(gamma) P)`; the pooler and classification head are
      projected the same way. MPNet's relative attention bias is one table shared by every layer, so for MPNet the
      heads are chosen once for all layers (by each head's share of its layer's score, summed over the kept layers)
      and the bias keeps those heads' columns. This needs the teacher's head size, so a preset's head count gives
      way to `hidden_size / teacher_head_size`, and a preset's feed-forward width is capped at the teacher's
      (explicit, conflicting values are errors). `encoder_init="random"` keeps a random encoder (seeded with
      `seed`, without touching the global RNG) and only the projected embeddings.
      `P` spans the top principal directions of the teacher's hidden states (every layer, real tokens, uncentred:
      `hidden_state_projection`) when `calibration_inputs` are given, since the residual stream is what every
      projected weight reads and writes; otherwise those of its word embeddings (`pca_projection`). Measured by
      `benchmarks/student_init.py` (packaged MiniLM teacher fine-tuned on the offline rotten-tomatoes split,
      BERT-Mini shape, 3 epochs without distillation, validation accuracy): random encoder 78.71% (77.20% at lr
      3e-4), layers projected on the embedding basis 77.67%, on the hidden-state basis 80.96% (61.35% before any
      training). Hence the default: projected when `calibration_inputs` are given, else random. The raw (not
      centred) embeddings are projected so rows that are zero, such as padding rows, stay zero.

    Args:
        teacher: A sequence-classification model whose encoder layers are named `encoder.layer.N.` (BERT, RoBERTa,
            ELECTRA, MPNet, ...) or `transformer.layer.N.` (DistilBERT).
        preset: Name of a shape in `STUDENT_PRESETS`, e.g. `"bert-mini"`. Explicit size arguments override it.
        num_hidden_layers: Depth of the student.
        layers: Teacher layers to keep (layer-subset mode only).
        hidden_size: Width of the student; smaller than the teacher's selects the narrower-model mode.
        num_attention_heads: Attention heads of a narrower student; must divide `hidden_size`.
        intermediate_size: Feed-forward width of a narrower student.
        seed: Seed for the random initialisation of a narrower student (its encoder with `encoder_init="random"`,
            and any parameter a projection does not cover).
        encoder_init: `"projected"` or `"random"`, for a narrower student (see above). Default: `"projected"` when
            `calibration_inputs` are given, else `"random"`.
        calibration_inputs: Batches of teacher inputs (`input_ids`, `attention_mask`, ...) whose hidden states give
            the projection basis of a narrower student; a few hundred training sentences are plenty.

    Returns:
        The student, in train mode, on the teacher's device and in its dtype.
    """
    if not isinstance(teacher, PreTrainedModel):
        raise TypeError(
            f"build_student expects a transformers PreTrainedModel, got {type(teacher).__name__}; unwrap the teacher "
            "first (e.g. `model.module` for DDP)."
        )
    sizes: dict[str, Any] = {}
    if preset is not None:
        if preset not in STUDENT_PRESETS:
            raise ValueError(f"Unknown student preset {preset!r}; choose one of {sorted(STUDENT_PRESETS)}.")
        sizes.update(STUDENT_PRESETS[preset])
    explicit = dict(
        num_hidden_layers=num_hidden_layers,
        hidden_size=hidden_size,
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size,
    )
    sizes.update({name: value for name, value in explicit.items() if value is not None})
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")

    teacher_config = teacher.config
    narrower = sizes.get("hidden_size", teacher_config.hidden_size) != teacher_config.hidden_size
    if encoder_init is None:
        # Projected layers only measured better on the hidden-state basis, which needs calibration text.
        encoder_init = "projected" if calibration_inputs is not None else "random"
    if encoder_init not in ENCODER_INITS:
        raise ValueError(f"encoder_init must be one of {ENCODER_INITS}, got {encoder_init!r}.")
    if narrower:
        student = _build_narrower(
            teacher,
            sizes,
            layers=layers,
            seed=seed,
            project=encoder_init == "projected",
            explicit={name for name, value in explicit.items() if value is not None},
            calibration_inputs=calibration_inputs,
        )
    else:
        student = _build_layer_subset(teacher, sizes, layers=layers)

    config = student.config
    config.id2label = dict(teacher_config.id2label)
    config.label2id = dict(teacher_config.label2id)
    config.problem_type = teacher_config.problem_type
    config.trainer_ext_student_of = teacher_config.name_or_path

    student.to(device=teacher.device, dtype=teacher.dtype)
    student.train()
    teacher_params, student_params = count_parameters(teacher), count_parameters(student)
    logger.info(
        f"Built {type(student).__name__} student ({config.trainer_ext_student_init}): {teacher_params:,} -> "
        f"{student_params:,} parameters ({student_params / teacher_params:.1%} of the teacher)."
    )
    return student


def _build_layer_subset(
    teacher: PreTrainedModel, sizes: dict[str, Any], *, layers: list[int] | None
) -> PreTrainedModel:
    teacher_config = teacher.config
    num_teacher_layers = teacher_config.num_hidden_layers
    for name, teacher_value in (
        ("num_attention_heads", teacher_config.num_attention_heads),
        ("intermediate_size", _intermediate_size(teacher_config)),
    ):
        if name in sizes and sizes[name] != teacher_value:
            raise ValueError(
                f"A student as wide as the teacher (hidden_size {teacher_config.hidden_size}) copies the teacher's "
                f"layers, so {name} must stay {teacher_value} (got {sizes[name]}); pass a smaller hidden_size to "
                "build a new, narrower shape instead."
            )
    num_layers = sizes.get("num_hidden_layers")
    if layers is None:
        if num_layers is None:
            raise ValueError(
                "Nothing to shrink: pass num_hidden_layers or layers to keep a subset of the teacher's layers, "
                f"hidden_size to build a narrower student, or a preset from {sorted(STUDENT_PRESETS)}."
            )
        kept = evenly_spaced_layers(num_teacher_layers, num_layers)
    else:
        kept = _validate_layers(layers, num_teacher_layers)
        if num_layers is not None and num_layers != len(kept):
            raise ValueError(
                f"num_hidden_layers={num_layers} disagrees with the {len(kept)} layers given in layers={layers}; "
                "pass only one of them."
            )

    config = copy.deepcopy(teacher_config)
    config.num_hidden_layers = len(kept)
    config.trainer_ext_student_init = f"teacher layers {kept}"
    config.trainer_ext_teacher_layers = kept
    student = type(teacher)(config)

    new_index = {old: new for new, old in enumerate(kept)}
    teacher_state = teacher.state_dict()
    student_state: dict[str, torch.Tensor] = {}
    seen_layers: set[int] = set()
    for key, tensor in teacher_state.items():
        match = _LAYER_KEY.search(key)
        if match is None:
            student_state[key] = tensor
            continue
        old = int(match.group(3))
        seen_layers.add(old)
        if old in new_index:
            renamed = f"{match.group(1)}{match.group(2)}.{new_index[old]}."
            student_state[key[: match.start()] + renamed + key[match.end() :]] = tensor
    if seen_layers != set(range(num_teacher_layers)):
        raise ValueError(
            f"Cannot find the {num_teacher_layers} encoder layers of {type(teacher).__name__} in its state dict: "
            "layer subsets support models whose layers are named `encoder.layer.N.`, `transformer.layer.N.` or "
            "`layers.N.`. Pass a smaller hidden_size to build a freshly initialised student instead."
        )
    # strict=True so that a naming mismatch fails loudly instead of leaving part of the student random.
    student.load_state_dict(student_state, strict=True)
    return student


def _build_narrower(
    teacher: PreTrainedModel,
    sizes: dict[str, Any],
    *,
    layers: list[int] | None,
    seed: int,
    project: bool,
    explicit: set[str],
    calibration_inputs: Iterable[Mapping[str, torch.Tensor]] | None,
) -> PreTrainedModel:
    teacher_config = teacher.config
    teacher_hidden = teacher_config.hidden_size
    teacher_head_size = teacher_hidden // teacher_config.num_attention_heads
    hidden = sizes["hidden_size"]
    if layers is not None and not project:
        raise ValueError(
            f"layers={layers} selects teacher layers to start from, which a random encoder does not use; drop "
            'layers or use encoder_init="projected".'
        )
    if hidden > teacher_hidden:
        raise ValueError(
            f"Student hidden_size {hidden} is larger than the teacher's {teacher_hidden}; a student must be at most "
            "as wide as its teacher (omit hidden_size to keep the teacher's width and a subset of its layers)."
        )
    heads = sizes.get("num_attention_heads")
    if project:
        # Projected layers keep whole teacher heads, so the head size is the teacher's; a preset's head count gives way.
        if hidden % teacher_head_size:
            raise ValueError(
                f"A projected encoder keeps the teacher's attention head size {teacher_head_size}, which does not "
                f'divide hidden_size {hidden}; choose a multiple of {teacher_head_size} or encoder_init="random".'
            )
        wanted = hidden // teacher_head_size
        if "num_attention_heads" in explicit and heads != wanted:
            raise ValueError(
                f"num_attention_heads={heads} would change the teacher's head size {teacher_head_size}, which a "
                f'projected encoder keeps ({wanted} heads for hidden_size {hidden}); omit it or use encoder_init="random".'
            )
        if heads is not None and heads != wanted:
            logger.info(f"Projected encoder: {wanted} heads of {teacher_head_size} instead of the preset's {heads}.")
        heads = wanted
    elif heads is None:
        if hidden % teacher_head_size:
            raise ValueError(
                f"Cannot keep the teacher's attention head size {teacher_head_size} with hidden_size {hidden}; pass "
                "num_attention_heads explicitly (a divisor of hidden_size)."
            )
        heads = hidden // teacher_head_size
    if hidden % heads:
        raise ValueError(
            f"hidden_size {hidden} is not divisible by num_attention_heads {heads}; choose a number of heads that "
            "divides the hidden size (e.g. hidden_size / 64)."
        )
    intermediate_attr = _intermediate_attr(teacher_config)
    intermediate = sizes.get("intermediate_size")
    if intermediate is None:
        intermediate = max(1, getattr(teacher_config, intermediate_attr) * hidden // teacher_hidden)
    num_layers = sizes.get("num_hidden_layers", teacher_config.num_hidden_layers)
    kept: list[int] = []
    if project:
        kept = _validate_layers(layers, teacher_config.num_hidden_layers) if layers is not None else []
        if layers is not None and "num_hidden_layers" in sizes and sizes["num_hidden_layers"] != len(kept):
            raise ValueError(
                f"num_hidden_layers={num_layers} disagrees with the {len(kept)} layers given in layers={layers}; "
                "pass only one of them."
            )
        kept = kept or evenly_spaced_layers(teacher_config.num_hidden_layers, num_layers)
        num_layers = len(kept)
        teacher_intermediate = getattr(teacher_config, intermediate_attr)
        if intermediate > teacher_intermediate and "intermediate_size" not in explicit:
            logger.info(
                f"Projected encoder: {teacher_intermediate} feed-forward neurons, the teacher's, not {intermediate}."
            )
            intermediate = teacher_intermediate
        if intermediate > teacher_intermediate:
            raise ValueError(
                f"intermediate_size {intermediate} is larger than the teacher's {teacher_intermediate}; a projected "
                'encoder keeps a subset of the teacher\'s feed-forward neurons (or use encoder_init="random").'
            )
        if getattr(teacher_config, "embedding_size", teacher_hidden) != teacher_hidden:
            raise ValueError(
                f"{type(teacher).__name__} embeds into embedding_size {teacher_config.embedding_size} and projects up; "
                'a projected encoder supports teachers that embed at the hidden width (use encoder_init="random").'
            )

    config = copy.deepcopy(teacher_config)
    config.num_hidden_layers = num_layers
    config.hidden_size = hidden
    config.num_attention_heads = heads
    setattr(config, intermediate_attr, intermediate)
    # ELECTRA-style models embed into `embedding_size` and project up; shrink it along with the width when it was tied.
    if getattr(config, "embedding_size", None) == teacher_hidden:
        config.embedding_size = hidden

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = type(teacher)(config)

    projection, basis = projection_basis(teacher, calibration_inputs, hidden)
    if project:
        project_encoder(teacher, student, projection, kept)
        config.trainer_ext_teacher_layers = kept
        config.trainer_ext_student_init = (
            f"teacher layers {kept} projected onto {basis} ({heads} of {teacher_config.num_attention_heads} heads, "
            f"{intermediate} of {getattr(teacher_config, intermediate_attr)} feed-forward neurons per layer)"
        )
        return student

    config.trainer_ext_student_init = f"embeddings projected onto {basis}, random encoder"
    project_embeddings(teacher, student, projection)
    return student


def _validate_layers(layers: list[int], num_teacher_layers: int) -> list[int]:
    if isinstance(layers, (str, bytes)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
        raise ValueError(f"layers must be a list of integer teacher layer indices, got {layers!r}.")
    if not layers:
        raise ValueError("layers is empty; keep at least one teacher layer.")
    if len(set(layers)) != len(layers):
        duplicates = sorted({i for i in layers if layers.count(i) > 1})
        raise ValueError(f"layers must be unique, but {duplicates} appear more than once in {layers}.")
    out_of_range = [i for i in layers if not 0 <= i < num_teacher_layers]
    if out_of_range:
        raise ValueError(
            f"layers {out_of_range} are out of range: the teacher has {num_teacher_layers} layers, so indices must be "
            f"0-based between 0 and {num_teacher_layers - 1}."
        )
    # The student runs the kept layers in teacher order; stacking them in any other order has no teacher to match.
    return sorted(layers)


def _intermediate_attr(config: Any) -> str:
    for name in _INTERMEDIATE_ATTRS:
        if hasattr(config, name):
            return name
    raise ValueError(
        f"{type(config).__name__} has none of {_INTERMEDIATE_ATTRS}, so the student's feed-forward width is unknown; "
        "use a BERT-like teacher."
    )


def _intermediate_size(config: Any) -> int:
    return getattr(config, _intermediate_attr(config))
