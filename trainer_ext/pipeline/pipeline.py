"""`trainer-ext run RECIPE`: the whole compression job, stage by stage, resumable and distributed.

Stages, in order, each with the one module that owns its work (this module only orders them, keys them and saves
what they return):

- data: load, validate and split the dataset (`data`);
- teacher: load the teacher, fine-tuned on the training split when it is not yet a classifier for these labels
  (`transformers.Trainer`);
- student_no_distillation: build the student from the teacher (`students`) and train it on labels only, the
  comparison row (`trainer`, which without a teacher is `Trainer`);
- augmentation: fine-tune the generator, sample per label, filter, relabel with the teacher (`augmentation`);
- distillation_original: the same student distilled on the original training sentences only, the ablation row that
  shows what the transfer set adds (only when augmentation runs; otherwise `distillation` is that row);
- distillation: the same student distilled on original + transfer set (generated and unlabelled sentences), against
  the teacher's logits (`trainer`; `teacher` computes the original sentences' logits once, for both distillation
  stages, and the transfer set brings the logits the teacher gave it when labelling it);
- quantization, teacher_quantization: ONNX export and the accuracy-aware INT8 search (`quantization`);
- benchmark: every variant measured on the test split, latency timed in alternation (`results`, `benchmark`);
- card: `results.json` and the Hub model card (`results`, `cards`).

Each stage that trains or runs a model chooses FP32 or bf16 autocast by detection and measurement (`precision`) and
records the choice in `precision.json`, which results.json repeats.

Each stage writes its outputs under `run.output_dir` (atomically, `files`), then a marker `stages/<stage>.json`
holding its settings and duration. A re-run skips every stage whose marker matches its settings (an interrupted run
resumes and redoes nothing); a marker with other settings is an error, never an overwrite, so a finished stage's
outputs are never deleted or corrupted by a later one.

Under `torchrun --nproc_per_node N` training stages run data-parallel (Trainer), the generator's sampling is split
across processes, the teacher's logits are computed in shares, and only the main process writes shared files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, DatasetDict, load_from_disk
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    PreTrainedModel,
    Trainer,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from trainer_ext.data.assets import PACKAGED_SOURCES, PackagedAssetError, packaged_source
from trainer_ext.data.loading import (
    OFFLINE_DATASET_NAME,
    DatasetUnavailableError,
    DataValidationError,
    id2label_label2id,
    label_names,
    load_text_classification_dataset,
    load_unlabeled_texts,
)
from trainer_ext.data.transfer.augmentation import (
    AugmentationError,
    TextGenerationAugmenter,
    merge_with_original,
    prompt_names,
    read_stats,
)
from trainer_ext.deployment.benchmark import ClassifierRunner, accuracy, serving_latency
from trainer_ext.deployment.openvino_backend import OV_FILE
from trainer_ext.deployment.quantization import (
    INT8_FILE,
    ONNX_SUBFOLDER,
    OPENVINO_SUBFOLDER,
    REPORT_FILE,
    quantize_model,
)
from trainer_ext.files import save_pretrained, write_atomic, write_json
from trainer_ext.pipeline.recipe import Recipe
from trainer_ext.pipeline.runs import (
    OutputFolderLocked,
    OutputLock,
    RecordedRecipe,
    RunInterrupted,
    SettingsLog,
    recipe_fields,
    setting_value,
    settings_added_since,
)
from trainer_ext.pipeline.selection import Budget, guard, int8_figures, pick, teacher_note
from trainer_ext.reporting.cards import DISTILLATION_SETTINGS, write_model_card
from trainer_ext.reporting.results import INT8_VARIANT, RESULTS_FILE, Results, latency_warnings, measure
from trainer_ext.training.distributed import broadcast_from_main, process_state
from trainer_ext.training.precision import PrecisionChoice, choose_precision, training_precision_kwargs
from trainer_ext.training.students import (
    STUDENT_PRESETS,
    build_student,
    calibration_batches,
    pretrained_student,
    teacher_layers,
)
from trainer_ext.training.teacher import compute_teacher_logits
from trainer_ext.training.trainer import DistillationTrainer

logger = logging.get_logger(__name__)

STAGES = (
    "data",
    "teacher",
    "augmentation",
    "selection",
    "student_no_distillation",
    "distillation_original",
    "distillation",
    "guard",
    "quantization",
    "teacher_quantization",
    "benchmark",
    "card",
)
STAGE_DIR = "stages"
PRECISION_FILE = "precision.json"
TRANSFER_LABELLING = "transfer_labelling"  # precision.json: the form that labelled the transfer set (`labelling`)
LOGITS_FILE = "teacher_logits.npy"  # the original training sentences' teacher logits, under distillation_data/
CANDIDATES_DIR = "candidates"  # selection: per candidate, a folder (model, onnx/, report) and <name>.json (figures)
SELECTION_FILE = "selection.json"  # selection: every candidate's record and the one shipped
SHIPPED_FILE = "shipped.json"  # guard: the student shipped (distilled or not) and why
TEACHER_TRAINING_FILE = "trainer_ext_plateau.json"  # teacher/: how far a teacher trained to a plateau went


class PipelineError(RuntimeError):
    """A stage cannot run as configured; the message says what to do. Raised before the stage's long work."""


class OutputInUseError(PipelineError):
    """Another run holds the output folder (see `runs.OutputLock`)."""


# The batch that times FP32 against bf16 autocast for a stage's model: a fixed size, so that the stages that only
# choose a precision (augmentation, teacher logits) do not read the student's batch size and lose their reuse when
# it changes.
PRECISION_PROBE_BATCH = 32


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _settings(obj: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """A dataclass's explicit settings, without the ones that do not change the outputs."""
    ignored = {"output_dir", "logging_dir", "disable_tqdm", "dataloader_num_workers", *skip}
    return {f.name: getattr(obj, f.name) for f in fields(obj) if f.init and f.name not in ignored}


def unknown_token_share(tokenizer: Any, texts: list[str]) -> float:
    """The share of `texts`' tokens (special tokens aside) that `tokenizer` maps to its unknown token."""
    unk = tokenizer.unk_token_id
    if unk is None or not texts:
        return 0.0  # byte-level vocabularies have no unknown token
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    total = sum(len(row) for row in ids)
    return sum(row.count(unk) for row in ids) / max(total, 1)


class _JsonFile:
    """A JSON file saved into a model folder with the model (`files.save_pretrained` calls `save_pretrained`)."""

    def __init__(self, name: str, value: Any) -> None:
        self.name, self.value = name, value

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        Path(folder, self.name).write_text(json.dumps(self.value, indent=2))


def _accuracy_metric(prediction: Any) -> dict[str, float]:
    """`compute_metrics` for Trainer: accuracy of the argmax."""
    return {"accuracy": accuracy(prediction.predictions, prediction.label_ids)}


def data_digest(data: DatasetDict) -> str:
    """A digest of the splits' texts, labels and label names: a data file edited between two runs changes it."""
    digest = hashlib.sha256()
    for split in sorted(data):
        texts, labels = list(data[split]["text"]), list(data[split]["label"])
        digest.update(json.dumps([split, label_names(data[split]), texts, labels]).encode())
    return digest.hexdigest()[:16]


def _what_changed(
    done: dict[str, Any], current: dict[str, Any], extra: dict[str, Any], upstream: dict[str, str]
) -> str:
    """Why a stage's marker does not match this run, for the refusal's message: the settings that differ, changed
    data, or changed inputs."""
    if "reads" not in done:
        return "by an earlier trainer-ext whose stage keys did not cover every setting"
    changed = [
        f"{name} was {json.dumps(done['settings'][name])}, now {json.dumps(value)}"
        for name, value in current.items()
        if value != done["settings"].get(name)
    ]
    if done.get("extra", {}).get("content") not in (None, extra.get("content")):
        if changed:
            changed[-1] += " (so the rows loaded changed too)"
        else:
            changed.append("the data's content changed (a data file was edited since)")
    inputs = [stage for stage, key in upstream.items() if done.get("inputs", {}).get(stage) != key]
    if inputs:
        changed.append(f"the stages it reads were redone with other settings ({', '.join(inputs)})")
    return "with other settings: " + "; ".join(changed) if changed else "with other settings or from other inputs"


class Pipeline:
    """Runs a `Recipe`. `run()` returns the results dict that `results.json` holds."""

    def __init__(self, recipe: Recipe, progress: Callable[[str], None] = print) -> None:
        # Stages read the recipe through this wrapper, which records every setting each stage reads: a stage's key is
        # built from those (runs.SettingsLog), so no setting it reads can be missing from it.
        self.settings = SettingsLog()
        self.recipe = RecordedRecipe(recipe, self.settings.record)
        self.args = self.recipe.run
        self.out = Path(recipe.run.output_dir)
        self.progress = progress if self.is_main else (lambda _msg: None)
        self.stage_seconds: dict[str, float] = {}
        self.stage_status: dict[str, str] = {}
        self.keys: dict[str, str] = {}  # stage -> key of the settings it read and of the stages whose outputs it read
        self._precisions: dict[str, dict[str, Any]] | None = None
        self._data: DatasetDict | None = None
        self._shipped_shape: str | None = None  # set by the selection stage

    @property
    def shape(self) -> str:
        """The student shape the student stages train: the only one, or the one the selection stage ships."""
        return self._shipped_shape or self.args.student[0]

    @property
    def budget(self) -> Budget:
        return Budget(self.args.max_accuracy_drop, self.args.max_latency_ms)

    # Read afresh each time: every TrainingArguments resets accelerate's shared state and rebuilds it.
    @property
    def num_processes(self) -> int:
        return process_state().num_processes

    @property
    def is_main(self) -> bool:
        return process_state().is_main_process

    def barrier(self) -> None:
        process_state().wait_for_everyone()

    @property
    def device(self) -> torch.device:
        """This process's device (accelerate's: `cuda:LOCAL_RANK` under torchrun on GPUs), where models that run
        outside a Trainer are placed explicitly."""
        return process_state().device

    def _gather(self, value: Any) -> list[Any]:
        """`value` from every process, in rank order."""
        if self.num_processes == 1:
            return [value]
        from accelerate.utils import gather_object

        return gather_object([value])

    def broadcast(self, value: Any) -> Any:
        """The main process's `value` on every process: a decision (a precision, an order, a status) is made once."""
        return broadcast_from_main(value)

    # ------------------------------------------------------------------------------------------ orchestration
    def check(self) -> None:
        """Everything that can be checked before long work starts, without writing anything: a failed check leaves
        the output folder as it was (or absent). The data is loaded and checked here, once, for the data stage."""
        self._check_output_dir()
        with self.settings.reading("data"):  # the data stage's settings are read here, where its data is loaded
            data = self._load_data()
        self._check_data(data)
        self._check_lengths()
        teacher_config = self._model_config(self.args.teacher, "run.teacher", self._resolve_teacher_source)
        for shape in self.args.student:  # presets are known; the other names must resolve now, not after the teacher
            depth = teacher_layers(shape)
            if depth and depth >= teacher_config.num_hidden_layers:
                raise PipelineError(
                    f"run.student {shape!r}: the teacher has {teacher_config.num_hidden_layers} layers, so "
                    f"teacher-layers-K needs K below that. Set --run.student teacher-layers-{teacher_config.num_hidden_layers // 2}."
                )
            pretrained = pretrained_student(shape)
            if pretrained:
                config = self._model_config(
                    pretrained[0], "run.student", lambda name=pretrained[0]: self._packaged_source(name)
                )
                if pretrained[1] and pretrained[1] >= config.num_hidden_layers:
                    base = shape.rsplit("-layers-", 1)[0]
                    raise PipelineError(
                        f"run.student {shape!r}: {base} has {config.num_hidden_layers} layers, so {base}-layers-K "
                        f"needs K below that. Set --run.student {base}-layers-{config.num_hidden_layers // 2}, or "
                        f"{base} for all of them."
                    )
            elif not depth and shape not in STUDENT_PRESETS:
                self._model_config(shape, "run.student", lambda name=shape: name)
        if self.args.student_init_from is not None:
            name = self.args.student_init_from
            self._model_config(name, "run.student_init_from", lambda: self._packaged_source(name))
        self._check_vocabularies(data)
        if self.args.augment:
            aug = self.recipe.augmentation
            self._model_config(
                aug.generator_name_or_path, "augmentation.generator_name_or_path", self._resolve_generator_source
            )
            names = label_names(self._load_data()["train"])
            try:
                prompt_names(aug.prompt_label_names, names)
            except AugmentationError as err:
                raise PipelineError(
                    f"augmentation.{err} Set --augmentation.prompt_label_names {','.join(names)}."
                ) from err
            if aug.unlabeled_texts:  # read once now: a missing, empty or non-text source fails before any training
                try:
                    load_unlabeled_texts(aug.unlabeled_texts, aug.unlabeled_text_column)
                except (DataValidationError, OSError, ValueError) as err:
                    raise PipelineError(f"augmentation.unlabeled_texts: {err}") from err

    # Settings that other sections once owned beside run.max_length: the pipeline sets them to run.max_length.
    LENGTH_SETTINGS = (
        ("quantization", "sequence_length"),
        ("augmentation", "max_length"),
        ("student_training", "teacher_max_length"),
    )

    def _check_lengths(self) -> None:
        """One sequence length for the whole run: `run.max_length` trains, labels, guards, searches and benchmarks.
        A recipe that sets another section's length to something else is refused, not silently overridden."""
        length = self.recipe.unwrapped.run.max_length
        for section, name in self.LENGTH_SETTINGS:
            value = getattr(getattr(self.recipe.unwrapped, section), name)
            if name in self.recipe.raw.get(section, {}) and value != length:
                raise PipelineError(
                    f"{section}.{name} is {value} but run.max_length is {length}: a run has one sequence length, "
                    "run.max_length, for training, the teacher's logits, the guard, the INT8 search and the "
                    f"benchmark. Remove {section}.{name}, or set --run.max_length {value}."
                )

    def _check_output_dir(self) -> None:
        """`run.output_dir` is, or can be created as, a writable folder (checked on its nearest existing parent)."""
        existing = self.out.absolute()
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise PipelineError(
                f"Cannot create the output directory {self.out}: {existing} is a file. Set --run.output_dir to a folder."
            )
        if not os.access(existing, os.W_OK | os.X_OK):
            raise PipelineError(
                f"Cannot write to {existing}, so not to {self.out} either. Set --run.output_dir to a writable folder."
            )

    # Share of a sample's word pieces that a tokenizer maps to its unknown token: above the first it warns, above the
    # second it refuses (a cased vocabulary on text in another script, a vocabulary of another language).
    UNKNOWN_WARN, UNKNOWN_REFUSE = 0.02, 0.25

    def _check_vocabularies(self, data: DatasetDict) -> None:
        """Every tokenizer that will read the training text (the teacher's, each student's or the model a preset is
        narrowed from) can read it: the share of unknown tokens on the first 512 sentences, before any training."""
        sources = {"run.teacher": self._resolve_teacher_source()}
        for shape in self.args.student:
            pretrained = pretrained_student(shape)
            if pretrained:
                sources["run.student"] = self._packaged_source(pretrained[0])
            elif shape in STUDENT_PRESETS and self.args.student_init_from is not None:
                sources["run.student_init_from"] = self._packaged_source(self.args.student_init_from)
            elif shape not in STUDENT_PRESETS and not teacher_layers(shape):
                sources["run.student"] = shape
        texts = list(data["train"]["text"][:512])
        for key, source in sources.items():
            try:
                tokenizer = AutoTokenizer.from_pretrained(source)
            except (OSError, ValueError):
                continue  # a packaged single-file model or an unusual folder: the stage that loads it says why
            share = unknown_token_share(tokenizer, texts)
            where = f"{key} {source!r}: {100 * share:.1f}% of the training text's tokens are unknown to its vocabulary"
            if share > self.UNKNOWN_REFUSE:
                raise PipelineError(
                    f"{where}, so it cannot read this data (a cased vocabulary on other text, another language?). "
                    f"Set --{key} to a model whose tokenizer covers the data."
                )
            if share > self.UNKNOWN_WARN:
                logger.warning(f"{where}; it trains, but those words are lost to it.")

    def _model_config(self, name: str, key: str, resolve: Callable[[], str]) -> Any:
        """The config of the model `name` (a packaged name, a local folder or a Hub id) that the recipe's `key` names,
        or a `PipelineError` that says why it does not load and which flag to change."""
        fix = (
            f"Set --{key} to a packaged name ({', '.join(PACKAGED_SOURCES)}), a local model folder, or a Hub id "
            "(downloaded once while online)."
        )
        source = resolve()  # a packaged name that is not installed fails here, with its own fix
        path = Path(source).expanduser()
        if path.is_file() and name in PACKAGED_SOURCES:
            return None  # a packaged single-file model (the GGUF generator), checked by packaged_source
        if path.is_dir() and not (path / "config.json").exists():
            raise PipelineError(f"{key} {name!r} is a folder without config.json, not a saved model. {fix}")
        if not path.exists() and (source.startswith((".", "/", "~")) or source.count("/") > 1):
            raise PipelineError(f"{key} {name!r} does not exist: there is no such folder. {fix}")
        try:
            return AutoConfig.from_pretrained(source)
        except (OSError, ValueError) as err:
            offline = "HF_HUB_OFFLINE=1 and it is not in the local cache" if os.environ.get("HF_HUB_OFFLINE") else ""
            reason = offline or " ".join(str(err).split())
            raise PipelineError(
                f"{key} {name!r} is not a model folder, and as a Hub id it does not load: {reason}. {fix}"
            ) from err

    def _check_data(self, data: DatasetDict) -> None:
        """What the stages need of the data and the loader does not check: two classes to learn, and no label to
        evaluate that training never saw."""
        names = label_names(data["train"])
        seen = set(data["train"]["label"])
        if len(seen) < 2:
            (only,) = [names[i] for i in seen]
            raise PipelineError(
                f"The training split of {self.args.dataset!r} has one class only ({only!r}, {len(data['train']):,} rows) "
                f"of the labels {names} found: a classifier needs at least two. Check the data, or "
                f"--run.label_column (now {self.args.label_column!r})."
            )
        for split in (self.args.eval_split, self.args.test_split):
            unseen = sorted(set(data[split]["label"]) - seen)
            if unseen:
                raise PipelineError(
                    f"The {split} split of {self.args.dataset!r} has labels the training split never has: "
                    f"{[names[i] for i in unseen]} (training has {[names[i] for i in sorted(seen)]}). Add training "
                    "examples of them, or drop those rows."
                )

    def run(self) -> dict[str, Any]:
        """Check everything that can be checked, take the output folder's lock, run (or reuse) every stage."""
        self.check()
        lock = self._lock()
        try:
            return self._run_stages()
        finally:
            if lock is not None:
                lock.release()

    def _lock(self) -> OutputLock | None:
        """The output folder's lock, taken by the main process before any stage runs; every process fails when it is
        held by another run (a second run on the same folder is refused in one line, exit status 2)."""
        lock, held = None, None
        if self.is_main:
            lock = OutputLock(self.out)
            try:
                lock.acquire()
            except OutputFolderLocked as err:
                lock, held = None, str(err)
        held = self.broadcast(held)
        if held:
            raise OutputInUseError(held)
        return lock

    def _run_stages(self) -> dict[str, Any]:
        # Each stage is keyed by the settings it reads and the keys of the stages whose outputs it reads, so a changed
        # student setting invalidates the student stages but not the (long) augmentation stage.
        self.data = self._stage("data", self.stage_data, (), extra={"content": data_digest(self._load_data())})
        self._stage("teacher", self.stage_teacher, ("data",))
        if self.args.augment:
            self._stage("augmentation", self.stage_augmentation, ("data", "teacher"))
        else:
            self.stage_status["augmentation"] = "skipped (run.augment is false)"
        distillation_inputs = self._distillation_inputs()
        student_inputs = ("data", "teacher")
        if self.selecting:
            self._stage("selection", self.stage_selection, distillation_inputs)
            student_inputs += ("selection",)  # the shape it shipped
            distillation_inputs += ("selection",)
        else:
            self.stage_status["selection"] = "skipped (one student)"
        self._stage("student_no_distillation", self.stage_student_no_distillation, student_inputs)
        if self.args.augment:
            self._stage("distillation_original", self.stage_distillation_original, student_inputs)
        else:
            self.stage_status["distillation_original"] = "skipped (no transfer set: distillation is this row)"
        self._stage("distillation", self.stage_distillation, distillation_inputs)
        self._stage("guard", self.stage_guard, ("data", "teacher", "student_no_distillation", "distillation"))
        self._stage("quantization", self.stage_quantization, ("data", "guard"))
        self._stage("teacher_quantization", self.stage_teacher_quantization, ("data", "teacher"))
        self._stage("benchmark", self.stage_benchmark, tuple(self.keys))
        self._stage("card", self.stage_card, ("benchmark",))
        return json.loads((self.out / RESULTS_FILE).read_text())

    def _marker(self, stage: str) -> Path:
        return self.out / STAGE_DIR / f"{stage}.json"

    def _stage(
        self, name: str, fn: Callable[[], Any], inputs: tuple[str, ...], extra: dict[str, Any] | None = None
    ) -> Any:
        """Reuse stage `name` when its marker's key still holds, else refuse (finished with other settings), else run
        it. The key covers the recipe settings the stage read when it ran (recorded, see `runs.SettingsLog`), `extra`
        (what keys it besides settings: the data's content) and the keys of the stages in `inputs`."""
        extra = extra or {}
        upstream = {stage: self.keys[stage] for stage in inputs}
        marker = self._marker(name)
        if marker.exists():
            done = json.loads(marker.read_text())
            current = {setting: setting_value(self.recipe.unwrapped, setting) for setting in done.get("settings", {})}
            key = _hash([current, extra, upstream])
            added = (
                settings_added_since(
                    self.recipe.unwrapped,
                    done.get("known", []),
                    {read.split(".")[0] for read in done.get("reads", [])},
                )
                if "known" in done
                else {}
            )
            if added:
                raise PipelineError(
                    f"Stage {name!r} in {self.out} was finished by an earlier trainer-ext that had no "
                    + ", ".join(f"{setting} setting (now {json.dumps(value)})" for setting, value in added.items())
                    + ": it ran as the default does, so its output would not match. Use a new run.output_dir, or "
                    f"delete {marker} (and the markers of the stages that read its output) to redo it."
                )
            if done.get("key") == key and "reads" in done:
                self.keys[name] = key
                self.stage_seconds[name] = done["seconds"]
                self.stage_status[name] = "reused"
                self.progress(f"[{name}] done in an earlier run ({done['seconds']:.0f} s): reusing {marker.parent}")
                return self._reload(name)
            raise PipelineError(
                f"Stage {name!r} in {self.out} was finished {_what_changed(done, current, extra, upstream)}. "
                f"Use a new run.output_dir, or delete {marker} (and the markers of the stages that read its output) "
                "to redo it; finished outputs are never overwritten silently."
            )
        start = time.perf_counter()
        try:
            # Said inside the try: a signal that comes right after the line was seen still names this stage.
            self.progress(f"[{name}] running")
            with self.settings.reading(name):
                result = fn()
        except RunInterrupted as interrupt:
            interrupt.stage = interrupt.stage or name  # for the CLI's one line
            raise
        seconds = time.perf_counter() - start
        reads = sorted(self.settings.reads.get(name, ()))
        settings = {setting: setting_value(self.recipe.unwrapped, setting) for setting in reads}
        # The main process's record is the one written; every process keys later stages with it.
        key, reads, settings = self.broadcast((_hash([settings, extra, upstream]), reads, settings))
        self.keys[name] = key
        self.barrier()
        if self.is_main:
            record = {"key": key, "seconds": seconds, "reads": reads, "settings": settings, "extra": extra}
            record["known"] = recipe_fields(self.recipe.unwrapped)  # what a later version's new settings are told by
            write_json(marker, record | {"inputs": upstream, "finished": time.time()})
        self.barrier()
        self.stage_seconds[name] = seconds
        self.stage_status[name] = "ran"
        self.progress(f"[{name}] finished in {seconds:.0f} s")
        return result

    def _reload(self, name: str) -> Any:
        """What a reused stage hands to the later ones: the data stage's saved splits (never the source again: it may
        have changed since), the selection stage's shipped shape."""
        if name == "selection":
            self._shipped_shape = self._selection()["shipped"]
        if name != "data":
            return None
        splits = self.out / "data" / "splits"
        if not splits.exists():
            raise PipelineError(f"The data stage's output {splits} is missing; delete {self._marker('data')}.")
        self._data = load_from_disk(str(splits))
        return self._data

    @property
    def selecting(self) -> bool:
        """Several candidate students: the selection stage picks the one the student stages then train."""
        return len(self.args.student) > 1

    def _selection(self) -> dict[str, Any]:
        return json.loads((self.out / CANDIDATES_DIR / SELECTION_FILE).read_text())

    @property
    def shipped(self) -> str:
        """The student folder that is quantized, benchmarked as the model and given the card (the guard's choice)."""
        path = self.out / SHIPPED_FILE
        if not path.exists():
            raise PipelineError(f"The guard stage's output {path} is missing; delete {self._marker('guard')}.")
        return json.loads(path.read_text())["shipped"]

    # --------------------------------------------------------------------------------------------------- data
    def _load_data(self) -> DatasetDict:
        """The splits as the run uses them, loaded once (by `check`); loader errors name the flags that fix them."""
        if self._data is not None:
            return self._data
        a = self.args
        fix = (
            f"Set --run.dataset to '{OFFLINE_DATASET_NAME}', a local .csv/.tsv/.json/.jsonl/.parquet file, a folder "
            "of train/validation/test files, or a Hub id (downloaded once while online)."
        )
        try:
            data = load_text_classification_dataset(
                a.dataset,
                config_name=a.dataset_config,
                text_column=a.text_column,
                label_column=a.label_column,
                seed=a.seed,
                max_train_samples=a.max_train_samples,
            )
        except DataValidationError as err:
            flags = " ".join(f"--run.{name} {value}" for name, value in err.settings.items())
            raise PipelineError(
                f"run.dataset {a.dataset!r}: {err.problem}" + (f" Set {flags}." if flags else "")
            ) from err
        except (OSError, ValueError, DatasetUnavailableError) as err:
            raise PipelineError(f"run.dataset {a.dataset!r}: {' '.join(str(err).split())} {fix}") from err
        for split in (a.eval_split, a.test_split):
            if split not in data:
                raise PipelineError(
                    f"The data has no {split!r} split (it has {list(data)}); set --run.eval_split/--run.test_split."
                )
            if a.max_eval_samples and len(data[split]) > a.max_eval_samples:
                data[split] = data[split].shuffle(seed=a.seed).select(range(a.max_eval_samples))
        self._data = data
        return data

    def stage_data(self) -> DatasetDict:
        data = self._load_data()
        if self.is_main:
            summary = {split: len(ds) for split, ds in data.items()} | {"labels": label_names(data["train"])}
            write_json(self.out / "data" / "summary.json", summary)
        self._save_splits(data)
        return data

    def _save_splits(self, data: DatasetDict) -> None:
        """The splits as used: a resumed run reads them, never the source again (benchmarks/ablation_seeds.py too)."""
        if self.is_main:
            write_atomic(self.out / "data" / "splits", partial(DatasetDict.save_to_disk, data))
        self.barrier()

    # ------------------------------------------------------------------------------------------------ teacher
    def _resolve_teacher_source(self) -> str:
        return self._packaged_source(self.args.teacher)

    def _resolve_generator_source(self) -> str:
        return self._packaged_source(self.recipe.augmentation.generator_name_or_path)

    @staticmethod
    def _packaged_source(name: str) -> str:
        """A `packaged:` name's path (the first use of packaged:mpnet unpacks it); other names as given."""
        try:
            return packaged_source(name)
        except PackagedAssetError as err:  # not installed, damaged or unknown: the message says what to do
            raise PipelineError(str(err)) from err

    def _needs_fine_tuning(self, source: str, names: list[str]) -> bool:
        if self.args.teacher_fine_tune is not None:
            return self.args.teacher_fine_tune
        config = AutoConfig.from_pretrained(source)
        is_classifier = any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))
        saved = [config.id2label.get(i) for i in range(config.num_labels)]
        # Many Hub classifiers keep the generic LABEL_0.. names: with the right count they are taken as these labels.
        generic = saved == [f"LABEL_{i}" for i in range(config.num_labels)] and len(saved) == len(names)
        same_labels = saved == names or generic
        if is_classifier and not same_labels:
            logger.warning(
                f"The teacher {source} classifies {list(config.id2label.values())}, not {names}: fine-tuning it."
            )
        return not (is_classifier and same_labels)

    def _training_args(self, section: str, stage: str, precision: PrecisionChoice, **extra: Any) -> TrainingArguments:
        """The recipe's `section` (teacher_training or student_training) for `stage`: its output folder, the run's
        seed unless the section sets its own, the precision chosen for the stage."""
        base = getattr(self.recipe, section).whole(*extra)
        seed = base.seed if "seed" in self.recipe.raw.get(section, {}) else self.args.seed
        bf16 = training_precision_kwargs(precision)
        use_cpu = (
            base.use_cpu or bf16.pop("use_cpu", False) or (self.num_processes > 1 and not torch.cuda.is_available())
        )
        return replace(base, output_dir=str(self.out / "runs" / stage), seed=seed, use_cpu=use_cpu, **(bf16 | extra))

    def _tokenized(self, tokenizer: Any, dataset: Dataset) -> Dataset:
        return dataset.map(
            lambda b: tokenizer(b["text"], truncation=True, max_length=self.args.max_length), batched=True
        )

    # ----------------------------------------------------------------------------------------------- precision
    def _precision(self, stage: str, model: torch.nn.Module, tokenizer: Any, *, train: bool) -> PrecisionChoice:
        """FP32 or bf16 autocast for `stage`, chosen once per run (see `precision.choose_precision`) on a real batch
        of training sentences, and recorded in `precision.json`; a resumed run reuses the recorded choice.

        Under torchrun the main process measures and decides, and every process takes its choice: ranks that chose
        apart would key the teacher-logit cache apart, and one would wait for the other forever. The model is left
        where it was (callers place it on `self.device` themselves)."""
        recorded = self._recorded_precisions()
        if stage in recorded and self.args.precision == "auto":
            return PrecisionChoice(**recorded[stage])
        choice = self._measure_precision(stage, model, tokenizer, train=train) if self.is_main else None
        choice = self.broadcast(choice)
        self.progress(f"[{stage}] precision {choice.precision}: {choice.reason}")
        recorded[stage] = choice.to_dict()
        if self.is_main:
            write_json(self.out / PRECISION_FILE, recorded)
        return choice

    def _measure_precision(
        self, stage: str, model: torch.nn.Module, tokenizer: Any, *, train: bool
    ) -> PrecisionChoice:
        size = PRECISION_PROBE_BATCH
        texts = self.data["train"]["text"][:size]
        batch = dict(
            tokenizer(texts, padding=True, truncation=True, max_length=self.args.max_length, return_tensors="pt")
        )
        if train:  # a causal LM (the generator) learns its own tokens; a classifier the labels
            causal = getattr(model, "can_generate", lambda: False)()
            batch["labels"] = (
                batch["input_ids"].clone() if causal else torch.tensor(self.data["train"]["label"][:size])
            )
        home = next(model.parameters()).device
        try:
            return choose_precision(
                stage, model.to(self.device), batch, self.args.precision, train=train, device=self.device
            )
        finally:
            model.to(home)

    def _recorded_precisions(self) -> dict[str, dict[str, Any]]:
        if self._precisions is None:
            path = self.out / PRECISION_FILE
            self._precisions = json.loads(path.read_text()) if path.exists() else {}
        return self._precisions

    def stage_teacher(self) -> None:
        source = self._resolve_teacher_source()
        names = label_names(self.data["train"])
        id2label, label2id = id2label_label2id(names)
        tokenizer = AutoTokenizer.from_pretrained(source)
        plateau: dict[str, Any] = {}
        if not self._needs_fine_tuning(source, names):
            teacher = AutoModelForSequenceClassification.from_pretrained(source, id2label=id2label, label2id=label2id)
        else:
            set_seed(self.args.seed)  # the new classification head's initialisation, so a re-run is the same run
            teacher = AutoModelForSequenceClassification.from_pretrained(
                source, num_labels=len(names), id2label=id2label, label2id=label2id
            )
            precision = self._precision("teacher_fine_tuning", teacher, tokenizer, train=True)
            train = self._tokenized(tokenizer, self.data["train"])
            plateau = self._plateau_settings(len(train)) if self.args.teacher_patience else {}
            trainer = Trainer(
                model=teacher,
                args=self._training_args("teacher_training", "teacher", precision, **plateau),
                train_dataset=train,
                eval_dataset=self._tokenized(tokenizer, self.data[self.args.eval_split]) if plateau else None,
                processing_class=tokenizer,
                data_collator=DataCollatorWithPadding(tokenizer),
                compute_metrics=_accuracy_metric if plateau else None,
                callbacks=[EarlyStoppingCallback(self.args.teacher_patience)] if plateau else None,
            )
            trainer.train()
            teacher = trainer.model
            if plateau:
                # The best weights are loaded and saved below; its checkpoints (the MPNet teacher's are 440 MB each)
                # would only be left behind in runs/teacher.
                if self.is_main:
                    for checkpoint in Path(trainer.args.output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
                        shutil.rmtree(checkpoint, ignore_errors=True)
                # how far it trained, saved beside its weights for the card
                state = trainer.state
                plateau = {
                    "best_step": int(getattr(state, "best_global_step", None) or state.global_step),
                    "steps": state.global_step,
                    "max_steps": state.max_steps,
                    "epochs": state.epoch,
                    "best_eval_accuracy": state.best_metric,
                    "split": self.args.eval_split,
                    "patience": self.args.teacher_patience,
                }
        if self.is_main:
            record = [_JsonFile(TEACHER_TRAINING_FILE, plateau)] if plateau else []
            save_pretrained(self.out / "teacher", teacher, tokenizer, *record)

    def _plateau_settings(self, rows: int) -> dict[str, Any]:
        """Trainer settings that train the teacher to a validation plateau: evaluate and checkpoint four times an
        epoch, keep the best (by accuracy on the eval split), at most one checkpoint on disk besides the best."""
        section = self.recipe.teacher_training
        batch = section.per_device_train_batch_size * section.gradient_accumulation_steps * self.num_processes
        every = max(1, -(-rows // batch) // 4)
        return {
            "eval_strategy": "steps",
            "eval_steps": every,
            "save_strategy": "steps",
            "save_steps": every,
            "save_total_limit": 1,
            "save_only_model": True,  # the checkpoints only hold the best weights: no optimizer state to write
            "load_best_model_at_end": True,
            "metric_for_best_model": "accuracy",
            "greater_is_better": True,
        }

    def _teacher(self) -> tuple[PreTrainedModel, Any]:
        path = self.out / "teacher"
        if not (path / "config.json").exists():
            raise PipelineError(f"The teacher stage's output {path} is missing; delete {self._marker('teacher')}.")
        return AutoModelForSequenceClassification.from_pretrained(path), AutoTokenizer.from_pretrained(path)

    # ----------------------------------------------------------------------------------------------- students
    def _student_settings(self, shape: str | None = None) -> dict[str, Any]:
        a, shape = self.args, shape or self.shape
        init = {"student_init": a.student_init, "student_init_samples": a.student_init_samples}
        if a.student_init_from is not None:  # keyed only when set, so runs built from the teacher keep their keys
            init["student_init_from"] = a.student_init_from
        return (
            {"student": shape, "max_length": a.max_length}
            | (init if shape in STUDENT_PRESETS else {})
            | _settings(self.recipe.student_training.whole())
        )

    def _initial_student(self, shape: str | None = None, path: Path | None = None) -> tuple[PreTrainedModel, Any]:
        """The student both runs start from, saved once so that a resumed run starts from the same weights.

        It is keyed like a stage (its settings and the data and teacher it came from): when the student stages are
        redone with other settings, a saved initialisation from the old ones is rebuilt, never reused.
        """
        shape, path = shape or self.shape, path or self.out / "student_init"
        a = self.args
        settings = [shape, a.student_init, a.student_init_samples, a.max_length, a.seed]
        if a.student_init_from is not None:
            settings.append(a.student_init_from)
        key = _hash([settings, self.keys.get("data"), self.keys.get("teacher")])
        key_file = path / "init_key.json"
        saved = json.loads(key_file.read_text()).get("key") if key_file.exists() else None
        if saved != key:
            student, tokenizer = self._build_student(shape, label_names(self.data["train"]))
            if self.is_main:
                save_pretrained(path, student, tokenizer)
                write_json(key_file, {"key": key})
            self.barrier()
        return AutoModelForSequenceClassification.from_pretrained(path), AutoTokenizer.from_pretrained(path)

    def _build_student(self, shape: str, names: list[str]) -> tuple[PreTrainedModel, Any]:
        """A preset narrowed from `student_init_from` (or the teacher, when the preset is wider or deeper than it),
        `teacher-layers-K` from the teacher, or a model folder / Hub id with a new head for these labels."""
        if shape in STUDENT_PRESETS:
            source, source_tokenizer, from_teacher = self._student_source(names, shape)
            # The projection basis comes from the source's hidden states on the first training sentences.
            texts = self.data["train"]["text"][: self.args.student_init_samples]
            batches = calibration_batches(source_tokenizer, texts, max_length=self.args.max_length)
            student = build_student(
                source,
                preset=shape,
                seed=self.args.seed,
                encoder_init=self.args.student_init,
                calibration_inputs=batches,
            )
            if not from_teacher:
                # Its layers are the source's, not the teacher's: hidden-state losses must not map them onto the
                # teacher's layers of the same numbers (DistillationTrainer then spaces them evenly).
                student.config.__dict__.pop("trainer_ext_teacher_layers", None)
            student.config.trainer_ext_student_init_from = None if from_teacher else self.args.student_init_from
            return student, source_tokenizer
        if teacher_layers(shape):
            teacher, tokenizer = self._teacher()
            return build_student(teacher, num_hidden_layers=teacher_layers(shape)), tokenizer
        pretrained = pretrained_student(shape)
        source = self._packaged_source(pretrained[0]) if pretrained else shape
        id2label, label2id = id2label_label2id(names)
        torch.manual_seed(self.args.seed)
        student = AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=len(names), id2label=id2label, label2id=label2id
        )
        if pretrained and pretrained[1]:
            # K of its own layers (evenly spaced, the last kept), at its width; its layers are not the teacher's, so
            # hidden-state losses space them evenly over the teacher's rather than by layer number.
            student = build_student(student, num_hidden_layers=pretrained[1])
            student.config.__dict__.pop("trainer_ext_teacher_layers", None)
        if pretrained:
            student.config.trainer_ext_student_init_from = pretrained[0]
        return student, AutoTokenizer.from_pretrained(source)

    def _student_source(self, names: list[str], preset: str) -> tuple[PreTrainedModel, Any, bool]:
        """The model a preset student is narrowed from, and whether it is the teacher: `run.student_init_from` (a
        pre-trained encoder such as the packaged MiniLM, the part Google's pre-trained BERT-Mini plays in the
        reference) when it is at least as wide and as deep as the preset, else the teacher."""
        if self.args.student_init_from is not None:
            source = self._packaged_source(self.args.student_init_from)
            config, sizes = AutoConfig.from_pretrained(source), STUDENT_PRESETS[preset]
            if (
                sizes["hidden_size"] <= config.hidden_size
                and sizes["num_hidden_layers"] <= config.num_hidden_layers
                and sizes["hidden_size"] % (config.hidden_size // config.num_attention_heads) == 0
            ):
                id2label, label2id = id2label_label2id(names)
                set_seed(self.args.seed)  # its new head, so the same run builds the same student
                model = AutoModelForSequenceClassification.from_pretrained(
                    source, num_labels=len(names), id2label=id2label, label2id=label2id
                )
                return model, AutoTokenizer.from_pretrained(source), False
            logger.warning(
                f"{preset} is wider or deeper than run.student_init_from {self.args.student_init_from} "
                f"({config.num_hidden_layers} x {config.hidden_size}): it is narrowed from the teacher instead."
            )
        return *self._teacher(), True

    def _train_student(
        self,
        name: str,
        train: Dataset,
        teacher: PreTrainedModel | None,
        teacher_tok: Any,
        shape: str | None = None,
        init_path: Path | None = None,
    ) -> None:
        """Train the initial student on `train`: on labels only without a teacher, else distilled against the
        `teacher_logits` column that `train` carries (the teacher is passed for losses that read its hidden states)."""
        student, tokenizer = self._initial_student(shape, init_path)
        precision = self._precision("student_training", student, tokenizer, train=True)
        args = self._training_args(
            "student_training",
            name,
            precision,
            teacher_cache_dir=str(self.out / "_teacher_logits"),
            teacher_max_length=self.args.max_length,
        )
        if teacher is None and "teacher_logits" in train.column_names:
            train = train.remove_columns("teacher_logits")
        # The teacher reads raw text with its own tokenizer when the vocabularies differ (a Hub student).
        trainer = DistillationTrainer(
            model=student,
            args=args,
            train_dataset=self._tokenized(tokenizer, train),
            processing_class=tokenizer,
            data_collator=DataCollatorWithPadding(tokenizer),
            teacher_model=teacher,
            teacher_tokenizer=teacher_tok if teacher is not None else None,
        )
        trainer.train()
        if self.is_main:
            save_pretrained(self.out / name, trainer.model, tokenizer)
        self.barrier()

    def stage_student_no_distillation(self) -> None:
        # Without a teacher DistillationTrainer is exactly Trainer: the comparison row differs only in the loss.
        self._train_student("student_no_distillation", self.data["train"], None, None)

    def _teacher_logits(self, teacher: PreTrainedModel, teacher_tokenizer: Any, split: str) -> np.ndarray:
        """The teacher's logits on a split, computed once (cached under `_teacher_logits`), at the training length,
        in the precision measured for the teacher's inference."""
        precision = self._precision("teacher_logits", teacher, teacher_tokenizer, train=False)
        return compute_teacher_logits(
            teacher.to(self.device),
            self.data[split],
            batch_size=self.recipe.student_training.per_device_eval_batch_size,
            device=self.device,
            teacher_tokenizer=teacher_tokenizer,
            max_length=self.args.max_length,
            cache_dir=self.out / "_teacher_logits",
            bf16=precision.bf16,
        )

    def _original_with_logits(self, teacher: PreTrainedModel, teacher_tokenizer: Any) -> Dataset:
        """The training split with the teacher's logits (one pass for every distillation stage and candidate)."""
        logits = self._teacher_logits(teacher, teacher_tokenizer, "train")
        return self.data["train"].add_column("teacher_logits", logits.tolist())

    def _save_distillation_data(self, name: str, train: Dataset) -> None:
        """Each distillation stage's training rows with their logits, for benchmarks/ablation_seeds.py."""
        if self.is_main:
            write_atomic(self.out / "distillation_data" / name, partial(Dataset.save_to_disk, train))

    # ------------------------------------------------------------------------------------------- augmentation
    def stage_augmentation(self) -> None:
        """Generated, teacher-relabelled sentences in `augmentation/augmented` (TextGenerationAugmenter.augment)."""
        teacher, teacher_tokenizer = self._teacher()
        aug_dir = self.out / "augmentation"
        args = replace(
            self.recipe.augmentation.whole("output_dir", "max_length", "generator_name_or_path"),
            output_dir=str(aug_dir),
            max_length=self.args.max_length,
            generator_name_or_path=self._resolve_generator_source(),
        )
        exclude = [t for s in (self.args.eval_split, self.args.test_split) for t in self.data[s]["text"]]
        augmenter = TextGenerationAugmenter(args.generator_name_or_path, args=args)
        precision = {
            "generator_bf16": args.num_samples > 0
            and self._precision("generator", augmenter.model, augmenter.tokenizer, train=args.fine_tune).bf16,
            "teacher_bf16": self._precision("teacher_logits", teacher, teacher_tokenizer, train=False).bf16,
        }
        # Both run outside a Trainer (sampling, labelling): placed on this process's device here, not as a side effect
        # of timing their precision, which a resumed run skips.
        augmenter.model.to(self.device)
        teacher.to(self.device)
        # The transfer set may be labelled in another form (augmentation.teacher_labelling), chosen before generation;
        # the original and eval sentences' logits keep the teacher_logits precision.
        check = list(self.data[self.args.eval_split]["text"])
        generated = augmenter.augment(
            self.data["train"], teacher, teacher_tokenizer, exclude, labelling_texts=check, **precision
        )
        if self.is_main:
            write_atomic(aug_dir / "augmented", partial(Dataset.save_to_disk, generated))
        labelling = augmenter.stats.get("teacher_labelling")
        sampling = augmenter.stats.get("sampling")
        recorded = self._recorded_precisions()
        if labelling:  # beside every stage's precision, so results.json and the card show it
            recorded[TRANSFER_LABELLING] = {"stage": TRANSFER_LABELLING, "precision": labelling["form"], **labelling}
        if sampling:  # the engine and the generator's weights that sampled, measured on this machine
            recorded["sampling"] = {"stage": "sampling", **sampling}
        if (labelling or sampling) and self.is_main:
            write_json(self.out / PRECISION_FILE, recorded)

    # ------------------------------------------------------------------------------------------- distillation
    def stage_distillation_original(self) -> None:
        """The ablation row: distilled on the original training sentences only (same student, settings and logits)."""
        teacher, teacher_tokenizer = self._teacher()
        train = self._original_with_logits(teacher, teacher_tokenizer)
        self._save_distillation_data("original", train)
        self._train_student("student_distilled_original", train, teacher, teacher_tokenizer)

    def _distillation_inputs(self) -> tuple[str, ...]:
        """The stages whose outputs a distilled student is trained from."""
        return ("data", "teacher", "augmentation") if self.args.augment else ("data", "teacher")

    def _distillation_train(self, teacher: PreTrainedModel, teacher_tokenizer: Any) -> Dataset:
        """The original sentences and the transfer set (when augmentation ran), with the teacher's logits."""
        train = self._original_with_logits(teacher, teacher_tokenizer)
        augmented = self.out / "augmentation" / "augmented"
        if self.args.augment:
            if not augmented.exists():
                raise PipelineError(f"The augmentation output {augmented} is missing; delete its stage marker.")
            # The transfer set keeps the logits the teacher gave it when labelling it: it never runs on them twice.
            train = merge_with_original(train, load_from_disk(str(augmented)))
        return train

    def stage_distillation(self) -> None:
        if self.selecting:
            # The selection stage trained this shape with these settings on this data: its model is copied, not
            # trained again (and its INT8 search comes with it, see stage_quantization).
            candidate = self._candidate_dir(self.shape)
            if not (candidate / "config.json").exists():
                raise PipelineError(
                    f"The selection stage's model {candidate} is missing; delete {self._marker('selection')}."
                )
            if self.is_main:
                write_atomic(self.out / "student_distilled", partial(shutil.copytree, candidate))
            self.barrier()
            return
        teacher, teacher_tokenizer = self._teacher()
        train = self._distillation_train(teacher, teacher_tokenizer)
        self._save_distillation_data("transfer" if self.args.augment else "original", train)
        self._train_student("student_distilled", train, teacher, teacher_tokenizer)

    # --------------------------------------------------------------------------------------------- selection
    def _candidate_dir(self, shape: str, init: bool = False) -> Path:
        """`candidates/<name>` (its model, onnx/ and report: what is copied when it is shipped), or its saved
        initialisation under `candidates/_init/`; a folder or Hub id is named by its path with / as --."""
        name = re.sub(r"[^A-Za-z0-9._-]+", "--", shape.strip("/")).lstrip(".-") or "student"
        return self.out / CANDIDATES_DIR / ("_init" if init else "") / name

    def _eval_accuracy(self, runner: ClassifierRunner) -> float:
        split = self.data[self.args.eval_split]
        logits = runner.logits(list(split["text"]), max_length=self.args.max_length)
        return accuracy(logits, np.asarray(split["label"]))

    def _teacher_eval_accuracy(self, teacher: PreTrainedModel, teacher_tokenizer: Any) -> float:
        """The teacher's accuracy on the eval split, the budget's reference."""
        logits = self._teacher_logits(teacher, teacher_tokenizer, self.args.eval_split)
        return accuracy(logits, np.asarray(self.data[self.args.eval_split]["label"]))

    def _fastest_first(self, shapes: list[str], records: dict[str, dict[str, Any]]) -> list[str]:
        """The candidates that build, ordered by their measured batch-1 latency (PyTorch FP32, real length, before
        training: the shape sets the time, not the weights); one that fails to build is recorded as failed."""
        runners = {}
        for shape in shapes:
            try:
                model, tokenizer = self._initial_student(shape, self._candidate_dir(shape, init=True))
            except Exception as err:  # noqa: BLE001 - a candidate that cannot be built is recorded, the others run
                logger.warning(f"Candidate {shape} could not be built", exc_info=True)
                records[shape] |= {"status": "failed", "error": f"building it failed: {type(err).__name__}: {err}"}
                continue
            runners[shape] = ClassifierRunner(model.eval(), tokenizer)
            config = model.config
            records[shape] |= {
                "parameters": runners[shape].parameters,
                "layers": config.num_hidden_layers,
                "hidden_size": config.hidden_size,
                "initialised_from": str(getattr(config, "trainer_ext_student_init", config.name_or_path)),
            }
        texts = list(self.data[self.args.eval_split]["text"])
        # Timed on the main process alone (two processes timing at once would slow each other), and the order it
        # measured is every process's: ranks that ordered apart would train different candidates.
        timed = (
            serving_latency(runners, texts, runs=40, shapes=("real_length",), max_length=self.args.max_length)
            if runners and self.is_main
            else {}
        )
        timed = self.broadcast(timed)
        for shape, shapes_ms in timed.items():
            records[shape]["untrained_fp32_real_length_ms"] = shapes_ms["real_length"]["median_ms"]
        return sorted(timed, key=lambda shape: timed[shape]["real_length"]["median_ms"])

    def _train_candidate(
        self, shape: str, folder: Path, train: Dataset, teacher: PreTrainedModel, teacher_tokenizer: Any
    ) -> dict[str, Any]:
        """Distil one candidate into `folder`, run the INT8 search there, and return what was measured."""
        start = time.perf_counter()
        name = str(folder.relative_to(self.out))
        self._train_student(name, train, teacher, teacher_tokenizer, shape, self._candidate_dir(shape, init=True))
        measured = {"train_seconds": time.perf_counter() - start}
        start = time.perf_counter()
        self._quantize(folder, folder, self._quantization_args(), f"{folder} was not saved", calibrate=True)
        measured["quantization_seconds"] = time.perf_counter() - start
        # The search ran on the main process; its figures (and the main process's timings) are every process's.
        figures = int8_figures(json.loads((folder / REPORT_FILE).read_text())) if self.is_main else None
        return self.broadcast(measured | figures if self.is_main else None)

    def stage_selection(self) -> None:
        """Train candidates fastest first, each distilled on the shared transfer set and quantized, until one's INT8
        model meets the budget; `candidates/selection.json` records every candidate and the one shipped."""
        teacher, teacher_tokenizer = self._teacher()
        teacher_accuracy = self._teacher_eval_accuracy(teacher, teacher_tokenizer)
        train = self._distillation_train(teacher, teacher_tokenizer)
        self._save_distillation_data("transfer" if self.args.augment else "original", train)
        records: dict[str, dict[str, Any]] = {shape: {"student": shape} for shape in self.args.student}
        inputs = {stage: self.keys[stage] for stage in self._distillation_inputs()}
        order = self._fastest_first(self.args.student, records)
        chosen = too_slow = None
        for shape in order:
            record = records[shape]
            folder = self._candidate_dir(shape)
            if chosen is not None:
                record["status"] = f"not trained: {chosen}, a faster candidate, met the budget"
                continue
            if too_slow is not None:  # candidates are in order of latency: this one would be over the budget too
                record["status"] = f"not trained: slower than {too_slow}, which is already over the latency budget"
                continue
            # Keyed like a stage: a resumed selection, or one with more candidates or another budget, reuses every
            # candidate already trained and measured with these settings on these inputs.
            key = _hash([self._student_settings(shape), _settings(self._quantization_args()), inputs])
            saved_file = folder.parent / f"{folder.name}.json"
            saved = json.loads(saved_file.read_text()) if saved_file.exists() else {}
            if saved.get("key") == key and (folder / "config.json").exists():
                self.progress(f"[selection] {shape}: trained and measured in an earlier run, reused")
                record |= saved["measured"]
            else:
                self.progress(f"[selection] {shape}: distilling, then the INT8 search")
                error = None
                try:
                    measured = self._train_candidate(shape, folder, train, teacher, teacher_tokenizer)
                except Exception as err:  # noqa: BLE001 - a candidate that fails is recorded, the others still run
                    logger.warning(f"Candidate {shape} failed", exc_info=True)
                    error = f"{type(err).__name__}: {err}"
                # Every process records the same status: failed when it failed on any of them.
                error = next((e for e in self._gather(error) if e is not None), None)
                if error is not None:
                    record |= {"status": "failed", "error": error}
                    continue
                if self.is_main:
                    write_json(saved_file, {"key": key, "measured": measured})
                record |= measured
            late, short = self.budget.shortfall(record, teacher_accuracy)
            record |= {"status": "trained", "meets_budget": late == 0 and short == 0}
            record |= {"ms_over_budget": late, "points_over_budget": short}
            self.progress(
                f"[selection] {shape}: INT8 {100 * record['int8_accuracy']:.2f}% on {self.args.eval_split} (teacher "
                f"{100 * teacher_accuracy:.2f}%), {record['int8_real_length_ms']:.2f} ms; "
                + ("meets the budget" if record["meets_budget"] else "outside the budget")
            )
            if record["meets_budget"]:
                chosen = shape
            elif late > 0:
                too_slow = shape
        ordered = [records[s] for s in order] + [r for s, r in records.items() if s not in order]
        shipped, met, reason = pick(ordered, self.budget, teacher_accuracy)
        if shipped is None:
            failures = "; ".join(f"{r['student']}: {r.get('error')}" for r in ordered)
            raise PipelineError(
                f"No candidate student could be trained ({failures}). Fix or remove them in run.student."
            )
        self._shipped_shape = shipped
        if self.is_main:
            selection = {
                "budget": asdict(self.budget),
                "teacher_accuracy": teacher_accuracy,
                "split": self.args.eval_split,
                "candidates": ordered,
                "shipped": shipped,
                "met": met,
                "reason": reason,
            }
            write_json(self.out / CANDIDATES_DIR / SELECTION_FILE, selection)
        self.progress(f"[selection] shipping {shipped}: {reason}")

    # ------------------------------------------------------------------------------------------------- guard
    def stage_guard(self) -> None:
        """Ship the distilled student unless the one trained on labels alone is more accurate on the eval split."""
        runners = {}
        for name in ("student_distilled", "student_no_distillation"):
            path = self.out / name
            if not (path / "config.json").exists():
                raise PipelineError(f"{path} is missing; delete its stage marker to retrain it.")
            model = AutoModelForSequenceClassification.from_pretrained(path).eval()
            runners[name] = ClassifierRunner(model, AutoTokenizer.from_pretrained(path))
        # Decided on the main process and broadcast: every process then quantizes and describes the same folder.
        accuracies = {name: self._eval_accuracy(runner) for name, runner in runners.items()} if self.is_main else None
        accuracies = self.broadcast(accuracies)
        shipped, reason = guard(accuracies)
        # The teacher's logits on the eval split are computed in shares on every process (and cached).
        teacher_accuracy = self._teacher_eval_accuracy(*self._teacher())
        note = teacher_note(teacher_accuracy, accuracies["student_no_distillation"])
        if self.is_main:
            record = {"shipped": shipped, "reason": reason, "split": self.args.eval_split, "accuracy": accuracies}
            record |= {"teacher_accuracy": teacher_accuracy, "teacher_note": note}
            write_json(self.out / SHIPPED_FILE, record)
        self.progress(f"[guard] shipping {shipped}: {reason}" + (f"; {note}" if note else ""))

    # ------------------------------------------------------------------------------------------- quantization
    def _quantize(self, source: Path, output: Path, args: Any, missing: str, calibrate: bool = False) -> None:
        """The accuracy-aware INT8 search on a finished stage's model, on the main process only."""
        if not (source / "config.json").exists():
            raise PipelineError(missing)
        failed = None
        if self.is_main:
            tokenizer = AutoTokenizer.from_pretrained(source)
            eval_data = self.data[self.args.eval_split]
            calibration = self.data["train"] if calibrate else None
            try:
                quantize_model(str(source), tokenizer, eval_data, output, args, calibration_dataset=calibration)
            except Exception as err:  # noqa: BLE001 - re-raised below, on every process alike
                failed = err
        # The other processes wait here for the report, and fail with the main process when it failed.
        error = self.broadcast(None if failed is None else f"{type(failed).__name__}: {failed}")
        if failed is not None:
            raise failed
        if error is not None:
            raise PipelineError(f"The INT8 search of {source} failed on the main process: {error}")

    def stage_quantization(self) -> None:
        path = self.out / self.shipped
        if self.selecting and self.shipped == "student_distilled" and (path / REPORT_FILE).exists():
            # The selection stage ran this search on this model with these settings (its key holds them).
            self.progress(f"[quantization] the selection stage's INT8 search of {self.shape} is reused")
            return
        missing = f"There is no trained student in {path} to quantize; run the distillation stage."
        self._quantize(path, path, self._quantization_args(), missing, calibrate=True)

    def _describe_teacher(self) -> str:
        source = self._resolve_teacher_source()
        packaged = PACKAGED_SOURCES.get(self.args.teacher)
        name = packaged.description if packaged else self.args.teacher
        if self._needs_fine_tuning(source, label_names(self.data["train"])):
            plateau = self.out / "teacher" / TEACHER_TRAINING_FILE
            if plateau.exists():
                t = json.loads(plateau.read_text())
                return (
                    f"{name}, fine-tuned here on the training split to a plateau on the {t['split']} split: "
                    f"{100 * t['best_eval_accuracy']:.2f}% at step {t['best_step']:,}, stopped at step {t['steps']:,} "
                    f"of at most {t['max_steps']:,} (patience {t['patience']} evaluations)"
                )
            section = self.recipe.teacher_training
            if section.max_steps > 0:  # Trainer's rule: max_steps overrides num_train_epochs
                return f"{name}, fine-tuned here on the training split for {section.max_steps:,} steps"
            epochs = section.num_train_epochs
            return f"{name}, fine-tuned here on the training split for {epochs:g} epoch{'' if epochs == 1 else 's'}"
        return name

    def _describe_student_base(self, config: Any) -> str:
        shape = self.shape
        init = str(getattr(config, "trainer_ext_student_init", "its vocabulary"))
        if teacher_layers(shape):
            return f"{shape}: {init}"
        pretrained = pretrained_student(shape)
        if pretrained:
            packaged = PACKAGED_SOURCES[pretrained[0]].description
            if pretrained[1]:
                return f"{pretrained[1]} of the layers of {packaged} ({shape}), at its width, with a new head"
            return f"{packaged}, pre-trained, in its own shape ({config.num_hidden_layers} x {config.hidden_size}), with a new head"
        if shape not in STUDENT_PRESETS:
            return shape
        # build_student calls the model it narrows "teacher"; here that is student_init_from when it is set (and the
        # preset fits in it: configs saved before that choice existed lack the attribute).
        init_from = getattr(config, "trainer_ext_student_init_from", self.args.student_init_from)
        if init_from is None:
            return f"the {shape} preset built from the teacher: {init}"
        packaged = PACKAGED_SOURCES.get(init_from)
        source = packaged.description if packaged else init_from
        return f"the {shape} preset narrowed from {source}: {init.replace('teacher layers', 'its layers', 1)}"

    def _quantization_args(self) -> Any:
        """The recipe's INT8 search at the run's one sequence length (`run.max_length`)."""
        return replace(self.recipe.quantization.whole("sequence_length"), sequence_length=self.args.max_length)

    def _teacher_quantization_args(self) -> Any:
        # The reference row "teacher, ONNX Runtime INT8" was dynamic quantization; the same search, dynamic only, and
        # without the node-by-node repair: a reference row, and for a 12-layer teacher about a hundred probes.
        return replace(
            self._quantization_args(),
            approach="dynamic",
            sensitivity_top_k=0,
            serving_shapes=["fixed_length"],
            backends=["onnxruntime"],
        )

    def stage_teacher_quantization(self) -> None:
        """The teacher as an INT8 ONNX model too (the reference's second row), in `teacher_int8/`."""
        path = self.out / "teacher"
        missing = f"The teacher stage's output {path} is missing; delete {self._marker('teacher')}."
        self._quantize(path, self.out / "teacher_int8", self._teacher_quantization_args(), missing)

    # --------------------------------------------------------------------------------------------- benchmark
    def stage_benchmark(self) -> None:
        """Every variant on the test split, timed in one interleaved group; saved in `benchmark/variants.json`."""
        if not self.is_main:
            return
        teacher, teacher_tokenizer = self._teacher()
        models: dict[str, ClassifierRunner | str] = {"teacher": ClassifierRunner(teacher, teacher_tokenizer)}
        students = ("student_no_distillation",) + (("student_distilled_original",) if self.args.augment else ())
        for name in (*students, "student_distilled"):
            path = self.out / name
            if not (path / "config.json").exists():
                raise PipelineError(f"{path} is missing; delete its stage marker to retrain it.")
            model = AutoModelForSequenceClassification.from_pretrained(path)
            models[name] = ClassifierRunner(model, AutoTokenizer.from_pretrained(path))
        # INT8 variant: (its folder, the PyTorch variant whose tokenizer and parameter count it shares)
        int8_folders = {"teacher_int8": ("teacher_int8", "teacher"), INT8_VARIANT: (self.shipped,) * 2}
        order = ("teacher", "teacher_int8", *students, "student_distilled", INT8_VARIANT)
        if self.selecting:  # every other trained candidate, FP32 and INT8, for the accuracy-latency frontier
            for record in self._selection()["candidates"]:
                if record.get("status") != "trained" or record["student"] == self.shape:
                    continue
                name, path = f"candidate_{record['student']}", self._candidate_dir(record["student"])
                model = AutoModelForSequenceClassification.from_pretrained(path)
                models[name] = ClassifierRunner(model, AutoTokenizer.from_pretrained(path))
                int8_folders[f"{name}_int8"] = (str(path.relative_to(self.out)), name)
                order += (name, f"{name}_int8")
        for name, (folder, base) in int8_folders.items():
            int8, report = self.out / folder / ONNX_SUBFOLDER / INT8_FILE, self.out / folder / REPORT_FILE
            if int8.exists():
                models[name] = ClassifierRunner(int8, models[base].tokenizer, parameters=models[base].parameters)
            else:
                models[name] = (
                    json.loads(report.read_text())["chosen"].get("reason")
                    if report.exists()
                    else ("quantization did not run")
                )
        # The search's OpenVINO pick, when OpenVINO was the fastest runtime for some serving shape.
        openvino_xml = self.out / self.shipped / OPENVINO_SUBFOLDER / OV_FILE
        if openvino_xml.exists():
            student = models[self.shipped]
            models["student_openvino"] = ClassifierRunner(
                openvino_xml, student.tokenizer, parameters=student.parameters
            )
            order += ("student_openvino",)
        length = self.args.max_length  # the run's one length: the fixed-length shape and the truncation
        variants, latency = measure(
            {name: models[name] for name in order},
            self.data[self.args.test_split],
            runs=self.args.latency_runs,
            sequence_length=length,
            max_length=length,
        )
        variants = {name: asdict(v) for name, v in variants.items()}
        write_json(self.out / "benchmark" / "variants.json", {"variants": variants, "latency": latency})

    # -------------------------------------------------------------------------------------------------- card
    def stage_card(self) -> None:
        """`results.json` (the run's one results file, copied beside the student) and the student's model card."""
        if not self.is_main:
            return
        measured = json.loads((self.out / "benchmark" / "variants.json").read_text())
        a, folder = self.args, self.out / self.shipped
        student = AutoConfig.from_pretrained(folder)
        report = folder / REPORT_FILE
        results = Results(
            variants=measured["variants"],
            model_variant=self.shipped,
            evaluation={
                # Only a Hub dataset id belongs in the card's `datasets`; built-in or local data is named instead.
                "dataset_id": None if a.dataset == OFFLINE_DATASET_NAME or Path(a.dataset).exists() else a.dataset,
                "dataset_name": a.dataset,
                "dataset_config": a.dataset_config,
                "split": a.test_split,
                "examples": len(self.data[a.test_split]),
            },
            latency=measured["latency"],
            teacher=self._describe_teacher(),
            # The Hub model this one was made from, for the card's base_model: a Hub student, else a Hub teacher.
            base_model=next(
                (
                    name
                    for name in (self.shape, a.teacher)
                    if name not in STUDENT_PRESETS
                    and name not in PACKAGED_SOURCES
                    and not pretrained_student(name)
                    and not Path(name).exists()
                ),
                None,
            ),
            student_base=self._describe_student_base(student),
            distillation={k: getattr(self.recipe.student_training, k) for k in DISTILLATION_SETTINGS},
            augmentation=read_stats(self.out / "augmentation"),
            quantization=json.loads(report.read_text()) if report.exists() else None,
            recipe={"source": self.recipe.source, "profile": self.recipe.profile, "values": self.recipe.raw},
            processes=self.num_processes,
            precision=self._recorded_precisions() or None,
            stages=dict(self.stage_seconds),  # every stage before this one; the card's own takes well under a second
            selection=self._selection() if self.selecting else None,
            guard=json.loads((self.out / SHIPPED_FILE).read_text()),
        )
        results.save(self.out)
        results.save(folder)
        card = asdict(self.recipe.card.whole())
        card["model_name"] = card["model_name"] or f"{Path(a.output_dir).name}-student"
        write_model_card(folder, results, **card)


def summary_table(results: dict[str, Any]) -> str:
    """The run's measured variants, one line each (test split). Latency in ms: batch 1 at each sentence's own length
    (without and with tokenization), batch 1 padded to the fixed length (the speed-up's basis), and per sentence in
    batches of 32."""
    length = results.get("latency", {}).get("sequence_length", 64)
    header = (
        f"{'variant':<26} {'runtime':<18} {'accuracy':>9} {'real ms':>8} {'+tok ms':>8} {f'len{length} ms':>9} "
        f"{'b32 ms':>7} {'speed-up':>9} {'MB':>7} {'params':>12}"
    )
    lines = [header, "-" * len(header)]
    for name, v in results["variants"].items():
        if v.get("accuracy") is None:
            lines.append(f"{name:<26} not measured: {v.get('note', '')}")
            continue
        params = f"{v['parameters']:,}" if v.get("parameters") else "-"
        shapes = v.get("shapes") or {}
        ms = {s: shapes.get(s, {}).get("median_ms", float("nan")) for s in ("real_length", "real_length_tokenized")}
        lines.append(
            f"{name:<26} {v['runtime']:<18} {100 * v['accuracy']:>8.2f}% {ms['real_length']:>8.2f} "
            f"{ms['real_length_tokenized']:>8.2f} {v['latency_ms']:>9.2f} "
            f"{shapes.get('batch_32', {}).get('median_ms', float('nan')):>7.2f} "
            f"{v.get('speedup_vs_teacher', float('nan')):>8.2f}x {v['size_mb']:>7.1f} {params:>12}"
        )
    latency = results.get("latency", {})
    if latency.get("cpu"):
        versions = sorted({v["runtime_version"] for v in results["variants"].values() if v.get("runtime_version")})
        lines.append(f"measured on {latency['cpu']}, {latency.get('threads')} threads; " + ", ".join(versions))
    lines += [f"INCONSISTENT {line}" for line in latency_warnings(results["variants"])]
    selection = results.get("selection")
    if selection:
        met = "met" if selection["met"] else "NOT MET by any candidate, the closest shipped"
        lines.append(f"selection: {selection['shipped']} ({met}): {selection['reason']}")
        for r in selection["candidates"]:
            figures = (
                f"INT8 {100 * r['int8_accuracy']:.2f}% on {selection['split']}, {r['int8_real_length_ms']:.2f} ms"
                if r.get("status") == "trained"
                else r.get("error", "")
            )
            lines.append(f"  {r['student']:<24} {r.get('status', '').split(':')[0]:<12} {figures}")
    if results.get("guard"):
        lines.append(f"shipped {results['guard']['shipped']}: {results['guard']['reason']}")
        if results["guard"].get("teacher_note"):
            lines.append(f"NOTE: {results['guard']['teacher_note']}")
    if results.get("precision"):
        lines.append("precision: " + ", ".join(f"{k} {v['precision']}" for k, v in results["precision"].items()))
        fallback = (results["precision"].get(TRANSFER_LABELLING) or {}).get("fallback")
        if fallback:
            lines.append(f"transfer labelling: {fallback}")
        sampling = (results["precision"].get("sampling") or {}).get("fallback")
        if sampling:
            lines.append(f"sampling: {sampling}")
    sources = (results.get("augmentation") or {}).get("sources")
    if sources:
        lines.append("transfer set: " + ", ".join(f"{count:,} {source}" for source, count in sources.items()))
    if results.get("stages"):
        lines.append("stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in results["stages"].items()))
    return "\n".join(lines)


__all__ = ["Pipeline", "PipelineError", "STAGES", "summary_table"]
