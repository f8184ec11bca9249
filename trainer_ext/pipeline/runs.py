"""What keeps a run's outputs trustworthy: one run per output folder, stage keys built from the settings each stage
actually reads, and interrupts that say where they stopped.

A stage's key used to be a hand-written list of the settings it was thought to read; a setting missing from it
(`run.test_split`, `run.precision`, `run.max_length` where it overrode another section's value) let a re-run reuse
outputs made with other settings. Here the recipe is wrapped so that every setting a stage reads while it runs is
recorded, and the key is built from those: a setting a stage reads is in its key by construction.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Any

import filelock

# Fields that cannot change a run's outputs: where the outputs go, how training logs, how many data-loading workers;
# and the fields the pipeline sets itself (run.max_length is the one sequence length: a recipe that sets one of these
# apart is refused by Pipeline.check; the teacher-logit cache goes below the output folder). Recorded reads skip them,
# and the test of the keys (tests/test_pipeline.py) accepts a field no stage reads only when it is listed here.
OUTPUT_NEUTRAL = frozenset(
    {
        "run.output_dir",
        *(
            f"{section}.{name}"
            for section in ("teacher_training", "student_training", "augmentation")
            for name in ("output_dir", "logging_dir", "disable_tqdm", "dataloader_num_workers")
        ),
        "quantization.sequence_length",
        "augmentation.max_length",
        "student_training.teacher_max_length",
        "student_training.teacher_cache_dir",
    }
)
SECTIONS = ("run", "teacher_training", "student_training", "augmentation", "quantization", "card")


def init_fields(obj: Any) -> list[str]:
    return [f.name for f in fields(obj) if f.init]


class _RecordedSection:
    """A recipe section whose field reads are reported to `log` as `section.field`.

    `whole()` returns the dataclass itself (for `dataclasses.replace`, `asdict`, or a function that takes the whole
    section), after reporting every field of it as read.
    """

    def __init__(self, section: str, value: Any, log: Callable[[str], None]) -> None:
        object.__setattr__(self, "_section", section)
        object.__setattr__(self, "_value", value)
        object.__setattr__(self, "_log", log)
        object.__setattr__(self, "_fields", frozenset(init_fields(value)))

    def __getattr__(self, name: str) -> Any:
        if name in self._fields:
            self._log(f"{self._section}.{name}")
        return getattr(self._value, name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"recipe.{self._section} is read-only during a run; set {name!r} in the recipe")

    def whole(self, *overridden: str) -> Any:
        """The section itself, every field reported as read except those the caller replaces (`overridden`)."""
        for name in self._fields - set(overridden):
            self._log(f"{self._section}.{name}")
        return self._value


class RecordedRecipe:
    """A `Recipe` whose sections report the settings read through them (see `SettingsLog`)."""

    def __init__(self, recipe: Any, log: Callable[[str], None]) -> None:
        recipe = getattr(recipe, "unwrapped", recipe)  # a pipeline's recipe passed to another pipeline
        self.unwrapped = recipe
        for section in SECTIONS:
            setattr(self, section, _RecordedSection(section, getattr(recipe, section), log))
        self.source, self.profile, self.raw = recipe.source, recipe.profile, recipe.raw


def setting_value(recipe: Any, name: str) -> Any:
    """The current value of `section.field` in `recipe`, as JSON would store it (so recorded and current compare)."""
    section, field_name = name.split(".", 1)
    value = getattr(getattr(recipe, section), field_name)
    if is_dataclass(value):
        value = {f: getattr(value, f) for f in init_fields(value)}
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def recipe_fields(recipe: Any) -> list[str]:
    """Every `section.field` this trainer-ext's recipes have: a stage marker keeps the list, so a later version can
    tell the settings that were added since the stage ran."""
    return sorted(f"{section}.{name}" for section in SECTIONS for name in init_fields(getattr(recipe, section)))


def settings_added_since(recipe: Any, known: list[str], sections: set[str]) -> dict[str, Any]:
    """The settings of `sections` that did not exist when a stage ran (not in its marker's `known`) and that this
    recipe sets away from their default, with their values.

    A stage's key covers the settings it read, so a setting added to trainer-ext later is in no old key. The stage
    behaved as that setting's default does (a new setting defaults to the old behaviour), so only a value away from
    the default makes its output stale: then the stage must not be reused silently.
    """
    added = {}
    for section in sorted(sections & set(SECTIONS)):
        for f in fields(getattr(recipe, section)):
            name = f"{section}.{f.name}"
            if not f.init or name in known or name in OUTPUT_NEUTRAL:
                continue
            value = setting_value(recipe, name)
            if f.default is not MISSING:
                default = f.default
            elif f.default_factory is not MISSING:
                default = f.default_factory()
            else:
                added[name] = value
                continue
            if value != json.loads(json.dumps(default, sort_keys=True, default=str)):
                added[name] = value
    return added


class SettingsLog:
    """The recipe settings read on behalf of each stage, while it runs (or while its inputs are checked)."""

    def __init__(self) -> None:
        self.reads: dict[str, set[str]] = {}
        self._stage: str | None = None

    def record(self, name: str) -> None:
        if self._stage is not None and name not in OUTPUT_NEUTRAL:
            self.reads.setdefault(self._stage, set()).add(name)

    @contextmanager
    def reading(self, stage: str) -> Iterator[None]:
        """Attribute every read in the block to `stage` (nested blocks keep the outer stage)."""
        outer = self._stage
        self._stage = outer or stage
        try:
            yield
        finally:
            self._stage = outer


# ---------------------------------------------------------------------------------------------------------- the lock
LOCK_FILE = ".trainer-ext.lock"
HOLDER_FILE = ".trainer-ext.lock.json"


class OutputFolderLocked(RuntimeError):
    """Another run holds the output folder's lock; the message names the folder and the process that holds it."""


class OutputLock:
    """An exclusive lock on a run's output folder, held from before the first stage until the run ends.

    `filelock` takes an OS lock (`flock`) on `.trainer-ext.lock`: the OS releases it when the holding process ends,
    however it ends, so a lock left by a killed run never blocks the next one. Who holds it is written beside it in
    `.trainer-ext.lock.json` (the lock file itself is truncated by every process that tries it).
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self._lock = filelock.FileLock(str(self.folder / LOCK_FILE), timeout=0)

    def acquire(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except filelock.Timeout:
            raise OutputFolderLocked(self._held_message()) from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "argv": _argv()}
        (self.folder / HOLDER_FILE).write_text(json.dumps(holder), encoding="utf-8")

    def release(self) -> None:
        if self._lock.is_locked:
            (self.folder / HOLDER_FILE).unlink(missing_ok=True)
            self._lock.release()

    def _held_message(self) -> str:
        try:
            holder = json.loads((self.folder / HOLDER_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            holder = {}
        who = f"process {holder['pid']} on {holder.get('host', 'this machine')}" if holder.get("pid") else "a process"
        since = (
            f", started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder['started']))}"
            if holder.get("started")
            else ""
        )
        return (
            f"{self.folder} is in use by another run ({who}{since}): two runs in one output folder would overwrite "
            "each other's stages. Wait for it to finish, or set --run.output_dir to another folder"
        )

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _argv() -> list[str]:
    import sys

    return list(sys.argv)


# ------------------------------------------------------------------------------------------------------ interrupts
class RunInterrupted(BaseException):
    """SIGINT or SIGTERM during a run. A `BaseException`, like `KeyboardInterrupt`, so no `except Exception` in a
    stage swallows it; `stage` is the stage that was running (filled in by the pipeline)."""

    def __init__(self, signum: int, stage: str | None = None) -> None:
        super().__init__(signum, stage)
        self.signum, self.stage = signum, stage

    @property
    def exit_status(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


@contextmanager
def signals_raise() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise `RunInterrupted` (SIGTERM would otherwise kill the process without
    unwinding: no `finally`, no message). Handlers are restored afterwards; a no-op outside the main thread."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        raise RunInterrupted(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


__all__ = [
    "OUTPUT_NEUTRAL",
    "OutputFolderLocked",
    "OutputLock",
    "RecordedRecipe",
    "RunInterrupted",
    "SettingsLog",
    "setting_value",
    "signals_raise",
]
