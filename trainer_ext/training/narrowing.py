"""Narrowing a teacher: its weights seen through an orthonormal basis `P` of a principal subspace of its width.

The basis (`pca_projection` of the word embeddings, or `hidden_state_projection` of the hidden states of calibration
text), and the copies through it: the embeddings alone (`project_embeddings`, for a student with a random encoder)
or every layer with its most important heads and feed-forward neurons (`project_encoder`). `students.build_student`
chooses the narrower shape and calls these.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

# The embedding tables beside the words that a student with a random encoder also gets projected.
_PROJECTED_EMBEDDINGS = ("position_embeddings", "token_type_embeddings")


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
    return _fixed_signs(vh[:dim].T.contiguous())


def _fixed_signs(projection: torch.Tensor) -> torch.Tensor:
    """Flip each column so that its largest-magnitude entry is positive (singular/eigenvectors have arbitrary sign)."""
    signs = torch.sign(projection.gather(0, projection.abs().argmax(dim=0, keepdim=True)))
    signs[signs == 0] = 1
    return projection * signs


@torch.no_grad()
def hidden_state_projection(
    teacher: PreTrainedModel, batches: Iterable[Mapping[str, torch.Tensor]], dim: int
) -> torch.Tensor:
    """Orthonormal `(hidden_size, dim)` basis of the top-`dim` uncentred principal directions of `teacher`'s hidden
    states: the embedding output and every layer's output, at real (unmasked) tokens of `batches`.

    Uncentred, because the projected weights must reproduce the vectors themselves, mean included, not their spread
    around the mean. Only the `hidden x hidden` second-moment matrix is accumulated, so memory does not grow with the
    number of batches. Signs follow `pca_projection`'s convention.
    """
    width = teacher.config.hidden_size
    if not 1 <= dim <= width:
        raise ValueError(f"Cannot project {width}-dimensional hidden states onto {dim} dimensions.")
    was_training = teacher.training
    teacher.eval()
    moment = torch.zeros(width, width, dtype=torch.float64)
    tokens = 0
    for batch in batches:
        inputs = {k: v.to(teacher.device) for k, v in batch.items() if k != "labels"}
        outputs = teacher(**inputs, output_hidden_states=True)
        mask = inputs.get("attention_mask")
        for states in outputs.hidden_states:
            rows = states[mask.bool()] if mask is not None else states.reshape(-1, width)
            rows = rows.double().cpu()
            moment += rows.T @ rows
            tokens += rows.shape[0]
    teacher.train(was_training)
    if tokens == 0:
        raise ValueError("calibration_inputs held no tokens; pass a few batches of tokenized training text.")
    _, vectors = torch.linalg.eigh(moment)  # ascending eigenvalues
    return _fixed_signs(vectors[:, -dim:].flip(1).float().contiguous())


def projection_basis(
    teacher: PreTrainedModel, calibration_inputs: Iterable[Mapping[str, torch.Tensor]] | None, dim: int
) -> tuple[torch.Tensor, str]:
    """The `(teacher_hidden, dim)` basis a narrower student is projected on, on the teacher's device, and what it
    spans in words (for `config.trainer_ext_student_init`): the principal directions of the teacher's hidden states
    on `calibration_inputs` when given, else those of its word embeddings."""
    teacher_words = teacher.get_input_embeddings().weight
    if calibration_inputs is not None:
        projection = hidden_state_projection(teacher, calibration_inputs, dim)
        basis = "the principal directions of its hidden states"
    else:
        projection = pca_projection(teacher_words, dim)
        basis = "the principal directions of its word embeddings"
    return projection.to(teacher_words.device), basis


@torch.no_grad()
def project_embeddings(teacher: PreTrainedModel, student: PreTrainedModel, projection: torch.Tensor) -> None:
    """Fill the embedding tables of `student` (same class, narrower, random encoder) with `teacher`'s seen through
    `projection`: the words and, where both have them as tables, the positions and token types."""
    teacher_words = teacher.get_input_embeddings().weight
    student_words = student.get_input_embeddings().weight
    pairs = [(teacher_words, student_words)]
    teacher_embeddings = getattr(teacher.base_model, "embeddings", None)
    student_embeddings = getattr(student.base_model, "embeddings", None)
    # Sinusoidal DistilBERT positions are fixed functions of the width, already correct in the student.
    skip = {"position_embeddings"} if getattr(student.config, "sinusoidal_pos_embds", False) else set()
    for name in _PROJECTED_EMBEDDINGS:
        source = getattr(teacher_embeddings, name, None)
        target = getattr(student_embeddings, name, None)
        if name not in skip and isinstance(source, nn.Embedding) and isinstance(target, nn.Embedding):
            pairs.append((source.weight, target.weight))
    for source, target in pairs:
        target.copy_(source.detach().float().to(projection.device) @ projection)


# Per-layer module names of the supported families: BERT-style (BERT, RoBERTa, ELECTRA, XLM-R, ...), DistilBERT and
# MPNet. `head_bias`, where present, is the path from the base model to a relative attention bias of shape
# (buckets, heads) that every layer shares.
_LAYER_NAMES: tuple[dict[str, Any], ...] = (
    dict(
        qkv=("attention.self.query", "attention.self.key", "attention.self.value"),
        out="attention.output.dense",
        ffn_in="intermediate.dense",
        ffn_out="output.dense",
        norms=("attention.output.LayerNorm", "output.LayerNorm"),
    ),
    dict(
        qkv=("attention.q_lin", "attention.k_lin", "attention.v_lin"),
        out="attention.out_lin",
        ffn_in="ffn.lin1",
        ffn_out="ffn.lin2",
        norms=("sa_layer_norm", "output_layer_norm"),
    ),
    dict(
        qkv=("attention.attn.q", "attention.attn.k", "attention.attn.v"),
        out="attention.attn.o",
        ffn_in="intermediate.dense",
        ffn_out="output.dense",
        norms=("attention.LayerNorm", "output.LayerNorm"),
        head_bias="encoder.relative_attention_bias",
    ),
)


def _encoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    base = model.base_model
    for path in ("encoder.layer", "transformer.layer"):
        module: Any = base
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, nn.ModuleList):
            return module
    raise ValueError(
        f"Cannot find the encoder layers of {type(model).__name__} (`encoder.layer` or `transformer.layer`); "
        'use encoder_init="random".'
    )


@torch.no_grad()
def project_encoder(teacher: PreTrainedModel, student: PreTrainedModel, projection: torch.Tensor, kept: list[int]):
    """Fill `student` (same class, narrower) with `teacher`'s weights seen through `projection` (see build_student)."""
    p = projection
    teacher_layers, student_layers = _encoder_layers(teacher), _encoder_layers(student)
    names = next(
        (n for n in _LAYER_NAMES if all(_has(teacher_layers[0], m) for m in (*n["qkv"], n["out"], n["ffn_in"]))), None
    )
    if names is None:
        raise ValueError(
            f"{type(teacher).__name__}'s layers are not BERT-, DistilBERT- or MPNet-style, so they cannot be "
            'projected; use encoder_init="random".'
        )
    head_size = teacher.config.hidden_size // teacher.config.num_attention_heads
    wanted_heads = student.config.num_attention_heads
    skipped = {id(m) for m in student_layers.modules()}

    def copy_(target: torch.Tensor, value: torch.Tensor) -> None:
        target.copy_(value.to(target.dtype))

    def project_norm(source: nn.Module, target: nn.Module) -> None:
        copy_(target.weight, (p * p).T @ source.weight.float())  # diag(P^T diag(gamma) P)
        copy_(target.bias, p.T @ source.bias.float())

    sources = [teacher_layers[i] for i in kept]
    head_scores = [_head_scores(_get(s, names["qkv"][2]), _get(s, names["out"]), head_size) for s in sources]
    if "head_bias" in names:
        # Student head j reads column j of the shared bias in every layer, so it must stand for the same teacher head
        # in every layer: one set of heads, ranked by their share of each kept layer's total score, summed.
        shared = sum(scores / scores.sum() for scores in head_scores).topk(wanted_heads).indices.sort().values
        kept_heads = [shared] * len(sources)
        source_bias, target_bias = (_get(m.base_model, names["head_bias"]) for m in (teacher, student))
        copy_(target_bias.weight, source_bias.weight.float()[:, shared])
        skipped.add(id(target_bias))
    else:
        kept_heads = [scores.topk(wanted_heads).indices.sort().values for scores in head_scores]

    for source, target, heads in zip(sources, student_layers, kept_heads):
        q, k, v = (_get(source, m) for m in names["qkv"])
        out = _get(source, names["out"])
        ffn_in, ffn_out = _get(source, names["ffn_in"]), _get(source, names["ffn_out"])
        rows = (heads[:, None] * head_size + torch.arange(head_size, device=heads.device)).flatten()
        # Neurons ranked like heads (see _head_scores): |input weights| x |output weights|.
        neuron_scores = ffn_in.weight.float().norm(dim=1) * ffn_out.weight.float().norm(dim=0)
        neurons = neuron_scores.topk(_get(target, names["ffn_in"]).weight.shape[0]).indices.sort().values
        for name, linear in zip(names["qkv"], (q, k, v)):
            copy_(_get(target, name).weight, linear.weight.float()[rows] @ p)
            copy_(_get(target, name).bias, linear.bias.float()[rows])
        copy_(_get(target, names["out"]).weight, p.T @ out.weight.float()[:, rows])
        copy_(_get(target, names["out"]).bias, p.T @ out.bias.float())
        copy_(_get(target, names["ffn_in"]).weight, ffn_in.weight.float()[neurons] @ p)
        copy_(_get(target, names["ffn_in"]).bias, ffn_in.bias.float()[neurons])
        copy_(_get(target, names["ffn_out"]).weight, p.T @ ffn_out.weight.float()[:, neurons])
        copy_(_get(target, names["ffn_out"]).bias, p.T @ ffn_out.bias.float())
        for norm in names["norms"]:
            project_norm(_get(source, norm), _get(target, norm))

    # Everything outside the layers (embeddings, their norm, pooler, head), by module type: a Linear is projected on
    # whichever side has the hidden width, an Embedding on its columns, a LayerNorm as above.
    width = teacher.config.hidden_size
    teacher_modules = dict(teacher.named_modules())
    for name, target in student.named_modules():
        if id(target) in skipped or name not in teacher_modules:
            continue
        source = teacher_modules[name]
        if isinstance(target, nn.Embedding) and source.weight.shape[1] == width:
            copy_(target.weight, source.weight.float() @ p)
        elif isinstance(target, nn.LayerNorm) and source.weight.shape[0] == width:
            project_norm(source, target)
        elif isinstance(target, nn.Linear):
            weight = source.weight.float()
            weight = p.T @ weight if weight.shape[0] == width else weight
            weight = weight @ p if weight.shape[1] == width else weight
            copy_(target.weight, weight)
            if target.bias is not None:
                copy_(target.bias, p.T @ source.bias.float() if source.bias.shape[0] == width else source.bias)


def _head_scores(value: nn.Linear, out: nn.Linear, head_size: int) -> torch.Tensor:
    """Each attention head's score, `|value weights| x |output weights|`: how much it can move the residual stream."""
    num_heads = out.weight.shape[1] // head_size
    value_norms = value.weight.float().reshape(num_heads, head_size, -1).flatten(1).norm(dim=1)
    out_norms = out.weight.float().reshape(out.weight.shape[0], num_heads, head_size).transpose(0, 1)
    return value_norms * out_norms.flatten(1).norm(dim=1)


def _has(module: nn.Module, path: str) -> bool:
    try:
        _get(module, path)
    except AttributeError:
        return False
    return True


def _get(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = getattr(module, part)
    return module
