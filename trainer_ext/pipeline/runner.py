"""The stage runner: what every stage shares, and nothing that any one stage does.

A stage is a `Stage`: its name, its body (a function of the running `Pipeline`), the stages whose outputs it reads,
and, where it has them, when it is skipped, what keys it besides settings, and what a reused stage hands to the
later ones. `StageRunner.run_stage` keys it (the recipe settings it read while it ran, recorded by
`runs.SettingsLog`, its `extra` and the keys of the stages it reads), reuses it when its marker `stages/<name>.json`
holds that key, refuses when the marker holds another (finished outputs are never overwritten silently), else runs
and times it and writes its marker. It also owns the process roles under torchrun (main process, barrier,
broadcast) and the output folder's lock.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from trainer_ext.files import write_json
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
from trainer_ext.training.distributed import broadcast_from_main, process_state

if TYPE_CHECKING:
    from trainer_ext.pipeline.pipeline import Pipeline

STAGE_DIR = "stages"


class PipelineError(RuntimeError):
    """A stage cannot run as configured; the message says what to do. Raised before the stage's long work."""


class OutputInUseError(PipelineError):
    """Another run holds the output folder (see `runs.OutputLock`)."""


@dataclass(frozen=True)
class Stage:
    """One stage of the run, declared in its own module under `pipeline/stages/`.

    `reads` is the stages whose outputs it reads (their keys are part of its key), or a function of the pipeline
    where that depends on the recipe. `skip` returns why the stage does not run in this recipe, or None. `extra` is
    what keys it besides settings and inputs (the data's content). `reload` is what a reused stage hands to the later
    ones (the data stage's splits)."""

    name: str
    body: Callable[[Pipeline], Any]
    reads: tuple[str, ...] | Callable[[Pipeline], tuple[str, ...]] = ()
    skip: Callable[[Pipeline], str | None] | None = None
    extra: Callable[[Pipeline], dict[str, Any]] | None = None
    reload: Callable[[Pipeline], Any] | None = None


def stage_hash(value: Any) -> str:
    """The key of a stage (or of a saved initialisation or a selection candidate) from what it depends on."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def dataclass_settings(obj: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """A dataclass's explicit settings, without the ones that do not change the outputs."""
    ignored = {"output_dir", "logging_dir", "disable_tqdm", "dataloader_num_workers", *skip}
    return {f.name: getattr(obj, f.name) for f in fields(obj) if f.init and f.name not in ignored}


def what_changed(
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


class StageRunner:
    """Keys, markers, reuse and refusal, timing, the barrier and the process roles, for any list of `Stage`s."""

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

    def gather(self, value: Any) -> list[Any]:
        """`value` from every process, in rank order."""
        if self.num_processes == 1:
            return [value]
        from accelerate.utils import gather_object

        return gather_object([value])

    def broadcast(self, value: Any) -> Any:
        """The main process's `value` on every process: a decision (a precision, an order, a status) is made once."""
        return broadcast_from_main(value)

    def lock(self) -> OutputLock | None:
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

    def marker(self, stage: str) -> Path:
        return self.out / STAGE_DIR / f"{stage}.json"

    def missing(self, what: str, stage: str) -> PipelineError:
        """The error for a finished stage's output that is no longer there."""
        return PipelineError(f"The {stage} stage's output {what} is missing; delete {self.marker(stage)}.")

    def run_stage(self, stage: Stage) -> Any:
        """Skip, reuse, refuse or run `stage` (see the module's docstring)."""
        reason = stage.skip(self) if stage.skip else None
        if reason is not None:
            self.stage_status[stage.name] = f"skipped ({reason})"
            return None
        reads = stage.reads(self) if callable(stage.reads) else stage.reads
        extra = stage.extra(self) if stage.extra else {}
        upstream = {name: self.keys[name] for name in reads}
        if self.marker(stage.name).exists():
            return self._reuse(stage, extra, upstream)
        return self._run(stage, extra, upstream)

    def _reuse(self, stage: Stage, extra: dict[str, Any], upstream: dict[str, str]) -> Any:
        """Reuse a stage whose marker's key still holds; else refuse, saying what changed."""
        name, marker = stage.name, self.marker(stage.name)
        done = json.loads(marker.read_text())
        current = {setting: setting_value(self.recipe.unwrapped, setting) for setting in done.get("settings", {})}
        key = stage_hash([current, extra, upstream])
        added = (
            settings_added_since(
                self.recipe.unwrapped, done.get("known", []), {read.split(".")[0] for read in done.get("reads", [])}
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
            return stage.reload(self) if stage.reload else None
        raise PipelineError(
            f"Stage {name!r} in {self.out} was finished {what_changed(done, current, extra, upstream)}. "
            f"Use a new run.output_dir, or delete {marker} (and the markers of the stages that read its output) "
            "to redo it; finished outputs are never overwritten silently."
        )

    def _run(self, stage: Stage, extra: dict[str, Any], upstream: dict[str, str]) -> Any:
        """Run and time a stage, then write its marker (main process) once every process has finished it."""
        name = stage.name
        start = time.perf_counter()
        try:
            # Said inside the try: a signal that comes right after the line was seen still names this stage.
            self.progress(f"[{name}] running")
            with self.settings.reading(name):
                result = stage.body(self)
        except RunInterrupted as interrupt:
            interrupt.stage = interrupt.stage or name  # for the CLI's one line
            raise
        seconds = time.perf_counter() - start
        reads = sorted(self.settings.reads.get(name, ()))
        settings = {setting: setting_value(self.recipe.unwrapped, setting) for setting in reads}
        # The main process's record is the one written; every process keys later stages with it.
        key, reads, settings = self.broadcast((stage_hash([settings, extra, upstream]), reads, settings))
        self.keys[name] = key
        self.barrier()
        if self.is_main:
            record = {"key": key, "seconds": seconds, "reads": reads, "settings": settings, "extra": extra}
            record["known"] = recipe_fields(self.recipe.unwrapped)  # what a later version's new settings are told by
            write_json(self.marker(name), record | {"inputs": upstream, "finished": time.time()})
        self.barrier()
        self.stage_seconds[name] = seconds
        self.stage_status[name] = "ran"
        self.progress(f"[{name}] finished in {seconds:.0f} s")
        return result
