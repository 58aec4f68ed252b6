"""Reward-aware (RPO) losses in training: pools with k = 4, every ordered pair of a prompt's annotated responses, each
response's log-probs computed once; training lowers the loss; mixing with TRL's loss types through loss_weights."""

from __future__ import annotations

import itertools

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from aepo_trainer import AEPOConfig, AEPOTrainer


def _pools(n=4, size=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "prompt": f"Rate answer {i}:",
            "completions": [f" answer {i} number {j}" + "!" * j for j in range(size)],
            "scores": torch.rand(size, generator=g).tolist(),
            "embeddings": torch.randn(size, 8, generator=g).tolist(),
        }
        for i in range(n)
    ]


def _train(model_path, dpo_args, rows, **overrides):
    kwargs = {**dpo_args, "max_length": 48, "num_annotations": 4, "per_device_train_batch_size": 4, **overrides}
    trainer = AEPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_path),
        ref_model=AutoModelForCausalLM.from_pretrained(model_path),
        args=AEPOConfig(**kwargs),
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(model_path),
    )
    calls = []
    forward = trainer.model.forward

    def counting_forward(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return forward(*args, **kwargs)

    trainer.model.forward = counting_forward
    trainer.train()
    return trainer, [e for e in trainer.state.log_history if "loss" in e], calls


@pytest.mark.parametrize("kind", ["rpo_sq", "rpo_bwd_kl", "rpo_fwd_kl"])
def test_rpo_training_on_pools_lowers_the_loss(tiny_model_path, dpo_args, kind):
    rows = _pools()
    trainer, entries, calls = _train(
        tiny_model_path, dpo_args, rows, loss_type=[kind], max_steps=8, learning_rate=5e-3, beta=0.5, reward_scale=2.0
    )
    losses = [e["loss"] for e in entries]
    assert len(losses) == 8
    assert losses[-1] < losses[0] * 0.9, losses
    # one policy pass per step over the 4 prompts x k = 4 responses, each response once
    assert calls == [16] * 8
    assert all(f"aepo/{kind}" in e for e in entries)


def test_first_step_value_matches_the_formula(tiny_model_path, dpo_args):
    """At step 1 the policy is the reference (Δ = 0), so rpo_sq = mean over ordered pairs of (η·(s_i − s_j))²."""
    rows = _pools(n=4, size=4)  # k = N = 4: the whole pool is selected, so the expected value is known
    eta = 3.0
    _, entries, _ = _train(tiny_model_path, dpo_args, rows, loss_type=["rpo_sq"], max_steps=1, reward_scale=eta)
    expected = (
        sum(
            sum((eta * (s[i] - s[j])) ** 2 for i, j in itertools.permutations(range(4), 2)) / 12
            for s in (r["scores"] for r in rows)
        )
        / 4
    )
    assert entries[0]["loss"] == pytest.approx(expected, rel=1e-5)
    assert entries[0]["aepo/rpo_sq"] == pytest.approx(expected, rel=1e-5)


def test_rpo_mixes_with_trl_losses(tiny_model_path, dpo_args):
    rows = _pools()
    _, entries, _ = _train(
        tiny_model_path, dpo_args, rows, loss_type=["sigmoid", "rpo_bwd_kl"], loss_weights=[1.0, 0.5], max_steps=1
    )
    entry = entries[0]
    # TRL's sigmoid on the best-vs-worst pairs (log 2 at step 1) + 0.5 x the RPO term
    assert entry["loss"] == pytest.approx(0.6931471805599453 + 0.5 * entry["aepo/rpo_bwd_kl"], rel=1e-5)
    assert "rewards/margins" in entry and entry["aepo/pairs"] == 4
