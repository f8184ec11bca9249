"""The learned student-to-teacher projections of the hidden-state and pooled distillation terms: how they start (the
least-squares map between the embedding tables, or fitted to the first training batch), the terms they compare
through, and their files in a checkpoint."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast
from torch import nn
from transformers import PreTrainedModel

from trainer_ext.training.arguments import DistillationTrainingArguments
from trainer_ext.training.checks import DistillationError
from trainer_ext.training.losses import hidden_state_mse_loss, mean_pool, pooled_mse_loss

PROJECTION_FILE = "distillation_projection.pt"
POOLED_PROJECTION_FILE = "distillation_pooled_projection.pt"


class StudentProjections:
    """The learned maps from the student's width to the teacher's, and the student-to-teacher hidden layer map.

    `hidden` (only when the widths differ) serves the hidden-state term, `pooled` (always, when that term is on) the
    pooled term. They are trained with the student but are not part of it, so `save_model` never writes them into the
    student's weights; checkpoints keep them (`PROJECTION_FILE`, `POOLED_PROJECTION_FILE`) for resume.
    """

    def __init__(self) -> None:
        self.hidden: nn.Module | None = None
        self.layer_map: dict[int, int] | None = None
        self.pooled: nn.Module | None = None
        self.pooled_fitted = False
        self.accelerator: Accelerator | None = None

    def setup(
        self,
        student: PreTrainedModel,
        teacher: PreTrainedModel,
        args: DistillationTrainingArguments,
        accelerator: Accelerator,
    ) -> None:
        """Create the projections the distillation terms in `args` need (the hidden-state one with its layer map)."""
        self.accelerator = accelerator
        if args.hidden_distillation_weight > 0:
            self._setup_hidden(student, teacher, args.hidden_layer_map)
        if args.pooled_distillation_weight > 0:
            # Always a learned map, even at equal widths: two separately trained encoders use different bases. It is
            # fitted to the first training batch (`fit_pooled`), the first data it can see.
            self.pooled = self._new(student, teacher)

    def _new(
        self,
        student: PreTrainedModel,
        teacher: PreTrainedModel,
        init: Callable[[nn.Linear], None] | None = None,
    ) -> nn.Module:
        """A learned student-to-teacher width projection."""
        projection = nn.Linear(student.config.hidden_size, teacher.config.hidden_size)
        if init is not None:
            init(projection)
        # Prepared like the student: under DDP it starts from rank 0's copy (a least-squares solve is not bit-identical
        # across processes) and its gradients are averaged across processes.
        return self.accelerator.prepare_model(projection)

    def _setup_hidden(
        self, student: PreTrainedModel, teacher: PreTrainedModel, layer_map: dict[int, int] | None
    ) -> None:
        teacher_config, student_config = teacher.config, student.config
        n_teacher, n_student = teacher_config.num_hidden_layers, student_config.num_hidden_layers
        origin = getattr(student_config, "trainer_ext_teacher_layers", None)
        if layer_map is None and isinstance(origin, list) and len(origin) == n_student:
            # A student built from this teacher (build_student) matches each layer to the one it started from.
            layer_map = {0: 0} | {i + 1: int(t) + 1 for i, t in enumerate(origin)}
        if layer_map is None:
            layer_map = {s: round(s * n_teacher / n_student) for s in range(1, n_student + 1)}
        for s, t in layer_map.items():
            if not (0 <= s <= n_student and 0 <= t <= n_teacher):
                raise DistillationError(
                    f"hidden_layer_map entry {s}:{t} is out of range: student layers are 0..{n_student}, teacher "
                    f"layers 0..{n_teacher} (0 = embedding output)."
                )
        self.layer_map = layer_map
        if student_config.hidden_size != teacher_config.hidden_size:
            # One learned projection shared by all mapped layers (as in TinyBERT).
            self.hidden = self._new(
                student, teacher, lambda projection: _init_from_embeddings(projection, student, teacher)
            )

    # --------------------------------------------------------------------------------------------------- terms
    def hidden_loss(self, student_hidden: tuple, teacher_hidden: tuple, mask: torch.Tensor | None) -> torch.Tensor:
        """MSE between the mapped layers' hidden states (the student's projected), averaged over the mapped layers."""
        losses = []
        for s, t in self.layer_map.items():
            projected = student_hidden[s]
            if self.hidden is not None:
                projected = self.hidden(projected)
            losses.append(hidden_state_mse_loss(projected, teacher_hidden[t], mask))
        return torch.stack(losses).mean()

    def pooled_loss(
        self,
        student_last: torch.Tensor,
        teacher_last: torch.Tensor,
        student_mask: torch.Tensor | None,
        teacher_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """MSE between the projected mean-pooled last hidden state of the student and the teacher's, each pooled over
        its own real tokens; the projection is fitted first, on the first batch it sees."""
        student_pooled = mean_pool(student_last, student_mask)
        teacher_pooled = mean_pool(teacher_last, teacher_mask)
        if not self.pooled_fitted:
            self.fit_pooled(student_pooled, teacher_pooled.to(student_pooled.device))
        return pooled_mse_loss(self.pooled(student_pooled), teacher_pooled)

    @torch.no_grad()
    def fit_pooled(self, student: torch.Tensor, teacher: torch.Tensor) -> None:
        """Start the pooled projection at the least-squares map from the first training batch's pooled student states
        to the teacher's, before its first update.

        A randomly initialised projection barely moves at a student's learning rate, so the student would be pulled
        towards an arbitrary image of the teacher for the whole run. The fit costs nothing (both pooled states are
        computed for the loss anyway); a small ridge term keeps it well-posed when the batch is smaller than the
        student's width (32 sentences, 384 units for MiniLM): the map is then fitted on the batch's directions and
        trained further with the student. Every process starts from rank 0's fit.
        """
        projection = self.accelerator.unwrap_model(self.pooled)
        with torch.autocast(student.device.type, enabled=False):
            s, t = student.detach().float(), teacher.detach().float()
            s_mean, t_mean = s.mean(dim=0), t.mean(dim=0)
            s, t = s - s_mean, t - t_mean
            gram = s.T @ s
            ridge = 1e-3 * gram.diagonal().mean() + 1e-6
            eye = torch.eye(gram.shape[0], device=gram.device)
            weight = torch.linalg.solve(gram + ridge * eye, s.T @ t).T  # (teacher, student)
            bias = t_mean - weight @ s_mean
        projection.weight.copy_(broadcast(weight.to(projection.weight).contiguous(), from_process=0))
        projection.bias.copy_(broadcast(bias.to(projection.bias).contiguous(), from_process=0))
        self.pooled_fitted = True

    # --------------------------------------------------------------------------------------------- checkpoints
    def by_file(self) -> dict[str, nn.Module]:
        """The projections in use, by checkpoint file."""
        modules = {PROJECTION_FILE: self.hidden, POOLED_PROJECTION_FILE: self.pooled}
        return {file: module for file, module in modules.items() if module is not None}

    def parameters(self) -> list[nn.Parameter]:
        """The projections' parameters, trained with the student's (an empty list when there are none)."""
        return [p for projection in self.by_file().values() for p in projection.parameters()]

    def save(self, output_dir: str) -> None:
        """Write the projections into a checkpoint folder (for resume; never into the saved student)."""
        for file, projection in self.by_file().items():
            state = self.accelerator.unwrap_model(projection).state_dict()
            torch.save(state, os.path.join(output_dir, file))

    def load(self, checkpoint: str, device: torch.device) -> None:
        """Restore the projections a checkpoint folder holds."""
        for file, projection in self.by_file().items():
            path = os.path.join(checkpoint, file)
            if os.path.exists(path):
                state = torch.load(path, map_location=device)
                self.accelerator.unwrap_model(projection).load_state_dict(state)
                if file == POOLED_PROJECTION_FILE:  # resumed: the trained map, not a fresh fit
                    self.pooled_fitted = True


@torch.no_grad()
def _init_from_embeddings(projection: nn.Linear, student: PreTrainedModel, teacher: PreTrainedModel) -> None:
    """Start the student-to-teacher projection at the least-squares map between the two word-embedding tables.

    Both models read the same vocabulary (checked earlier), so row `i` of each table embeds the same token. For a
    student built by `build_student` (student embeddings = teacher embeddings @ P, P orthonormal) this recovers
    `P.T`, the map its projected layers were built with; otherwise it is still a better start than random.
    """
    student_words = student.get_input_embeddings().weight.detach().float()
    teacher_words = teacher.get_input_embeddings().weight.detach().float().to(student_words.device)
    if student_words.shape[0] != teacher_words.shape[0]:
        return  # different vocabularies (a teacher_tokenizer was given): keep the random initialisation
    solution = torch.linalg.lstsq(student_words.cpu(), teacher_words.cpu()).solution  # (student, teacher)
    projection.weight.copy_(solution.T.to(projection.weight))
    projection.bias.zero_()
