"""Safer-Instruct's expert stages (filter, respond) against a real OpenAI-compatible HTTP server on a local port,
through the real `openai` client (`generation.ChatClient` -> `synthesis.OpenAIChatGenerator`): verdicts parsed, usage
equal to the server's own count, and a rerun over the same checkpoint sends nothing."""

from __future__ import annotations

import pytest
from datasets import Dataset

pytest.importorskip("openai")

from openai_server import KEY_ENV

from aepo_trainer.generation.openai_client import ChatClient
from aepo_trainer.synthesis import (
    FunctionGenerator,
    StageCheckpoint,
    induce_instructions,
    judge_instructions,
    keep_accepted,
    prepare_texts,
)
from aepo_trainer.synthesis.generators import OpenAIChatGenerator
from aepo_trainer.synthesis.respond import write_expert_responses

TEXTS = ["Water boils at 100 degrees at sea level.", "reject-me: a fragment", "Paris is the capital of France."]


def _induced():
    """Stage 2 with a local stand-in for the reversed model (its HTTP-free path is tested in test_synthesis.py)."""
    texts = prepare_texts(Dataset.from_list([{"text": t} for t in TEXTS]))
    reversed_model = FunctionGenerator(lambda prompts, n, s: [[f"Explain item {i}."] for i in range(len(prompts))], "r")
    return induce_instructions(texts, reversed_model, progress=False)


def test_filter_and_respond_through_the_api_pay_once(server, tmp_path):
    state, url = server
    client = ChatClient(base_url=url, model="judge-model", api_key_env=KEY_ENV, concurrency=2)
    client.probe()
    judge = OpenAIChatGenerator(client, 2.0, 10.0)
    checkpoint = tmp_path / "checkpoint.sqlite"
    judged = judge_instructions(_induced(), judge, checkpoint=StageCheckpoint(checkpoint), progress=False)
    assert judged["verdict"] == ["pass", "fail", "pass"]
    assert judged["verdict_reason"][0] == "read by the test server"
    accepted = keep_accepted(judged)
    assert accepted["text"] == [TEXTS[0], TEXTS[2]]
    expert = OpenAIChatGenerator(ChatClient(base_url=url, model="gen-model", api_key_env=KEY_ENV))
    responded = write_expert_responses(
        accepted, expert, num_responses=2, checkpoint=StageCheckpoint(checkpoint), progress=False
    )
    assert [len(r) for r in responded["expert_responses"]] == [2, 2]
    assert all(r.startswith("echo ") for rs in responded["expert_responses"] for r in rs)
    paid = state.paid("/v1/chat/completions")
    assert len(paid) == 3 + 2  # one call per row, nothing retried
    used = judge.usage.prompt_tokens + judge.usage.completion_tokens
    used += expert.usage.prompt_tokens + expert.usage.completion_tokens
    assert used == state.prompt_tokens + state.completion_tokens  # our usage equals the server's own count
    assert judge.usage.cost_usd == pytest.approx(
        (judge.usage.prompt_tokens * 2.0 + judge.usage.completion_tokens * 10.0) / 1e6
    )

    # the same stages again over the same checkpoint: every row is finished, nothing is sent
    again = OpenAIChatGenerator(ChatClient(base_url=url, model="judge-model", api_key_env=KEY_ENV))
    rejudged = judge_instructions(_induced(), again, checkpoint=StageCheckpoint(checkpoint), progress=False)
    assert rejudged["verdict"] == judged["verdict"]
    assert len(state.paid("/v1/chat/completions")) == 5 and again.usage.calls == 0
