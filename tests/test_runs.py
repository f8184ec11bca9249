"""One run per output folder, and interrupts that say where they stopped: real processes, real signals."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_pipeline import tiny_recipe, write_assets

from trainer_ext.pipeline.pipeline import Pipeline
from trainer_ext.pipeline.recipe import load_recipe
from trainer_ext.pipeline.runs import OutputFolderLocked, OutputLock, RecordedRecipe, SettingsLog

CLI = [sys.executable, "-m", "trainer_ext.pipeline.cli", "run"]


def start_run(recipe: Path, *flags: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [*CLI, str(recipe), *flags], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for_line(process: subprocess.Popen, text: str, timeout: float = 300) -> list[str]:
    """Read the run's stdout until a line contains `text`; the lines read so far."""
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"the run ended before {text!r}: {process.stderr.read()[-3000:]}")
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"no {text!r} within {timeout} s")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return root, tiny_recipe(root, write_assets(root), augment=False)


def test_a_second_run_on_the_same_folder_is_refused_in_one_line_and_a_killed_run_leaves_no_lock(tiny, capsys):
    from trainer_ext.pipeline.cli import main

    root, recipe = tiny
    out = root / "locked"
    first = start_run(recipe, "--run.output_dir", str(out))
    try:
        wait_for_line(first, "[teacher] running")
        assert main(["run", str(recipe), "--run.output_dir", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert err[0].startswith("trainer-ext run: error: ") and str(out) in err[0]
        assert f"process {first.pid}" in err[0] and "set --run.output_dir to another folder" in err[0]
        # A run into another folder is not held up by this one.
        with OutputLock(root / "elsewhere"):
            pass
    finally:
        first.kill()  # SIGKILL: no handler runs, the lock file stays behind
        first.communicate(timeout=60)
    assert (out / ".trainer-ext.lock").exists()
    with OutputLock(out):  # the OS released the killed process's lock: nothing blocks the next run
        with pytest.raises(OutputFolderLocked, match=f"process {os.getpid()}"):
            OutputLock(out).acquire()


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_an_interrupted_run_says_which_stage_stopped_and_the_same_command_resumes(tiny, signum, status):
    root, recipe = tiny
    out = root / f"interrupted_{status}"
    flags = ("--run.output_dir", str(out))
    run = start_run(recipe, *flags)
    lines = wait_for_line(run, "[teacher] running")
    run.send_signal(signum)
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == status, stderr[-3000:]
    # The stage that was running when the signal came: the last one started and not finished.
    lines += stdout.splitlines()
    started = [line.split("]")[0][1:] for line in lines if line.rstrip().endswith("] running")]
    finished = {line.split("]")[0][1:] for line in lines if "] finished in" in line}
    stage = started[-1]
    assert stage not in finished and set(started[:-1]) <= finished
    last = stderr.strip().splitlines()[-1]
    name = signal.Signals(signum).name
    assert last == (
        f"trainer-ext run: interrupted ({name}) during stage {stage!r}; finished stages are kept. Run the same "
        "command to resume."
    )
    # Nothing of the interrupted stage is marked done, the finished ones are; the lock is free.
    assert all((out / "stages" / f"{s}.json").exists() for s in started[:-1])
    assert not (out / "stages" / f"{stage}.json").exists()
    assert not list(out.rglob(".*.tmp*")) and not (out / ".trainer-ext.lock.json").exists()
    if signum == signal.SIGINT:
        return
    messages = []
    resumed = Pipeline(load_recipe(recipe, overrides={"run": {"output_dir": str(out)}}), progress=messages.append)
    results = resumed.run()
    assert all(resumed.stage_status[s] == "reused" for s in started[:-1]) and resumed.stage_status[stage] == "ran"
    assert results["variants"]["student_distilled"]["accuracy"] is not None


def test_every_setting_a_stage_reads_is_recorded_for_it(tiny):
    _, recipe = tiny
    log = SettingsLog()
    recorded = RecordedRecipe(load_recipe(recipe), log.record)
    read = [recorded.run.seed]  # read outside a stage: keys nothing
    with log.reading("teacher"):
        read += [recorded.run.max_length, recorded.run.output_dir]  # output_dir: where, not what; never a key
        read.append(recorded.student_training.learning_rate)
        with log.reading("inner"):  # a helper called by the stage reads for the stage
            read.append(recorded.quantization.whole("sequence_length"))
    assert read[1] == load_recipe(recipe).run.max_length  # the wrapper returns the values themselves
    assert "run.max_length" in log.reads["teacher"] and "run.seed" not in log.reads["teacher"]
    assert "run.output_dir" not in log.reads["teacher"] and "student_training.learning_rate" in log.reads["teacher"]
    assert (
        "quantization.approach" in log.reads["teacher"] and "quantization.sequence_length" not in log.reads["teacher"]
    )
    assert "inner" not in log.reads
    with pytest.raises(AttributeError, match="read-only"):
        recorded.run.seed = 3
    assert json.loads(json.dumps(sorted(log.reads["teacher"])))  # recorded names are JSON, as markers store them
