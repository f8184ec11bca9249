"""The augmentation's settings (`AugmentationArguments`, every field a CLI flag and recipe key) and its error
(`AugmentationError`), shared by the transfer set's sources and the augmenter that runs them."""

from __future__ import annotations

from dataclasses import dataclass, field

from trainer_ext.data.transfer.sampling import ENGINES

LABEL_DISTRIBUTIONS = ("balanced", "proportional")
LABELLING_FORMS = ("auto", "fp32", "bf16", "int8")  # teacher_labelling: the forms that may label the transfer set
DEFAULT_GENERATED = 20_000  # generated sentences when nothing else fills the transfer set (benchmarks/README.md)


class AugmentationError(ValueError):
    """Augmentation cannot run as configured; the message says how to fix it."""


@dataclass
class AugmentationArguments:
    """Settings of `TextGenerationAugmenter`. Every field is a CLI flag / recipe key through `HfArgumentParser`."""

    generator_name_or_path: str = field(
        default="gpt2",
        metadata={"help": "Causal LM to generate with: a Hub id, a local folder, or a folder/file with a GGUF file."},
    )
    gguf_file: str | None = field(
        default=None, metadata={"help": "GGUF file name inside generator_name_or_path (needs `pip install gguf`)."}
    )
    separator: str = field(default="\t", metadata={"help": "Separator between the label prompt and the text."})
    prompt_label_names: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated words used as prompts instead of the dataset's label names, in label order "
            "(e.g. 'negative,positive' for labels named neg/pos: a word the LM already knows conditions it faster)."
        },
    )
    fine_tune: bool = field(
        default=True, metadata={"help": "Fine-tune the generator on 'label<sep>text<eos>' lines; else prompt only."}
    )
    fine_tune_epochs: float = field(default=1.0, metadata={"help": "Generator fine-tuning epochs."})
    fine_tune_max_samples: int | None = field(
        default=None, metadata={"help": "Fine-tune on at most this many training sentences (seeded subset)."}
    )
    fine_tune_learning_rate: float = field(default=5e-5, metadata={"help": "Generator fine-tuning learning rate."})
    fine_tune_batch_size: int = field(default=16, metadata={"help": "Generator fine-tuning batch size."})
    freeze_layers: int = field(
        default=0,
        metadata={
            "help": "Freeze the input embeddings and this many lowest decoder layers while fine-tuning (speed)."
        },
    )
    num_samples: int | None = field(
        default=None,
        metadata={
            "help": "Generated sentences to keep, over all labels. Default: none when unlabeled_texts is given (the "
            "unlabelled sentences fill the transfer set), else max_transfer_samples (or 20,000): with nothing else to "
            "draw on, the transfer set is generated."
        },
    )
    label_distribution: str = field(
        default="balanced",
        metadata={
            "help": "Samples per label: 'balanced' (equal) or 'proportional' (to the training data).",
            "choices": list(LABEL_DISTRIBUTIONS),
        },
    )
    generation_batch_size: int = field(
        default=128,
        metadata={
            "help": "Rows sampled together: in flight at once with the continuous engine (a finished row's slot is "
            "refilled), a padded batch with model.generate."
        },
    )
    sampling_engine: str = field(
        default="auto",
        metadata={
            "help": "How the generator samples: 'continuous' (trainer_ext.data.transfer.sampling.ContinuousSampler: finished rows "
            "leave the batch and new prompts take their slots), 'generate' (model.generate on padded batches), or "
            "'auto': continuous, falling back to generate with the reason recorded when it cannot run the model.",
            "choices": list(ENGINES),
        },
    )
    sampling_precision: str = field(
        default="auto",
        metadata={
            "help": "The generator's weights while sampling with the continuous engine: 'fp32', 'bf16', or 'auto' "
            "(bf16 where the CPU has fast bf16 and a decode step measures faster; recorded in precision.json).",
            "choices": ["auto", "fp32", "bf16"],
        },
    )
    prompt_opening_words: int = field(
        default=0,
        metadata={
            "help": "Prompt with the label and the first N words of a training sentence of that label (drawn at "
            "random), which the generator continues; 0 prompts with the label alone. Openings that begin a "
            "validation or test sentence are never used (dropped and counted)."
        },
    )
    max_new_tokens: int | None = field(
        default=None, metadata={"help": "Token budget per sample. Default: 99th percentile of training lengths."}
    )
    min_words: int | None = field(default=None, metadata={"help": "Shortest kept sample. Default: from the data."})
    max_words: int | None = field(default=None, metadata={"help": "Longest kept sample. Default: from the data."})
    top_p: float = field(default=0.9, metadata={"help": "Nucleus sampling threshold (the reference's 0.9)."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling (0 disables it)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    repetition_penalty: float = field(default=1.0, metadata={"help": "Generation repetition penalty (1.0 = none)."})
    max_attempts_factor: float = field(
        default=5.0, metadata={"help": "Stop after generating num_samples * this many candidates in all."}
    )
    min_teacher_confidence: float | None = field(
        default=None, metadata={"help": "Drop samples whose teacher top probability is below this."}
    )
    require_label_agreement: bool = field(
        default=False, metadata={"help": "Keep only samples the teacher labels with their prompt label."}
    )
    teacher_labelling: str = field(
        default="auto",
        metadata={
            "help": "The teacher's form that labels the transfer set: 'auto' (bf16 autocast where it measured faster "
            "for the teacher's logits, else FP32), 'fp32', 'bf16', or 'int8': the teacher exported to ONNX and "
            "dynamically quantized, used only when its labels agree with FP32's on at least min_labelling_agreement "
            "of the validation sentences (else the 'auto' form, with the reason recorded). The original and "
            "validation sentences' logits keep the faithful form.",
            "choices": list(LABELLING_FORMS),
        },
    )
    min_labelling_agreement: float = field(
        default=0.99,
        metadata={
            "help": "Share of the validation sentences on which the INT8 teacher's label must be FP32's for "
            "teacher_labelling 'int8' to label the transfer set."
        },
    )
    unlabeled_texts: str | None = field(
        default=None,
        metadata={
            "help": "Unlabelled in-domain text added to the transfer set and labelled by the teacher: "
            "'imdb_reviews_offline' (the packaged IMDB reviews), a local file or folder, or a Hub id. Split into "
            "sentences and filtered like generated text (length, duplicates, any training, validation or test text)."
        },
    )
    unlabeled_text_column: str = field(default="text", metadata={"help": "Text column of unlabeled_texts."})
    max_transfer_samples: int | None = field(
        default=None,
        metadata={
            "help": "Cap on the transfer set (generated plus unlabelled sentences): unlabelled sentences, in a "
            "seeded random order, fill what generation leaves. Default: every unlabelled sentence that passes."
        },
    )
    shard_size: int = field(
        default=1024,
        metadata={"help": "Candidates per shard written to disk (resume unit); prompts sampled per call."},
    )
    output_dir: str | None = field(
        default=None, metadata={"help": "Where the generator, shards and statistics go (needed for resume)."}
    )
    max_length: int = field(default=64, metadata={"help": "Student tokenization length for generated text."})
    seed: int = field(default=42, metadata={"help": "Seed for fine-tuning and sampling."})

    def __post_init__(self) -> None:
        if self.label_distribution not in LABEL_DISTRIBUTIONS:
            raise ValueError(
                f"label_distribution must be one of {LABEL_DISTRIBUTIONS}, got {self.label_distribution!r}."
            )
        if self.num_samples is None:
            self.num_samples = 0 if self.unlabeled_texts else (self.max_transfer_samples or DEFAULT_GENERATED)
        if self.num_samples < 0 or (self.num_samples == 0 and not self.unlabeled_texts):
            raise ValueError(
                f"num_samples must be >= 1 (or 0 with unlabeled_texts, which then fill the transfer set), got "
                f"{self.num_samples}."
            )
        if self.sampling_engine not in ENGINES:
            raise ValueError(f"sampling_engine must be one of {ENGINES}, got {self.sampling_engine!r}.")
        if self.sampling_precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"sampling_precision must be 'auto', 'fp32' or 'bf16', got {self.sampling_precision!r}.")
        if self.prompt_opening_words < 0:
            raise ValueError(f"prompt_opening_words must be >= 0, got {self.prompt_opening_words}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}.")
        if self.min_teacher_confidence is not None and not 0 <= self.min_teacher_confidence <= 1:
            raise ValueError(f"min_teacher_confidence must be in [0, 1], got {self.min_teacher_confidence}.")
        if not self.separator:
            raise ValueError("separator must not be empty: it ends the label prompt.")
        if self.max_transfer_samples is not None and self.max_transfer_samples < 1:
            raise ValueError(f"max_transfer_samples must be >= 1, got {self.max_transfer_samples}.")
        if self.max_attempts_factor < 1:
            raise ValueError(f"max_attempts_factor must be >= 1, got {self.max_attempts_factor}.")
        if self.teacher_labelling not in LABELLING_FORMS:
            raise ValueError(f"teacher_labelling must be one of {LABELLING_FORMS}, got {self.teacher_labelling!r}.")
        if not 0 <= self.min_labelling_agreement <= 1:
            raise ValueError(
                f"min_labelling_agreement must be in [0, 1] (a share of the validation sentences), got "
                f"{self.min_labelling_agreement}."
            )
