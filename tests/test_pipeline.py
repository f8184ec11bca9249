"""`trainer-ext run`: recipes, the staged pipeline end to end on tiny models, resume, bad input, distributed."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import free_port, make_bert, make_sentences, train_wordpiece_tokenizer
from datasets import load_from_disk
from huggingface_hub import ModelCard
from test_augmentation import byte_level_tokenizer, tiny_gpt2
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from trainer_ext.data.transfer.augmentation import read_stats
from trainer_ext.deployment.benchmark import ClassifierRunner, accuracy
from trainer_ext.pipeline.pipeline import STAGES, Pipeline, PipelineError, summary_table
from trainer_ext.pipeline.recipe import RecipeError, load_recipe, parse_overrides
from trainer_ext.pipeline.shared import stage_precision, training_args
from trainer_ext.pipeline.stages import augmentation as augmentation_stage
from trainer_ext.pipeline.stages import card as card_stage
from trainer_ext.pipeline.stages import data as data_stage
from trainer_ext.pipeline.stages import distillation as distillation_stage
from trainer_ext.pipeline.stages import quantization as quantization_stage
from trainer_ext.pipeline.stages import students as students_stage
from trainer_ext.pipeline.stages import teacher as teacher_stage

ROOT = Path(__file__).resolve().parent.parent


def write_assets(root: Path) -> dict[str, str]:
    """A labelled CSV folder, a tiny BERT encoder (not a classifier: the pipeline must fine-tune it), a tiny
    student folder on the same vocabulary, and a tiny GPT-2 generator; all built on the spot."""
    texts, labels = make_sentences(240, seed=11)
    names = ["neg", "pos"]
    data = root / "data"
    data.mkdir(parents=True)
    frame = pd.DataFrame({"text": texts, "label": [names[y] for y in labels]})
    frame[:160].to_csv(data / "train.csv", index=False)
    frame[160:200].to_csv(data / "validation.csv", index=False)
    frame[200:].to_csv(data / "test.csv", index=False)
    tokenizer = train_wordpiece_tokenizer(make_sentences(400, seed=1)[0])
    encoder = make_bert(tokenizer, hidden_size=48, num_hidden_layers=2, seed=1).bert
    encoder.save_pretrained(root / "teacher")
    tokenizer.save_pretrained(root / "teacher")
    student = make_bert(tokenizer, hidden_size=32, num_hidden_layers=1, seed=2)
    student.save_pretrained(root / "student")
    tokenizer.save_pretrained(root / "student")
    gen_tok = byte_level_tokenizer(texts + names)
    tiny_gpt2(gen_tok).save_pretrained(root / "generator")
    gen_tok.save_pretrained(root / "generator")
    return {"data": str(data), "teacher": str(root / "teacher"), "student": str(root / "student")}


def tiny_recipe(root: Path, assets: dict[str, str], **run) -> Path:
    recipe = {
        "run": {
            "output_dir": str(root / "out"),
            "dataset": assets["data"],
            "teacher": assets["teacher"],
            "student": assets["student"],
            "latency_runs": 20,
            **run,
        },
        "teacher_training": {"num_train_epochs": 2, "learning_rate": 1e-3, "disable_tqdm": True},
        "student_training": {
            "num_train_epochs": 1,
            "learning_rate": 1e-3,
            "distillation_loss": "kl",
            "disable_tqdm": True,
        },
        "augmentation": {
            "generator_name_or_path": str(root / "generator"),
            "fine_tune_max_samples": 32,
            "fine_tune_batch_size": 16,
            "num_samples": 12,
            "generation_batch_size": 8,
            "shard_size": 8,
            "max_new_tokens": 10,
            "min_words": 1,
            "max_words": 40,
            "max_attempts_factor": 30,
        },
        "quantization": {
            "approach": "dynamic",
            "per_channel": False,
            "optimization_levels": [0],
            "latency_runs": 3,
            "max_absolute_drop": 1.0,
            "require_speedup": False,
        },
        "card": {"license": "mit", "dataset_name": "toy reviews"},
    }
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    assets = write_assets(root)
    recipe_path = tiny_recipe(root, assets)
    pipeline = Pipeline(load_recipe(recipe_path), progress=lambda _m: None)
    results = pipeline.run()
    return root, recipe_path, pipeline, results


def test_every_stage_runs_and_results_hold_every_variant(finished_run):
    root, _, pipeline, results = finished_run
    out = root / "out"
    assert [s for s in STAGES if pipeline.stage_status.get(s) == "ran"] == [s for s in STAGES if s != "selection"]
    assert pipeline.stage_status["selection"] == "skipped (one student)"
    assert list(results["variants"]) == [
        "teacher",
        "teacher_int8",
        "student_no_distillation",
        "student_distilled_original",
        "student_distilled",
        "student_int8",
    ]
    test = pd.read_csv(Path(load_recipe(root / "recipe.yaml").run.dataset) / "test.csv")
    for name in results["variants"]:
        v = results["variants"][name]
        assert v["latency_ms"] > 0 and v["size_mb"] > 0 and v["eval_examples"] == 40, name
    # The FP32 student's test accuracy, recomputed from the saved model, is the one the results state.
    student = AutoModelForSequenceClassification.from_pretrained(out / "student_distilled").eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "student_distilled")
    with torch.no_grad():
        logits = student(**tokenizer(list(test["text"]), padding=True, truncation=True, return_tensors="pt")).logits
    labels = [["neg", "pos"].index(label) if isinstance(label, str) else label for label in test["label"]]
    expected = float((logits.argmax(-1).numpy() == np.asarray(labels)).mean())
    assert results["variants"]["student_distilled"]["accuracy"] == pytest.approx(expected)
    assert (
        results["variants"]["student_int8"]["runtime"]
        == results["variants"]["teacher_int8"]["runtime"]
        == "ONNX Runtime INT8"
    )
    assert results["variants"]["teacher_int8"]["parameters"] == results["variants"]["teacher"]["parameters"]
    # results.json is written once, by the card stage: it holds every stage's duration but the card's own.
    assert list(results["stages"]) == [s for s in STAGES[:-1] if s != "selection"] and all(
        s >= 0 for s in results["stages"].values()
    )
    # The teacher was an encoder without a classification head: the pipeline fine-tuned it for these labels.
    teacher_config = json.loads((out / "teacher" / "config.json").read_text())
    assert teacher_config["architectures"] == ["BertForSequenceClassification"]
    assert teacher_config["id2label"] == {"0": "neg", "1": "pos"}
    augmentation = read_stats(out / "augmentation")
    assert augmentation == results["augmentation"]
    assert augmentation["kept"] > 0 and augmentation["processes"] == 1
    # The ablation: one student distilled on the original sentences, one on original + transfer set. The teacher's
    # logits of the original sentences are the same in both, and the transfer set keeps the logits the teacher gave it
    # when labelling it (it is not run on them twice).
    original = load_from_disk(str(out / "distillation_data" / "original"))
    transfer = load_from_disk(str(out / "distillation_data" / "transfer"))
    assert len(original) == 160 and len(transfer) == 160 + augmentation["final"]
    assert (
        transfer.filter(lambda s: s == "original", input_columns="source")["teacher_logits"]
        == original["teacher_logits"]
    )
    generated = load_from_disk(str(out / "augmentation" / "augmented"))
    assert transfer.select(range(160, len(transfer)))["teacher_logits"] == generated["teacher_logits"]
    # The precision of every stage that trains or runs a model, chosen on this machine and recorded.
    stages = {"teacher_fine_tuning", "student_training", "teacher_logits", "generator", "transfer_labelling"}
    assert set(results["precision"]) == stages | {"sampling"}
    # The sampling engine and the generator's weights, chosen on this machine (the tiny GPT-2 runs continuously).
    assert results["precision"]["sampling"]["engine"] == "continuous" == augmentation["sampling"]["engine"]
    assert all(p["precision"] in ("fp32", "bf16") and p["reason"] for p in results["precision"].values())
    # teacher_labelling auto: the transfer set is labelled in the teacher_logits precision, and the stats say so.
    labelling = results["precision"]["transfer_labelling"]
    assert (
        labelling["requested"] == "auto" and labelling["form"] == results["precision"]["teacher_logits"]["precision"]
    )
    assert augmentation["teacher_labelling"]["form"] == labelling["form"]
    folder = out / "student_distilled"
    assert (folder / "onnx" / "model_quantized.onnx").exists() and (folder / "compression_report.json").exists()
    card = ModelCard.load(folder / "README.md")
    # Named after the student and the data, never the output folder ("out-student" before).
    student, data = (
        Path(load_recipe(root / "recipe.yaml").run.student[0]).name,
        Path(results["evaluation"]["dataset_name"]),
    )
    assert card.data.model_name == f"{student}-distilled-{data.name}" and card.text.startswith(f"\n# {student}-")
    # The transfer set's sources, each with its count.
    assert augmentation["sources"] == {"generated": augmentation["final"]}
    assert f"transfer set: {augmentation['final']:,} generated" in summary_table(results)
    assert f"Transfer set ({augmentation['final']:,} generated by a causal LM fine-tuned on the training set;" in (
        card.text
    )
    expected = [results["variants"][k]["accuracy"] for k in ("student_distilled", "student_int8")]
    assert [r.metric_value for r in card.data.eval_results] == expected
    assert json.loads((folder / "results.json").read_text())["variants"] == results["variants"]


def test_ablation_seeds_benchmark_retrains_the_student_rows_from_the_saved_inputs(finished_run, tmp_path):
    """benchmarks/ablation_seeds.py: every student row per seed from the run's saved splits, initial student and
    teacher logits (no teacher needed), with mean and standard deviation over the seeds."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import ablation_seeds

    root, _, _, results = finished_run
    report = tmp_path / "ablation.json"
    rows = ["no_distillation", "distilled_original", "distilled_transfer", "distilled_generated"]
    assert ablation_seeds.main([str(root / "out"), "--seeds", "3", "4", "--rows", *rows, "--json", str(report)]) == 0
    summary = json.loads(report.read_text())["summary"]
    generated = results["augmentation"]["final"]
    assert [summary[r]["train_rows"] for r in rows] == [160, 160, 160 + generated, 160 + generated]
    for row in rows:
        per_seed = summary[row]["test"]["per_seed"]
        assert len(per_seed) == 2 and all(0 <= a <= 1 for a in per_seed)
        assert summary[row]["test"]["mean"] == pytest.approx(np.mean(per_seed))
        assert summary[row]["test"]["std"] == pytest.approx(np.std(per_seed, ddof=1))
    # A curve's smaller point: the original rows and the first sentences of the transfer set, in the run's order.
    first = ablation_seeds.first_transfer(root / "out", 5)
    transfer = load_from_disk(str(root / "out" / "distillation_data" / "transfer"))
    assert len(first) == 165 and first["text"][160:] == transfer["text"][160:165]
    assert ablation_seeds.first_transfer(root / "out", 5, source="generated")["text"] == first["text"]
    with pytest.raises(SystemExit, match="holds 0 unlabeled sentences"):
        ablation_seeds.first_transfer(root / "out", 5, source="unlabeled")
    with pytest.raises(SystemExit, match="no 'unlabeled' rows"):
        ablation_seeds.main([str(root / "out"), "--seeds", "1", "--rows", "distilled_unlabeled"])
    # Teacher-confidence filtering keeps every original row and the transfer rows the teacher is sure enough of.
    logits = np.asarray(load_from_disk(str(root / "out" / "augmentation" / "augmented"))["teacher_logits"])
    confident = int((torch.softmax(torch.tensor(logits), -1).max(-1).values >= 0.6).sum())
    other = tmp_path / "other.json"
    argv = ["--seeds", "5", "--rows", "no_distillation", "--min-confidence", "0.6", "--json", str(other)]
    assert ablation_seeds.main([str(root / "out"), *argv]) == 0
    assert json.loads(other.read_text())["summary"]["distilled_confident"]["train_rows"] == 160 + confident
    # Seeds run apart (say, on several machines) are summarized together.
    merged = tmp_path / "merged.json"
    assert ablation_seeds.main(["--merge", str(report), str(other), "--json", str(merged)]) == 0
    merged = json.loads(merged.read_text())
    assert merged["seeds"] == [3, 4, 5] and len(merged["summary"]["no_distillation"]["test"]["per_seed"]) == 3


def test_precision_is_measured_on_each_stage_model_where_bf16_is_supported(finished_run, tmp_path, monkeypatch):
    """With bf16 support (forced here), `auto` times both precisions on the stage's own model and a real batch: a
    classifier's training step on labels, the generator's on its own tokens."""
    import trainer_ext.pipeline.shared as pipeline_module

    root, recipe_path, _, _ = finished_run
    real = pipeline_module.choose_precision
    monkeypatch.setattr(
        pipeline_module, "choose_precision", lambda *a, **k: real(*a, **k, steps=1, support=(True, "forced"))
    )
    pipeline = Pipeline(load_recipe(recipe_path, overrides={"run": {"output_dir": str(tmp_path)}}), lambda _m: 0)
    pipeline.data = data_stage.stage_data(pipeline)
    generator = AutoModelForCausalLM.from_pretrained(root / "generator")
    generator_tokenizer = AutoTokenizer.from_pretrained(root / "generator")
    generator_tokenizer.pad_token = generator_tokenizer.eos_token  # as TextGenerationAugmenter sets it
    teacher = AutoModelForSequenceClassification.from_pretrained(root / "out" / "teacher")
    for stage, model, tokenizer in (
        ("generator", generator, generator_tokenizer),
        ("student_training", teacher, AutoTokenizer.from_pretrained(root / "out" / "teacher")),
    ):
        choice = stage_precision(pipeline, stage, model, tokenizer, train=True)
        assert choice.fp32_seconds > 0 and choice.bf16_seconds > 0, stage
    assert set(json.loads((tmp_path / "precision.json").read_text())) == {"generator", "student_training"}


def test_rerun_resumes_and_redoes_nothing(finished_run):
    root, recipe_path, _, results = finished_run
    out = root / "out"
    watched = [out / "teacher" / "model.safetensors", out / "student_distilled" / "model.safetensors"]
    before = [p.stat().st_mtime_ns for p in watched]
    again = Pipeline(load_recipe(recipe_path), progress=lambda _m: None)
    # Only the benchmark and card are cheap enough to matter little, but even they are reused.
    rerun = again.run()
    assert set(again.stage_status.values()) == {"reused", "skipped (one student)"}
    assert [p.stat().st_mtime_ns for p in watched] == before
    assert rerun["variants"] == results["variants"]


def test_changed_settings_are_refused_without_touching_outputs(finished_run):
    root, recipe_path, _, _ = finished_run
    out = root / "out"
    before = (out / "student_distilled" / "model.safetensors").stat().st_mtime_ns
    recipe = load_recipe(recipe_path, overrides={"student_training": {"num_train_epochs": "2"}})
    with pytest.raises(PipelineError, match="other settings"):
        Pipeline(recipe, progress=lambda _m: None).run()
    assert (out / "student_distilled" / "model.safetensors").stat().st_mtime_ns == before


# Read only when several candidate students are chosen by a budget: tests/test_selection.py checks that the selection
# stage's key holds them.
SELECTION_SETTINGS = {"run.max_accuracy_drop", "run.max_latency_ms"}


def recorded_reads(out: Path) -> dict[str, set[str]]:
    return {p.stem: set(json.loads(p.read_text())["reads"]) for p in (out / "stages").glob("*.json")}


def test_every_recipe_field_keys_a_stage_or_is_listed_as_changing_no_output(finished_run):
    """Stage keys are built from the settings each stage read while it ran; a field that keys no stage must be on
    the explicit list of fields that cannot change outputs."""
    from dataclasses import fields as dataclass_fields

    from trainer_ext.pipeline.runs import OUTPUT_NEUTRAL, SECTIONS

    root, recipe_path, pipeline, _ = finished_run
    reads = recorded_reads(root / "out")
    keyed = set().union(*reads.values())
    recipe = load_recipe(recipe_path)
    every = {f"{s}.{f.name}" for s in SECTIONS for f in dataclass_fields(getattr(recipe, s)) if f.init}
    # With the teacher trained to a plateau (the default), the stage sets its evaluation and checkpoint fields itself:
    # the recipe's values of those cannot change its output, so they are not read.
    plateau = {f"teacher_training.{name}" for name in teacher_stage.plateau_settings(pipeline, 1)}
    assert pipeline.args.teacher_patience and plateau.isdisjoint(reads["teacher"])
    assert sorted(every - keyed - OUTPUT_NEUTRAL - SELECTION_SETTINGS - plateau) == []
    assert not keyed & OUTPUT_NEUTRAL
    # The settings whose absence let a re-run reuse outputs made otherwise (issue 21), each in the stage that reads it.
    assert {"run.eval_split", "run.test_split", "run.max_eval_samples", "run.dataset"} <= reads["data"]
    assert {"run.max_length", "run.precision", "run.seed"} <= reads["teacher"]
    assert {"run.max_length", "run.precision", "augmentation.num_samples"} <= reads["augmentation"]
    assert not any(r.startswith("student_training.") for r in reads["augmentation"])  # student changes keep it
    assert {"run.eval_split", "run.max_length"} <= reads["guard"]
    assert {"run.test_split", "run.latency_runs", "run.max_length"} <= reads["benchmark"]
    assert {"run.eval_split", "run.max_length", "quantization.approach"} <= reads["quantization"]


@pytest.mark.parametrize(
    "overrides, stage, changed",
    [
        ({"run": {"eval_split": "test"}}, "data", 'run.eval_split was "validation", now "test"'),
        ({"run": {"test_split": "validation"}}, "data", 'run.test_split was "test", now "validation"'),
        ({"run": {"precision": "fp32"}}, "teacher", 'run.precision was "auto", now "fp32"'),
        ({"run": {"max_length": "48"}}, "teacher", "run.max_length was 64, now 48"),
        ({"augmentation": {"num_samples": "13"}}, "augmentation", "augmentation.num_samples was 12, now 13"),
    ],
)
def test_a_changed_setting_is_refused_with_what_changed_never_reused(finished_run, overrides, stage, changed):
    root, recipe_path, _, _ = finished_run
    marker = root / "out" / "stages" / "benchmark.json"
    before = marker.read_text()
    with pytest.raises(PipelineError, match=f"Stage {stage!r} .* with other settings: {changed}"):
        Pipeline(load_recipe(recipe_path, overrides=overrides), progress=lambda _m: None).run()
    assert marker.read_text() == before


def test_a_resumed_run_reads_the_saved_splits_and_refuses_an_edited_data_file(finished_run):
    root, recipe_path, _, _ = finished_run
    again = Pipeline(load_recipe(recipe_path), progress=lambda _m: None)
    again.run()
    assert again.stage_status["data"] == "reused"
    splits = str(root / "out" / "data" / "splits")
    assert all(f["filename"].startswith(splits) for split in again.data.values() for f in split.cache_files)
    train = Path(load_recipe(recipe_path).run.dataset) / "train.csv"
    original = train.read_text()
    try:
        train.write_text(original.replace(",neg", ",pos", 1))  # one label edited between the runs
        with pytest.raises(PipelineError, match="Stage 'data' .* the data's content changed"):
            Pipeline(load_recipe(recipe_path), progress=lambda _m: None).run()
    finally:
        train.write_text(original)


def test_one_sequence_length_owns_training_the_search_and_the_benchmark(finished_run, tmp_path):
    root, recipe_path, _, results = finished_run
    length = load_recipe(recipe_path).run.max_length
    assert results["latency"]["max_length"] == results["latency"]["sequence_length"] == length
    report = json.loads((root / "out" / "student_distilled" / "compression_report.json").read_text())
    assert report["args"]["sequence_length"] == length
    for section, name in (("quantization", "sequence_length"), ("augmentation", "max_length")):
        overrides = {"run": {"output_dir": str(tmp_path / name)}, section: {name: "32"}}
        with pytest.raises(PipelineError, match=f"{section}.{name} is 32 but run.max_length is 64"):
            Pipeline(load_recipe(recipe_path, overrides=overrides), progress=lambda _m: None).run()
        assert not (tmp_path / name).exists()


def test_changed_student_settings_redo_only_the_stages_that_read_them(finished_run, tmp_path):
    import shutil

    root, recipe_path, _, _ = finished_run
    copy = tmp_path / "out"
    shutil.copytree(root / "out", copy)
    overrides = {"run": {"output_dir": str(copy)}, "student_training": {"num_train_epochs": "2"}}
    with pytest.raises(PipelineError, match="'student_no_distillation'.*other settings"):
        Pipeline(load_recipe(recipe_path, overrides=overrides), progress=lambda _m: None).run()
    for stage in (
        "student_no_distillation",
        "distillation_original",
        "distillation",
        "guard",
        "quantization",
        "benchmark",
        "card",
    ):
        (copy / "stages" / f"{stage}.json").unlink()
    rerun = Pipeline(load_recipe(recipe_path, overrides=overrides), progress=lambda _m: None)
    rerun.run()
    reused = {s for s, status in rerun.stage_status.items() if status == "reused"}
    assert reused == {"data", "teacher", "augmentation", "teacher_quantization"}
    assert rerun.stage_status["guard"] == "ran"


def test_preset_student_is_projected_from_the_teacher_and_rebuilt_when_its_settings_change(tmp_path, monkeypatch):
    """A preset student starts from the fine-tuned teacher's projected layers; its saved initialisation is keyed, so
    redoing the student stages with another student_init rebuilds it instead of reusing the old one."""
    from trainer_ext.training.students import STUDENT_PRESETS

    monkeypatch.setitem(STUDENT_PRESETS, "toy", dict(num_hidden_layers=1, hidden_size=24, intermediate_size=48))
    assets = write_assets(tmp_path)
    recipe_path = tiny_recipe(tmp_path, assets, augment=False, student="toy", student_init_samples=40)
    Pipeline(load_recipe(recipe_path), progress=lambda _m: None).run()
    init = tmp_path / "out" / "student_init"
    config = json.loads((init / "config.json").read_text())
    assert config["hidden_size"] == 24 and config["num_attention_heads"] == 1  # the teacher's head size, 24
    assert config["trainer_ext_student_init"].startswith("teacher layers [1] projected onto the principal directions")
    distilled = json.loads((tmp_path / "out" / "student_distilled" / "config.json").read_text())
    assert distilled["trainer_ext_student_init"] == config["trainer_ext_student_init"]

    overrides = {"run": {"student_init": "random"}}
    with pytest.raises(PipelineError, match="other settings"):
        Pipeline(load_recipe(recipe_path, overrides=overrides), progress=lambda _m: None).run()
    for stage in ("student_no_distillation", "distillation", "guard", "quantization", "benchmark", "card"):
        (tmp_path / "out" / "stages" / f"{stage}.json").unlink()
    Pipeline(load_recipe(recipe_path, overrides=overrides), progress=lambda _m: None).run()
    rebuilt = json.loads((init / "config.json").read_text())["trainer_ext_student_init"]
    assert rebuilt.endswith("random encoder")
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["student_base"] == f"the toy preset built from the teacher: {rebuilt}"


def test_preset_student_can_be_narrowed_from_another_pretrained_model(tmp_path, monkeypatch):
    """run.student_init_from: the preset is built from that model (its layers and tokenizer), not from the teacher,
    as the reference starts from a pre-trained BERT-Mini rather than from its teacher."""
    from trainer_ext.training.students import STUDENT_PRESETS

    monkeypatch.setitem(STUDENT_PRESETS, "toy", dict(num_hidden_layers=1, hidden_size=16, intermediate_size=24))
    assets = write_assets(tmp_path)
    recipe_path = tiny_recipe(
        tmp_path, assets, augment=False, student="toy", student_init_from=assets["student"], student_init_samples=40
    )
    results = Pipeline(load_recipe(recipe_path), progress=lambda _m: None).run()
    config = json.loads((tmp_path / "out" / "student_init" / "config.json").read_text())
    source = json.loads((Path(assets["student"]) / "config.json").read_text())
    teacher = json.loads((tmp_path / "out" / "teacher" / "config.json").read_text())
    # The source has hidden size 32 and 1 layer, the teacher 48 and 2: the head size and layer are the source's.
    assert source["hidden_size"] == 32 and teacher["hidden_size"] == 48
    assert config["trainer_ext_student_of"] == assets["student"]
    assert config["trainer_ext_student_init"].startswith("teacher layers [0] projected")
    # Its layers are the source's, not the teacher's: no layer map to the teacher for hidden-state losses.
    assert "trainer_ext_teacher_layers" not in config
    assert results["variants"]["student_distilled"]["accuracy"] is not None
    assert results["student_base"].startswith(f"the toy preset narrowed from {assets['student']}: its layers [0]")
    with pytest.raises(PipelineError, match="other settings"):  # the source is part of the students' key
        Pipeline(load_recipe(recipe_path, overrides={"run": {"student_init_from": "null"}}), lambda _m: 0).run()


def test_precision_set_in_the_recipe_is_used_and_recorded(tmp_path):
    """precision: bf16 trains under bf16 autocast on CPU too (transformers needs use_cpu for that) and is recorded per
    stage; a later FP32 TrainingArguments in the same process does not inherit accelerate's bf16 setting."""
    from trainer_ext.training.precision import training_precision_kwargs

    assets = write_assets(tmp_path)
    pipeline = Pipeline(load_recipe(tiny_recipe(tmp_path, assets, augment=False, precision="bf16")), lambda _m: 0)
    results = pipeline.run()
    assert {k: v["precision"] for k, v in results["precision"].items()} == {
        "teacher_fine_tuning": "bf16",
        "student_training": "bf16",
        "teacher_logits": "bf16",
    }
    assert all(v["reason"].startswith("set in the recipe") for v in results["precision"].values())
    args = training_args(pipeline, "student_training", "x", "bf16")
    assert args.bf16 and args.use_cpu == (not torch.cuda.is_available())
    training_precision_kwargs("fp32")
    assert os.environ.get("ACCELERATE_MIXED_PRECISION") != "bf16"


def test_interrupted_stage_is_redone_on_resume(tmp_path, monkeypatch):
    """A stage killed before its marker was written runs again; the stages before it are reused."""
    import dataclasses

    import trainer_ext.pipeline.pipeline as pipeline_module

    assets = write_assets(tmp_path)
    recipe = load_recipe(tiny_recipe(tmp_path, assets, augment=False))
    first = Pipeline(recipe, progress=lambda _m: None)

    def crash(_pipeline):
        raise KeyboardInterrupt

    stages = pipeline_module.RUN_ORDER
    crashing = tuple(dataclasses.replace(s, body=crash) if s.name == "quantization" else s for s in stages)
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(pipeline_module, "RUN_ORDER", crashing)
        first.run()
    assert not (tmp_path / "out" / "stages" / "quantization.json").exists()
    second = Pipeline(recipe, progress=lambda _m: None)
    second.run()
    assert second.stage_status["distillation"] == "reused" and second.stage_status["quantization"] == "ran"
    assert second.stage_status["augmentation"].startswith("skipped")


def test_the_teacher_stage_is_reproducible(tmp_path):
    """The new classification head is seeded: two runs of the teacher stage give the same weights."""
    assets = write_assets(tmp_path)
    heads = []
    for run in ("a", "b"):
        pipeline = Pipeline(load_recipe(tiny_recipe(tmp_path, assets, output_dir=str(tmp_path / run))), lambda _m: 0)
        torch.manual_seed(len(heads))  # whatever the global generator's state, the stage starts from the run's seed
        pipeline.data = data_stage.stage_data(pipeline)
        teacher_stage.stage_teacher(pipeline)
        heads.append(AutoModelForSequenceClassification.from_pretrained(tmp_path / run / "teacher").classifier.weight)
    assert torch.equal(heads[0], heads[1])


def test_teacher_is_fine_tuned_only_when_not_yet_a_classifier_for_the_labels(tmp_path, tokenizer):
    pipeline = Pipeline(load_recipe(None, overrides={"run": {"output_dir": str(tmp_path / "o")}}), progress=print)
    classifier = make_bert(tokenizer, seed=1)  # id2label neg/pos
    classifier.save_pretrained(tmp_path / "named")
    assert not teacher_stage.needs_fine_tuning(pipeline, str(tmp_path / "named"), ["neg", "pos"])
    assert teacher_stage.needs_fine_tuning(pipeline, str(tmp_path / "named"), ["bad", "good"])  # another task's labels
    classifier.config.id2label, classifier.config.label2id = {0: "LABEL_0", 1: "LABEL_1"}, {"LABEL_0": 0, "LABEL_1": 1}
    classifier.save_pretrained(tmp_path / "generic")  # like many Hub checkpoints
    assert not teacher_stage.needs_fine_tuning(pipeline, str(tmp_path / "generic"), ["negative", "positive"])
    assert teacher_stage.needs_fine_tuning(pipeline, str(tmp_path / "generic"), ["a", "b", "c"])
    classifier.bert.save_pretrained(tmp_path / "encoder")  # no classification head
    assert teacher_stage.needs_fine_tuning(pipeline, str(tmp_path / "encoder"), ["neg", "pos"])


def test_recipe_errors_are_clear(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match=r"Did you mean 'num_samples'\?.*Valid keys of 'augmentation'"):
        load_recipe(None, overrides={"augmentation": {"num_sample": "5"}})
    with pytest.raises(RecipeError, match="Unknown recipe section 'quantisation'.*'quantization'"):
        load_recipe(None, overrides={"quantisation": {"approach": "dynamic"}})
    with pytest.raises(RecipeError, match="set by the pipeline"):
        load_recipe(None, overrides={"student_training": {"output_dir": "x"}})
    with pytest.raises(RecipeError, match="Unknown profile 'fast'.*quick"):
        load_recipe(ROOT / "recipes" / "rotten_tomatoes_minilm.yaml", profile="fast")
    with pytest.raises(RecipeError, match="run.augment: Truthy value expected"):
        load_recipe(None, overrides={"run": {"augment": "maybe"}})
    overrides, profile = parse_overrides(["--profile", "quick", "--augmentation.num_samples=7", "--run.seed", "3"])
    assert profile == "quick" and overrides == {"augmentation": {"num_samples": "7"}, "run": {"seed": "3"}}


def test_run_command_reports_user_errors_without_a_traceback(tmp_path, capsys):
    from trainer_ext.pipeline.cli import main

    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "error: Recipe file" in capsys.readouterr().err
    assert main(["run", str(ROOT / "recipes" / "rotten_tomatoes_minilm.yaml"), "--run.outptu_dir", "x"]) == 2
    assert "Did you mean 'output_dir'?" in capsys.readouterr().err


def test_bad_output_dir_and_missing_stage_input_fail_before_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    recipe = load_recipe(None, overrides={"run": {"output_dir": str(blocker / "out")}})
    with pytest.raises(PipelineError, match="Cannot create the output directory"):
        Pipeline(recipe, progress=lambda _m: None).run()
    empty = Pipeline(load_recipe(None, overrides={"run": {"output_dir": str(tmp_path / "o")}}), progress=print)
    with pytest.raises(PipelineError, match="guard stage's output .*shipped.json is missing"):
        quantization_stage.stage_quantization(empty)
    missing = {"output_dir": str(tmp_path / "p"), "augment": "false", "student_init_from": str(tmp_path / "nothing")}
    with pytest.raises(
        PipelineError,
        match="run.student_init_from .* does not exist: there is no such folder. Set --run.student_init_from",
    ):
        Pipeline(load_recipe(None, overrides={"run": missing}), progress=lambda _m: None).run()
    assert not (tmp_path / "p" / "stages").exists()  # refused before the first stage


def test_shipped_recipes_parse_to_the_reference_settings_without_downloading():
    quick = load_recipe(ROOT / "recipes" / "rotten_tomatoes_minilm.yaml", profile="quick")
    assert quick.run.teacher == "packaged:minilm" and quick.run.student == ["bert-mini"]
    assert quick.run.student_init == "projected" and quick.student_training.learning_rate == 1e-4
    assert quick.augmentation.generator_name_or_path == "packaged:smollm2" and quick.run.max_train_samples == 1000
    default = load_recipe(ROOT / "recipes" / "rotten_tomatoes_offline.yaml")
    assert (default.run.teacher, default.run.student, default.run.precision) == (
        "packaged:mpnet",
        ["bert-mini", "minilm"],  # the smaller student first, the pre-trained MiniLM when it misses the budget
        "auto",
    )
    assert default.run.max_accuracy_drop == 1.5 and default.run.student_init_from == "packaged:minilm"
    assert default.augmentation.unlabeled_texts == "imdb_reviews_offline" and default.run.augment
    default_quick = load_recipe(ROOT / "recipes" / "rotten_tomatoes_offline.yaml", profile="quick")
    assert default_quick.run.teacher == "packaged:mpnet" and default_quick.run.max_train_samples == 300
    bert_mini = load_recipe(ROOT / "recipes" / "rotten_tomatoes_offline.yaml", profile="bert-mini")
    assert bert_mini.run.student == ["bert-mini"] and bert_mini.run.max_accuracy_drop is None
    gpu = load_recipe(ROOT / "recipes" / "rotten_tomatoes_offline.yaml", profile="gpu")
    assert gpu.augmentation.max_transfer_samples is None and "minilm" in gpu.run.student
    assert len({r.run.output_dir for r in (default, default_quick, bert_mini, gpu)}) == 4
    sst2 = load_recipe(ROOT / "recipes" / "sst2_bert_mini.yaml", overrides={"run": {"seed": "7"}})
    assert (sst2.run.dataset, sst2.run.dataset_config, sst2.run.text_column) == ("glue", "sst2", "sentence")
    assert sst2.run.student == ["google/bert_uncased_L-4_H-256_A-4"]
    assert sst2.augmentation.generator_name_or_path == "gpt2-medium" and sst2.augmentation.top_p == 0.9
    t = sst2.student_training
    assert (t.distillation_loss, t.distillation_weight, t.learning_rate) == ("mse", 1.0, 6e-5)
    assert (t.per_device_train_batch_size, t.num_train_epochs, sst2.run.max_length) == (128, 7, 64)
    assert sst2.run.seed == 7 and sst2.card.base_model == "google/bert_uncased_L-4_H-256_A-4"


@pytest.mark.distributed
def test_torchrun_two_processes_run_the_recipe_once(tmp_path):
    assets = write_assets(tmp_path)
    recipe = tiny_recipe(tmp_path, assets)
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            torchrun,
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            "-m",
            "trainer_ext.pipeline.cli",
            "run",
            str(recipe),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    first_error = result.stderr[result.stderr.find("Traceback") :][:3000]
    assert result.returncode == 0, first_error or result.stderr[-4000:]
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    assert results["processes"] == 2
    augmentation = read_stats(out / "augmentation")
    assert augmentation == results["augmentation"]
    # Sampling was split: each process produced its share of the 12 samples.
    assert augmentation["processes"] == 2 and len(augmentation["kept_per_process"]) == 2
    assert all(k > 0 for k in augmentation["kept_per_process"])
    assert all(
        results["variants"][k]["accuracy"] is not None for k in ("teacher", "student_distilled", "student_int8")
    )
    assert result.stdout.count("student_distilled") >= 1 and (out / "student_distilled" / "README.md").exists()


@pytest.mark.distributed
def test_torchrun_two_processes_run_a_two_candidate_selection(tmp_path):
    """Every decision of a selection (precision, candidate order, each candidate's status, the guard) is made on the
    main process and broadcast: ranks that decided apart would train different candidates and wait for each other."""
    assets = write_assets(tmp_path)
    students = [assets["student"], "teacher-layers-1"]
    recipe = tiny_recipe(tmp_path, assets, student=students, max_accuracy_drop=100, augment=False)
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "trainer_ext.pipeline.cli"]
    result = subprocess.run(
        [*command, "run", str(recipe)], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    first_error = result.stderr[result.stderr.find("Traceback") :][:3000]
    assert result.returncode == 0, first_error or result.stderr[-4000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    selection = results["selection"]
    assert results["processes"] == 2 and selection["met"]
    # Fastest first, and the first meets a 100-point budget: it is shipped, the other is not trained.
    first, second = selection["candidates"]
    assert first["status"] == "trained" and second["status"].startswith("not trained")
    assert selection["shipped"] == first["student"] and results["variants"]["student_int8"]["accuracy"] is not None


@pytest.mark.slow
@pytest.mark.distributed
def test_quick_profile_of_the_offline_recipe_under_torchrun(tmp_path):
    """The real packaged teacher, generator and data, two processes, the shipped recipe's quick profile (slimmed)."""
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "quick"
    command = [
        torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "trainer_ext.pipeline.cli", "run",
        str(ROOT / "recipes" / "rotten_tomatoes_minilm.yaml"), "--profile", "quick",
        "--run.output_dir", str(out), "--run.max_train_samples", "400", "--augmentation.num_samples", "32",
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    assert results["processes"] == 2 and results["recipe"]["profile"] == "quick"
    assert read_stats(out / "augmentation")["processes"] == 2
    for name in ("teacher", "student_no_distillation", "student_distilled", "student_int8"):
        assert results["variants"][name]["accuracy"] is not None, name
    assert ModelCard.load(out / "student_distilled" / "README.md").data.eval_results


def test_models_run_outside_a_trainer_are_placed_on_the_process_device_on_a_resumed_run(
    finished_run, tmp_path, monkeypatch
):
    """The teacher (labelling) and the generator (sampling) run outside a Trainer: they are moved to the process's
    device (accelerate's, `cuda:LOCAL_RANK` on GPUs) explicitly, also when a resumed run reuses the recorded precision
    and times nothing. Here the process device is the meta device, so a model left on the CPU shows."""
    import shutil

    from datasets import Dataset

    import trainer_ext.pipeline.stages.augmentation as module
    import trainer_ext.pipeline.stages.teacher as teacher_module

    root, recipe_path, _, _ = finished_run
    for name in ("teacher", "precision.json"):
        copy = shutil.copytree if (root / "out" / name).is_dir() else shutil.copy
        copy(root / "out" / name, tmp_path / name)
    monkeypatch.setattr(Pipeline, "device", property(lambda self: torch.device("meta")), raising=False)
    seen = {}

    def fake_logits(teacher, dataset, *, device, **_kwargs):
        seen["teacher logits"] = (next(teacher.parameters()).device.type, torch.device(device).type)
        return np.zeros((len(dataset), 2), dtype=np.float32)

    def fake_augment(augmenter, train, teacher, *_args, **_kwargs):
        seen["augmentation"] = (next(augmenter.model.parameters()).device.type, next(teacher.parameters()).device.type)
        return Dataset.from_dict({"text": [], "label": []})

    monkeypatch.setattr(teacher_module, "compute_teacher_logits", fake_logits)
    monkeypatch.setattr(module.TextGenerationAugmenter, "augment", fake_augment)
    pipeline = Pipeline(load_recipe(recipe_path, overrides={"run": {"output_dir": str(tmp_path)}}), lambda _m: 0)
    pipeline.data = data_stage.stage_data(pipeline)
    teacher, tokenizer = teacher_stage.load_teacher(pipeline)
    teacher_stage.teacher_logits(pipeline, teacher, tokenizer, "train")
    augmentation_stage.stage_augmentation(pipeline)
    assert seen == {"teacher logits": ("meta", "meta"), "augmentation": ("meta", "meta")}


def test_the_packaged_minilm_is_a_student_whole_or_k_of_its_layers(tmp_path):
    """`minilm` is the packaged pre-trained MiniLM in its own shape (its tokenizer, a new head); `minilm-layers-K`
    keeps K of its layers at its width. Names that do not parse, or K beyond its depth, fail before any work."""
    from trainer_ext.data.assets import minilm_teacher_path

    pipeline = Pipeline(load_recipe(None, overrides={"run": {"output_dir": str(tmp_path / "o")}}), lambda _m: 0)
    whole, tokenizer = students_stage.build_pipeline_student(pipeline, "minilm", ["neg", "pos"])
    part, _ = students_stage.build_pipeline_student(pipeline, "minilm-layers-2", ["neg", "pos"])
    encoder = AutoModelForSequenceClassification.from_pretrained(minilm_teacher_path(), num_labels=2)
    assert (whole.config.num_hidden_layers, whole.config.hidden_size, whole.config.id2label) == (
        6,
        384,
        {0: "neg", 1: "pos"},
    )
    assert (part.config.num_hidden_layers, part.config.hidden_size) == (2, 384)
    assert tokenizer.vocab_size == AutoTokenizer.from_pretrained(minilm_teacher_path()).vocab_size
    # Pre-trained weights, not a random encoder: its layers are MiniLM's own (2 of 6: the 3rd and the last).
    assert torch.equal(
        whole.bert.encoder.layer[5].output.dense.weight, encoder.bert.encoder.layer[5].output.dense.weight
    )
    assert torch.equal(
        part.bert.encoder.layer[1].output.dense.weight, encoder.bert.encoder.layer[5].output.dense.weight
    )
    assert not hasattr(part.config, "trainer_ext_teacher_layers")  # not the teacher's layers
    with pytest.raises(RecipeError, match="Unknown student shape 'minilm-layer-3'. Did you mean 'minilm-layers-3'"):
        load_recipe(None, overrides={"run": {"student": "minilm-layer-3"}})
    too_deep = {"output_dir": str(tmp_path / "p"), "student": "minilm-layers-6", "augment": "false"}
    with pytest.raises(PipelineError, match="minilm has 6 layers, so minilm-layers-K needs K below that"):
        Pipeline(load_recipe(None, overrides={"run": too_deep}), progress=lambda _m: None).run()
    assert not (tmp_path / "p").exists()


def test_a_student_vocabulary_that_cannot_read_the_data_is_refused_before_training(tmp_path):
    assets = write_assets(tmp_path)
    alien = train_wordpiece_tokenizer(["xyz zyx yxz zzx"] * 20, vocab_size=30)  # knows the letters x, y and z only
    make_bert(alien, seed=3).save_pretrained(tmp_path / "alien")
    alien.save_pretrained(tmp_path / "alien")
    recipe = load_recipe(tiny_recipe(tmp_path, assets, student=str(tmp_path / "alien"), augment=False))
    with pytest.raises(PipelineError, match=r"run.student .*alien'.*% of the training text's tokens are unknown"):
        Pipeline(recipe, progress=lambda _m: None).run()
    assert not (tmp_path / "out").exists()
    from trainer_ext.pipeline.checks import unknown_token_share

    assert unknown_token_share(AutoTokenizer.from_pretrained(assets["teacher"]), ["the great film 1"]) == 0.0


def test_the_teacher_can_be_fine_tuned_to_a_validation_plateau(tmp_path):
    """run.teacher_patience (160 sentences, batch 32: 5 steps an epoch): evaluated four times an epoch on the eval split, the best kept, stopped after that many
    evaluations without improvement within num_train_epochs; the card says how far it went."""
    assets = write_assets(tmp_path)
    recipe = tiny_recipe(tmp_path, assets, augment=False, teacher_patience=1)
    overrides = {"teacher_training": {"num_train_epochs": "6", "learning_rate": "0.05"}}
    pipeline = Pipeline(load_recipe(recipe, overrides=overrides), progress=lambda _m: None)
    pipeline.check()
    pipeline.data = data_stage.stage_data(pipeline)
    teacher_stage.stage_teacher(pipeline)
    plateau = json.loads((tmp_path / "out" / "teacher" / "trainer_ext_plateau.json").read_text())
    assert plateau["max_steps"] == 6 * 5 and plateau["best_step"] <= plateau["steps"] <= plateau["max_steps"]
    assert 0 <= plateau["best_eval_accuracy"] <= 1 and plateau["split"] == "validation"
    # The kept teacher is the best evaluated one: its accuracy on the eval split is the best recorded.
    teacher, tokenizer = teacher_stage.load_teacher(pipeline)
    logits = ClassifierRunner(teacher, tokenizer).logits(list(pipeline.data["validation"]["text"]), max_length=64)
    assert accuracy(logits, np.asarray(pipeline.data["validation"]["label"])) == pytest.approx(
        plateau["best_eval_accuracy"], abs=1e-6
    )
    assert "to a plateau on the validation split" in card_stage.describe_teacher(pipeline)
    # Its checkpoints are gone once the best weights are saved (the MPNet teacher's left 1.3 GB in runs/teacher).
    assert not list((tmp_path / "out" / "runs" / "teacher").glob("checkpoint-*"))
    with pytest.raises(RecipeError, match="teacher_patience must be >= 1"):
        load_recipe(recipe, overrides={"run": {"teacher_patience": "0"}})


def test_the_teacher_trains_to_a_plateau_by_default_within_a_step_budget_and_null_trains_the_whole_budget(tmp_path):
    """Issue 22: a teacher fine-tuned for a fixed epoch count did not fit 3,400 sentences. By default it trains to a
    plateau (2 evaluations without improvement) within the budget; max_steps is that budget when set; null trains
    for the whole budget and keeps the last weights, with no evaluation."""
    assets = write_assets(tmp_path)
    overrides = {"teacher_training": {"max_steps": "12", "learning_rate": "0.05"}}
    pipeline = Pipeline(load_recipe(tiny_recipe(tmp_path, assets, augment=False), overrides=overrides), lambda _m: 0)
    assert pipeline.args.teacher_patience == 2
    pipeline.data = data_stage.stage_data(pipeline)
    teacher_stage.stage_teacher(pipeline)
    plateau = json.loads((tmp_path / "out" / "teacher" / "trainer_ext_plateau.json").read_text())
    assert plateau["max_steps"] == 12 and plateau["patience"] == 2 and plateau["steps"] <= 12

    fixed = tmp_path / "fixed"
    fixed.mkdir()
    recipe = load_recipe(tiny_recipe(fixed, assets, augment=False, teacher_patience=None), overrides=overrides)
    pipeline = Pipeline(recipe, lambda _m: 0)
    pipeline.data = data_stage.stage_data(pipeline)
    teacher_stage.stage_teacher(pipeline)
    assert not (fixed / "out" / "teacher" / "trainer_ext_plateau.json").exists()
    assert card_stage.describe_teacher(pipeline).endswith("fine-tuned here on the training split for 12 steps")


def test_an_int8_labelling_teacher_labels_the_transfer_set_only_and_the_run_records_it(tmp_path):
    """augmentation.teacher_labelling int8: checked on the eval split, its INT8 files under augmentation/, the transfer
    set labelled by it, the decision in the augmentation statistics and precision.json (so results.json, the summary
    and the card); the original sentences' logits keep the teacher_logits precision. Both fields key the stage."""
    from trainer_ext.deployment.benchmark import ClassifierRunner

    assets = write_assets(tmp_path)
    overrides = {"augmentation": {"teacher_labelling": "int8"}}
    pipeline = Pipeline(load_recipe(tiny_recipe(tmp_path, assets), overrides=overrides), lambda _m: 0)
    pipeline.data = data_stage.stage_data(pipeline)
    teacher_stage.stage_teacher(pipeline)
    with pipeline.settings.reading("augmentation"):
        augmentation_stage.stage_augmentation(pipeline)
    reads = pipeline.settings.reads["augmentation"]
    assert {"augmentation.teacher_labelling", "augmentation.min_labelling_agreement"} <= reads
    out = tmp_path / "out"
    precision = json.loads((out / "precision.json").read_text())
    record = precision["transfer_labelling"]
    assert record["precision"] == record["form"] == "int8" and record["fallback"] is None
    assert record["sentences"] == 40 and record["agreement"] >= 0.99
    assert read_stats(out / "augmentation")["teacher_labelling"] == {
        k: v for k, v in record.items() if k not in ("stage", "precision")
    }
    assert precision["teacher_logits"]["precision"] in ("fp32", "bf16")
    int8 = out / "augmentation" / "teacher_int8" / "model_quantized.onnx"
    generated = load_from_disk(str(out / "augmentation" / "augmented"))
    teacher, tokenizer = teacher_stage.load_teacher(pipeline)
    expected = ClassifierRunner(int8, tokenizer).logits(list(generated["text"]), max_length=64)
    assert np.allclose(np.asarray(generated["teacher_logits"]), expected, atol=1e-5)
    # The original sentences are labelled by the PyTorch teacher, in the teacher_logits precision.
    original = np.asarray(distillation_stage.original_with_logits(pipeline, teacher, tokenizer)["teacher_logits"])
    with torch.no_grad():
        inputs = tokenizer(list(pipeline.data["train"]["text"][:4]), padding=True, return_tensors="pt")
        direct = teacher.eval()(**inputs).logits.numpy()
    assert np.allclose(original[:4], direct, atol=1e-2 if precision["teacher_logits"]["precision"] == "bf16" else 1e-5)
    assert "transfer_labelling int8" in summary_table({"variants": {}, "precision": precision})
    fallback = {**record, "form": "fp32", "precision": "fp32", "fallback": "the INT8 teacher agreed ... instead"}
    summary = summary_table({"variants": {}, "precision": {"transfer_labelling": fallback}})
    assert "transfer labelling: the INT8 teacher agreed ... instead" in summary


def test_a_setting_added_since_a_stage_ran_is_reused_at_its_default_and_refused_when_set(finished_run):
    """A stage's key covers the settings it read; a setting added to trainer-ext later is in no old key. The marker
    keeps the fields its version had, so a later run that sets a new one away from its default is refused (it would
    reuse an output made without it, silently), and one that leaves it at its default reuses the stage."""
    root, recipe_path, _, _ = finished_run
    marker = root / "out" / "stages" / "augmentation.json"
    before = marker.read_text()
    done = json.loads(before)
    new = "run.student_init_samples"  # a setting of a section the stage reads, as if this version had not had it yet
    assert new in done["known"] and new not in done["reads"]
    done["known"].remove(new)
    try:
        marker.write_text(json.dumps(done))
        again = Pipeline(load_recipe(recipe_path), progress=lambda _m: None)
        again.run()
        assert again.stage_status["augmentation"] == "reused"
        default = load_recipe(recipe_path).run.student_init_samples
        with pytest.raises(
            PipelineError,
            match=f"Stage 'augmentation' .* had no run.student_init_samples setting \\(now {default + 1}\\)",
        ):
            overrides = {"run": {"student_init_samples": str(default + 1)}}
            Pipeline(load_recipe(recipe_path, overrides=overrides), progress=lambda _m: None).run()
    finally:
        marker.write_text(before)


def test_an_interrupt_right_after_a_stage_says_it_is_running_names_that_stage(finished_run, tmp_path):
    """The CLI names the stage an interrupt stopped. A signal that came just after the "[stage] running" line (the
    moment a user sees it) was raised before the stage's try and named no stage ("before the first stage")."""
    from trainer_ext.pipeline.runs import RunInterrupted

    _, recipe_path, _, _ = finished_run

    def interrupt_on_start(message: str) -> None:
        if message.endswith("] running"):
            raise RunInterrupted(signal.SIGTERM)

    recipe = load_recipe(recipe_path, overrides={"run": {"output_dir": str(tmp_path / "o")}})
    with pytest.raises(RunInterrupted) as raised:
        Pipeline(recipe, progress=interrupt_on_start).run()
    assert raised.value.stage == "data"
    assert not (tmp_path / "o" / "stages" / "data.json").exists()
