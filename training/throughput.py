"""Tokens/s and, on GPU, model FLOPs utilisation (MFU) for Trainer-based stages.

FLOPs per token follow the PaLM appendix: 6·N for the weight matmuls (forward + backward,
N = parameters that take part in matmuls: everything but the input embedding lookup) plus
12·layers·hidden·seq_len for attention scores and values. MFU = achieved FLOP/s over the
card's dense bf16 peak.
"""

from __future__ import annotations

import time

import torch
from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback

# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, without sparsity.
BF16_PEAK_TFLOPS = {
    "H200": 989.4,
    "H100 SXM": 989.4,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.4,
    "GH200": 989.4,
    "B200": 2250.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.1,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
    "RTX 4090": 165.2,
    "RTX 3090": 71.0,
}


def bf16_peak_flops(device_name: str | None = None) -> float | None:
    """The card's dense bf16 peak in FLOP/s, or None when unknown / no CUDA."""
    if device_name is None:
        if not torch.cuda.is_available():
            return None
        device_name = torch.cuda.get_device_name(0)
    for key, tflops in BF16_PEAK_TFLOPS.items():  # dict order puts specific names first
        if key in device_name:
            return tflops * 1e12
    return None


def flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """Training FLOPs per token: 6·N (matmul parameters) + 12·L·H·T (attention)."""
    config = model.config
    n_params = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    tied = output is not None and output.weight.data_ptr() == embedding.data_ptr()
    n_matmul = n_params if tied else n_params - embedding.numel()
    attention = 12 * config.num_hidden_layers * config.hidden_size * seq_len
    return 6 * n_matmul + attention


class ThroughputCallback(TrainerCallback):
    """Adds `tokens_per_s` (and `tflops`, `mfu` on a known GPU) to each log, from the tokens the
    Trainer counted (`include_num_input_tokens_seen`) and the wall time between logs."""

    def __init__(self, flops_per_token: float | None = None, peak_flops: float | None = None):
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self._t0: float | None = None
        self._tokens0 = 0
        self.train_start: float | None = None
        self.tokens_at_start = 0
        self._step_at_start = -1

    def on_train_begin(self, args, state, control, **kwargs):
        self._t0 = self.train_start = time.perf_counter()
        self._tokens0 = self.tokens_at_start = int(state.num_input_tokens_seen or 0)
        self._step_at_start = state.global_step

    def on_evaluate(self, args, state, control, **kwargs):
        # The evaluation before the first step (eval_on_start) is not training time.
        if state.global_step == self._step_at_start:
            self._t0 = self.train_start = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs or self._t0 is None:
            return
        now = time.perf_counter()
        tokens = int(state.num_input_tokens_seen or 0)
        dt = now - self._t0
        if dt <= 0 or tokens <= self._tokens0:
            return
        world = max(args.world_size, 1)
        # num_input_tokens_seen is summed over processes; per-process rate × world = global rate.
        rate = (tokens - self._tokens0) / dt
        figures = {"tokens_per_s": round(rate, 1)}
        if self.flops_per_token:
            flops = rate * self.flops_per_token
            figures["tflops"] = round(flops / 1e12, 3)
            if self.peak_flops:
                figures["mfu"] = round(flops / (self.peak_flops * world), 4)
        logs.update(figures)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(figures)
        self._t0, self._tokens0 = now, tokens

    def mean_tokens_per_s(self, state) -> float | None:
        if self.train_start is None:
            return None
        dt = time.perf_counter() - self.train_start
        tokens = int(state.num_input_tokens_seen or 0) - self.tokens_at_start
        return round(tokens / dt, 1) if dt > 0 and tokens > 0 else None


def attach_throughput(trainer, model: torch.nn.Module, seq_len: int) -> ThroughputCallback:
    """Register a ThroughputCallback ahead of TensorBoard so its figures reach the event files."""
    callback = ThroughputCallback(flops_per_token(model, seq_len), bf16_peak_flops())
    had_tensorboard = trainer.pop_callback(TensorBoardCallback) is not None
    trainer.add_callback(callback)
    if had_tensorboard:
        trainer.add_callback(TensorBoardCallback)
    return callback
