"""Build a smaller student classifier from a teacher: a subset of its layers, or a narrower model that shares its
vocabulary with embeddings initialised by a PCA projection of the teacher's."""

from __future__ import annotations

import copy
import re
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = [
    "BERT_MINI",
    "BERT_SMALL",
    "BERT_TINY",
    "STUDENT_PRESETS",
    "build_student",
    "count_parameters",
    "evenly_spaced_layers",
    "pca_projection",
]

# Shapes of the BERT miniatures from "Well-Read Students Learn Better" (Turc et al., 2019).
BERT_TINY: dict[str, int] = dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2, intermediate_size=512)
BERT_MINI: dict[str, int] = dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=1024)
BERT_SMALL: dict[str, int] = dict(num_hidden_layers=4, hidden_size=512, num_attention_heads=8, intermediate_size=2048)
STUDENT_PRESETS: dict[str, dict[str, int]] = {"bert-tiny": BERT_TINY, "bert-mini": BERT_MINI, "bert-small": BERT_SMALL}

# The group is only anchored at the start of a key or after a dot so that names like "conv_layers.0." never match;
# the first match in a key is the encoder layer index (nothing inside a BERT-style layer is itself numbered).
_LAYER_KEY = re.compile(r"(^|\.)(encoder\.layer|transformer\.layer|layers?)\.(\d+)\.")
# DistilBERT calls the feed-forward width `hidden_dim`; everything else in scope uses `intermediate_size`.
_INTERMEDIATE_ATTRS = ("intermediate_size", "hidden_dim")
_PROJECTED_EMBEDDINGS = ("position_embeddings", "token_type_embeddings")


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


def pca_projection(embeddings: torch.Tensor, dim: int) -> torch.Tensor:
    """Projection `P` of shape `(embeddings.shape[1], dim)` onto the top-`dim` principal directions of `embeddings`.

    The columns of `P` are orthonormal: they are the leading right-singular vectors of the mean-centred rows, in
    float32. When there are fewer rows than `dim` (toy vocabularies), the basis is completed with zero-variance
    directions. Each column's sign is fixed so that its largest-magnitude entry is positive, which makes the result
    independent of the SVD backend.
    """
    if embeddings.ndim != 2:
        raise ValueError(f"Expected a 2-D embedding matrix, got shape {tuple(embeddings.shape)}.")
    num_rows, width = embeddings.shape
    if not 1 <= dim <= width:
        raise ValueError(
            f"Cannot project {width}-dimensional embeddings onto {dim} dimensions: dim must be between 1 and {width}."
        )
    weight = embeddings.detach().float()
    centred = weight - weight.mean(dim=0, keepdim=True)
    # Full matrices only when needed: for a real vocabulary they would include a vocab x vocab U.
    _, _, vh = torch.linalg.svd(centred, full_matrices=num_rows < dim)
    projection = vh[:dim].T.contiguous()
    signs = torch.sign(projection.gather(0, projection.abs().argmax(dim=0, keepdim=True)))
    signs[signs == 0] = 1
    return projection * signs


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
) -> PreTrainedModel:
    """Build a smaller student of the same class as `teacher` that can be distilled from it.

    The student always shares the teacher's tokenizer (vocabulary, special tokens, positions, token types) and
    copies its `id2label`, `label2id`, `num_labels` and `problem_type`. `config.trainer_ext_student_of` records the
    teacher's name or path and `config.trainer_ext_student_init` how the student was initialised.

    Two modes, chosen from the requested shape:

    * **Layer subset** (DistilBERT-style), when the width is unchanged (`hidden_size` omitted or equal to the
      teacher's): the student keeps `layers` (0-based teacher indices, kept in teacher order) or, given only
      `num_hidden_layers`, the layers from `evenly_spaced_layers`. Every weight is copied from the teacher: embeddings,
      the kept encoder layers, pooler and classification head; nothing is left random.
    * **Narrower model**, when `hidden_size` is smaller than the teacher's: a fresh model of the new shape.
      `num_hidden_layers` defaults to the teacher's, `num_attention_heads` to keeping the teacher's head size and
      `intermediate_size` to keeping the teacher's feed-forward ratio. The word, position and token-type embeddings
      are the teacher's multiplied by `pca_projection(teacher_word_embeddings, hidden_size)`; the raw (not centred)
      embeddings are projected so rows that are zero, such as padding rows, stay zero. The encoder layers, pooler and
      head keep their random initialisation (seeded with `seed`, without touching the global RNG): copying or slicing
      teacher layers is not attempted because the attention heads of the two models do not correspond.

    Args:
        teacher: A sequence-classification model whose encoder layers are named `encoder.layer.N.` (BERT, RoBERTa,
            ELECTRA, ...) or `transformer.layer.N.` (DistilBERT).
        preset: Name of a shape in `STUDENT_PRESETS`, e.g. `"bert-mini"`. Explicit size arguments override it.
        num_hidden_layers: Depth of the student.
        layers: Teacher layers to keep (layer-subset mode only).
        hidden_size: Width of the student; smaller than the teacher's selects the narrower-model mode.
        num_attention_heads: Attention heads of a narrower student; must divide `hidden_size`.
        intermediate_size: Feed-forward width of a narrower student.
        seed: Seed for the random initialisation of a narrower student.

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
    if narrower:
        student = _build_narrower(teacher, sizes, layers=layers, seed=seed)
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
    teacher: PreTrainedModel, sizes: dict[str, Any], *, layers: list[int] | None, seed: int
) -> PreTrainedModel:
    teacher_config = teacher.config
    teacher_hidden = teacher_config.hidden_size
    hidden = sizes["hidden_size"]
    if layers is not None:
        raise ValueError(
            f"layers={layers} selects teacher layers to copy, which needs a student as wide as the teacher "
            f"(hidden_size {teacher_hidden}); drop layers and use num_hidden_layers for a narrower student."
        )
    if hidden > teacher_hidden:
        raise ValueError(
            f"Student hidden_size {hidden} is larger than the teacher's {teacher_hidden}; a student must be at most "
            "as wide as its teacher (omit hidden_size to keep the teacher's width and a subset of its layers)."
        )
    heads = sizes.get("num_attention_heads")
    if heads is None:
        head_size = teacher_hidden // teacher_config.num_attention_heads
        if hidden % head_size:
            raise ValueError(
                f"Cannot keep the teacher's attention head size {head_size} with hidden_size {hidden}; pass "
                "num_attention_heads explicitly (a divisor of hidden_size)."
            )
        heads = hidden // head_size
    if hidden % heads:
        raise ValueError(
            f"hidden_size {hidden} is not divisible by num_attention_heads {heads}; choose a number of heads that "
            "divides the hidden size (e.g. hidden_size / 64)."
        )
    intermediate_attr = _intermediate_attr(teacher_config)
    intermediate = sizes.get("intermediate_size")
    if intermediate is None:
        intermediate = max(1, getattr(teacher_config, intermediate_attr) * hidden // teacher_hidden)

    config = copy.deepcopy(teacher_config)
    config.num_hidden_layers = sizes.get("num_hidden_layers", teacher_config.num_hidden_layers)
    config.hidden_size = hidden
    config.num_attention_heads = heads
    setattr(config, intermediate_attr, intermediate)
    # ELECTRA-style models embed into `embedding_size` and project up; shrink it along with the width when it was tied.
    if getattr(config, "embedding_size", None) == teacher_hidden:
        config.embedding_size = hidden
    config.trainer_ext_student_init = "PCA-projected teacher embeddings, random encoder"

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = type(teacher)(config)

    teacher_words = teacher.get_input_embeddings().weight
    student_words = student.get_input_embeddings().weight
    projection = pca_projection(teacher_words, student_words.shape[1])
    pairs = [(teacher_words, student_words)]
    teacher_embeddings = getattr(teacher.base_model, "embeddings", None)
    student_embeddings = getattr(student.base_model, "embeddings", None)
    # Sinusoidal DistilBERT positions are fixed functions of the width, already correct in the student.
    skip = {"position_embeddings"} if getattr(config, "sinusoidal_pos_embds", False) else set()
    for name in _PROJECTED_EMBEDDINGS:
        source = getattr(teacher_embeddings, name, None)
        target = getattr(student_embeddings, name, None)
        if name not in skip and isinstance(source, nn.Embedding) and isinstance(target, nn.Embedding):
            pairs.append((source.weight, target.weight))
    with torch.no_grad():
        for source, target in pairs:
            target.copy_(source.detach().float().to(projection.device) @ projection)
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
