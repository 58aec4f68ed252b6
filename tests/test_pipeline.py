"""PoolReducer (select -> annotate the selected -> pair) and the AEPODataCollator group-batch layout."""

from __future__ import annotations

import pickle

import pytest
import torch
from trl.trainer.dpo_trainer import DataCollatorForPreference

from aepo_trainer import AEPOConfig
from aepo_trainer.annotation.dataset_scores import DatasetScoresAnnotator
from aepo_trainer.annotation.service import AnnotationService
from aepo_trainer.data.collator import POOL_ROWS, AEPODataCollator
from aepo_trainer.reduction import STATS_FIELDS, PoolReducer
from aepo_trainer.selection import prompt_key
from aepo_trainer.trainer.group_batch import build_group_batch


def _rows(n=4, size=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows, embeddings = [], []
    for i in range(n):
        rows.append(
            {
                "prompt": f"prompt {i}",
                "completions": [f"c{i}.{j}" for j in range(size)],
                "scores": torch.rand(size, generator=g).tolist(),
                "source": "unit",
            }
        )
        embeddings.append(torch.randn(size, 8, generator=g))
    return rows, torch.stack(embeddings)


def _reducer(tmp_path, budget=None, **overrides):
    args = AEPOConfig(output_dir=str(tmp_path), bf16=False, report_to="none", **overrides)
    service = AnnotationService(
        DatasetScoresAnnotator("scores"), tmp_path / "store.sqlite", budget=budget, run_id="unit"
    )
    return PoolReducer(args, service)


def test_prompt_key_is_stable_and_format_aware():
    assert prompt_key("hello") == prompt_key("hello")
    assert prompt_key("hello") != prompt_key("hello!")
    conv = [{"role": "user", "content": "hello"}]
    assert prompt_key(conv) == prompt_key([{"content": "hello", "role": "user"}])  # canonical JSON
    assert 0 <= prompt_key(conv) < 2**63


def test_reduce_selects_annotates_and_pairs(tmp_path):
    rows, emb = _rows()
    reducer = _reducer(tmp_path, num_annotations=3)
    out = reducer.reduce(rows, emb)
    assert [len(s) for s in out.subsets] == [3] * 4
    assert all(s == sorted(s) for s in out.subsets)
    assert out.stats["annotations_paid"] == 12 and out.stats["annotations_spent"] == 12
    for b, (row, subset, scores) in enumerate(zip(rows, out.subsets, out.scores)):
        assert scores == pytest.approx([row["scores"][i] for i in subset])  # only the selected were read
    assert len(out.pairs) == 4
    for pair in out.pairs:  # best vs worst of the selected subset
        scores = out.scores[pair.row]
        assert pair.chosen_score == max(scores) and pair.rejected_score == min(scores)
    assert out.stats["reward_chosen_sum"] == pytest.approx(sum(p.chosen_score for p in out.pairs))
    assert set(out.stats) == set(STATS_FIELDS)
    # a second pass over the same prompts is free: everything comes from the store
    again = reducer.reduce(rows, emb)
    assert again.stats["annotations_paid"] == 0 and again.stats["annotations_reused"] == 12
    assert again.pairs == out.pairs


@pytest.mark.parametrize("strategy", ["aepo", "random"])
def test_result_does_not_depend_on_batching(tmp_path, strategy):
    rows, emb = _rows(n=6, size=7)
    whole = _reducer(
        tmp_path / "a", selection_strategy=strategy, num_annotations=3, pairing_rule="best_vs_random"
    ).reduce(rows, emb)
    reducer = _reducer(tmp_path / "b", selection_strategy=strategy, num_annotations=3, pairing_rule="best_vs_random")
    order = [4, 1, 5, 0, 3, 2]
    parts = [
        reducer.reduce([rows[i] for i in order[:2]], emb[order[:2]]),
        reducer.reduce([rows[i] for i in order[2:]], emb[order[2:]]),
    ]
    subsets = {}
    pairs = {}
    for part, idx in zip(parts, (order[:2], order[2:])):
        for b, i in enumerate(idx):
            subsets[i] = part.subsets[b]
        for p in part.pairs:
            pairs[idx[p.row]] = (p.chosen, p.rejected)
    assert [subsets[i] for i in range(6)] == whole.subsets
    assert pairs == {p.row: (p.chosen, p.rejected) for p in whole.pairs}


def test_budget_skips_whole_prompts(tmp_path):
    rows, emb = _rows(n=3)
    reducer = _reducer(tmp_path, budget=5, num_annotations=2)
    out = reducer.reduce(rows, emb)
    assert out.stats["annotations_paid"] == 4 and out.stats["prompts_skipped"] == 1
    assert out.budget_exhausted and out.stats["budget_exhausted"] == 1.0
    assert out.scores[2] is None and len(out.pairs) == 2
    assert out.stats["budget_left"] == 1.0
    assert reducer.service.spent == 4


def test_west_of_n_annotates_the_whole_pool(tmp_path):
    rows, emb = _rows(n=2, size=5)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False  # ragged pools
    out = _reducer(tmp_path, selection_strategy="west_of_n").reduce(rows, emb, mask)
    assert out.subsets == [[0, 1, 2, 3, 4], [0, 1, 2]]
    assert out.stats["annotations_paid"] == 8


# ------------------------------------------------------------------------------------------------ collator


def _examples(rows, emb, prompt_len=3):
    examples = []
    for b, row in enumerate(rows):
        n = len(row["completions"])
        examples.append(
            {
                **row,
                "prompt_ids": list(range(100, 100 + prompt_len)),
                "completions_ids": [[10 * b + j] * (j + 1) for j in range(n)],
                "embeddings": emb[b, :n].tolist(),
            }
        )
    return examples


def _group(tmp_path, rows, emb, examples=None, include_unpaired=False, **collate):
    """Collate (pure) -> reduce (select, annotate, pair) -> lay out, as the trainer's step does."""
    examples = examples or _examples(rows, emb)
    pool = AEPODataCollator(pad_token_id=0, **collate)(examples)
    reducer = _reducer(tmp_path, **({"num_annotations": 3} if "num_annotations" not in collate else {}))
    return examples, pool, reducer


def _lay_out(reducer, pool, include_unpaired=False, **layout):
    from aepo_trainer.annotation.ledger import annotate_requests

    rows = pool[POOL_ROWS]
    selected = reducer.select(rows, pool["pool_embeddings"], pool["pool_mask"])
    reduced = reducer.finish(rows, selected, annotate_requests(reducer.service, reducer.requests(rows, selected)))
    return reduced, build_group_batch(pool, reduced, pad_token_id=0, include_unpaired=include_unpaired, **layout)


def test_collator_is_pure_and_picklable(tmp_path):
    """The collator pads and stacks pools and does nothing else: no annotator, no store, the same output twice."""
    rows, emb = _rows(n=3, size=5)
    rows[1]["completions"] = rows[1]["completions"][:3]  # ragged pools
    examples = _examples(rows, emb)
    examples[1]["embeddings"] = examples[1]["embeddings"][:3]
    collator = AEPODataCollator(pad_token_id=7)
    clone = pickle.loads(pickle.dumps(collator))  # DataLoader workers get a copy
    batch, again = collator(examples), clone(examples)
    assert batch.keys() == again.keys() and not list(tmp_path.iterdir())  # nothing written anywhere
    for key, value in batch.items():
        assert torch.equal(value, again[key]) if isinstance(value, torch.Tensor) else value == again[key]
    assert batch["pool_mask"].tolist() == [[True] * 5, [True] * 3 + [False] * 2, [True] * 5]
    assert batch["pool_completion_lengths"][1].tolist() == [1, 2, 3, 0, 0]
    assert batch["pool_completion_ids"][0, 2].tolist() == [2, 2, 2, 7, 7]  # right-padded with the pad token
    assert batch["pool_prompt_ids"][0].tolist() == [100, 101, 102] and batch["pool_prompt_lengths"].tolist() == [3] * 3
    torch.testing.assert_close(batch["pool_embeddings"][0], emb[0])
    assert batch["pool_embeddings"][1, 3:].abs().sum() == 0
    torch.testing.assert_close(batch["pool_scores"][0], torch.tensor(rows[0]["scores"]))
    assert batch[POOL_ROWS][0] == rows[0]  # text, scores and other columns reach the annotators


def test_group_layout(tmp_path):
    rows, emb = _rows(n=3, size=5)
    examples, pool, reducer = _group(tmp_path, rows, emb)
    expected, batch = _lay_out(reducer, pool)
    P = len(expected.pairs)
    assert batch["pair_chosen_rows"].shape == (P,) and batch["pair_rejected_rows"].shape == (P,)
    R = batch["input_ids"].shape[0]
    assert R == 2 * P  # best_vs_worst with k = 3 and no RPO loss: only the paired responses are sent
    assert batch["attention_mask"].shape == batch["completion_mask"].shape == batch["input_ids"].shape
    assert batch["aepo_prompt_keys"].tolist() == [prompt_key(r["prompt"]) for r in rows]
    for pair, c_row, r_row in zip(expected.pairs, batch["pair_chosen_rows"], batch["pair_rejected_rows"]):
        for pos, row_index in ((pair.chosen, c_row), (pair.rejected, r_row)):
            pool_index = expected.subsets[pair.row][pos]
            ids = examples[pair.row]["prompt_ids"] + examples[pair.row]["completions_ids"][pool_index]
            n = len(ids)
            assert batch["input_ids"][row_index, :n].tolist() == ids
            assert batch["input_ids"][row_index, n:].eq(0).all()
            assert batch["attention_mask"][row_index].sum() == n
            assert batch["completion_mask"][row_index].tolist()[:n] == [0] * 3 + [1] * (n - 3)
            assert batch["response_groups"][row_index] == pair.row
            assert batch["response_scores"][row_index].item() == pytest.approx(expected.scores[pair.row][pos])


def test_group_layout_sends_unpaired_responses_for_rpo(tmp_path):
    rows, emb = _rows(n=2, size=5)
    _, pool, _ = _group(tmp_path, rows, emb)
    _, batch = _lay_out(_reducer(tmp_path / "r", num_annotations=4), pool, include_unpaired=True)
    assert batch["input_ids"].shape[0] == 8  # all k = 4 annotated responses of both prompts, once each
    assert batch["response_groups"].tolist() == [0] * 4 + [1] * 4


@pytest.mark.parametrize("mode", ["keep_start", "keep_end"])
def test_group_layout_truncates_like_trl(tmp_path, mode):
    """Each prompt+completion sequence is cut like TRL cuts a pair's: its first (keep_start) or last (keep_end)
    `max_length` tokens."""
    rows, emb = _rows(n=2, size=3)
    examples, pool, _ = _group(tmp_path, rows, emb, examples=_examples(rows, emb, prompt_len=3))
    examples = [{**ex, "completions_ids": [[10 * b + j] * (j + 2) for j in range(3)]} for b, ex in enumerate(examples)]
    pool = AEPODataCollator(pad_token_id=0)(examples)
    reduced, batch = _lay_out(_reducer(tmp_path / "r", num_annotations=2), pool, max_length=4, truncation_mode=mode)
    assert batch["input_ids"].shape[1] <= 4
    for pair, row_index in zip(reduced.pairs, batch["pair_chosen_rows"]):
        pool_index = reduced.subsets[pair.row][pair.chosen]
        ids = examples[pair.row]["prompt_ids"] + examples[pair.row]["completions_ids"][pool_index]
        ids = ids[:4] if mode == "keep_start" else ids[-4:]
        real = batch["attention_mask"][row_index].bool()
        assert batch["input_ids"][row_index][real].tolist() == ids
    if mode == "keep_end":
        assert (batch["completion_mask"][:, -1] | (batch["attention_mask"][:, -1] == 0)).all()


def test_group_layout_keep_end_exact_tokens():
    """A hand-checked sequence: prompt [1, 2, 3], completion [4, 5, 6]; keep_end with max_length 4 keeps [3, 4, 5, 6],
    of which only the prompt token 3 is outside the completion mask."""
    from types import SimpleNamespace

    pool = {
        "pool_prompt_ids": torch.tensor([[1, 2, 3]]),
        "pool_prompt_lengths": torch.tensor([3]),
        "pool_completion_ids": torch.tensor([[[4, 5, 6], [7, 0, 0]]]),
        "pool_completion_lengths": torch.tensor([[3, 1]]),
    }
    pair = SimpleNamespace(row=0, chosen=0, rejected=1)
    reduced = SimpleNamespace(pairs=[pair], subsets=[[0, 1]], scores=[[1.0, 0.0]], prompt_keys=[5])
    end = build_group_batch(pool, reduced, pad_token_id=0, max_length=4, truncation_mode="keep_end")
    assert end["input_ids"].tolist() == [[3, 4, 5, 6], [1, 2, 3, 7]]
    assert end["completion_mask"].tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]
    start = build_group_batch(pool, reduced, pad_token_id=0, max_length=4, pad_to_multiple_of=8)
    assert start["input_ids"].tolist() == [[1, 2, 3, 4, 0, 0, 0, 0], [1, 2, 3, 7, 0, 0, 0, 0]]
    assert start["attention_mask"].sum(1).tolist() == [4, 4]


def test_group_layout_of_a_batch_without_pairs_has_a_filler_row(tmp_path):
    rows, emb = _rows(n=2, size=3)
    for row in rows:
        row["scores"] = [0.5, 0.5, 0.5]  # all ties: no pair
    _, pool, _ = _group(tmp_path, rows, emb)
    reduced, batch = _lay_out(_reducer(tmp_path / "r", num_annotations=2), pool)
    assert batch["pair_chosen_rows"].numel() == 0
    assert batch["input_ids"].shape[0] == 1 and batch["completion_mask"].sum() == 0
    assert batch["response_groups"].tolist() == [-1]
    assert reduced.stats["ties_dropped"] == 2


def test_pair_examples_go_through_trls_collator_unchanged(tmp_path):
    examples = [
        {"prompt_ids": [1, 2, 3], "chosen_ids": [4, 5], "rejected_ids": [6]},
        {"prompt_ids": [7, 8], "chosen_ids": [9], "rejected_ids": [10, 11]},
    ]
    ours = AEPODataCollator(pad_token_id=0, max_length=4)(examples)
    theirs = DataCollatorForPreference(pad_token_id=0, max_length=4)(examples)
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key])
