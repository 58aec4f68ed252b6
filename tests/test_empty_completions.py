"""Empty candidates in pools: one rule (`empty_completions`: keep | drop | error) in `aepo select`, `aepo stats` and
`AEPOTrainer`, on a pool file holding a zero-width-space answer, a whitespace answer, an empty string, and a pool made
almost only of invisible answers (as the AlpacaEval pools hold; see `aepo_trainer.data.empty_completions`)."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from datasets import Dataset

from aepo_trainer import AEPOConfig
from aepo_trainer.data.empty_completions import (
    KEPT_POSITIONS_KEY,
    EmptyCompletionReport,
    drop_empty_completions,
    is_empty_completion,
)
from aepo_trainer.data.validation import pool_problems

ZERO_WIDTH, WHITESPACE, EMPTY, INVISIBLE = "\u200b", "  \n\t", "", "\u200b \ufeff\u2060"
EMPTIES = {(1, 2): ZERO_WIDTH, (3, 5): WHITESPACE, (4, 0): EMPTY}  # (row, position) -> text
NEARLY_EMPTY_ROW = 5  # 7 of its 8 answers are invisible: too small to select from under 'drop'


def pool_rows() -> list[dict]:
    """6 pools of 8 with scores, generators and embeddings (all aligned per candidate); empties score 0, others > 0."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(6):
        completions = [f"Answer {j} to question {i}." for j in range(8)]
        for (r, j), text in EMPTIES.items():
            if r == i:
                completions[j] = text
        if i == NEARLY_EMPTY_ROW:
            completions[:7] = [INVISIBLE] * 7
        rows.append(
            {
                "prompt": f"Question {i}?",
                "completions": completions,
                "generators": [f"model-{j}" for j in range(8)],
                "scores": [0.0 if is_empty_completion(c) else 0.1 + 0.1 * j for j, c in enumerate(completions)],
                "embeddings": torch.randn(8, 16, generator=g).tolist(),
                "dataset": "demo",
            }
        )
    return rows


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.parametrize(
    "value, empty",
    [
        ("", True),
        ("   \n\t", True),
        ("\u200b", True),  # zero-width space (Cf), the AlpacaEval case
        ("\ufeff\u2060\u200d", True),  # BOM, word joiner, zero-width joiner (Cf)
        ("\u00a0\u3000", True),  # no-break and ideographic spaces (Zs)
        ("\x00\x07", True),  # control characters (Cc)
        ([{"role": "assistant", "content": "\u200b"}], True),
        ("a", False),
        ("\u200ba", False),
        (".", False),
        ([{"role": "assistant", "content": "ok"}], False),
    ],
)
def test_what_counts_as_empty(value, empty):
    assert is_empty_completion(value) is empty


def _config(tmp_path, **overrides):
    return AEPOConfig(output_dir=str(tmp_path), bf16=False, report_to="none", **overrides)


def test_only_error_makes_an_empty_completion_a_problem_and_other_checks_stay_strict(tmp_path):
    rows = pool_rows()
    for rule in ("keep", "drop"):
        assert pool_problems(rows, _config(tmp_path, empty_completions=rule), need_scores=True) == []
    problems = pool_problems(rows, _config(tmp_path, empty_completions="error"), need_scores=True)
    named = {(p.row, p.column) for p in problems}
    assert {(1, "completions[2]"), (3, "completions[5]"), (4, "completions[0]")} <= named
    assert len(problems) == 3 + 7
    broken = [dict(r) for r in rows]
    broken[2] = {**broken[2], "scores": broken[2]["scores"][:-1]}
    broken[0] = {**broken[0], "completions": [*broken[0]["completions"][:-1], 7]}
    for rule in ("keep", "drop"):
        found = {(p.row, p.column) for p in pool_problems(broken, _config(tmp_path, empty_completions=rule))}
        assert found == {(2, "scores"), (0, "completions[7]")}


def test_drop_keeps_every_per_candidate_column_aligned(tmp_path):
    config = _config(tmp_path, empty_completions="drop", num_annotations=2)
    row = pool_rows()[3]
    trimmed = drop_empty_completions(row, config, [5])
    keep = [0, 1, 2, 3, 4, 6, 7]
    for name in ("completions", "generators", "scores", "embeddings"):
        assert trimmed[name] == [row[name][j] for j in keep], name
    assert trimmed["prompt"] == row["prompt"] and trimmed["dataset"] == "demo"
    report = EmptyCompletionReport("drop")
    kept = report.apply(pool_rows(), config)
    assert [r["prompt"] for r in kept] == [f"Question {i}?" for i in range(5)]  # row 5 has 1 candidate left
    assert report.empty == 10 and report.pools_with_empty == 4 and report.skipped == [NEARLY_EMPTY_ROW]
    assert kept[3][KEPT_POSITIONS_KEY] == keep


def _select(tmp_path, capsys, name, *flags):
    from aepo_trainer.cli import main

    source = write_jsonl(tmp_path / "pools.jsonl", pool_rows())
    out = tmp_path / f"{name}.jsonl"
    flags = ["--selection_strategy", "west_of_n", *flags]  # every candidate annotated: best vs worst, by hand
    code = main(["select", "--input", source, "--output", str(out), "--annotator", "dataset_scores", *flags])
    return code, capsys.readouterr().err, out


def test_select_keeps_empty_answers_by_default_with_one_warning(tmp_path, capsys):
    code, err, out = _select(tmp_path, capsys, "keep")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "empty completion" in line]
    assert len(warnings) == 1
    assert "10 empty completion(s)" in warnings[0] and "in 4 of 6 pools" in warnings[0] and "kept" in warnings[0]
    assert "row 1 'completions'[2], row 3 'completions'[5], row 4 'completions'[0]" in warnings[0]
    pairs = {r["prompt"]: r for r in read_jsonl(out)}
    assert len(pairs) == 6
    rows = pool_rows()
    for (i, j), text in EMPTIES.items():  # the empty answer (score 0, the lowest) is the rejected side
        pair = pairs[f"Question {i}?"]
        assert (pair["rejected"], pair["rejected_index"], pair["rejected_score"]) == (text, j, 0.0)
        assert pair["chosen_index"] == 7 and pair["chosen"] == rows[i]["completions"][7]
    assert pairs[f"Question {NEARLY_EMPTY_ROW}?"]["rejected"] == INVISIBLE


def test_select_drop_removes_them_before_selection_and_skips_pools_too_small(tmp_path, capsys):
    code, err, out = _select(tmp_path, capsys, "drop", "--empty_completions", "drop")
    assert code == 0, err
    warning = next(line for line in err.splitlines() if "empty completion" in line)
    assert "dropped" in warning and "1 pool(s) left too small to select from were skipped (row(s) 5)" in warning
    pairs = {r["prompt"]: r for r in read_jsonl(out)}
    assert sorted(pairs) == [f"Question {i}?" for i in range(5)]
    rows = pool_rows()
    for i, pair in enumerate(pairs[f"Question {i}?"] for i in range(5)):
        empty = [j for (r, j) in EMPTIES if r == i]
        worst = min((j for j in range(8) if j not in empty), key=lambda j: rows[i]["scores"][j])
        assert pair["rejected_index"] == worst  # an index of the input file, not of the trimmed pool
        assert pair["rejected"] == rows[i]["completions"][worst] and pair["rejected_score"] == rows[i]["scores"][worst]
        assert sorted(pair["selected_indices"]) == [j for j in range(8) if j not in empty]
        assert not any(is_empty_completion(pair[side]) for side in ("chosen", "rejected"))


def test_select_error_refuses_them_naming_row_and_field(tmp_path, capsys):
    code, err, out = _select(tmp_path, capsys, "error", "--empty_completions", "error")
    assert code == 2
    assert "row 1, field 'completions'[2]: empty completion" in err
    assert "row 4, field 'completions'[0]: empty completion" in err
    assert not out.exists()


@pytest.mark.parametrize("rule", ["keep", "drop"])
def test_stats_follows_the_same_rule(tmp_path, capsys, rule):
    from aepo_trainer.cli import main

    source = write_jsonl(tmp_path / "pools.jsonl", pool_rows())
    report = tmp_path / "stats.json"
    argv = ["stats", "--input", source, "--num_annotations", "2", "--strategies", "random", "--json", str(report)]
    assert main([*argv, "--empty_completions", rule]) == 0
    err = capsys.readouterr().err
    assert sum("empty completion" in line for line in err.splitlines()) == 1
    assert ("dropped" if rule == "drop" else "kept as candidates") in err
    (record,) = json.loads(report.read_text())["strategies"]
    assert record["annotations"] == 2 * (5 if rule == "drop" else 6)
    assert main([*argv, "--empty_completions", "error"]) == 2
    assert "row 1, field 'completions'[2]: empty completion" in capsys.readouterr().err


def test_trainer_follows_the_same_rule(tiny_model_path, dpo_args, caplog):
    from aepo_trainer import AEPOTrainer

    dataset = Dataset.from_list(pool_rows())
    with caplog.at_level(logging.WARNING, logger="aepo_trainer"):
        kept = AEPOTrainer(model=tiny_model_path, args=AEPOConfig(**dpo_args), train_dataset=dataset)
    assert kept.train_dataset["completions"] == dataset["completions"]
    assert sum("10 empty completion(s)" in r.getMessage() for r in caplog.records) == 1
    dropped = AEPOTrainer(
        model=tiny_model_path, args=AEPOConfig(**dpo_args, empty_completions="drop"), train_dataset=dataset
    )
    expected = [[c for c in pool if not is_empty_completion(c)] for pool in dataset["completions"][:5]]
    assert dropped.train_dataset["completions"] == expected
    assert [len(s) for s in dropped.train_dataset["scores"]] == [len(p) for p in expected]
    assert dropped.train_dataset["scores"][1] == [s for j, s in enumerate(dataset["scores"][1]) if j != 2]
    dropped.train()  # real steps on the trimmed pools
    with pytest.raises(ValueError, match=r"row 1, field 'completions'\[2\]: empty completion"):
        AEPOTrainer(
            model=tiny_model_path, args=AEPOConfig(**dpo_args, empty_completions="error"), train_dataset=dataset
        )
