"""`accelerate launch` configs for training on several GPUs and machines.

Every `xiaophi-train` stage runs unchanged under a launcher: the Trainer stages (pretrain, sft,
dpo) split their batches over the processes, everything else runs in the main process while the
others wait (`training.distributed`). Pick one file, tell accelerate how many processes, run
from the repository root:

    accelerate launch --config_file training/launch/ddp.yaml --num_processes 8 \\
        -m training pretrain --recipe seed --out runs/seed
    accelerate launch --config_file training/launch/fsdp.yaml --num_processes 8 \\
        -m training pipeline --recipe seed --out runs/seed
    accelerate launch --config_file training/launch/deepspeed_zero2.yaml --num_processes 8 \\
        -m training pipeline --recipe seed --out runs/seed

- `ddp.yaml`: PyTorch DDP, a full copy of the model per GPU. Also runs on CPU (gloo) where no
  CUDA device is visible, which is how the test suite checks the multi-process paths.
- `fsdp.yaml`: FSDP2, full shard, bf16, one FSDP unit per decoder layer (the model's
  `_no_split_modules`: PhiDecoderLayer / LlamaDecoderLayer / Qwen2DecoderLayer). GPUs only.
- `deepspeed_zero2.yaml` + `deepspeed_zero2.json`: DeepSpeed ZeRO-2 (needs `pip install
  deepspeed`; GPUs only). The JSON leaves batch sizes, accumulation, clipping and precision on
  "auto" (the Trainer fills them from the recipe) and names no optimizer or scheduler, so the
  recipe's AdamW and cosine schedule apply exactly as under DDP.

Command-line flags override any field of a file. `--num_processes` is required (the files say
-1 rather than guess a GPU count) and counts processes over all machines. Several machines: run
the same command on each, adding `--num_machines M --machine_rank R --main_process_ip IP
--main_process_port P` (R = 0 on the machine at IP, 1..M-1 on the others), with `--out` on a
filesystem they all share. `--micro_batch` in a recipe is per process: the global batch is
micro_batch x grad_accum x num_processes.
"""

from __future__ import annotations

from pathlib import Path

LAUNCH_DIR = Path(__file__).parent
DDP_CONFIG = LAUNCH_DIR / "ddp.yaml"
FSDP_CONFIG = LAUNCH_DIR / "fsdp.yaml"
DEEPSPEED_CONFIG = LAUNCH_DIR / "deepspeed_zero2.yaml"
DEEPSPEED_JSON = LAUNCH_DIR / "deepspeed_zero2.json"
