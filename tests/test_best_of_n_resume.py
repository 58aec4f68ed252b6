"""`aepo best-of-n` against a real local OpenAI-compatible server (tests/openai_server.py): sampling with
`--backend openai`, judging with `--api_judge`. Every judgment goes through the annotation store and its ledgers, so
a run killed after a batch was judged but before it was written re-pays nothing on rerun (counted on the server),
`--annotation_budget` caps the judge annotations and `--annotation_cost_budget` the dollars of sampling and judging
together, each with exit code 3 and the finished prompts kept."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("openai")
sys.path.insert(0, str(Path(__file__).parent))

from openai_server import KEY_ENV

from aepo_trainer.storage.usage import summary as usage_summary

PROMPTS = [f"Question number {i}, please answer" for i in range(5)]
N = 3  # a pairwise tournament of 3: 2 matches, each judged in both orders = 4 judge calls per prompt
PRICES = '{"gen-model": [1.0, 2.0], "judge-model": [3.0, 4.0]}'


def run(url, tmp_path, name, *flags):
    from aepo_trainer.cli import main

    source = tmp_path / "prompts.jsonl"
    source.write_text("".join(json.dumps({"prompt": p, "id": i}) + "\n" for i, p in enumerate(PROMPTS)))
    out = tmp_path / f"{name}.jsonl"
    argv = ["best-of-n", "--input", str(source), "--output", str(out), "--num_completions", str(N)]
    argv += ["--backend", "openai", "--api_base", url, "--api_key_env", KEY_ENV, "--model", "gen-model"]
    argv += ["--api_judge", "--judge_model", "judge-model", "--judge_api_base", url, "--judge_api_key_env", KEY_ENV]
    argv += ["--batch_size", "2", "--max_new_tokens", "4", "--api_prices", PRICES, *flags]
    return main(argv), out


def judge_calls(state) -> int:
    return sum("[Assistant A]" in json.dumps(e["body"]) for e in state.paid())


def rows(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_a_killed_run_resumes_without_paying_again(server, tmp_path, monkeypatch, capsys):
    state, url = server
    code, reference = run(url, tmp_path, "reference")
    assert code == 0
    uninterrupted = len(state.paid())
    assert judge_calls(state) == 4 * len(PROMPTS) and uninterrupted == 4 * len(PROMPTS) + len(PROMPTS)
    assert [r["id"] for r in rows(reference)] == list(range(len(PROMPTS)))

    # a second output, killed after its 2nd batch was sampled and judged (paid, stored) but before it was written
    from aepo_trainer.cli import io

    append, calls = io.append_jsonl, []

    def killed_on_the_second_batch(path, batch):
        calls.append(len(batch))
        if len(calls) == 2:
            raise KeyboardInterrupt
        append(path, batch)

    state.log.clear()
    monkeypatch.setattr(io, "append_jsonl", killed_on_the_second_batch)
    code, out = run(url, tmp_path, "killed")
    assert code == 130 and len(rows(out)) == 2
    paid_before_kill = len(state.paid())
    assert paid_before_kill == 4 * 4 + 4  # prompts 0-3 sampled and judged
    monkeypatch.setattr(io, "append_jsonl", append)
    capsys.readouterr()
    code, out = run(url, tmp_path, "killed")
    assert code == 0
    assert "resuming: 2 of 5 prompts already" in capsys.readouterr().err
    assert len(state.paid()) - paid_before_kill == 4 + 1  # only prompt 4: nothing of prompts 2-3 is paid again
    assert rows(out) == rows(reference)  # the same samples and picks as the uninterrupted run
    store = f"{out}.annotations.sqlite"
    by_model = {}
    for r in usage_summary(store):
        by_model[r["model"]] = by_model.get(r["model"], 0) + r["calls"]
    assert by_model == {"gen-model": len(PROMPTS), "judge-model": 4 * len(PROMPTS)}  # charged to the ledger once


def test_annotation_budget_caps_the_judge_and_a_larger_one_continues(server, tmp_path, capsys):
    state, url = server
    code, out = run(url, tmp_path, "budget", "--annotation_budget", str(2 * N + 1))
    assert code == 3
    assert [r["id"] for r in rows(out)] == [0, 1]  # the third prompt's N annotations did not fit
    assert judge_calls(state) == 2 * 4
    err = capsys.readouterr().err
    assert "judge annotations paid 6" in err
    state.log.clear()
    code, out = run(url, tmp_path, "budget", "--annotation_budget", "100")
    assert code == 0 and [r["id"] for r in rows(out)] == list(range(len(PROMPTS)))
    assert judge_calls(state) == 3 * 4  # only the prompts not judged before
    assert "judge annotations paid 15" in capsys.readouterr().err  # 5 prompts x N, over both runs


def test_cost_budget_caps_the_dollars_and_a_larger_one_continues(server, tmp_path, capsys):
    state, url = server
    code, out = run(url, tmp_path, "dollars", "--annotation_cost_budget", "0.0015")
    assert code == 3
    kept = rows(out) if out.exists() else []
    assert len(kept) < len(PROMPTS)
    store = f"{out}.annotations.sqlite"
    usage = usage_summary(store)
    assert {r["run_id"] for r in usage} == {f"aepo-best-of-n:{out}"}  # sampling and judging: one dollar ledger
    assert {r["model"] for r in usage} == {"gen-model", "judge-model"}
    assert 0 < sum(r["cost"] for r in usage) <= 0.0015  # the budget caps their sum
    assert "API cost $" in capsys.readouterr().err
    before = len(state.paid())
    code, out = run(url, tmp_path, "dollars", "--annotation_cost_budget", "10")
    assert code == 0 and [r["id"] for r in rows(out)] == list(range(len(PROMPTS)))
    judged = sum(r["calls"] for r in usage_summary(store) if r["model"] == "judge-model")
    assert judged == 4 * len(PROMPTS)  # no judge call paid twice across the two runs
    assert len(state.paid()) - before <= 4 * len(PROMPTS) + len(PROMPTS) - len(kept) * 5
