"""trainer-ext: make Hugging Face text classifiers small and fast without losing their accuracy."""

__version__ = "0.1.0.dev0"

from .arguments import DistillationTrainingArguments
from .losses import (
    distillation_loss,
    hidden_state_mse_loss,
    kl_divergence_loss,
    logit_mse_loss,
    soft_cross_entropy_loss,
)
from .students import STUDENT_PRESETS, build_student, count_parameters
from .teacher import TeacherLogitsCache, compute_teacher_logits
from .trainer import DistillationError, DistillationTrainer

__all__ = [
    "__version__",
    "DistillationError",
    "DistillationTrainer",
    "DistillationTrainingArguments",
    "STUDENT_PRESETS",
    "TeacherLogitsCache",
    "build_student",
    "compute_teacher_logits",
    "count_parameters",
    "distillation_loss",
    "hidden_state_mse_loss",
    "kl_divergence_loss",
    "logit_mse_loss",
    "soft_cross_entropy_loss",
]
