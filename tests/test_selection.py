"""Student selection by budget and the guard against shipping a student that plain fine-tuning beats."""

import json

import pytest
from huggingface_hub import ModelCard
from test_pipeline import tiny_recipe, write_assets

from trainer_ext.pipeline.pipeline import Pipeline, PipelineError, summary_table
from trainer_ext.pipeline.recipe import RecipeError, load_recipe
from trainer_ext.pipeline.rules import Budget, guard, int8_figures, pick, teacher_note
from trainer_ext.pipeline.shared import candidate_dir
from trainer_ext.pipeline.stages import guard as guard_stage
from trainer_ext.pipeline.stages import selection as selection_stage
from trainer_ext.reporting.cards import md


def record(student, accuracy, ms, budget=None, teacher=0.9, status="trained"):
    budget = budget or Budget()
    r = {"student": student, "status": status, "int8_accuracy": accuracy, "int8_real_length_ms": ms}
    if status == "trained":
        late, short = budget.shortfall(r, teacher)
        r["meets_budget"] = late == 0 and short == 0
    return r


def test_pick_ships_the_first_candidate_within_the_budget_else_the_closest():
    budget = Budget(max_accuracy_drop=1.0)
    tried = [record("tiny", 0.80, 1.0, budget), record("mini", 0.895, 2.0, budget), record("small", 0.9, 4.0, budget)]
    assert pick(tried, budget, 0.9)[:2] == ("mini", True)  # tried fastest first: the first within 1 point
    short = [record("tiny", 0.80, 1.0, budget), record("mini", 0.85, 2.0, budget)]
    shipped, met, why = pick(short, budget, 0.9)
    assert (shipped, met) == ("mini", False) and "4.00 points short" in why  # the most accurate: 5 - 1 points
    both = Budget(max_accuracy_drop=1.0, max_latency_ms=1.5)
    short = [record("tiny", 0.80, 1.0, both), record("mini", 0.85, 2.0, both)]
    assert pick(short, both, 0.9)[:2] == ("tiny", False)  # mini is over the latency budget
    late = [record("mini", 0.85, 2.0, both), record("small", 0.89, 3.0, both)]
    shipped, met, why = pick(late, both, 0.9)
    assert (shipped, met) == ("mini", False) and "0.50 ms over" in why  # none in time: the fastest
    failed = [{"student": "bert-huge", "status": "failed", "error": "x"}]
    assert pick(failed, budget, 0.9) == (None, False, "no candidate trained")


def test_a_teacher_no_better_than_the_undistilled_student_is_said_plainly():
    assert teacher_note(0.80, 0.79) is None
    assert "no better on the eval split" in teacher_note(0.79, 0.79) and "(80.24%)" in teacher_note(0.7762, 0.8024)


def test_guard_ships_the_undistilled_student_only_when_it_is_more_accurate():
    shipped, why = guard({"student_distilled": 0.80, "student_no_distillation": 0.82})
    assert shipped == "student_no_distillation" and "distillation did not help on this data" in why
    assert guard({"student_distilled": 0.80, "student_no_distillation": 0.80})[0] == "student_distilled"


def test_int8_figures_read_the_shipped_model_from_the_report():
    report = {
        "fp32": {"accuracy": 0.8, "latency": {"median_ms": 4.0}, "shapes": {"real_length": {"median_ms": 2.0}}},
        "chosen": {"name": "dyn", "accuracy": 0.79},
        "trials": [{"name": "dyn", "latency": {"median_ms": 3.0}, "shapes": {"real_length": {"median_ms": 1.0}}}],
    }
    figures = int8_figures(report)
    assert (figures["int8_accuracy"], figures["int8_real_length_ms"], figures["int8_fixed_length_ms"]) == (
        0.79,
        1.0,
        3.0,
    )
    report["per_shape"] = {"real_length": {"name": "openvino_int8", "median_ms": 0.7, "accuracy": 0.78}}
    assert (int8_figures(report)["int8_real_length_ms"], int8_figures(report)["int8_accuracy"]) == (0.7, 0.78)
    # The FP32 graph picked for real length (faster than INT8 there): its figures, with the FP32 accuracy.
    report["per_shape"] = {"real_length": {"name": "fp32", "median_ms": 0.6}}
    assert (int8_figures(report)["int8_real_length_ms"], int8_figures(report)["int8_accuracy"]) == (0.6, 0.8)
    kept_fp32 = dict(report, chosen={"name": "fp32", "accuracy": 0.8}, per_shape={})
    assert int8_figures(kept_fp32)["int8_real_length_ms"] == 2.0


@pytest.mark.parametrize(
    "run, message",
    [
        ({"student": "bert-huge"}, "Unknown student shape 'bert-huge'"),
        ({"student": "teacher-layers-0"}, "Unknown student shape 'teacher-layers-0'"),
        ({"student": []}, "student is empty"),
        ({"student": ["bert-tiny", "bert-mini"]}, "no budget to choose by"),
        ({"student": ["bert-tiny", "bert-tiny"], "max_accuracy_drop": 1}, "lists a candidate twice"),
        ({"max_accuracy_drop": -0.5}, "between 0 and 100"),
        ({"max_accuracy_drop": 101}, "between 0 and 100"),
        ({"max_latency_ms": 0}, "positive number of milliseconds"),
    ],
)
def test_bad_candidates_and_budgets_are_refused_when_the_recipe_is_read(tmp_path, run, message):
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps({"run": run}))
    with pytest.raises(RecipeError, match=message):
        load_recipe(path)


def test_a_student_that_cannot_resolve_fails_before_any_training(tmp_path):
    assets = write_assets(tmp_path)
    for student, message in (
        ([str(tmp_path / "nowhere"), "teacher-layers-1"], "run.student .*nowhere. does not exist"),
        (["teacher-layers-2", "teacher-layers-1"], "teacher has 2 layers"),
    ):
        recipe = load_recipe(tiny_recipe(tmp_path, assets, student=student, max_accuracy_drop=5))
        with pytest.raises(PipelineError, match=message):
            Pipeline(recipe, progress=lambda _m: None).run()
        assert not (tmp_path / "out" / "stages").exists()


@pytest.fixture(scope="module")
def selection_run(tmp_path_factory):
    """Three candidates, one of which (bert-tiny, wider than the tiny teacher) cannot be built, and an accuracy budget
    no candidate can meet (the teacher's accuracy is set to 101% here): both others are trained, and the most accurate
    INT8 model is shipped as the closest."""
    root = tmp_path_factory.mktemp("selection")
    assets = write_assets(root)
    students = [assets["student"], "teacher-layers-1", "bert-tiny"]
    recipe = load_recipe(tiny_recipe(root, assets, student=students, max_accuracy_drop=0.5, augment=False))
    pipeline = Pipeline(recipe, progress=lambda _m: None)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(selection_stage, "teacher_eval_accuracy", lambda *_args: 1.01)
        patch.setattr(guard_stage, "teacher_eval_accuracy", lambda *_args: 1.01)
        results = pipeline.run()
    return root / "out", pipeline, results, assets


def test_every_candidate_is_recorded_and_the_closest_is_shipped_when_none_meets_the_budget(selection_run):
    out, pipeline, results, assets = selection_run
    selection = results["selection"]
    by_name = {r["student"]: r for r in selection["candidates"]}
    assert by_name["bert-tiny"]["status"] == "failed" and "hidden_size" in by_name["bert-tiny"]["error"]
    trained = [r for r in selection["candidates"] if r["status"] == "trained"]
    assert {r["student"] for r in trained} == {assets["student"], "teacher-layers-1"}
    for r in trained:
        assert r["train_seconds"] > 0 and 0 <= r["int8_accuracy"] <= 1 and r["int8_real_length_ms"] > 0
        assert r["meets_budget"] is False and r["points_over_budget"] > 0
    # Tried fastest first, by the measured latency of the untrained shapes; the closest is the most accurate INT8.
    untrained = [r["untrained_fp32_real_length_ms"] for r in trained]
    assert untrained == sorted(untrained)
    best = max(trained, key=lambda r: r["int8_accuracy"])["student"]
    assert selection["shipped"] == best == pipeline.shape and selection["met"] is False
    assert "no candidate met the budget" in selection["reason"]
    # The shipped candidate is copied, not trained again, and its INT8 search is reused.
    assert not (out / "runs" / "student_distilled").exists()
    candidate = out / "candidates" / candidate_dir(pipeline, best).name
    shipped_weights = (out / "student_distilled" / "model.safetensors").read_bytes()
    assert shipped_weights == (candidate / "model.safetensors").read_bytes()
    assert (out / "student_distilled" / "onnx" / "model_quantized.onnx").exists()
    assert not (out / "student_distilled" / "_init").exists()
    # The other candidate is benchmarked on the test split too, FP32 and INT8, for the frontier.
    other = next(r["student"] for r in trained if r["student"] != best)
    assert {f"candidate_{other}", f"candidate_{other}_int8"} <= set(results["variants"])
    assert results["variants"][f"candidate_{other}"]["accuracy"] is not None
    # The summary, results.json and the card say plainly that the budget was not met.
    assert "NOT MET by any candidate" in summary_table(results)
    card = ModelCard.load(out / results["model_variant"] / "README.md").text
    assert "### Student selection" in card and "not met by any candidate" in card
    assert (
        "failed: building it failed" in card and (out / results["model_variant"] / "accuracy_vs_latency.png").exists()
    )


def test_the_selection_stage_is_keyed_by_its_candidates_and_budget(selection_run):
    out = selection_run[0]
    reads = set(json.loads((out / "stages" / "selection.json").read_text())["reads"])
    assert {"run.student", "run.max_accuracy_drop", "run.max_latency_ms", "quantization.approach"} <= reads
    # The student stages train the shape the selection shipped: they read its output.
    assert "selection" in json.loads((out / "stages" / "distillation.json").read_text())["inputs"]


def test_a_rerun_of_a_selection_reuses_every_stage_and_a_new_budget_every_candidate(selection_run, tmp_path):
    out, pipeline, results, assets = selection_run
    again = Pipeline(pipeline.recipe, progress=lambda _m: None)
    assert again.run()["selection"] == results["selection"]
    assert again.stage_status["selection"] == "reused" and again.shape == pipeline.shape
    # Another budget redoes the selection, not the training: every candidate's model and measurements are reused.
    import shutil

    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    for stage in (
        "selection",
        "student_no_distillation",
        "distillation",
        "guard",
        "quantization",
        "benchmark",
        "card",
    ):
        (copy / "stages" / f"{stage}.json").unlink()
    messages = []
    overrides = {"run": {"output_dir": str(copy), "max_accuracy_drop": "100"}}
    redone = Pipeline(load_recipe(pipeline.recipe.source, overrides=overrides), progress=messages.append).run()
    assert sum("trained and measured in an earlier run, reused" in m for m in messages) == 1  # the first one met it
    first = redone["selection"]["candidates"][0]
    assert redone["selection"]["met"] and redone["selection"]["shipped"] == first["student"]
    # The order is timed again (two tiny candidates may swap places); the measurements are the first run's.
    before = {r["student"]: r for r in results["selection"]["candidates"]}
    assert first["train_seconds"] == before[first["student"]]["train_seconds"]


def test_the_first_candidate_within_the_budget_is_shipped_and_slower_ones_are_not_trained(tmp_path):
    assets = write_assets(tmp_path)
    students = ["teacher-layers-1", assets["student"]]
    recipe = load_recipe(tiny_recipe(tmp_path, assets, student=students, max_accuracy_drop=100, augment=False))
    results = Pipeline(recipe, progress=lambda _m: None).run()
    first, second = results["selection"]["candidates"]
    assert first["status"] == "trained" and first["meets_budget"] and results["selection"]["met"]
    assert second["status"].startswith("not trained") and "train_seconds" not in second
    assert results["selection"]["shipped"] == first["student"]


def test_candidates_slower_than_one_over_the_latency_budget_are_not_trained(tmp_path):
    assets = write_assets(tmp_path)
    students = ["teacher-layers-1", assets["student"]]
    recipe = load_recipe(tiny_recipe(tmp_path, assets, student=students, max_latency_ms=1e-6, augment=False))
    selection = Pipeline(recipe, progress=lambda _m: None).run()["selection"]
    first, second = selection["candidates"]
    assert first["status"] == "trained" and first["ms_over_budget"] > 0
    assert second["status"] == f"not trained: slower than {first['student']}, which is already over the latency budget"
    assert (selection["shipped"], selection["met"]) == (first["student"], False)
    assert "ms over the latency budget" in selection["reason"]


def test_the_undistilled_student_is_shipped_when_it_is_more_accurate(tmp_path, monkeypatch):
    """The guard: here the eval-split accuracies are set so that plain fine-tuning wins; the card, the INT8 model and
    results.json then belong to the undistilled student, and the card says why."""
    accuracies = {"student_distilled": 0.5, "student_no_distillation": 0.75}
    monkeypatch.setattr(guard_stage, "eval_accuracy", lambda self, runner: accuracies[runner.trainer_ext_name])
    real_runner = guard_stage.ClassifierRunner

    def named_runner(model, tokenizer, **kwargs):
        runner = real_runner(model, tokenizer, **kwargs)
        path = str(getattr(model, "name_or_path", ""))
        runner.trainer_ext_name = next((n for n in accuracies if path.endswith(n)), None)
        return runner

    monkeypatch.setattr(guard_stage, "ClassifierRunner", named_runner)
    # And a teacher no better than the undistilled student: said in one sentence, in the summary and the card.
    monkeypatch.setattr(guard_stage, "teacher_eval_accuracy", lambda *_args: 0.75)
    assets = write_assets(tmp_path)
    results = Pipeline(load_recipe(tiny_recipe(tmp_path, assets, augment=False)), progress=lambda _m: None).run()
    out = tmp_path / "out"
    assert results["guard"]["shipped"] == results["model_variant"] == "student_no_distillation"
    assert results["guard"]["accuracy"] == accuracies and results["guard"]["teacher_accuracy"] == 0.75
    note = "the teacher (75.00%) is no better on the eval split than the student trained on labels alone (75.00%)"
    assert results["guard"]["teacher_note"].startswith(note) and f"NOTE: {note}" in summary_table(results)
    assert (out / "student_no_distillation" / "onnx" / "model_quantized.onnx").exists()
    assert not (out / "student_distilled" / "onnx").exists() and not (out / "student_distilled" / "README.md").exists()
    card = ModelCard.load(out / "student_no_distillation" / "README.md").text
    assert "distillation did not help on this data" in card
    assert md(note) in card  # escaped as the card escapes every value
