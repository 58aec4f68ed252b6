"""Implicit reward β·(log π(y|x) − log π_ref(y|x)) per candidate, against an independent computation."""

from __future__ import annotations

import math

import pytest
import torch

from aepo_trainer.selection.implicit_reward import completion_logps, implicit_rewards, reward_gaps


@pytest.fixture(scope="module")
def models(tiny_model_path):
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    with torch.no_grad():  # a "trained" policy: every weight nudged
        generator = torch.Generator().manual_seed(0)
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return policy, ref


def _manual_logp(model, prompt, completion) -> float:
    """One unpadded sequence, token by token: Σ log softmax(logits[t-1])[token t] over the completion tokens."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(ids).logits[0].double()
    total = 0.0
    for t in range(len(prompt), len(prompt) + len(completion)):
        total += float(torch.log_softmax(logits[t - 1], -1)[ids[0, t]])
    return total


def test_implicit_rewards_equal_a_manual_forward_and_gather(models, tiny_tokenizer):
    policy, ref = models
    prompt = tiny_tokenizer("What is the capital of France?")["input_ids"]
    completions = [tiny_tokenizer(t)["input_ids"] for t in (" Paris.", " The capital is Paris, of course.", " No")]
    pad = tiny_tokenizer.pad_token_id
    pi = completion_logps(policy, prompt, completions, pad_token_id=pad, batch_size=2)
    pr = completion_logps(ref, prompt, completions, pad_token_id=pad, batch_size=3)
    rewards = implicit_rewards(pi, pr, beta=0.1)
    expected = [0.1 * (_manual_logp(policy, prompt, c) - _manual_logp(ref, prompt, c)) for c in completions]
    assert rewards.tolist() == pytest.approx(expected, abs=1e-4)
    assert all(abs(r) > 1e-3 for r in expected)  # the policies really differ: the check is not vacuous


def test_peft_reference_is_the_adapter_disabled(tiny_model_path, tiny_tokenizer, models):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    _, ref = models
    policy = peft.get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_path),
        peft.LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    prompt = tiny_tokenizer("Two plus two")["input_ids"]
    completions = [tiny_tokenizer(" equals four.")["input_ids"]]
    pad = tiny_tokenizer.pad_token_id
    disabled = completion_logps(policy, prompt, completions, pad_token_id=pad, disable_adapter=True)
    assert disabled.tolist() == pytest.approx([_manual_logp(ref, prompt, completions[0])], abs=1e-4)
    enabled = completion_logps(policy, prompt, completions, pad_token_id=pad)
    assert float(enabled[0]) != pytest.approx(float(disabled[0]), abs=1e-4)


def test_reward_gaps():
    gaps = reward_gaps(torch.tensor([1.0, 3.0, 0.5]), mask=torch.tensor([True, True, False]))
    assert gaps[1, 0] == 2.0 and gaps[0, 1] == -2.0
    assert all(math.isnan(gaps[i, i]) for i in range(3)) and math.isnan(gaps[0, 2]) and math.isnan(gaps[2, 1])
    with pytest.raises(ValueError, match="shape"):
        implicit_rewards(torch.zeros(2), torch.zeros(3), 0.1)
