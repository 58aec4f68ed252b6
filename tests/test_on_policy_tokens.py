"""On-policy training trains on the tokens the policy sampled (prompt ids as fed + completion ids as generated), not
on a re-tokenization of the decoded text, and TRL's "prompt is not a prefix" warning never fires on that path."""

from __future__ import annotations

import logging

import pytest
from test_on_policy import PROMPTS, CountingReward, _config, _trainer


@pytest.fixture
def warnings_once(monkeypatch):
    """Every `logger.warning_once` message (transformers' helper, which TRL's DPO tokenization uses; its cache would
    hide a warning an earlier test already raised)."""
    seen = []
    monkeypatch.setattr(logging.Logger, "warning_once", lambda self, msg, *a, **k: seen.append(str(msg)), raising=False)
    return seen


def test_the_step_trains_on_the_sampled_token_ids(tmp_path, tiny_model_path, minilm_path, warnings_once):
    trainer = _trainer(tiny_model_path, _config(tmp_path, minilm_path, max_steps=1), CountingReward())
    pools = trainer.aepo_on_policy
    batches, generated = [], []
    pool_batch, generate = pools._pool_batch, pools._generate

    def recording_pool_batch(rows, sampled):
        batch = pool_batch(rows, sampled)
        batches.append((rows, sampled, batch))
        return batch

    def recording_generate(prompts, seeds, step):
        fresh = generate(prompts, seeds, step)
        generated.extend(fresh)
        return fresh

    pools._pool_batch, pools._generate = recording_pool_batch, recording_generate
    trainer.train()
    assert batches and generated
    by_prompt = {pool.prompt: pool for pool in generated}  # as the generator returned them
    keys = [key for (key,) in pools.store.conn.execute("SELECT key FROM pools")]
    stored = {pool.prompt: pool for pool in pools.store.get(keys).values()}
    for prompt, pool in by_prompt.items():  # the store keeps both, so a resumed step trains on the same tokens
        assert (stored[prompt].prompt_ids, stored[prompt].completion_ids) == (pool.prompt_ids, pool.completion_ids)
    tokenizer = trainer.processing_class
    retokenized_differs = False
    for rows, sampled, batch in batches:
        for b, row in enumerate(rows):
            pool = by_prompt[row["prompt"]]
            length = int(batch["pool_prompt_lengths"][b])
            assert batch["pool_prompt_ids"][b, :length].tolist() == pool.prompt_ids
            for j, ids in enumerate(pool.completion_ids):
                n = int(batch["pool_completion_lengths"][b, j])
                assert batch["pool_completion_ids"][b, j, :n].tolist() == ids  # EOS included when sampled
            for ids, completion in zip(pool.completion_ids, pool.completions):
                again = tokenizer(row["prompt"] + completion)["input_ids"][len(pool.prompt_ids) :]
                retokenized_differs |= again != [t for t in ids if t != tokenizer.eos_token_id]
    assert not any("not a prefix" in message for message in warnings_once)
    # what re-tokenizing the decoded samples would have trained on is not what was sampled (the reason for this path)
    assert retokenized_differs


def test_pools_without_token_ids_fall_back_to_the_offline_tokenization(tmp_path, tiny_model_path, minilm_path):
    """An API backend returns text only: its pools are tokenized like a pool dataset (TRL's DPO tokenization)."""
    from aepo_trainer.generation import GeneratedPool

    trainer = _trainer(tiny_model_path, _config(tmp_path, minilm_path), CountingReward())
    pool = GeneratedPool(prompt=PROMPTS[1], completions=[" Paris.", " Rome.", " Lyon", " Nice"])
    batch = trainer.aepo_on_policy._pool_batch([{"prompt": PROMPTS[1]}], [pool])
    tokenizer = trainer.processing_class
    prompt_ids = tokenizer(PROMPTS[1])["input_ids"]
    assert batch["pool_prompt_ids"][0, : len(prompt_ids)].tolist() == prompt_ids
    first = batch["pool_completion_ids"][0, 0, : int(batch["pool_completion_lengths"][0, 0])].tolist()
    assert first == tokenizer(PROMPTS[1] + " Paris.")["input_ids"][len(prompt_ids) :] + [tokenizer.eos_token_id]
