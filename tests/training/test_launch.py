"""The shipped `accelerate launch` configs (training/launch/), on this CPU-only machine.

What runs for real: ddp.yaml, two gloo processes, for the pretrain stage, a crash and resume,
and the whole pipeline; fsdp.yaml up to the refusal that explains why FSDP cannot run on CPU.
What is only validated: the FSDP wrap policy accelerate builds from fsdp.yaml (on real models of
each architecture), and the DeepSpeed files as accelerate's launcher and the Trainer read them
(the deepspeed package is not installed here). Only the device-specific bits are overridden on
the command line: --num_processes 2 and a free port.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.training.conftest import tiny_overrides
from training.config import load_recipe
from training.launch import DDP_CONFIG, DEEPSPEED_CONFIG, DEEPSPEED_JSON, FSDP_CONFIG, LAUNCH_DIR
from training.pipeline import SUMMARY_FILE, run_single_stage

PROBE = Path(__file__).with_name("launch_probe.py")
REPO = Path(__file__).resolve().parents[2]


def flags_for(overrides: dict) -> list[str]:
    return [f"--{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in overrides.items()]


def launch(config: Path, command: list[str], log: Path, **env) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file CONFIG` of the probe script with two processes on CPU."""
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config),
        "--num_processes",
        "2",
        "--main_process_port",
        "0",  # accelerate picks a free port
        str(PROBE),
        *command,
    ]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "CUDA_VISIBLE_DEVICES": "",  # the CPU path even where a GPU exists
            "PROBE_LOG": str(log),
            **env,
        },
    )


def events(log: Path) -> list[tuple[int, str, str]]:
    if not log.exists():
        return []
    rows = [line.split("\t") for line in log.read_text(encoding="utf-8").splitlines()]
    return [(int(rank), event, detail) for rank, event, detail in rows]


@pytest.fixture(scope="module")
def launch_setup(tiny_data, tmp_path_factory):
    """The tiny recipe's overrides and a run folder whose tokenizer stage is done."""
    overrides = tiny_overrides(tiny_data)
    base = tmp_path_factory.mktemp("launch") / "base"
    run_single_stage(load_recipe("tiny", overrides), base, "tokenizer")
    return overrides, base


@pytest.fixture(scope="module")
def ddp_pretrain(launch_setup, tmp_path_factory):
    """One uninterrupted two-process pretrain run with ddp.yaml: (run dir, process output, events)."""
    overrides, base = launch_setup
    run = tmp_path_factory.mktemp("ddp") / "run"
    shutil.copytree(base, run)
    log = run.parent / "events.tsv"
    proc = launch(
        DDP_CONFIG, ["pretrain", "--recipe", "tiny", "--out", str(run), *flags_for(overrides)], log
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run, proc, events(log)


@pytest.mark.slow
def test_pretrain_runs_in_two_gloo_processes_with_the_ddp_config(ddp_pretrain, launch_setup):
    run, proc, seen = ddp_pretrain
    recipe = load_recipe("tiny", launch_setup[0])
    cfg = recipe.pretrain
    report = json.loads((run / "pretrain" / "stage_report.json").read_text())
    assert report["world_size"] == 2 and report["distributed_type"] == "MULTI_CPU"
    assert report["steps"] == cfg.max_steps
    # every step saw both processes' micro-batches
    assert report["tokens_seen"] == cfg.max_steps * 2 * cfg.micro_batch * cfg.seq_len
    assert report["train_loss_last"] < report["train_loss_first"]
    assert report["eval_loss"] < report["eval_loss_untrained"]

    model = AutoModelForCausalLM.from_pretrained(run / "pretrain")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not (run / "pretrain.partial").exists()
    # Gradients were all-reduced: both replicas end with bit-identical weights.
    digests = {rank: d for rank, e, d in seen if e == "weights"}
    assert sorted(digests) == [0, 1] and digests[0] == digests[1]
    # The main process alone tokenized (train + eval), saved every checkpoint and the stage once,
    # and published it; the report is printed once.
    assert {(rank, event) for rank, event, _ in seen if event != "weights"} == {
        (0, "tokenize"),
        (0, "save"),
        (0, "publish"),
    }
    assert [d for _, e, d in seen if e == "tokenize"] == ["180", "12"]
    saves = [d for _, e, d in seen if e == "save"]
    assert saves == ["checkpoint-4", "checkpoint-8", "checkpoint-12", "pretrain.partial"]
    assert [d for _, e, d in seen if e == "publish"] == ["pretrain"]
    assert proc.stdout.count('"stage": "pretrain"') == 1


@pytest.mark.slow
def test_killed_two_process_run_resumes_exactly_like_the_uninterrupted_one(
    ddp_pretrain, launch_setup, tmp_path
):
    reference_run, _, _ = ddp_pretrain
    overrides, base = launch_setup
    reference = json.loads((reference_run / "pretrain" / "stage_report.json").read_text())
    run = tmp_path / "killed"
    shutil.copytree(base, run)
    command = ["pretrain", "--recipe", "tiny", "--out", str(run), *flags_for(overrides)]

    killed = launch(DDP_CONFIG, command, tmp_path / "killed.tsv", KILL_AT_STEP="6")
    assert killed.returncode != 0
    assert not (run / "pretrain").exists()  # nothing half-trained was published
    assert (run / "checkpoints" / "pretrain" / "checkpoint-4").is_dir()

    resumed = launch(DDP_CONFIG, command, tmp_path / "resumed.tsv")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    report = json.loads((run / "pretrain" / "stage_report.json").read_text())
    assert report["resumed"] and report["world_size"] == 2
    assert report["steps"] == reference["steps"]
    assert [s for s, _ in report["loss_curve"]] == [s for s, _ in reference["loss_curve"]]
    np.testing.assert_allclose(
        [loss for _, loss in report["loss_curve"]],
        [loss for _, loss in reference["loss_curve"]],
        rtol=1e-4,
    )
    assert report["eval_loss"] == pytest.approx(reference["eval_loss"], rel=1e-4)
    assert report["tokens_seen"] == reference["tokens_seen"]


@pytest.mark.slow
def test_whole_pipeline_in_two_processes_writes_each_stage_once(tiny_data, tmp_path):
    overrides = tiny_overrides(
        tiny_data,
        **{"pretrain.max_steps": 4, "sft.max_steps": 4, "dpo.max_steps": 2, "dpo.num_prompts": 8},
    )
    run = tmp_path / "run"  # empty: the processes race for the folder from the first stage on
    log = tmp_path / "events.tsv"
    proc = launch(
        DDP_CONFIG, ["pipeline", "--recipe", "tiny", "--out", str(run), *flags_for(overrides)], log
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    seen = events(log)
    published = [(rank, d) for rank, e, d in seen if e == "publish"]
    assert published == [
        (0, s) for s in ("tokenizer", "pretrain", "sft", "dpo-data", "dpo", "gguf")
    ]
    assert [(rank, e) for rank, e, _ in seen if e == "summary"] == [(0, "summary")]
    assert {rank for rank, e, _ in seen if e == "save"} == {0}
    digests = [(rank, d) for rank, e, d in seen if e == "weights"]
    for stage in ("pretrain", "sft", "dpo"):
        per_rank = {rank: d for rank, d in digests if d.startswith(f"{stage}:")}
        assert sorted(per_rank) == [0, 1] and per_rank[0] == per_rank[1], stage
    summary = json.loads((run / SUMMARY_FILE).read_text())
    for stage in ("pretrain", "sft", "dpo"):
        assert summary["stages"][stage]["world_size"] == 2
    AutoModelForCausalLM.from_pretrained(run / "dpo")
    assert not list(run.glob("*.partial"))
    # the main process alone shows a line per stage; every process's output has a log file
    stages = ("tokenizer", "pretrain", "sft", "dpo-data", "dpo")
    for stage in stages:
        assert proc.stdout.count(f"{stage:<10} done in ") == 1, proc.stdout
        assert (run / "logs" / f"{stage}.log").is_file()
    for stage in ("pretrain", "sft", "dpo"):  # those the other process trains in too
        assert (run / "logs" / f"{stage}.rank1.log").is_file()
    assert "{'loss':" in (run / "logs" / "pretrain.log").read_text()


def test_fsdp_config_is_refused_on_cpu_with_the_reason(launch_setup, tmp_path):
    overrides, base = launch_setup
    run = tmp_path / "run"
    shutil.copytree(base, run)
    log = tmp_path / "events.tsv"
    command = ["pretrain", "--recipe", "tiny", "--out", str(run), *flags_for(overrides)]
    proc = launch(FSDP_CONFIG, command, log)
    # accelerate would bring the processes up as MULTI_CPU and drop FSDP without a word
    assert proc.returncode != 0
    assert "xiaophi-train: error: this launch asks for FSDP, but no CUDA device is visible" in (
        proc.stderr
    )
    assert "MULTI_CPU" in proc.stderr
    assert events(log) == [] and not (run / "checkpoints").exists()


# --- validated without running: what accelerate's launcher makes of the files ---------------


def launcher_args(config: Path, *flags: str):
    """The launch arguments `accelerate launch --config_file CONFIG FLAGS script` resolves to
    (accelerate's own parser and config merge; `_validate_launch_command` is what its CLI calls)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(config), *flags, "train.py"])
    args, defaults, precision_from_file = _validate_launch_command(args)
    return args, defaults, precision_from_file


def launcher_env(env: dict[str, str]) -> dict[str, str]:
    """The variables a launcher adds for its processes (the rest is this process's environment)."""
    return {k: v for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_"))}


def test_every_config_loads_and_asks_for_the_process_count():
    from accelerate.commands.config.config_args import load_config_from_file

    assert sorted(p.name for p in LAUNCH_DIR.glob("*.yaml")) == [
        "ddp.yaml",
        "deepspeed_zero2.yaml",
        "fsdp.yaml",
    ]
    configs = {DDP_CONFIG: "MULTI_GPU", FSDP_CONFIG: "FSDP", DEEPSPEED_CONFIG: "DEEPSPEED"}
    for config, kind in configs.items():
        assert load_config_from_file(str(config)).distributed_type.value == kind
        with pytest.raises(ValueError, match="--num_processes"):
            launcher_args(config)  # the files do not guess a GPU count


@pytest.mark.parametrize(
    "config", [DDP_CONFIG, FSDP_CONFIG, DEEPSPEED_CONFIG], ids=lambda p: p.stem
)
def test_multi_node_flags_reach_torchrun(config, monkeypatch):
    """The documented overrides for machine 1 of 2 (8 GPUs each) end up in torchrun's launch
    config as accelerate hands it over."""
    # torchrun's config_from_args sets OMP_NUM_THREADS in this process: put back afterwards
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    import torch.distributed.run as torchrun
    from accelerate.commands.launch import _filter_args
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    flags = ["--num_processes", "16", "--num_machines", "2", "--machine_rank", "1"]
    flags += ["--main_process_ip", "10.1.2.3", "--main_process_port", "29555"]
    args, _, _ = launcher_args(config, *flags)
    if config == DEEPSPEED_CONFIG:
        args.deepspeed_fields_from_accelerate_config = ""
        cmd, _ = prepare_deepspeed_cmd_env(args)
        assert cmd is None  # "standard": torchrun on each machine, no pdsh/ssh hostfile
    else:
        prepare_multi_gpu_env(args)
    script = ["--training_script", args.training_script, "--training_script_args", []]
    launch_config, _, _ = torchrun.config_from_args(
        _filter_args(args, torchrun.get_args_parser(), script)
    )
    assert (launch_config.min_nodes, launch_config.max_nodes) == (2, 2)
    assert launch_config.nproc_per_node == 8
    assert launch_config.rdzv_backend == "static"
    assert launch_config.rdzv_endpoint == "10.1.2.3:29555"
    assert launch_config.rdzv_configs["rank"] == 1


def test_fsdp_config_shards_by_decoder_layer_for_every_architecture():
    from accelerate.utils import FullyShardedDataParallelPlugin, patch_environment
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from accelerate.utils.launch import prepare_multi_gpu_env

    from tests.conftest import TINY_TEXTS
    from training.config import ModelConfig
    from training.model_factory import build_model
    from training.tokenizer import train_tokenizer

    args, _, _ = launcher_args(FSDP_CONFIG, "--num_processes", "8")
    env = launcher_env(prepare_multi_gpu_env(args))
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    with patch_environment(**env):
        plugin = FullyShardedDataParallelPlugin()  # as the Trainer's Accelerator builds it
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True  # full shard
    assert "FULL_STATE_DICT" in str(plugin.state_dict_type)

    tokenizer = train_tokenizer(TINY_TEXTS, vocab_size=400, min_frequency=1)
    for arch in ("phi", "llama", "qwen2"):
        cfg = ModelConfig(
            arch=arch, hidden_size=32, num_layers=3, num_heads=4, intermediate_size=64
        )
        model = build_model(cfg, tokenizer)
        wraps = fsdp2_prepare_auto_wrap_policy(plugin, model)
        units = [type(m).__name__ for m in model.modules() if wraps(m)]
        assert units == [f"{type(model).__name__.removesuffix('ForCausalLM')}DecoderLayer"] * 3

    # Why the file names no class: accelerate wants every listed class inside the model.
    with patch_environment(**env, FSDP_TRANSFORMER_CLS_TO_WRAP="PhiDecoderLayer,LlamaDecoderLayer"):
        listed = FullyShardedDataParallelPlugin()
    with pytest.raises(ValueError, match="LlamaDecoderLayer"):
        fsdp2_prepare_auto_wrap_policy(listed, build_model(ModelConfig(num_layers=1), tokenizer))


def trainer_view_of(ds_config: dict):
    """The Trainer's DeepSpeed config object, which fills the "auto" values from
    TrainingArguments. transformers builds it on a deepspeed import; without the package the same
    methods run on accelerate's base class."""
    from accelerate.utils.deepspeed import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig, is_deepspeed_available

    if is_deepspeed_available():
        return HfTrainerDeepSpeedConfig(ds_config)
    from functools import partialmethod

    class TrainerView(HfDeepSpeedConfig):
        is_auto = HfTrainerDeepSpeedConfig.is_auto
        fill_match = HfTrainerDeepSpeedConfig.fill_match
        fill_only = partialmethod(HfTrainerDeepSpeedConfig.fill_match, must_match=False)
        trainer_config_process = HfTrainerDeepSpeedConfig.trainer_config_process
        trainer_config_finalize = HfTrainerDeepSpeedConfig.trainer_config_finalize

        def __init__(self, config):
            super().__init__(config)
            self.mismatches, self._dtype = [], None

    return TrainerView(ds_config)


def test_deepspeed_files_pass_accelerates_and_the_trainers_checks(tmp_path):
    import copy
    import types

    from accelerate.utils import DeepSpeedPlugin, patch_environment
    from accelerate.utils.launch import prepare_deepspeed_cmd_env
    from transformers import TrainingArguments

    from training.trainer_args import trainer_kwargs

    args, defaults, precision_from_file = launcher_args(DEEPSPEED_CONFIG, "--num_processes", "8")
    # as `accelerate launch` does before starting a DeepSpeed job
    fields = [*defaults.deepspeed_config, *(["mixed_precision"] if precision_from_file else [])]
    args.deepspeed_fields_from_accelerate_config = ",".join(fields)
    _, env = prepare_deepspeed_cmd_env(args)
    env = launcher_env(env)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    assert (REPO / env["ACCELERATE_DEEPSPEED_CONFIG_FILE"]).resolve() == DEEPSPEED_JSON.resolve()
    with patch_environment(**env):
        # accelerate's own checks: ZeRO stage, offload, no setting given twice (yaml and JSON)
        plugin = DeepSpeedPlugin()
    assert plugin.zero_stage == 2 and plugin.offload_optimizer_device == "none"
    assert "optimizer" not in plugin.deepspeed_config  # the recipe's AdamW and schedule apply
    assert "scheduler" not in plugin.deepspeed_config

    # The Trainer fills every "auto" from the seed recipe's arguments without a mismatch.
    seed = load_recipe("seed")
    training_args = TrainingArguments(
        **trainer_kwargs(seed.pretrain, tmp_path, "pretrain", has_eval=True, padded=False)
    )
    view = trainer_view_of(copy.deepcopy(plugin.deepspeed_config))
    view.trainer_config_process(training_args)
    model = types.SimpleNamespace(config=types.SimpleNamespace(hidden_size=seed.model.hidden_size))
    # raises on any value that contradicts the Trainer's arguments
    view.trainer_config_finalize(training_args, model, seed.pretrain.max_steps)
    filled = json.dumps(view.config)
    assert '"auto"' not in filled
    assert view.config["train_micro_batch_size_per_gpu"] == seed.pretrain.micro_batch
    assert view.config["gradient_accumulation_steps"] == seed.pretrain.grad_accum
    assert view.config["zero_optimization"]["reduce_bucket_size"] == seed.model.hidden_size**2


def test_fsdp_and_deepspeed_launches_need_cuda(monkeypatch):
    from training.distributed import check_launch_fits_device

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ValueError, match="asks for DeepSpeed, but no CUDA device"):
        check_launch_fits_device(cuda=False)
    check_launch_fits_device(cuda=True)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    check_launch_fits_device(cuda=False)  # plain DDP on CPU is fine


def test_ranks_come_from_torchrun_or_mpi_variables(monkeypatch):
    from training.distributed import is_main_process, process_rank, world_size

    for name in ("RANK", "WORLD_SIZE", "PMI_RANK", "PMI_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert (process_rank(), world_size(), is_main_process()) == (0, 1, True)
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "3")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert (process_rank(), world_size(), is_main_process()) == (3, 4, False)
    monkeypatch.setenv("RANK", "0")  # torchrun's own variables win
    assert process_rank() == 0
