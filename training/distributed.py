"""Who does what when a stage runs in several processes (`torchrun`, `accelerate launch`).

The Trainer-based stages (pretrain, sft, dpo: `all_processes` in `training.stages`) run in every
process: the Trainer splits the batches and saves from the main process. Everything else that writes into the run folder —
claiming it, the tokenizer, dpo-data and embedder stages, the pretraining token cache, the
summary — is done by the main process alone, while the other processes wait for its result to
appear on disk.

They wait on the file, not on a collective barrier, on purpose: before the Trainer starts no
process group exists, and creating one early would fix a backend (gloo, nccl, FSDP's
"cuda:nccl,cpu:gloo", DeepSpeed's own) before accelerate picks the right one; and a long
main-only step (dpo-data generation, a tokenizer over a large corpus) can never run into a
collective timeout. The run folder must therefore sit on a filesystem that every machine of a
multi-node run can see (it must anyway: checkpoints are written by the main process only and
read by all of them on resume).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

# torchrun and accelerate set RANK/WORLD_SIZE; MPI launchers (accelerate's multi-CPU path via
# mpirun) set only their own variables until accelerate copies them over.
_RANK_VARS = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def _first_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return default


def world_size() -> int:
    """Processes taking part in this launch, over all machines (1 without a launcher)."""
    return _first_int(_SIZE_VARS, 1)


def process_rank() -> int:
    """This process's global rank (0 without a launcher)."""
    return _first_int(_RANK_VARS, 0)


def is_main_process() -> bool:
    return process_rank() == 0


def wait_for(condition: Callable[[], bool], what: str, poll_s: float = 0.5) -> None:
    """Block a non-main process until `condition()` holds. No timeout: when the main process
    fails, the launcher (torchrun's agent) stops every other process of the job."""
    if condition():
        return
    print(f"[process {process_rank()}] waiting for {what}", file=sys.stderr, flush=True)
    while not condition():
        time.sleep(poll_s)


def check_launch_fits_device(cuda: bool | None = None) -> None:
    """Refuse an FSDP or DeepSpeed launch when there is no CUDA device.

    accelerate enables FSDP and DeepSpeed only on accelerator devices: on CPU its state comes
    up as plain multi-CPU data parallelism over gloo (`DistributedType.MULTI_CPU`) and drops the
    FSDP / DeepSpeed settings without a word, so the Trainer would train unsharded copies while
    the user believes the model is sharded (torch's FSDP itself would run on CPU; accelerate's
    launcher path does not take it there)."""
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if cuda:
        return
    requested = [
        name
        for var, name in (
            ("ACCELERATE_USE_FSDP", "FSDP"),
            ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"),
        )
        if os.environ.get(var, "false").lower() == "true"
    ]
    if requested:
        raise ValueError(
            f"this launch asks for {requested[0]}, but no CUDA device is visible: accelerate turns "
            f"{requested[0]} on only for GPUs and on CPU would silently fall back to plain "
            "data parallelism over gloo (MULTI_CPU), training unsharded copies. On CPU launch with "
            "training/launch/ddp.yaml; on a GPU machine check that CUDA is visible "
            "(nvidia-smi, CUDA_VISIBLE_DEVICES)."
        )
