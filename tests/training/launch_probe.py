"""`xiaophi-train` as a launcher's training script, recording which process writes what.

Used by test_launch.py as the script `accelerate launch` starts in every process. Each event is
one line `rank<TAB>event<TAB>detail` appended to $PROBE_LOG:
- `save`      a model's save_pretrained (detail: the folder name, e.g. checkpoint-4, pretrain.partial)
- `publish`   a stage folder renamed into place (detail: the stage)
- `summary`   training_summary.json written
- `tokenize`  the pretraining corpus tokenized into the token cache
- `weights`   at the end of a Trainer stage, the stage and a digest of this process's weights
With $KILL_AT_STEP set, every process SIGKILLs itself after that optimizer step: a crash mid-run.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
from pathlib import Path

from transformers import PreTrainedModel, TrainerCallback

import training.dpo
import training.dpo_data
import training.embedder
import training.pipeline
import training.pretrain
import training.sft
import training.stage_dirs
import training.tokenizer
from training.cli import main

MODULES = [
    training.dpo,
    training.dpo_data,
    training.embedder,
    training.pipeline,
    training.pretrain,
    training.sft,
    training.stage_dirs,
    training.tokenizer,
]


def record(event: str, detail: str) -> None:
    # Short O_APPEND writes from several processes do not interleave within a line.
    with open(os.environ["PROBE_LOG"], "a", encoding="utf-8") as log:
        log.write(f"{os.environ.get('RANK', '0')}\t{event}\t{detail}\n")


def wrap_everywhere(name: str, make_wrapper) -> None:
    """Replace function `name` in every training module that holds it (imported by name or not)."""
    original = getattr(training.stage_dirs, name, None) or getattr(training.pretrain, name)
    wrapper = make_wrapper(original)
    for module in MODULES:
        if getattr(module, name, None) is original:
            setattr(module, name, wrapper)


def on_finish_stage(original):
    def finish_stage(run_dir, stage):
        record("publish", stage)
        return original(run_dir, stage)

    return finish_stage


def on_write_json(original):
    def write_json(path, data):
        if Path(path).name == training.pipeline.SUMMARY_FILE:
            record("summary", Path(path).name)
        return original(path, data)

    return write_json


def on_tokenize(original):
    def tokenize_documents(tokenizer, dataset, num_proc):
        record("tokenize", str(len(dataset)))
        return original(tokenizer, dataset, num_proc)

    return tokenize_documents


save_pretrained = PreTrainedModel.save_pretrained


def recording_save_pretrained(self, save_directory, *args, **kwargs):
    record("save", Path(save_directory).name)
    return save_pretrained(self, save_directory, *args, **kwargs)


class WeightsDigest(TrainerCallback):
    """Data-parallel replicas must end bit-identical; a digest per process shows whether they do."""

    def __init__(self, stage: str):
        self.stage = stage

    def on_train_end(self, args, state, control, model=None, **kwargs):
        digest = hashlib.sha1()
        for _, p in sorted(model.named_parameters()):
            digest.update(p.detach().float().cpu().numpy().tobytes())
        record("weights", f"{self.stage}:{digest.hexdigest()}")


class KillAfter(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def on_attach_throughput(original):
    """Every Trainer stage attaches its throughput callback: add the probe's callbacks there."""
    kill_at = int(os.environ.get("KILL_AT_STEP") or 0)

    def attach_throughput(trainer, model, seq_len):
        stage = Path(trainer.args.output_dir).name
        trainer.add_callback(WeightsDigest(stage))
        if kill_at:
            trainer.add_callback(KillAfter(kill_at))
        return original(trainer, model, seq_len)

    return attach_throughput


if __name__ == "__main__":
    wrap_everywhere("finish_stage", on_finish_stage)
    wrap_everywhere("write_json", on_write_json)
    wrap_everywhere("tokenize_documents", on_tokenize)
    wrap_everywhere("attach_throughput", on_attach_throughput)
    PreTrainedModel.save_pretrained = recording_save_pretrained
    main(sys.argv[1:])
