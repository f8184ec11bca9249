import json

import pytest

from trainer_ext.cli import main
from trainer_ext.demo import COMPLETE_MARKER, DemoConfig, format_table, run_demo


def test_cli_help_lists_the_demo(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "demo" in capsys.readouterr().out


def test_cli_rejects_unknown_commands_and_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bogus"])
    assert exit_info.value.code == 2
    assert "unknown command 'bogus'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--no_such_flag", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--no_such_flag" in err and "--student_epochs" in err


@pytest.mark.slow
def test_demo_end_to_end_on_a_small_subset(tmp_path):
    """The real job on the packaged MiniLM and the built-in data, shrunk: every number is measured, none typed in."""
    config = DemoConfig(
        output_dir=str(tmp_path / "demo"),
        max_train_samples=96,
        teacher_epochs=1,
        student_epochs=1,
        latency_runs=5,
    )
    results = run_demo(config)
    variants = results["variants"]
    assert set(variants) == {"teacher", "student_no_distillation", "student_distilled"}
    for row in variants.values():
        assert 0.0 <= row["accuracy"] <= 1.0 and row["latency_ms"] > 0
    assert variants["student_distilled"]["parameters"] < 0.6 * variants["teacher"]["parameters"]
    assert results["dataset"]["test"] == 1066
    saved = json.loads((tmp_path / "demo" / "demo_results.json").read_text())
    assert saved["variants"] == variants
    assert (tmp_path / "demo" / "teacher" / COMPLETE_MARKER).exists()
    assert "student_distilled" in format_table(results)
