"""trainer-ext: make Hugging Face text classifiers small and fast without losing their accuracy."""

__version__ = "0.1.0.dev0"

from trainer_ext.callbacks import ModelCardCallback, QuantizationCallback
from trainer_ext.data.assets import (
    MissingAssetError,
    minilm_teacher_path,
    mpnet_teacher_path,
    packaged_source,
    rotten_tomatoes_corpus_path,
    smollm2_gguf_path,
)
from trainer_ext.data.loading import (
    OFFLINE_DATASET_NAME,
    DataValidationError,
    load_text_classification_dataset,
    validate_text_classification_dataset,
)
from trainer_ext.data.transfer.augmentation import (
    AugmentationArguments,
    AugmentationError,
    TextGenerationAugmenter,
    augment_training_data,
    merge_with_original,
)
from trainer_ext.deployment.benchmark import ClassifierRunner, measure_classifier, measure_variants
from trainer_ext.deployment.quantization import QuantizationArguments, QuantizationError, quantize_model
from trainer_ext.pipeline.recipe import Recipe, load_recipe
from trainer_ext.reporting.cards import CardArguments, ModelCardError, write_model_card
from trainer_ext.reporting.results import Results, ResultsError, Variant
from trainer_ext.training.arguments import DistillationTrainingArguments
from trainer_ext.training.losses import (
    distillation_loss,
    hidden_state_mse_loss,
    kl_divergence_loss,
    logit_mse_loss,
    soft_cross_entropy_loss,
)
from trainer_ext.training.students import STUDENT_PRESETS, build_student, count_parameters
from trainer_ext.training.teacher_logits import TeacherLogitsCache, compute_teacher_logits
from trainer_ext.training.trainer import DistillationError, DistillationTrainer

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
