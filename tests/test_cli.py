import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer_ext.pipeline.cli import main
from trainer_ext.pipeline.pipeline import Pipeline
from trainer_ext.pipeline.recipe import load_recipe

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
    assert main(["quantize", "some/model", "--no_such_flag", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trainer-ext quantize: error: unrecognised arguments --no_such_flag 1. See trainer-ext")
    assert err.count("\n") == 1


QUICK = str(ROOT / "recipes" / "rotten_tomatoes_offline.yaml")


def _csv(folder: Path, name: str, text: str, encoding: str = "utf-8") -> str:
    path = folder / name
    path.write_bytes(text.encode(encoding))
    return str(path)


def _split_folder(folder: Path) -> str:
    """Train, validation and test files whose validation split has a label that training never has."""
    _csv(folder, "train.csv", "text,label\ngood,pos\nbad,neg\n" * 10)
    _csv(folder, "validation.csv", "text,label\nmeh,meh\ngood,pos\n")
    _csv(folder, "test.csv", "text,label\nbad,neg\n")
    return str(folder)


# The table: the default recipe's quick profile with one override each, and what the one line must say.
USER_ERRORS = {
    "missing data file": (
        lambda d: ["--run.dataset", "nonexist.csv"],
        ["run.dataset", "does not exist", "--run.dataset"],
    ),
    "empty label cell": (
        lambda d: ["--run.dataset", _csv(d, "e.csv", "text,label\ngood film,pos\nbad,\nfine,pos\nugly,neg\n")],
        ["1 of 4 labels", "missing (null)", "rows [1]", "fill in their labels"],
    ),
    "header only": (
        lambda d: ["--run.dataset", _csv(d, "h.csv", "text,label\n")],
        ["holds no examples", "Add rows"],
    ),
    "one class": (
        lambda d: [
            "--run.dataset",
            _csv(d, "o.csv", "text,label\n" + "".join(f"fine {i},positive\n" for i in range(20))),
        ],
        ["one class only", "'positive'", "at least two", "--run.label_column"],
    ),
    "latin-1 file": (
        lambda d: ["--run.dataset", _csv(d, "l.csv", "text,label\ncafé good,pos\nbad,neg\n" * 10, "latin-1")],
        ["not UTF-8", "read as utf-8", "Re-save the file as UTF-8"],
    ),
    "other column names": (
        lambda d: ["--run.dataset", _csv(d, "c.csv", "sentence,sentiment\ngood film,pos\nbad film,neg\n" * 10)],
        ["no column 'label'", "--run.text_column sentence --run.label_column sentiment"],
    ),
    "epochs not a number": (
        lambda d: ["--student_training.num_train_epochs", "three"],
        ["student_training.num_train_epochs", "'three'", "Give a number"],
    ),
    "teacher path missing": (
        lambda d: ["--run.teacher", "/nonexistent/model"],
        ["run.teacher '/nonexistent/model'", "no such folder", "Set --run.teacher"],
    ),
    "eval label never trained": (
        lambda d: ["--run.dataset", _split_folder(d)],
        ["validation split", "never has", "['meh']", "Add training examples"],
    ),
    "prompt names for other labels": (
        lambda d: [
            "--run.dataset",
            _csv(d, "t.csv", "text,label\n" + "".join(f"s {i},{'abc'[i % 3]}\n" for i in range(30))),
        ],
        ["prompt_label_names", "3 distinct words", "--augmentation.prompt_label_names a,b,c"],
    ),
}


@pytest.mark.parametrize("case", list(USER_ERRORS))
def test_each_user_error_is_one_line_with_its_fix_before_any_work(case, tmp_path, capsys):
    """Exit status 2, one line on stderr naming the problem and the flag or step that fixes it, within seconds, and
    nothing written under the output folder (here one that already holds a file, which must stay as it was)."""
    data = tmp_path / "data"
    data.mkdir()
    overrides, words = USER_ERRORS[case]
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    start = time.perf_counter()
    code = main(["run", QUICK, "--profile", "quick", "--run.output_dir", str(out / "run"), *overrides(data)])
    seconds = time.perf_counter() - start
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trainer-ext run: error: "), captured.err
    assert all(word in lines[0] for word in words), lines[0]
    assert seconds < 10
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def test_debug_shows_the_traceback_of_a_user_error_and_a_bug_always_has_one(tmp_path, monkeypatch):
    from trainer_ext.pipeline.pipeline import PipelineError

    argv = ["run", QUICK, "--profile", "quick", "--run.output_dir", str(tmp_path / "o"), "--run.dataset", "no.csv"]
    with pytest.raises(PipelineError, match="does not exist"):
        main([*argv, "--debug"])

    def bug(self):
        raise KeyError("a bug, not a user error")

    monkeypatch.setattr(Pipeline, "run", bug)
    with pytest.raises(KeyError):
        main(["run", QUICK, "--profile", "quick", "--run.output_dir", str(tmp_path / "o")])


def test_a_user_error_from_the_installed_command_is_one_line_within_seconds(tmp_path):
    """The real entry point, imports included, as a user runs it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    # The console script pip installed beside this Python (CI calls .venv/bin/python, whose bin/ is not on PATH).
    script = Path(sys.executable).with_name("trainer-ext")
    command = [str(script), "run", QUICK, "--profile", "quick", "--run.output_dir", str(tmp_path / "o")]
    start = time.perf_counter()
    done = subprocess.run([*command, "--run.dataset", "nonexist.csv"], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "--run.dataset" in done.stderr
    # About 7 s unshared on the 2-vCPU machine, most of it importing torch; the bound allows a shared CPU and still
    # fails an error that comes after any training.
    assert seconds < 60, seconds
    assert not (tmp_path / "o").exists()


def test_the_other_commands_name_a_missing_model_folder_in_one_line(tmp_path, capsys):
    assert main(["quantize", str(tmp_path), "--output_dir", str(tmp_path / "q")]) == 2
    assert "MODEL_DIR" in capsys.readouterr().err and not (tmp_path / "q").exists()
    assert main(["augment", "--teacher", str(tmp_path / "none"), "--output_dir", str(tmp_path / "a")]) == 2
    assert "--teacher" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert main(["card", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.startswith("trainer-ext card: error: ")


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
