"""On-policy AEPO: a prompt-only dataset makes `AEPOTrainer` sample N candidates per prompt from the current policy
inside the training step, then select k, annotate (paid), pair and take a DPO step; stored pools make a resumed run
regenerate and pay nothing twice."""

from __future__ import annotations

import shutil

import pytest
import torch
from datasets import Dataset

PROMPTS = [
    "Write a short poem about the sea.",
    "What is the capital of France?",
    "Explain how photosynthesis works.",
    "Give me a list of ideas.",
    "Two plus two equals what?",
    "Which assistant is more helpful?",
]


class CountingReward:
    """A TRL-style reward function (longer completion = better) that counts what it is asked to score."""

    __name__ = "length_reward"

    def __init__(self):
        self.calls = 0
        self.scored = 0

    def __call__(self, prompts, completions, **kwargs):
        self.calls += 1
        self.scored += len(completions)
        return [float(len(c if isinstance(c, str) else c[0]["content"])) for c in completions]


def _config(tmp_path, minilm_path, **overrides):
    from conftest import tiny_training_kwargs

    from aepo_trainer import AEPOConfig

    kwargs = dict(
        tiny_training_kwargs(tmp_path / "run"),
        per_device_train_batch_size=3,
        max_steps=2,
        learning_rate=1e-2,
        num_generations=4,
        num_annotations=2,
        max_completion_length=8,
        temperature=1.0,
        max_length=64,
        embedding_model=minilm_path,
        loss_type=["sigmoid"],
    )
    kwargs.update(overrides)
    return AEPOConfig(**kwargs)


def _trainer(tiny_model_path, config, reward, dataset=None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aepo_trainer import AEPOTrainer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    return AEPOTrainer(
        model=model,
        ref_model=ref,
        args=config,
        train_dataset=dataset if dataset is not None else Dataset.from_dict({"prompt": PROMPTS}),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_path),
        annotator=reward,
    )


def _stored_pools(trainer) -> list:
    """Every pool the run sampled, as its candidate store (a public file) holds them: a pool is stored once, when it
    is sampled, so the test counts generated tokens independently of the trainer's counter."""
    store = trainer.aepo_on_policy.store
    return list(store.get(_all_keys(trainer)).values())


def test_prompt_only_dataset_trains_on_policy(tmp_path, tiny_model_path, minilm_path):
    reward = CountingReward()
    trainer = _trainer(tiny_model_path, _config(tmp_path, minilm_path, annotation_budget=100), reward)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    sampled = _stored_pools(trainer)

    # generated tokens (compute): every sampled completion's ids, EOS included, counted once, logged as a running total
    assert len(sampled) == 6 and all(len(pool.completion_ids) == 4 for pool in sampled)
    tokens = sum(len(ids) for pool in sampled for ids in pool.completion_ids)
    assert 6 * 4 <= tokens <= 6 * 4 * 8  # at least one token (EOS) and at most max_completion_length each
    assert trainer.aepo_on_policy.generated_tokens == tokens
    totals = [e["aepo/generated_tokens"] for e in trainer.state.log_history if "aepo/generated_tokens" in e]
    assert len(totals) == 2 and totals[-1] == tokens and 0 < totals[0] < tokens

    # 2 steps x 3 prompts: every pool generated from the policy, k = 2 of N = 4 paid per prompt, exactly
    assert trainer.aepo_on_policy.generated == 6 and trainer.aepo_on_policy.reused == 0
    assert reward.scored == 12 and trainer.annotation_service.spent == 12
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    # the stored pools are the ones that were trained on: N candidates each, seeded per prompt and round
    assert len(trainer.aepo_on_policy.store) == 6
    for pair in trainer.recent_pairs:
        assert pair["pool_size"] == 4 and len(pair["selected"]) == 2
        assert pair["chosen_score"] > pair["rejected_score"]
        assert pair["prompt"] in PROMPTS
    logged = [entry for entry in trainer.state.log_history if "aepo/time_share/generate" in entry]
    assert logged, "phase time shares are logged"
    shares = [logged[0][f"aepo/time_share/{p}"] for p in ("generate", "embed", "select", "annotate", "train")]
    assert sum(shares) == pytest.approx(1.0) and all(s > 0 for s in shares)


def test_conversational_prompts_and_generate_every(tmp_path, tiny_model_path, minilm_path):
    """Conversational prompts get conversational candidates; with `generate_every=4` a prompt seen again in the same
    round reuses its stored pool (second epoch of a 3-prompt dataset)."""
    reward = CountingReward()
    data = Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in PROMPTS[:3]]})
    config = _config(tmp_path, minilm_path, generate_every=4, max_steps=2)
    trainer = _trainer(tiny_model_path, config, reward, dataset=data)
    trainer.train()
    sampled = _stored_pools(trainer)
    assert trainer.aepo_on_policy.generated == 3 and trainer.aepo_on_policy.reused == 3
    # the reused pools cost no generated token: the total is the first step's
    tokens = sum(len(ids) for pool in sampled for ids in pool.completion_ids)
    assert len(sampled) == 3 and trainer.aepo_on_policy.generated_tokens == tokens
    assert [e["aepo/generated_tokens"] for e in trainer.state.log_history if "aepo/generated_tokens" in e] == [
        tokens,
        tokens,
    ]
    assert reward.scored == 6 and trainer.annotation_service.spent == 6  # same candidates: labels reused as well
    pair = trainer.recent_pairs[-1]
    assert pair["chosen"][0]["role"] == "assistant"


def test_kill_and_resume_regenerates_and_pays_nothing_twice(tmp_path, tiny_model_path, minilm_path):
    config = dict(save_strategy="steps", save_steps=1, max_steps=3, annotation_budget=100)
    first_reward = CountingReward()
    first = _trainer(tiny_model_path, _config(tmp_path, minilm_path, **config), first_reward)
    first.train()
    assert first.annotation_service.spent == 18
    stored = {k: p.completions for k, p in first.aepo_on_policy.store.get(_all_keys(first)).items()}

    # "killed" after step 3 paid its labels but before its checkpoint was written: resume from checkpoint-2
    shutil.rmtree(tmp_path / "run" / "checkpoint-3")
    second_reward = CountingReward()
    second = _trainer(tiny_model_path, _config(tmp_path, minilm_path, **config), second_reward)
    second.train(resume_from_checkpoint=True)
    assert second.state.global_step == 3
    assert second.aepo_on_policy.generated == 0 and second.aepo_on_policy.reused == 3  # step 3's pools read back
    assert second_reward.scored == 0  # and its labels too
    assert second.annotation_service.spent == 18
    assert {k: p.completions for k, p in second.aepo_on_policy.store.get(_all_keys(second)).items()} == stored

    # `aepo/generated_tokens` is a running total across the resume: step 3 continues from checkpoint-2's total (its
    # pools were read back, so it samples nothing), not from 0
    def totals(trainer):
        return {
            e["step"]: e["aepo/generated_tokens"] for e in trainer.state.log_history if "aepo/generated_tokens" in e
        }

    first_totals = totals(first)
    assert (
        0 < first_totals[2] < first_totals[3] == sum(len(ids) for p in _stored_pools(first) for ids in p.completion_ids)
    )
    assert totals(second) == {1: first_totals[1], 2: first_totals[2], 3: first_totals[2]}


def _all_keys(trainer):
    rows = trainer.aepo_on_policy.store.conn.execute("SELECT key FROM pools").fetchall()
    return [r[0] for r in rows]


def test_bad_prompt_row_is_named_before_any_generation(tmp_path, tiny_model_path, minilm_path):
    data = Dataset.from_dict({"prompt": ["fine", "  "]})
    with pytest.raises(ValueError, match="row 1, column 'prompt'"):
        _trainer(tiny_model_path, _config(tmp_path, minilm_path), CountingReward(), dataset=data)


def test_prompt_only_eval_set_is_refused(tmp_path, tiny_model_path, minilm_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aepo_trainer import AEPOTrainer

    with pytest.raises(ValueError, match="sampled for training only"):
        AEPOTrainer(
            model=AutoModelForCausalLM.from_pretrained(tiny_model_path),
            ref_model=AutoModelForCausalLM.from_pretrained(tiny_model_path),
            args=_config(tmp_path, minilm_path, eval_strategy="steps", eval_steps=1),
            train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
            eval_dataset=Dataset.from_dict({"prompt": PROMPTS[:2]}),
            processing_class=AutoTokenizer.from_pretrained(tiny_model_path),
            annotator=CountingReward(),
        )


def test_prompt_only_without_an_annotator_is_refused_before_anything_runs(tmp_path, tiny_model_path, minilm_path):
    """On-policy pools have no dataset scores: the default annotator is a configuration error, said at init."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aepo_trainer import AEPOTrainer

    with pytest.raises(ValueError, match="no dataset scores to read"):
        AEPOTrainer(
            model=AutoModelForCausalLM.from_pretrained(tiny_model_path),
            ref_model=AutoModelForCausalLM.from_pretrained(tiny_model_path),
            args=_config(tmp_path, minilm_path),
            train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
            processing_class=AutoTokenizer.from_pretrained(tiny_model_path),
        )


def test_config_validation():
    from aepo_trainer import AEPOConfig

    with pytest.raises(ValueError, match="num_generations"):
        AEPOConfig(output_dir="o", bf16=False, num_generations=0)
    with pytest.raises(ValueError, match="top_p"):
        AEPOConfig(output_dir="o", bf16=False, top_p=0.0)
    with pytest.raises(ValueError, match="vllm_mode"):
        AEPOConfig(output_dir="o", bf16=False, vllm_mode="remote")
    settings = AEPOConfig(output_dir="o", bf16=False, temperature=0.7, num_generations=5).sampling_settings()
    assert (settings.temperature, settings.num_generations) == (0.7, 5)


def test_an_empty_sample_is_a_real_response(tmp_path, tiny_model_path, minilm_path):
    """A policy that stops at once produced the EOS-only response: it stays in the pool (no input error)."""
    from aepo_trainer.generation import GeneratedPool

    trainer = _trainer(tiny_model_path, _config(tmp_path, minilm_path), CountingReward())
    pool = GeneratedPool(prompt=PROMPTS[0], completions=["", "a b", "c", "d e f"])
    batch = trainer.aepo_on_policy._pool_batch([{"prompt": PROMPTS[0]}], [pool])
    assert batch["pool_mask"].tolist() == [[True] * 4]
    lengths = batch["pool_completion_lengths"][0].tolist()
    assert lengths[0] == 1 and all(n > 1 for n in lengths[1:])  # the empty response is its EOS token
