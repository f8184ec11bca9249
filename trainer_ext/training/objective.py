"""The training loss of a distillation, assembled from its terms, and each term's value kept for the logs."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import torch

from trainer_ext.training.arguments import DistillationTrainingArguments
from trainer_ext.training.losses import distillation_loss
from trainer_ext.training.projections import StudentProjections


class DistillationObjective:
    """The distillation loss of one training batch:

        (1 - distillation_weight) * CE(student, labels) + distillation_weight * D(student, teacher)
        + hidden_distillation_weight * MSE(project(student hidden), teacher hidden)
        + pooled_distillation_weight * MSE(project(mean_pool(student last hidden)), mean_pool(teacher last hidden))

    where D is `args.distillation_loss`. The hidden-state and pooled terms need the teacher's outputs on the batch
    (`online`: there is a teacher model to run) and go through `projections`.

    Args:
        args: the distillation settings (the terms' weights, D and its temperature).
        projections: the learned student-to-teacher projections and hidden layer map.
        online: whether a teacher model runs on the batches (without one, the training data holds its logits).
    """

    def __init__(self, args: DistillationTrainingArguments, projections: StudentProjections, online: bool) -> None:
        self.args = args
        self.projections = projections
        self.uses_hidden = args.hidden_distillation_weight > 0 and online
        self.uses_pooled = args.pooled_distillation_weight > 0 and online
        # Each term's per-batch values since the last log.
        self.metrics: dict[str, list[float]] = defaultdict(list)

    @property
    def uses_teacher_states(self) -> bool:
        """Whether a term compares hidden states, so the teacher must run on the batch and both return them."""
        return self.uses_hidden or self.uses_pooled

    def uses_labels(self, inputs: dict[str, Any]) -> bool:
        """Whether the batch's labels go into a hard-label term (the student is then given them)."""
        return "labels" in inputs and self.args.distillation_weight < 1.0

    def __call__(
        self,
        outputs: Any,
        inputs: dict[str, Any],
        teacher_logits: torch.Tensor,
        teacher_outputs: Any,
        teacher_inputs: dict[str, Any],
        *,
        example_share: float | torch.Tensor,
        window_items: torch.Tensor | int | None,
    ) -> torch.Tensor:
        """The batch's loss from the student's `outputs` on `inputs` and the teacher's logits (and, for the state
        terms, its `teacher_outputs` on `teacher_inputs`).

        Each term is this batch's mean weighted by `example_share`, its share of the accumulation window's examples;
        but a hard-label loss the student already divided by the window's labelled items (`window_items`, given when
        the student was passed `num_items_in_batch`) is taken as it is.
        """
        dargs = self.args
        student_logits = outputs["logits"]
        kd_loss = distillation_loss(
            student_logits,
            teacher_logits.to(student_logits.device),
            dargs.distillation_loss,
            dargs.temperature,
            "mean",
        )
        loss = dargs.distillation_weight * kd_loss * example_share
        self.metrics["distill_loss"].append(kd_loss.detach().item())
        if self.uses_labels(inputs):
            hard_loss = outputs["loss"]
            if window_items is not None:
                # The model divided its summed loss by the window's labelled items, as Trainer expects of it.
                loss = loss + (1.0 - dargs.distillation_weight) * hard_loss
                labelled = int(inputs["labels"].ne(-100).sum())
                if labelled:  # logged as this batch's mean, like the other terms
                    self.metrics["hard_loss"].append(float(hard_loss.detach() * window_items / labelled))
            else:
                loss = loss + (1.0 - dargs.distillation_weight) * hard_loss * example_share
                self.metrics["hard_loss"].append(hard_loss.detach().item())
        if self.uses_hidden:
            hidden_loss = self.projections.hidden_loss(
                outputs.hidden_states, teacher_outputs.hidden_states, inputs.get("attention_mask")
            )
            loss = loss + dargs.hidden_distillation_weight * hidden_loss * example_share
            self.metrics["hidden_loss"].append(hidden_loss.detach().item())
        if self.uses_pooled:
            pooled_loss = self.projections.pooled_loss(
                outputs.hidden_states[-1],
                teacher_outputs.hidden_states[-1],
                inputs.get("attention_mask"),
                teacher_inputs.get("attention_mask"),
            )
            loss = loss + dargs.pooled_distillation_weight * pooled_loss * example_share
            self.metrics["pooled_loss"].append(pooled_loss.detach().item())
        return loss

    def pop_means(self) -> dict[str, float]:
        """Each term's mean since the last call, rounded for the logs; the values are then cleared."""
        means = {name: round(float(np.mean(values)), 6) for name, values in self.metrics.items() if values}
        self.metrics.clear()
        return means
