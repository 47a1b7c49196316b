"""A wall-clock budget for pretraining (`pretrain.max_time_s`), for machines slower than the one a
recipe was sized on: a laptop with a browser open, a CPU shared with another busy process.

Training runs `max_steps` steps or `max_time_s` seconds of its loop, whichever ends first, and
the warmup-stable-decay schedule still ends in its decay: while the learning rate is flat, every
step projects how many steps the budget allows at the pace so far; once only the decay's share
of that projection is left, the decay starts there and is fitted to end with it. A run that fits
its budget follows the recipe's schedule step for step (the very learning rates of transformers'
`warmup_stable_decay`), so it trains the same model. The plan and the time spent travel in every
checkpoint (the scheduler's state), so a resumed run spends only what is left; the stage's report
says how many steps ran and why it stopped.
"""

from __future__ import annotations

import math
import time

from torch.optim.lr_scheduler import LambdaLR
from transformers import TrainerCallback
from transformers.optimization import _get_wsd_scheduler_lambda

#: steps after the (re)start of the loop before its pace is trusted: the first ones pay for
#: warm-up work (allocations, the step-0 evaluation) that later steps do not
PACE_AFTER_STEPS = 10
#: a decay that started in time may run past the budget by this share of it when the pace drops
#: later (another program starts); beyond it the loop stops wherever it is
OVERRUN = 0.25


class BudgetPlan:
    """The schedule's shape, which the budget may shorten: warm-up, then flat until
    `decay_start`, then a cosine decay until `end`. Callable as a LambdaLR factor; LambdaLR keeps
    a callable object's attributes in its state_dict, so the plan resumes with the scheduler."""

    def __init__(self, warmup: int, decay_steps: int, max_steps: int, min_lr_ratio: float):
        self.warmup = warmup
        self.decay_start = max(warmup, max_steps - decay_steps)
        self.end = max_steps
        self.max_steps = max_steps
        self.min_lr_ratio = min_lr_ratio
        self.elapsed_s = 0.0  # training-loop seconds spent before the current (re)start
        self.stopped_by = "max_steps"

    def __call__(self, step: int) -> float:
        return _get_wsd_scheduler_lambda(
            step,
            num_warmup_steps=self.warmup,
            num_stable_steps=self.decay_start - self.warmup,
            num_decay_steps=self.end - self.decay_start,
            warmup_type="linear",
            decay_type="cosine",
            min_lr_ratio=self.min_lr_ratio,
            num_cycles=0.5,
        )

    def shorten(self, step: int, projected_end: int, decay_fraction: float) -> bool:
        """At `step` of a stable phase, with the budget allowing `projected_end` steps in all:
        start the decay now when only its share is left. True when it started."""
        if projected_end >= self.end or step < self.warmup:
            return False
        decay = max(1, round(projected_end * decay_fraction))
        if step < projected_end - decay:
            return False
        self.decay_start, self.end = step, max(step + 1, projected_end)
        self.stopped_by = "time budget"
        return True


class TimeBudgetCallback(TrainerCallback):
    """Watches the loop's pace, starts the decay early when the budget demands it, and stops the
    loop at the plan's end (or, past the overrun, wherever it is)."""

    def __init__(self, plan: BudgetPlan, budget_s: float, decay_fraction: float) -> None:
        self.plan, self.budget_s, self.decay_fraction = plan, budget_s, decay_fraction
        self.started = time.monotonic()
        self.start_step = 0
        self.pace_from: tuple[float, int] | None = None

    def elapsed(self) -> float:
        return self.plan.elapsed_s + time.monotonic() - self.started

    def on_train_begin(self, args, state, control, **kwargs):
        # on a resume the plan (and the time it had spent) came back with the scheduler's state
        self.started, self.start_step = time.monotonic(), state.global_step
        self.pace_from = None

    def on_step_end(self, args, state, control, **kwargs):
        step, now = state.global_step, time.monotonic()
        if self.pace_from is None and step - self.start_step >= PACE_AFTER_STEPS:
            self.pace_from = (now, step)
        elapsed = self.elapsed()
        if step < self.plan.decay_start and self.pace_from is not None and step > self.pace_from[1]:
            pace = (now - self.pace_from[0]) / (step - self.pace_from[1])
            left = max(0.0, self.budget_s - elapsed)
            self.plan.shorten(step, step + math.floor(left / pace), self.decay_fraction)
        if step >= self.plan.end:
            control.should_training_stop = True
        elif elapsed > self.budget_s * (1 + OVERRUN):
            self.plan.stopped_by = "time budget (cut short)"
            control.should_training_stop = True
        if control.should_save or control.should_training_stop:
            # the checkpoint about to be written carries the plan: fold the time spent into it
            self.plan.elapsed_s, self.started = elapsed, now
        return control


def attach_time_budget(trainer, max_steps: int, cfg) -> BudgetPlan:
    """Give `trainer` the budget of `cfg` (a PretrainConfig with `max_time_s` > 0 and the wsd
    schedule): its scheduler becomes the plan's, its loop is watched. Returns the plan, whose
    `stopped_by` the report reads after training."""
    plan = BudgetPlan(
        warmup=trainer.args.get_warmup_steps(max_steps),
        decay_steps=max(1, round(max_steps * cfg.decay_fraction)),
        max_steps=max_steps,
        min_lr_ratio=cfg.min_lr_ratio,
    )

    def create_scheduler(num_training_steps: int, optimizer=None):
        if trainer.lr_scheduler is None:
            trainer.lr_scheduler = LambdaLR(optimizer or trainer.optimizer, plan)
        return trainer.lr_scheduler

    trainer.create_scheduler = create_scheduler
    trainer.add_callback(TimeBudgetCallback(plan, cfg.max_time_s, cfg.decay_fraction))
    return plan
