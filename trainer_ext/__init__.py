"""trainer-ext: make Hugging Face text classifiers small and fast without losing their accuracy."""

__version__ = "0.1.0.dev0"

from .arguments import DistillationTrainingArguments
from .assets import (
    MissingAssetError,
    minilm_teacher_path,
    mpnet_teacher_path,
    packaged_source,
    rotten_tomatoes_corpus_path,
    smollm2_gguf_path,
)
from .augmentation import (
    AugmentationArguments,
    AugmentationError,
    TextGenerationAugmenter,
    augment_training_data,
    merge_with_original,
)
from .benchmark import ClassifierRunner, measure_classifier, measure_variants
from .callbacks import ModelCardCallback, QuantizationCallback
from .cards import CardArguments, ModelCardError, write_model_card
from .data import (
    OFFLINE_DATASET_NAME,
    DataValidationError,
    load_text_classification_dataset,
    validate_text_classification_dataset,
)
from .losses import (
    distillation_loss,
    hidden_state_mse_loss,
    kl_divergence_loss,
    logit_mse_loss,
    soft_cross_entropy_loss,
)
from .quantization import QuantizationArguments, QuantizationError, quantize_model
from .recipe import Recipe, load_recipe
from .results import Results, ResultsError, Variant
from .students import STUDENT_PRESETS, build_student, count_parameters
from .teacher import TeacherLogitsCache, compute_teacher_logits
from .trainer import DistillationError, DistillationTrainer

__all__ = [
    "__version__",
    "AugmentationArguments",
    "AugmentationError",
    "CardArguments",
    "ClassifierRunner",
    "TextGenerationAugmenter",
    "augment_training_data",
    "merge_with_original",
    "DistillationError",
    "DistillationTrainer",
    "DistillationTrainingArguments",
    "DataValidationError",
    "MissingAssetError",
    "ModelCardCallback",
    "ModelCardError",
    "OFFLINE_DATASET_NAME",
    "QuantizationArguments",
    "QuantizationCallback",
    "QuantizationError",
    "Recipe",
    "Results",
    "ResultsError",
    "Variant",
    "STUDENT_PRESETS",
    "TeacherLogitsCache",
    "build_student",
    "compute_teacher_logits",
    "count_parameters",
    "distillation_loss",
    "hidden_state_mse_loss",
    "kl_divergence_loss",
    "load_text_classification_dataset",
    "load_recipe",
    "measure_classifier",
    "measure_variants",
    "minilm_teacher_path",
    "mpnet_teacher_path",
    "packaged_source",
    "quantize_model",
    "rotten_tomatoes_corpus_path",
    "smollm2_gguf_path",
    "validate_text_classification_dataset",
    "write_model_card",
    "logit_mse_loss",
    "soft_cross_entropy_loss",
]
