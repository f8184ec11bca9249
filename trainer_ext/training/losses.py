"""Distillation losses as pure functions of logits, so they can be tested and reused outside the trainer.

Every function takes `reduction="mean" | "sum" | "none"`; "none" returns one value per example, which lets the
trainer normalise by the number of items in a gradient-accumulation window instead of per micro-batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _reduce(per_example: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_example.mean()
    if reduction == "sum":
        return per_example.sum()
    if reduction == "none":
        return per_example
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")


def _unit_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Squared error averaged over the last dimension (classes or hidden units), in float32."""
    return (student.float() - teacher.float()).pow(2).mean(dim=-1)


def _check_shapes(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"Student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ in "
            "shape: teacher and student must predict the same labels in the same order."
        )


def logit_mse_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Mean squared error between raw logits, averaged over classes (the reference study's loss)."""
    _check_shapes(student_logits, teacher_logits)
    return _reduce(_unit_mse(student_logits, teacher_logits), reduction)


def kl_divergence_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0, reduction: str = "mean"
) -> torch.Tensor:
    """Hinton et al.'s loss: KL(softmax(teacher/T) || softmax(student/T)) * T^2.

    The T^2 factor keeps gradient magnitudes comparable across temperatures; "mean" is PyTorch's `batchmean`.
    """
    _check_shapes(student_logits, teacher_logits)
    student_log_probs = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    per_example = (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum(dim=-1)
    return _reduce(per_example * temperature**2, reduction)


def soft_cross_entropy_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy of the student against the teacher's softened distribution, * T^2.

    Differs from the KL loss only by the teacher's entropy, a constant for the student, so the gradients match.
    """
    _check_shapes(student_logits, teacher_logits)
    student_log_probs = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher_probs = F.softmax(teacher_logits.float() / temperature, dim=-1)
    per_example = -(teacher_probs * student_log_probs).sum(dim=-1)
    return _reduce(per_example * temperature**2, reduction)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    loss_type: str = "mse",
    temperature: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Dispatch to one of the logit losses by name ('mse', 'kl', 'ce')."""
    if loss_type == "mse":
        return logit_mse_loss(student_logits, teacher_logits, reduction=reduction)
    if loss_type == "kl":
        return kl_divergence_loss(student_logits, teacher_logits, temperature=temperature, reduction=reduction)
    if loss_type == "ce":
        return soft_cross_entropy_loss(student_logits, teacher_logits, temperature=temperature, reduction=reduction)
    raise ValueError(f"Unknown distillation loss {loss_type!r}; choose 'mse', 'kl' or 'ce'.")


def hidden_state_mse_loss(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """MSE between (already projected) student and teacher hidden states, ignoring padding positions.

    Shapes are (batch, seq, hidden); the per-example value averages over real tokens and hidden units.
    """
    if student_hidden.shape != teacher_hidden.shape:
        raise ValueError(
            f"Hidden states differ in shape: student {tuple(student_hidden.shape)}, teacher "
            f"{tuple(teacher_hidden.shape)}. Project the student's to the teacher's width first."
        )
    squared = _unit_mse(student_hidden, teacher_hidden)  # (batch, seq)
    if attention_mask is None:
        attention_mask = torch.ones_like(squared)
    mask = attention_mask.to(squared.dtype)
    per_example = (squared * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1.0)
    return _reduce(per_example, reduction)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention-mask-weighted mean over the sequence: (batch, seq, hidden) -> (batch, hidden), in float32.

    The pooling sentence encoders (sentence-transformers' mean pooling) are trained with, so padding never counts.
    """
    hidden = hidden.float()
    if attention_mask is None:
        return hidden.mean(dim=1)
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def pooled_mse_loss(
    student_pooled: torch.Tensor, teacher_pooled: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """MSE between (already projected) mean-pooled student and teacher states (`mean_pool`), averaged over units.

    It compares one vector per sentence, so it needs no token alignment: the two models may tokenize differently.
    """
    if student_pooled.shape != teacher_pooled.shape:
        raise ValueError(
            f"Pooled states differ in shape: student {tuple(student_pooled.shape)}, teacher "
            f"{tuple(teacher_pooled.shape)}. Project the student's to the teacher's width first."
        )
    return _reduce(_unit_mse(student_pooled, teacher_pooled), reduction)
