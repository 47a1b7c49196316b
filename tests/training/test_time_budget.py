"""pretrain.max_time_s: a run within its budget keeps the recipe's schedule to the step; a slow
run starts its decay early, ends by the budget with its learning rate decayed, resumes with the
time it had spent, and says why it stopped."""

from __future__ import annotations

import time

import pytest
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.optimization import get_wsd_schedule

from training.config import load_recipe
from training.time_budget import BudgetPlan, attach_time_budget


def test_a_plan_the_budget_never_shortens_is_transformers_wsd_schedule():
    plan = BudgetPlan(warmup=12, decay_steps=24, max_steps=120, min_lr_ratio=0.1)
    reference = get_wsd_schedule(
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0),
        num_warmup_steps=12,
        num_decay_steps=24,
        num_stable_steps=120 - 12 - 24,
        min_lr_ratio=0.1,
    ).lr_lambdas[0]
    assert [plan(step) for step in range(125)] == [reference(step) for step in range(125)]


def test_the_decay_starts_when_only_its_share_of_the_projected_steps_is_left():
    plan = BudgetPlan(warmup=10, decay_steps=200, max_steps=1000, min_lr_ratio=0.0)
    assert not plan.shorten(step=300, projected_end=1200, decay_fraction=0.2)  # fits: unchanged
    assert not plan.shorten(step=300, projected_end=500, decay_fraction=0.2)  # 100 decay, not yet
    assert plan.decay_start == 800 and plan.end == 1000 and plan.stopped_by == "max_steps"
    assert plan.shorten(step=400, projected_end=500, decay_fraction=0.2)
    assert (plan.decay_start, plan.end, plan.stopped_by) == (400, 500, "time budget")
    assert plan(399) == 1.0 and plan(450) == pytest.approx(0.5) and plan(500) == 0.0


class Line(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, labels):
        return {"loss": ((self.w * x - labels) ** 2).mean()}


class Points(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 10_000

    def __getitem__(self, i):
        return {"x": torch.tensor([1.0]), "labels": torch.tensor([2.0])}


class SlowSteps(TrainerCallback):
    """A machine this many seconds a step slow."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.lrs: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.lrs.append(kwargs["lr_scheduler"].get_last_lr()[0])
        time.sleep(self.seconds)


def budget_trainer(tmp_path, max_steps: int, max_time_s: float, seconds_per_step: float):
    cfg = load_recipe("tiny").pretrain.model_copy(
        update={"max_steps": max_steps, "max_time_s": max_time_s, "warmup_steps": 5}
    )
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=max_steps,
        learning_rate=0.1,
        warmup_steps=cfg.warmup_steps,
        per_device_train_batch_size=1,
        save_steps=20,
        save_strategy="steps",
        logging_steps=1000,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(model=Line(), args=args, train_dataset=Points())
    slow = SlowSteps(seconds_per_step)
    trainer.add_callback(slow)
    return trainer, attach_time_budget(trainer, max_steps, cfg), slow


def test_a_run_within_its_budget_trains_every_step_on_the_recipes_schedule(tmp_path):
    trainer, plan, slow = budget_trainer(tmp_path, 40, max_time_s=60, seconds_per_step=0.0)
    trainer.train()
    assert trainer.state.global_step == 40 and plan.stopped_by == "max_steps"
    assert plan.decay_start == 32 and plan.end == 40  # the recipe's 20% decay, untouched
    assert slow.lrs[-1] == pytest.approx(0.1 * plan(40))


@pytest.mark.slow
def test_a_slow_run_decays_early_and_ends_by_its_budget(tmp_path):
    trainer, plan, slow = budget_trainer(tmp_path, 1000, max_time_s=3.0, seconds_per_step=0.03)
    started = time.monotonic()
    trainer.train()
    took = time.monotonic() - started
    steps = trainer.state.global_step
    assert plan.stopped_by == "time budget" and 40 < steps < 1000
    assert steps == plan.end and plan.decay_start < steps
    assert took < 3.0 * 1.25 + 2  # the budget, its allowed overrun, the Trainer's own start/stop
    assert max(slow.lrs) == pytest.approx(0.1)  # it reached the peak and stayed there a while
    # and ended decayed to the schedule's floor, not cut off at the peak
    assert plan.min_lr_ratio < 0.5 and slow.lrs[-1] == pytest.approx(0.1 * plan.min_lr_ratio)


@pytest.mark.slow
def test_a_resumed_run_spends_only_what_is_left_of_its_budget(tmp_path):
    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 60:  # as if Ctrl-C after the checkpoint at step 60
                control.should_training_stop = True

    trainer, plan, _ = budget_trainer(tmp_path, 1000, max_time_s=3.0, seconds_per_step=0.02)
    trainer.add_callback(StopAt())
    trainer.train()
    spent = plan.elapsed_s
    assert spent >= 60 * 0.02 and trainer.state.global_step == 60

    again, resumed_plan, _ = budget_trainer(tmp_path, 1000, max_time_s=3.0, seconds_per_step=0.02)
    started = time.monotonic()
    again.train(resume_from_checkpoint=True)
    took = time.monotonic() - started
    assert resumed_plan.elapsed_s >= spent  # the spent time came back with the checkpoint
    assert resumed_plan.stopped_by == "time budget" and 60 < again.state.global_step < 1000
    assert took < 3.0 - spent * 0.9 + 1.5


def test_a_budget_needs_the_wsd_schedule():
    with pytest.raises(ValueError, match="pretrain.max_time_s needs --pretrain.schedule wsd"):
        load_recipe("tiny", {"pretrain.max_time_s": 60, "pretrain.schedule": "cosine"})
