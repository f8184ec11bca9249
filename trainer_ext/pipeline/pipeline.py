"""`trainer-ext run RECIPE`: the whole compression job, stage by stage, resumable and distributed.

`RUN_ORDER` is the stages in the order they run, each declared in its own module under `pipeline/stages/` with
the one module of the package that owns its work:

- data (`stages/data`): load, validate and split the dataset (`data.loading`);
- teacher (`stages/teacher`): load the teacher, fine-tuned on the training split when it is not yet a classifier for
  these labels (`transformers.Trainer`);
- augmentation (`stages/augmentation`): the transfer set, from its sources (a fine-tuned generator, unlabelled text),
  filtered and relabelled by the teacher (`data.transfer`);
- selection (`stages/selection`, several `run.student` candidates): candidates trained fastest first until one's
  INT8 model meets the budget (`pipeline.rules`);
- student_no_distillation (`stages/students`): the student built from the teacher (`training.students`) and trained
  on labels only, the comparison row (`training.trainer`, which without a teacher is `Trainer`);
- distillation_original, distillation (`stages/distillation`): the same student distilled on the original sentences
  only (the ablation row, when augmentation runs) and on original + transfer set, against the teacher's logits;
- guard (`stages/guard`): the distilled student shipped unless the undistilled one is more accurate (`rules.guard`);
- quantization, teacher_quantization (`stages/quantization`): ONNX export and the accuracy-aware INT8 search
  (`deployment.quantization`);
- benchmark (`stages/benchmark`): every variant measured on the test split, latency timed in alternation
  (`reporting.results`, `deployment.benchmark`);
- card (`stages/card`): `results.json` and the Hub model card (`reporting`).

What every stage shares is the runner's (`pipeline.runner`): each stage writes its outputs under `run.output_dir`
(atomically, `files`), then a marker `stages/<stage>.json` holding its key (the settings it read, the stages it
read) and duration. A re-run skips every stage whose marker matches (an interrupted run resumes and redoes nothing);
a marker with other settings is an error, never an overwrite. Each stage that trains or runs a model chooses FP32 or
bf16 autocast by detection and measurement and records it in `precision.json` (`pipeline.shared`).

Under `torchrun --nproc_per_node N` training stages run data-parallel (Trainer), the generator's sampling is split
across processes, the teacher's logits are computed in shares, and only the main process writes shared files.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from datasets import DatasetDict

from trainer_ext.pipeline import checks
from trainer_ext.pipeline.recipe import Recipe
from trainer_ext.pipeline.rules import Budget
from trainer_ext.pipeline.runner import OutputInUseError, PipelineError, Stage, StageRunner
from trainer_ext.pipeline.stages import (
    augmentation,
    benchmark,
    card,
    data,
    distillation,
    guard,
    quantization,
    selection,
    students,
    teacher,
)
from trainer_ext.pipeline.summary import summary_table
from trainer_ext.reporting.results import RESULTS_FILE

RUN_ORDER: tuple[Stage, ...] = (
    data.STAGE,
    teacher.STAGE,
    augmentation.STAGE,
    selection.STAGE,
    students.STAGE,
    distillation.ORIGINAL,
    distillation.STAGE,
    guard.STAGE,
    quantization.STAGE,
    quantization.TEACHER,
    benchmark.STAGE,
    card.STAGE,
)
STAGES = tuple(stage.name for stage in RUN_ORDER)


class Pipeline(StageRunner):
    """Runs a `Recipe`. `run()` returns the results dict that `results.json` holds."""

    def __init__(self, recipe: Recipe, progress: Callable[[str], None] = print) -> None:
        super().__init__(recipe, progress)
        self.precisions: dict[str, dict[str, Any]] | None = None  # precision.json, read once (`shared`)
        self.loaded_data: DatasetDict | None = None  # the splits, loaded once by `check` or reloaded from disk
        self.data: DatasetDict | None = None  # the data stage's splits, which every later stage reads
        self.shipped_shape: str | None = None  # set by the selection stage

    def run(self) -> dict[str, Any]:
        """Check everything that can be checked, take the output folder's lock, run (or reuse) every stage."""
        self.check()
        lock = self.lock()
        try:
            # Each stage is keyed by the settings it reads and the keys of the stages whose outputs it reads, so a
            # changed student setting invalidates the student stages but not the (long) augmentation stage.
            for stage in RUN_ORDER:
                self.run_stage(stage)
            return json.loads((self.out / RESULTS_FILE).read_text())
        finally:
            if lock is not None:
                lock.release()

    def check(self) -> None:
        """Everything that can be checked before long work starts, without writing anything (`checks`)."""
        checks.check(self)

    @property
    def shape(self) -> str:
        """The student shape the student stages train: the only one, or the one the selection stage ships."""
        return self.shipped_shape or self.args.student[0]

    @property
    def budget(self) -> Budget:
        return Budget(self.args.max_accuracy_drop, self.args.max_latency_ms)

    @property
    def selecting(self) -> bool:
        """Several candidate students: the selection stage picks the one the student stages then train."""
        return len(self.args.student) > 1

    @property
    def shipped(self) -> str:
        """The student folder that is quantized, benchmarked as the model and given the card (the guard's choice)."""
        return guard.shipped_record(self)["shipped"]


__all__ = ["Pipeline", "PipelineError", "OutputInUseError", "RUN_ORDER", "STAGES", "summary_table"]
