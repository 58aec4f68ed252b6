"""Local generation (`aepo_trainer.generation.local`): seeded per prompt, exact sampling, chat templates, EOS handling."""

from __future__ import annotations

import pytest
import torch

from aepo_trainer.generation import (
    GenerationInputError,
    SamplingSettings,
    TransformersGenerator,
    prompt_seed,
)

PROMPTS = [
    "Write a short poem about the sea.",
    [{"role": "user", "content": "What is two plus two?"}],
    "The quick brown fox",
]


@pytest.fixture(scope="module")
def policy(tiny_model_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_path), AutoTokenizer.from_pretrained(tiny_model_path)


def _generator(policy, batch_size=2, **settings):
    model, tokenizer = policy
    defaults = dict(num_generations=3, max_completion_length=6, temperature=1.0)
    return TransformersGenerator(model, tokenizer, SamplingSettings(**{**defaults, **settings}), batch_size=batch_size)


def test_samples_depend_on_the_prompt_and_its_seed_only(policy):
    seeds = [prompt_seed(0, p, step=4) for p in PROMPTS]
    together = _generator(policy, batch_size=3).generate(PROMPTS, seeds)
    alone_reversed = _generator(policy, batch_size=1).generate(PROMPTS[::-1], seeds[::-1])[::-1]
    again = _generator(policy, batch_size=2).generate(PROMPTS, seeds)
    for a, b, c in zip(together, alone_reversed, again):
        assert a.completion_ids == b.completion_ids == c.completion_ids
        assert a.completions == b.completions
    # the N samples of a prompt differ from each other, and another step samples other completions
    assert len({tuple(ids) for ids in together[0].completion_ids}) == 3
    other_step = _generator(policy).generate(PROMPTS, [prompt_seed(0, p, step=5) for p in PROMPTS])
    assert [p.completion_ids for p in other_step] != [p.completion_ids for p in together]
    assert prompt_seed(0, PROMPTS[0], 4) != prompt_seed(1, PROMPTS[0], 4) != prompt_seed(0, PROMPTS[1], 4)


def test_pool_format_token_ids_and_truncation(policy):
    model, tokenizer = policy
    pools = _generator(policy, max_completion_length=5).generate(PROMPTS, [1, 2, 3])
    assert [len(p.completions) for p in pools] == [3, 3, 3]
    assert all(isinstance(c, str) for c in pools[0].completions)
    assert all(c[0]["role"] == "assistant" and len(c) == 1 for c in pools[1].completions)
    # conversational prompts go through the chat template, string prompts do not (use_chat_template='auto')
    chat = tokenizer.apply_chat_template(PROMPTS[1], add_generation_prompt=True, tokenize=False)
    assert pools[1].prompt_ids == tokenizer(chat, add_special_tokens=False)["input_ids"]
    assert pools[0].prompt_ids == tokenizer(PROMPTS[0])["input_ids"]
    for pool in pools:
        assert pool.num_tokens == sum(len(ids) for ids in pool.completion_ids)
        for ids, text, truncated in zip(pool.completion_ids, pool.completions, pool.truncated):
            assert 1 <= len(ids) <= 5 and tokenizer.pad_token_id not in ids[:-1]
            assert truncated == (tokenizer.eos_token_id not in ids)
            if not truncated:
                assert ids[-1] == tokenizer.eos_token_id and ids.count(tokenizer.eos_token_id) == 1
            plain = text if isinstance(text, str) else text[0]["content"]
            assert plain == tokenizer.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("repetition_penalty", [1.0, 3.0])
def test_first_token_frequencies_match_the_warped_distribution(policy, repetition_penalty):
    """The seeded Gumbel-max sampler draws from softmax(penalised logits / T) restricted to the top-k, like
    `do_sample=True` does."""
    model, tokenizer = policy
    prompt = "What is the capital of France?"
    n = 3000
    settings = dict(num_generations=n, max_completion_length=1, temperature=0.7, top_k=6)
    pool = _generator(policy, repetition_penalty=repetition_penalty, **settings).generate([prompt], [123])[0]
    first = torch.tensor([ids[0] for ids in pool.completion_ids])
    prompt_ids = tokenizer(prompt)["input_ids"]
    with torch.no_grad():  # independent computation: one forward pass and the textbook warped softmax
        logits = model(torch.tensor([prompt_ids])).logits[0, -1].float()
    seen = torch.tensor(sorted(set(prompt_ids)))  # CTRL repetition penalty on the tokens already present
    logits[seen] = torch.where(logits[seen] < 0, logits[seen] * repetition_penalty, logits[seen] / repetition_penalty)
    top = torch.topk(logits, 6)
    expected = torch.zeros_like(logits)
    expected[top.indices] = torch.softmax(top.values / 0.7, dim=-1)
    observed = torch.bincount(first, minlength=logits.numel()).float() / n
    assert set(first.tolist()) <= set(top.indices.tolist())
    assert 0.5 * (observed - expected).abs().sum() < 0.04  # total variation; deterministic given the seed


def test_greedy_is_generate_greedy_copied_n_times(policy):
    model, tokenizer = policy
    pool = _generator(policy, temperature=0.0, max_completion_length=6).generate([PROMPTS[2]], [0])[0]
    ids = torch.tensor([tokenizer(PROMPTS[2])["input_ids"]])
    reference = model.generate(ids, do_sample=False, max_new_tokens=6, pad_token_id=tokenizer.pad_token_id)
    expected = reference[0, ids.shape[1] :].tolist()
    if tokenizer.eos_token_id in expected:
        expected = expected[: expected.index(tokenizer.eos_token_id) + 1]
    assert pool.completion_ids == [expected] * 3


def test_bad_settings_and_prompts_fail_before_sampling(policy):
    with pytest.raises(GenerationInputError, match="top_p"):
        SamplingSettings(top_p=0)
    with pytest.raises(GenerationInputError, match="num_generations"):
        SamplingSettings(num_generations=0)
    generator = _generator(policy, use_chat_template="false")
    with pytest.raises(GenerationInputError, match="conversational prompts need a chat template"):
        generator.generate(PROMPTS, [0, 1, 2])
    assert SamplingSettings(temperature=0.5).fingerprint() != SamplingSettings(temperature=0.6).fingerprint()
    assert SamplingSettings().fingerprint() == SamplingSettings().fingerprint()


def test_vllm_backend_says_how_to_install_it():
    from aepo_trainer.generation.vllm import VLLMGenerator, is_vllm_available

    if is_vllm_available():
        pytest.skip("vLLM is installed")
    with pytest.raises(GenerationInputError, match="vLLM is not installed"):
        VLLMGenerator.from_pretrained("some/model", SamplingSettings())
