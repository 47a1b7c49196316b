"""SFT on CPU computes trl's loss the plain way (full logits, one log-softmax) instead of trl's
tiled LM head: the same loss, gradients and logged metrics on the same batch."""

from __future__ import annotations

import pytest
import torch
from trl import SFTTrainer

from tests.training.conftest import tiny_overrides
from training.config import load_recipe
from training.data.formats import load_sft_dataset
from training.model_factory import build_model
from training.sft import SFTTrainerCPU, build_sft_config
from training.tokenizer import train_tokenizer


@pytest.fixture
def trainer_and_batch(tiny_data, tmp_path):
    recipe = load_recipe("tiny", tiny_overrides(tiny_data))
    texts = [row["messages"][-1]["content"] for row in load_sft_dataset(tiny_data["sft"])]
    tokenizer = train_tokenizer(texts * 20, vocab_size=recipe.tokenizer.vocab_size)
    model = build_model(recipe.model, tokenizer, seed=0)
    trainer = SFTTrainerCPU(
        model=model,
        args=build_sft_config(recipe, tmp_path),
        train_dataset=load_sft_dataset(tiny_data["sft"]),
        processing_class=tokenizer,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assert (batch["labels"] == -100).any() and (batch["labels"] != -100).any()  # masked, in part
    return trainer, batch


def loss_grads_metrics(trainer, batch, compute_loss):
    trainer.model.zero_grad()
    trainer._metrics["train"].clear()
    trainer.model.train()
    n_items = int((batch["labels"][:, 1:] != -100).sum())
    loss = compute_loss(trainer, trainer.model, dict(batch), num_items_in_batch=n_items)
    loss.backward()
    grads = [p.grad.clone() for p in trainer.model.parameters() if p.grad is not None]
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items() if k != "num_tokens"}
    return loss.item(), grads, metrics


def test_the_plain_head_gives_trls_loss_gradients_and_metrics(trainer_and_batch):
    trainer, batch = trainer_and_batch
    plain = loss_grads_metrics(trainer, batch, SFTTrainerCPU.compute_loss)
    tiled = loss_grads_metrics(trainer, batch, SFTTrainer.compute_loss)
    assert plain[0] == pytest.approx(tiled[0], rel=1e-5)
    assert len(plain[1]) == len(tiled[1]) > 0
    for a, b in zip(plain[1], tiled[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert set(plain[2]) == set(tiled[2]) == {"entropy", "mean_token_accuracy"}
    for name in plain[2]:
        assert plain[2][name] == pytest.approx(tiled[2][name], rel=1e-4, abs=1e-6)
