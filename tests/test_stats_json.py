"""`aepo stats --json` carries everything the text report prints: the API usage per run and model (and its total),
the strategy table (costs, the budget's coverage, representativeness, diversity, scores), the active strategies'
learning-curve points, and the labelling summary. The test reads both and compares them value by value."""

from __future__ import annotations

import json
import re

import torch

from aepo_trainer.storage.usage import UsageLedger

PRICES = {"judge-a": {"input": 2.0, "output": 10.0}, "judge-b": {"input": 1.0, "output": 1.0}}


def pool_rows(n=16, size=5):
    g = torch.Generator().manual_seed(3)
    return [
        {
            "prompt": f"Question {i}?",
            "completions": [f"Answer {j} to {i}." for j in range(size)],
            "scores": torch.rand(size, generator=g).tolist(),
            "embeddings": torch.randn(size, 8, generator=g).tolist(),
        }
        for i in range(n)
    ]


def record_usage(store) -> None:
    """Two runs, two models: completed calls, an HTTP error (not billed) and a call whose bill was never seen."""
    for run_id, model, calls in (("run-1", "judge-a", 3), ("run-1", "judge-b", 1), ("run-2", "judge-a", 2)):
        ledger = UsageLedger(store, run_id=run_id, prices=PRICES)
        for i in range(calls):
            row = ledger.reserve(f"{run_id}-{model}-{i}", model, "chat", upper_cost=0.01)
            ledger.settle(row, {"text": "A"}, prompt_tokens=100 + i, completion_tokens=3, model=model)
        ledger.fail(ledger.reserve(f"{run_id}-{model}-f", model, "chat", 0.01), billed_unknown=False, error="429")
    ledger = UsageLedger(store, run_id="run-2", prices=PRICES)
    ledger.fail(ledger.reserve("lost", "judge-a", "chat", 0.02), billed_unknown=True, error="timeout")


def _cells(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


def test_json_carries_everything_the_text_shows(tmp_path, capsys):
    from aepo_trainer.cli import main

    source = tmp_path / "pools.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in pool_rows()))
    store = tmp_path / "usage.sqlite"
    record_usage(store)
    out = tmp_path / "stats.json"
    argv = ["stats", "--input", str(source), "--annotation_store", str(store), "--labels", str(store)]
    argv += ["--strategies", "random", "aepo", "delta_ucb", "west_of_n", "--num_annotations", "2", "3"]
    argv += ["--diversity_weight", "1", "--annotation_budget", "20", "--active_batch_size", "4", "--json", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out.splitlines()
    report = json.loads(out.read_text())

    # API usage: one line per (run, model), then the total
    usage = report["api_usage"]
    assert usage["store"] == str(store)
    start = next(i for i, line in enumerate(text) if line.startswith("API usage recorded in"))
    table = [_cells(line) for line in text[start + 3 : start + 3 + len(usage["runs"]) + 1]]
    expected = [
        [r["run_id"], *([r["model"]] if r["model"] else [])]
        + [str(r[k]) for k in ("calls", "failed", "unknown", "prompt_tokens", "completion_tokens")]
        + [f"{r['cost']:.6f}"]
        for r in [*usage["runs"], {"run_id": "total", "model": "", **usage["total"]}]
    ]
    assert table == expected
    by_run = {(r["run_id"], r["model"]): r for r in usage["runs"]}
    assert by_run[("run-1", "judge-a")]["calls"] == 3 and by_run[("run-1", "judge-a")]["failed"] == 1
    assert by_run[("run-2", "judge-a")]["unknown"] == 1
    assert by_run[("run-1", "judge-a")]["cost"] == (303 * 2.0 + 9 * 10.0) / 1e6
    assert usage["total"]["calls"] == 6 and usage["total"]["cost"] == sum(r["cost"] for r in usage["runs"])

    # labelling: no page ran on this store
    assert report["labels"]["store"] == str(store) and report["labels"]["items"] == 0
    assert any("no labelling page has run" in line for line in text)

    # the strategy table: the same rows and values, formatted as the text formats them
    assert report["prompts"] == 16 and report["annotation_budget"] == 20 and report["pool_size"] == {"min": 5, "max": 5}
    header = next(i for i, line in enumerate(text) if line.startswith("strategy"))
    titles = _cells(text[header])
    assert "covered/16 (budget 20)" in titles
    rows = [_cells(line) for line in text[header + 2 : header + 2 + len(report["strategies"])]]
    keys = {
        "strategy": "{}",
        "k": "{}",
        "annotations": "{}",
        "covered/16 (budget 20)": "{}",
        "representativeness": "{:.4f}",
        "diversity": "{:.4f}",
        "best score": "{:.3f}",
        "worst score": "{:.3f}",
        "gap": "{:.3f}",
        "pairwise acc.": "{:.3f}",
    }
    names = {"covered/16 (budget 20)": "prompts_covered", "best score": "best", "worst score": "worst"}
    names["pairwise acc."] = "pairwise_accuracy"
    for cells, record in zip(rows, report["strategies"], strict=True):
        for title, cell in zip(titles, cells, strict=True):
            key = names.get(title, title)
            assert cell == ("–" if key not in record else keys[title].format(record[key])), (title, record)
    labels = [(r["strategy"], r["k"]) for r in report["strategies"]]
    assert labels == [("random", 2), ("random", 3), ("aepo λ=1", 2), ("aepo λ=1", 3)] + [
        ("delta_ucb", 2),
        ("delta_ucb", 3),
        ("west_of_n", "N"),
    ]

    # learning-curve points: every printed line is a point of the JSON curve, and the other way round
    printed = [line for line in text if " batch " in line and "pairwise accuracy" in line]
    points = [
        f"{r['strategy']} k={r['k']} batch {q['batch']}: trained on {q['labels_before']} labels, pairwise accuracy "
        f"{q['pairwise_accuracy']:.3f}, Spearman {q['spearman']:.3f} on its new labels"
        for r in report["strategies"]
        for q in r.get("learning_curve", [])
        if q["pairs_evaluated"]
    ]
    assert printed == points and len(points) >= 4
    assert report["empty_completions"] == {
        "rule": "keep",
        "empty": 0,
        "pools_with_empty": 0,
        "first": [],
        "pools_skipped": [],
    }


def test_json_without_input_holds_the_usage(tmp_path, capsys):
    from aepo_trainer.cli import main

    store = tmp_path / "usage.sqlite"
    record_usage(store)
    out = tmp_path / "usage.json"
    assert main(["stats", "--annotation_store", str(store), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["schema_version"] == 1 and report["input"] is None
    assert len(report["api_usage"]["runs"]) == 3 and report["api_usage"]["total"]["calls"] == 6
