"""The training step's reduction, run on its own: inputs in, a `StepResult` out, no trainer built."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator

from aepo_trainer import AEPOConfig
from aepo_trainer.annotation.dataset_scores import DatasetScoresAnnotator
from aepo_trainer.annotation.service import AnnotationService
from aepo_trainer.data.collator import POOL_ROWS, AEPODataCollator
from aepo_trainer.reduction import PoolReducer
from aepo_trainer.trainer.step import STEP_PAIRS, TERMS, GroupLayout, pair_texts, reduce_pool_batches

# Two pool batches of two prompts, five candidates each; the scores are hand-set so that best and worst of any
# subset are unambiguous (no ties).
SCORES = [[0.1, 0.9, 0.5, 0.3, 0.7], [0.8, 0.2, 0.6, 0.4, 0.0], [0.3, 0.1, 0.9, 0.7, 0.5], [0.6, 0.4, 0.2, 0.8, 0.0]]


def _rows_and_embeddings():
    g = torch.Generator().manual_seed(0)
    rows = [
        {"prompt": f"prompt {i}", "completions": [f"answer {i}.{j}" for j in range(5)], "scores": SCORES[i]}
        for i in range(4)
    ]
    return rows, torch.randn(4, 5, 8, generator=g)


def _batch(rows, embeddings):
    examples = [
        {
            **row,
            "prompt_ids": [100, 101, 102],
            "completions_ids": [[10 * b + j] * (j + 1) for j in range(5)],
            "embeddings": embeddings[b].tolist(),
        }
        for b, row in enumerate(rows)
    ]
    return AEPODataCollator(pad_token_id=0)(examples)


def _reducer(tmp_path, budget=None):
    args = AEPOConfig(output_dir=str(tmp_path), bf16=False, report_to="none", num_annotations=3)
    service = AnnotationService(DatasetScoresAnnotator("scores"), tmp_path / "store.sqlite", budget=budget, run_id="u")
    return PoolReducer(args, service)


def _step(reducer, batches, mode="train", **kwargs):
    return reduce_pool_batches(
        batches,
        mode,
        reducer=reducer,
        service=reducer.service,
        accelerator=Accelerator(cpu=True),
        layout=GroupLayout(pad_token_id=0),
        **kwargs,
    )


def test_step_returns_groups_pairs_and_metrics_without_a_trainer(tmp_path):
    rows, embeddings = _rows_and_embeddings()
    batches = [_batch(rows[:2], embeddings[:2]), _batch(rows[2:], embeddings[2:])]
    result = _step(_reducer(tmp_path / "step"), batches)

    # the same pairs as the library reducer on the same pools (a fresh store: paid the same way)
    expected = _reducer(tmp_path / "library").reduce(rows, embeddings)
    assert [(p["chosen"], p["rejected"]) for p in result.recent_pairs] == [
        (row_pair["chosen"], row_pair["rejected"]) for row_pair in pair_texts(rows, expected)
    ]
    assert len(result.groups) == 2 and [g[TERMS] for g in result.groups] == [2, 2]
    assert all(g[STEP_PAIRS] == 4 for g in result.groups) and result.step_terms == 4
    # best vs worst of each selected subset, with the row's own texts
    for pair in result.recent_pairs:
        row = rows[int(pair["prompt"].split()[1])]
        assert pair["chosen"] == row["completions"][row["scores"].index(pair["chosen_score"])]
        assert pair["chosen_score"] == max(row["scores"][i] for i in pair["selected"])
        assert pair["rejected_score"] == min(row["scores"][i] for i in pair["selected"])
        assert pair["pool_size"] == 5 and len(pair["selected"]) == 3
    assert result.summary == {
        "budget_exhausted": False,
        "pending": False,
        "spent": 12.0,
        "pairs": 4.0,
        "budget_left": result.summary["budget_left"],
    }
    metrics = {name: (value, running) for name, value, running in result.metrics}
    assert metrics["aepo/annotations_spent"] == (12.0, True)  # a running total: the trainer keeps the latest
    assert metrics["aepo/pairs"] == (4.0, False) and metrics["aepo/annotations_paid"] == (12.0, False)
    assert metrics["aepo/empty_batches"] == (0.0, False)
    no_gold = _step(_reducer(tmp_path / "nogold"), batches[:1], gold_agreement=False)
    assert "aepo/label_gold_agreement" not in {name for name, _, _ in no_gold.metrics}
    assert result.reply.scores[0] is not None and len(result.reply.scores) == 4


def test_step_on_a_spent_budget_pays_what_fits_and_says_so(tmp_path):
    rows, embeddings = _rows_and_embeddings()
    result = _step(_reducer(tmp_path, budget=4), [_batch(rows, embeddings)])
    assert result.summary["spent"] == 3.0 and result.summary["budget_exhausted"]
    assert result.summary["budget_left"] == pytest.approx(1.0)
    assert result.step_terms == 1 and result.groups[0][TERMS] == 1
    assert len(result.recent_pairs) == 1


def test_eval_step_remembers_nothing(tmp_path):
    rows, embeddings = _rows_and_embeddings()
    batch = _batch(rows[:2], embeddings[:2])
    result = _step(_reducer(tmp_path), [batch], mode="eval")
    assert result.recent_pairs == [] and result.step_terms == 2
    assert batch[POOL_ROWS][0]["prompt"] == "prompt 0"  # the input batch is read, not consumed
