"""`aepo generate --backend openai` and `aepo stats --annotation_store` against a real local OpenAI-compatible server:
n samples per prompt from the chat and completions endpoints, a rerun that pays nothing, the cost budget's exit code,
a bad key failing before any call, and the tokens/cost report equal to the server's count."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("openai")
sys.path.insert(0, str(Path(__file__).parent))

from openai_server import KEY_ENV

from aepo_trainer.cli import main


def write_prompts(path, conversational):
    rows = []
    for i in range(5):
        text = f"Prompt number {i} please"
        rows.append({"prompt": [{"role": "user", "content": text}] if conversational else text, "id": i})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def generate(url, inputs, output, *extra):
    argv = ["generate", "--backend", "openai", "--api_base", url, "--api_key_env", KEY_ENV, "--model", "gen-model"]
    argv += ["--input", str(inputs), "--output", str(output), "--num_completions", "3", "--max_new_tokens", "5"]
    return main(argv + ["--batch_size", "2", *map(str, extra)])


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_generate_chat_n_samples_resumes_and_reports_cost(server, tmp_path, capsys):
    state, url = server
    inputs = write_prompts(tmp_path / "p.jsonl", conversational=True)
    out = tmp_path / "pools.jsonl"
    assert generate(url, inputs, out, "--api_prices", '{"gen-model": [1.0, 2.0]}', "--temperature", "0.7") == 0
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == [0, 1, 2, 3, 4]
    assert rows[0]["completions"] == [[{"role": "assistant", "content": f"echo {j} Prompt number 0"}] for j in range(3)]
    assert len(state.paid()) == 5 and all(e["body"]["n"] == 3 for e in state.log)
    assert len({e["body"]["seed"] for e in state.log}) == 5  # one seed per prompt
    assert main(["stats", "--annotation_store", f"{out}.api.sqlite"]) == 0
    report = capsys.readouterr().out
    total = next(line for line in report.splitlines() if line.startswith("total"))
    cost = (state.prompt_tokens * 1.0 + state.completion_tokens * 2.0) / 1e6
    assert total.split()[1:] == ["5", "0", "0", str(state.prompt_tokens), str(state.completion_tokens), f"{cost:.6f}"]

    out.unlink()  # lose the output, keep the ledger: regenerating pays nothing
    assert generate(url, inputs, out, "--api_prices", '{"gen-model": [1.0, 2.0]}', "--temperature", "0.7") == 0
    assert len(state.log) == 5 and read_jsonl(out) == rows


def test_generate_completions_endpoint_with_plain_prompts(server, tmp_path):
    state, url = server
    inputs = write_prompts(tmp_path / "p.jsonl", conversational=False)
    out = tmp_path / "pools.jsonl"
    assert generate(url, inputs, out, "--api_endpoint", "completions") == 0
    assert read_jsonl(out)[1]["completions"] == [f"echo {j} Prompt number 1" for j in range(3)]
    assert {e["path"] for e in state.log} == {"/v1/completions"}


def test_generate_cost_budget_exit_3_then_resume(server, tmp_path, capsys):
    state, url = server
    inputs = write_prompts(tmp_path / "p.jsonl", conversational=True)
    out = tmp_path / "pools.jsonl"
    prices = ["--api_prices", '{"*": [1000, 1000]}']
    # a request reserves ~69 tokens x $0.001 and costs ~19: the first batch of 2 fits, the second does not
    assert generate(url, inputs, out, *prices, "--annotation_cost_budget", "0.16") == 3
    assert "annotation_cost_budget exhausted" in capsys.readouterr().err
    kept = read_jsonl(out)
    assert 0 < len(kept) < 5 and len(state.paid()) >= len(kept)
    spent_calls = len(state.log)
    assert generate(url, inputs, out, *prices, "--annotation_cost_budget", "10") == 0
    assert len(read_jsonl(out)) == 5
    bodies = [json.dumps(e["body"], sort_keys=True) for e in state.paid()]
    assert len(bodies) == len(set(bodies)) == 5 and len(state.log) > spent_calls  # nothing paid twice


def test_generate_bad_key_fails_before_any_call(server, tmp_path, monkeypatch, capsys):
    state, url = server
    monkeypatch.setenv(KEY_ENV, "wrong")
    inputs = write_prompts(tmp_path / "p.jsonl", conversational=True)
    assert generate(url, inputs, tmp_path / "o.jsonl") == 2
    assert "Bad API key" in capsys.readouterr().err and not state.log


def test_select_with_the_api_judge_pays_two_calls_per_prompt(server, tmp_path):
    import random

    state, url = server
    rng = random.Random(0)
    pools = tmp_path / "pools.jsonl"
    rows = [
        {
            "prompt": f"Question {i}?",
            "completions": [f"answer {j} q={rng.randint(0, 9)}" for j in range(4)],
            "embeddings": [[rng.gauss(0, 1) for _ in range(8)] for _ in range(4)],
        }
        for i in range(6)
    ]
    pools.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "pairs.jsonl"
    argv = ["select", "--input", str(pools), "--output", str(out), "--annotator", "api_judge"]
    argv += ["--judge_api_base", url, "--judge_model", "judge-model", "--judge_api_key_env", KEY_ENV]
    assert main(argv) == 0
    pairs = read_jsonl(out)
    assert len(state.paid()) == 2 * len(rows)  # k = 2: one match, both orders, per prompt
    for pair in pairs:  # the server prefers the higher q: the chosen one has it
        q = [int(c.split("q=")[1]) for c in (pair["chosen"], pair["rejected"])]
        assert q[0] >= q[1]
    assert main(argv) == 0 and len(state.paid()) == 2 * len(rows)  # a rerun is served from the store
