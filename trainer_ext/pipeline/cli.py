"""The `trainer-ext` command. Heavy imports happen inside each command, so `trainer-ext --help` is instant."""

from __future__ import annotations

import argparse
import sys
from typing import Any


class UsageError(ValueError):
    """A command line that does not parse; the message names the flag."""


def _parse(argv: list[str], types: tuple[type, ...], prog: str, positional: str | None = None) -> tuple[Any, ...]:
    """The command's dataclasses from its flags (`HfArgumentParser`, the same parser as recipes'); `positional`
    names the field a leading bare argument fills (`trainer-ext quantize MODEL_DIR`). Bad flags are a `UsageError`."""
    from transformers import HfArgumentParser

    class Parser(HfArgumentParser):
        def error(self, message: str) -> Any:  # argparse prints usage and exits; the CLI says it in one line
            raise UsageError(f"{message}. See {prog.split()[0]} {prog.split()[1]} --help")

    parser = Parser(types, prog=prog)
    if positional and argv and not argv[0].startswith("-"):
        argv = [f"--{positional}", *argv]
    *parsed, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if unknown:
        parser.error(f"unrecognised arguments {' '.join(unknown)}")
    return tuple(parsed)


def _check_model_folder(path: str, flag: str) -> None:
    """A saved model folder, or a `UsageError` before any data is read. (Hub ids are for `trainer-ext run`.)"""
    from pathlib import Path

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UsageError(f"{flag} {path} does not exist or is not a folder. Pass a folder saved with save_pretrained")
    if not (folder / "config.json").exists():
        raise UsageError(
            f"{flag} {path} has no config.json, so it is not a saved model. Pass a folder saved with save_pretrained "
            "(config.json, weights, tokenizer)"
        )


def _augment(argv: list[str]) -> int:
    from dataclasses import dataclass, field

    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from trainer_ext.data.loading import load_text_classification_dataset
    from trainer_ext.data.transfer.augmentation import (
        AugmentationArguments,
        TextGenerationAugmenter,
        merge_with_original,
    )

    @dataclass
    class AugmentInputs:
        train_data: str = field(
            default="rotten_tomatoes_offline", metadata={"help": "Dataset name, Hub id or local file/folder."}
        )
        teacher: str | None = field(
            default=None, metadata={"help": "Folder of a fine-tuned classifier (and tokenizer) that relabels samples."}
        )
        max_train_samples: int | None = field(default=None, metadata={"help": "Subsample the training data."})
        include_original: bool = field(default=False, metadata={"help": "Save original + generated together."})

    inputs, aug = _parse(argv, (AugmentInputs, AugmentationArguments), "trainer-ext augment")
    if not aug.output_dir:
        return _user_error(
            "augment",
            "--output_dir is missing. Pass --output_dir DIR: generated shards, statistics and the dataset go there",
        )
    if inputs.teacher:
        _check_model_folder(inputs.teacher, "--teacher")
    hf_logging.set_verbosity_warning()
    data = load_text_classification_dataset(inputs.train_data, max_train_samples=inputs.max_train_samples)
    teacher = teacher_tokenizer = None
    if inputs.teacher:
        teacher = AutoModelForSequenceClassification.from_pretrained(inputs.teacher)
        teacher_tokenizer = AutoTokenizer.from_pretrained(inputs.teacher)
    augmenter = TextGenerationAugmenter(aug.generator_name_or_path, args=aug)
    exclude = [t for split in ("validation", "test") if split in data for t in data[split]["text"]]
    generated = augmenter.augment(
        data["train"],
        teacher=teacher,
        teacher_tokenizer=teacher_tokenizer,
        exclude_texts=exclude,
        labelling_texts=data["validation"]["text"] if "validation" in data else None,
    )
    result = merge_with_original(data["train"], generated) if inputs.include_original else generated
    path = f"{aug.output_dir}/augmented"
    result.save_to_disk(path)
    stats = augmenter.stats
    print(
        f"generated {stats['generated']}, kept {stats['kept']}, final {stats['final']}; "
        f"teacher agreement {stats['teacher_agreement']}; {stats['accepted_per_second']:.2f} accepted/s"
    )
    print(f"per label: {stats['final_per_label']}; rejected: {stats['rejected']}")
    print(f"saved {len(result)} rows to {path}")
    return 0


def _quantize(argv: list[str]) -> int:
    from dataclasses import dataclass, field

    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from trainer_ext.data.loading import load_text_classification_dataset
    from trainer_ext.deployment.quantization import QuantizationArguments, quantize_model

    @dataclass
    class QuantizeInputs:
        model_dir: str = field(metadata={"help": "Folder of a saved text-classification model and its tokenizer."})
        eval_data: str = field(
            default="rotten_tomatoes_offline",
            metadata={"help": "Labelled data for the accuracy check: a dataset name, Hub id or local file/folder."},
        )
        eval_split: str = field(default="validation", metadata={"help": "Split the search measures its metric on."})
        output_dir: str | None = field(default=None, metadata={"help": "Where onnx/ and the report go (required)."})

    types = (QuantizeInputs, QuantizationArguments)
    inputs, qargs = _parse(argv, types, "trainer-ext quantize MODEL_DIR", positional="model_dir")
    if not inputs.output_dir:
        return _user_error(
            "quantize", "--output_dir is missing. Pass --output_dir DIR: onnx/ and compression_report.json go there"
        )
    _check_model_folder(inputs.model_dir, "MODEL_DIR")
    hf_logging.set_verbosity_warning()
    data = load_text_classification_dataset(inputs.eval_data)
    if inputs.eval_split not in data:
        return _user_error(
            "quantize", f"--eval_split {inputs.eval_split!r} is not one of the data's splits {list(data)}"
        )
    tokenizer = AutoTokenizer.from_pretrained(inputs.model_dir)
    report = quantize_model(
        inputs.model_dir,
        tokenizer,
        data[inputs.eval_split],
        inputs.output_dir,
        qargs,
        calibration_dataset=data["train"],
    )
    fp32 = report["fp32"]
    print(
        f"FP32 ONNX: {report['metric']} {fp32['metric_value']:.4f}, {fp32['latency']['median_ms']:.2f} ms, "
        f"{fp32['size_mb']:.1f} MB (optimisation level {fp32['optimization_level']}); export max |diff| "
        f"{report['export_max_abs_logit_diff']:.2e}"
    )
    for trial in report["trials"]:
        acc = f"{trial['metric_value']:.4f}" if "metric_value" in trial else "-"
        lat = f"{trial['latency']['median_ms']:.2f} ms" if "latency" in trial else "-"
        print(f"  {trial['name']:<32} {acc:>8} {lat:>10}  {trial.get('status', '')}")
    print(f"chosen: {report['chosen']['name']} {report['chosen'].get('reason', '')}")
    for shape, pick in report.get("per_shape", {}).items():
        print(f"  fastest for {shape:<22} {pick['name']:<32} {pick['median_ms']:.2f} ms  {pick.get('file', '')}")
    for note in report.get("notes", []):
        print(f"note: {note}")
    folders = "onnx" + (
        " and openvino" if any(p.get("backend") == "openvino" for p in report["per_shape"].values()) else ""
    )
    print(f"wrote {folders} and compression_report.json in {inputs.output_dir}")
    return 0


def _card(argv: list[str]) -> int:
    from dataclasses import asdict, dataclass, field

    from trainer_ext.reporting.cards import CardArguments, write_model_card

    @dataclass
    class CardFolder:
        output_dir: str = field(metadata={"help": "Folder with results.json or compression_report.json."})

    folder, card_args = _parse(argv, (CardFolder, CardArguments), "trainer-ext card OUTPUT_DIR", "output_dir")
    output_dir, fields = folder.output_dir, asdict(card_args)
    card = write_model_card(output_dir, **fields)
    print(f"wrote {output_dir}/README.md ({len(card.data.eval_results or [])} model-index results)")
    return 0


def _run(argv: list[str]) -> int:
    import os

    from transformers.utils import logging as hf_logging

    from trainer_ext.pipeline.pipeline import Pipeline, summary_table
    from trainer_ext.pipeline.recipe import load_recipe, parse_overrides
    from trainer_ext.pipeline.runs import RunInterrupted, signals_raise

    if argv and argv[0] in ("-h", "--help"):
        print(
            "usage: trainer-ext run RECIPE.yaml [--profile NAME] [--section.key value ...]\n\n"
            + _COMMANDS["run"]
            + "\n\nSections: run, teacher_training, student_training, augmentation, quantization, card."
        )
        return 0
    if not argv or argv[0].startswith("--"):
        return _user_error(
            "run",
            "no recipe given. Pass a recipe file first, e.g. trainer-ext run recipes/rotten_tomatoes_offline.yaml",
        )
    overrides, profile = parse_overrides(argv[1:])
    recipe = load_recipe(argv[0], overrides, profile)
    hf_logging.set_verbosity_warning()
    pipeline = Pipeline(recipe)
    try:
        with signals_raise():
            results = pipeline.run()
    except RunInterrupted as interrupt:
        # Nothing of the interrupted stage is kept (its outputs are written atomically, its marker last), and the
        # finished stages are reused by the next run.
        where = f"during stage {interrupt.stage!r}" if interrupt.stage else "before the first stage"
        print(
            f"trainer-ext run: interrupted ({interrupt.signal_name}) {where}; finished stages are kept. Run the same "
            "command to resume.",
            file=sys.stderr,
        )
        return interrupt.exit_status
    if pipeline.is_main:
        print()
        print(
            f"{recipe.run.dataset}, {recipe.run.test_split} split; latency in ms, every variant and shape interleaved"
        )
        print(summary_table(results))
        print(f"results: {os.path.join(recipe.run.output_dir, 'results.json')}")
        print(f"card and ONNX: {os.path.join(recipe.run.output_dir, pipeline.shipped)}")
    return 0


_COMMANDS = {
    "augment": "Fine-tune a causal LM on 'label<sep>text' lines, generate new labelled sentences, filter them and "
    "relabel them with a teacher; saves a datasets folder.",
    "quantize": "Export a saved classifier to ONNX and keep the fastest INT8 configuration whose accuracy stays within "
    "the criterion (accuracy-aware search through Optimum and ONNX Runtime).",
    "run": "Run a recipe: data, teacher, augmentation, the student (chosen by a budget from candidates), with and "
    "without distillation, quantization, benchmark and model card; each finished stage is reused on a re-run.",
    "card": "Write a Hub-ready README.md model card (and accuracy_vs_latency.png) from a folder's measured "
    "results.json or compression_report.json.",
}


def main(argv: list[str] | None = None) -> int:
    """`trainer-ext COMMAND ...`. A user error (data, model, recipe, output folder, a missing extra) is one line,
    `trainer-ext COMMAND: error: what is wrong. What to do.`, and exit status 2; `--debug` anywhere on the line shows
    its traceback instead. Any other exception is a bug, and keeps its traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [arg for arg in argv if arg != "--debug"]
    parser = argparse.ArgumentParser(
        prog="trainer-ext",
        description="Distil, augment and quantize Hugging Face text classifiers.",
        epilog="Commands:\n" + "\n".join(f"  {name:<8} {text}" for name, text in _COMMANDS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=sorted(_COMMANDS), help="what to run (see below)")
    parser.add_argument("--version", action="version", version=_version())
    if not argv or argv[0] in ("-h", "--help", "--version"):
        parser.parse_args(argv or ["--help"])
        return 0
    command, rest = argv[0], argv[1:]
    if command not in _COMMANDS:
        parser.error(f"unknown command {command!r}; choose from {', '.join(sorted(_COMMANDS))}")
    _quiet_datasets()
    try:
        return {"augment": _augment, "quantize": _quantize, "card": _card, "run": _run}[command](rest)
    except Exception as err:
        message = user_error_message(err)
        if message is None or debug:
            raise
        return _user_error(command, message)


def _quiet_datasets() -> None:
    """datasets logs a file it cannot read, and draws a bar per file, before the error that this CLI translates."""
    import datasets

    datasets.utils.logging.set_verbosity(datasets.utils.logging.CRITICAL)
    datasets.disable_progress_bars()


def user_error_message(err: BaseException) -> str | None:
    """The one-line message of an exception that a user's input caused, or None for anything else (a bug).

    trainer-ext's own errors already say what to do. Errors of huggingface_hub, transformers and the file system
    that mean a wrong name or path are said as such, with what to pass instead.
    """
    from huggingface_hub import errors as hub_errors

    from trainer_ext.data.assets import PackagedAssetError
    from trainer_ext.data.loading import DatasetUnavailableError, DataValidationError
    from trainer_ext.data.transfer.augmentation import AugmentationError
    from trainer_ext.deployment.quantization import QuantizationError
    from trainer_ext.pipeline.pipeline import PipelineError
    from trainer_ext.pipeline.recipe import RecipeError
    from trainer_ext.reporting.cards import ModelCardError
    from trainer_ext.reporting.results import ResultsError
    from trainer_ext.training.trainer import DistillationError

    ours = (
        UsageError,
        RecipeError,
        PipelineError,
        DataValidationError,
        DatasetUnavailableError,
        AugmentationError,
        ModelCardError,
        QuantizationError,
        ResultsError,
        PackagedAssetError,
        DistillationError,
    )
    text = " ".join(str(err).split()).rstrip(".")
    model_fix = (
        "Pass a folder saved with save_pretrained (config.json, weights, tokenizer), or a Hub id that is online or "
        "in the local cache"
    )
    if isinstance(err, ours):
        return text
    if isinstance(err, (hub_errors.HFValidationError, hub_errors.RepositoryNotFoundError)):
        return f"not a local folder or a Hub model id ({text}). {model_fix}"
    if isinstance(err, (hub_errors.LocalEntryNotFoundError, hub_errors.OfflineModeIsEnabled)):
        return f"not available offline ({text}). {model_fix}; unset HF_HUB_OFFLINE to download it"
    if isinstance(err, ImportError) and any(extra in text for extra in ("openvino", "nncf")):
        return f"{text}. Install the extra: pip install 'trainer-ext[openvino]'"
    if isinstance(err, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)):
        return f"{text}. Check the path"
    if isinstance(err, OSError) and any(
        phrase in text
        for phrase in ("Can't load", "is not a local folder", "does not appear to have", "Incorrect path")
    ):
        return f"{text.split('. ')[0]}. {model_fix}"
    return None


def _user_error(command: str, message: str) -> int:
    print(f"trainer-ext {command}: error: {message.rstrip('.')}.", file=sys.stderr)
    return 2


def _version() -> str:
    from trainer_ext import __version__

    return f"trainer-ext {__version__}"


if __name__ == "__main__":
    sys.exit(main())
