"""The process state under `torchrun` / `accelerate launch`, from accelerate, valid on CPU-only machines too."""

from __future__ import annotations

from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list


def process_state() -> PartialState:
    """accelerate's shared `PartialState`, built as `Trainer` builds it (with `cpu=True` where there is no GPU).

    Why not a plain `PartialState()`: on a CPU-only machine it starts the process group but reports a single process
    (measured under `torchrun --nproc_per_node 2`: `DistributedType.NO`, `num_processes == 1` on both ranks), and
    the state is shared, so whoever builds it first decides for everyone. A rank that took itself for the only one
    once wrote shared files twice. When the state disagrees with the process group, it is rebuilt.
    """
    state = PartialState(cpu=not torch.cuda.is_available())
    if torch.distributed.is_initialized() and state.num_processes != torch.distributed.get_world_size():
        PartialState._reset_state()
        state = PartialState(cpu=not torch.cuda.is_available())
    return state


def broadcast_from_main(value: Any) -> Any:
    """The main process's `value` on every process (a decision made once: a precision, an order, a status)."""
    if process_state().num_processes == 1:
        return value
    return broadcast_object_list([value], from_process=0)[0]
