import json
from pathlib import Path

import pytest

from trainer_ext.cli import main
from trainer_ext.pipeline import Pipeline
from trainer_ext.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent


def test_cli_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(command in out for command in ("run", "quantize", "augment", "card"))


def test_cli_rejects_unknown_commands_and_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bogus"])
    assert exit_info.value.code == 2
    assert "unknown command 'bogus'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["quantize", "some/model", "--no_such_flag", "1"])
    assert exit_info.value.code == 2
    assert "--no_such_flag" in capsys.readouterr().err


def test_demo_is_a_profile_of_the_offline_recipe():
    demo = load_recipe(ROOT / "recipes" / "rotten_tomatoes_minilm.yaml", profile="demo")
    assert not demo.run.augment and demo.teacher_training.num_train_epochs == 1
    assert demo.run.student == ["bert-mini"] and demo.student_training.distillation_loss == "kl"


@pytest.mark.slow
def test_demo_profile_end_to_end_on_a_small_subset(tmp_path):
    """The demo on the packaged MiniLM and the built-in data, shrunk: every number is measured, none typed in."""
    overrides = {
        "run": {"output_dir": str(tmp_path / "demo"), "max_train_samples": "96", "latency_runs": "5"},
        "student_training": {"num_train_epochs": "1"},
    }
    recipe = load_recipe(ROOT / "recipes" / "rotten_tomatoes_minilm.yaml", overrides, profile="demo")
    results = Pipeline(recipe, progress=lambda _m: None).run()
    variants = results["variants"]
    assert {"teacher", "student_no_distillation", "student_distilled"} <= set(variants)
    assert variants["student_distilled"]["parameters"] < 0.6 * variants["teacher"]["parameters"]
    assert results["evaluation"]["examples"] == 1066
    assert json.loads((tmp_path / "demo" / "results.json").read_text())["variants"] == variants
    assert results["stages"] and "augmentation" not in results["stages"]
