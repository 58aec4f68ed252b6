"""Pool datasets: detection, validation errors that name the row and the field, and TRL-exact tokenization."""

from __future__ import annotations

import pytest
from datasets import Dataset

from aepo_trainer import AEPOConfig
from aepo_trainer.data.pools import (
    COMPLETIONS_IDS,
    PROMPT_IDS,
    is_pool_dataset,
    prepare_pool_dataset,
    validate_pool_dataset,
)


@pytest.fixture
def args(tmp_path):  # the strict rule for empty completions: the row checks below name them
    return AEPOConfig(
        output_dir=str(tmp_path), bf16=False, report_to="none", num_annotations=2, empty_completions="error"
    )


def _pools(n=3, k=3):
    return [
        {
            "prompt": f"Prompt {i}?",
            "completions": [f" answer {i}.{j}" for j in range(k)],
            "scores": [float(j) for j in range(k)],
        }
        for i in range(n)
    ]


def test_detection(args):
    assert is_pool_dataset(Dataset.from_list(_pools()), args)
    assert not is_pool_dataset(Dataset.from_dict({"prompt": ["a"], "chosen": ["b"], "rejected": ["c"]}), args)
    assert not is_pool_dataset(None, args)
    renamed = Dataset.from_list([{"prompt": "p", "cands": ["a", "b"]}])
    assert not is_pool_dataset(renamed, args)
    args.completions_column = "cands"
    assert is_pool_dataset(renamed, args)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda rows: [{"completions": r["completions"]} for r in rows],
            r"row 0, field 'prompt': missing column 'prompt'",
        ),
        (
            lambda rows: rows[:1] + [{**rows[1], "completions": [" only one"]}] + rows[2:],
            r"row 1, field 'completions': 1 completion\(s\), fewer than num_annotations = 2",
        ),
        (
            lambda rows: rows[:2] + [{**rows[2], "completions": [" a", "   ", " c"]}],
            r"row 2, field 'completions'\[1\]: empty completion",
        ),
        (
            lambda rows: rows[:1] + [{**rows[1], "scores": [1.0]}] + rows[2:],
            r"row 1, field 'scores': expected one score per completion \(3\), got 1",
        ),
        (
            lambda rows: rows[:2] + [{**rows[2], "completions": [" a", [{"role": "assistant", "content": "b"}], " c"]}],
            None,
        ),  # mixed inside a list: Arrow refuses it already, or we name it
    ],
)
def test_validation_names_row_and_field(args, mutate, message):
    rows = mutate(_pools())
    try:
        dataset = Dataset.from_list(rows)
    except Exception:  # Arrow cannot even hold a list mixing strings and message lists
        assert message is None
        return
    with pytest.raises(ValueError, match=message or "mixed formats"):
        validate_pool_dataset(dataset, args)


def test_validation_mixed_formats_across_rows(args):
    conv = {
        "prompt": [{"role": "user", "content": "hi"}],
        "completions": [[{"role": "assistant", "content": "a"}], [{"role": "assistant", "content": "b"}]],
    }
    std = {"prompt": "hi", "completions": ["a", "b"]}
    with pytest.raises(ValueError, match=r"row 1, field 'prompt': mixed formats"):
        validate_pool_dataset([conv, std], args)  # any iterable of rows is validated
    bad = {
        "prompt": "hi",
        "completions": [[{"role": "assistant", "content": "a"}], [{"role": "assistant", "content": "b"}]],
    }
    with pytest.raises(ValueError, match=r"row 0, field 'completions'\[0\]: mixed formats"):
        validate_pool_dataset([bad], args)


def test_validation_embeddings_and_west_of_n(args):
    rows = [{"prompt": "p", "completions": ["a", "b", "c"], "embeddings": [[0.0, 1.0], [1.0, 0.0]]}]
    with pytest.raises(ValueError, match=r"row 0, field 'embeddings': expected one embedding per completion"):
        validate_pool_dataset(Dataset.from_list(rows), args)
    args.num_annotations = 4
    with pytest.raises(ValueError, match="fewer than num_annotations = 4"):
        validate_pool_dataset(Dataset.from_list(_pools(k=3)), args)
    args.selection_strategy = "west_of_n"  # annotates the whole pool: k is ignored, 2 completions suffice
    validate_pool_dataset(Dataset.from_list(_pools(k=3)), args)


def _trl_tokenize(tokenizer):
    """TRL's own `_prepare_dataset`, bound to a minimal stand-in trainer (it only reads `_tokenizer`)."""
    from trl import DPOTrainer

    class _Host:
        _tokenizer = tokenizer

    def tokenize(dataset, a):
        return DPOTrainer._prepare_dataset(_Host(), dataset, tokenizer, a, "train")

    return tokenize


@pytest.mark.parametrize("conversational", [False, True])
@pytest.mark.parametrize("pool_size", [3, 4])
def test_tokenization_is_trls(args, tiny_tokenizer, conversational, pool_size):
    """Each completion's tokens are exactly what DPOTrainer produces for it as a chosen completion."""
    rows = _pools(n=2, k=pool_size)
    if conversational:
        rows = [
            {
                "prompt": [{"role": "user", "content": r["prompt"]}],
                "completions": [[{"role": "assistant", "content": c}] for c in r["completions"]],
                "scores": r["scores"],
            }
            for r in rows
        ]
    tokenize = _trl_tokenize(tiny_tokenizer)

    def no_embed(dataset, a):
        return dataset.map(lambda r: {"embeddings": [[1.0, 0.0]] * len(r["completions"])})

    prepared = prepare_pool_dataset(Dataset.from_list(rows), args, tokenize, embed=no_embed)
    assert set(prepared.column_names) >= {"prompt", "completions", "scores", PROMPT_IDS, COMPLETIONS_IDS, "embeddings"}
    for row, original in zip(prepared, rows):
        assert len(row[COMPLETIONS_IDS]) == pool_size
        for j, completion in enumerate(original["completions"]):
            pair = Dataset.from_list([{"prompt": original["prompt"], "chosen": completion, "rejected": completion}])
            reference = tokenize(pair, args)[0]
            assert row[PROMPT_IDS] + row[COMPLETIONS_IDS][j] == reference["prompt_ids"] + reference["chosen_ids"]
            assert row[PROMPT_IDS] == reference["prompt_ids"]
        if not conversational:
            assert all(ids[-1] == tiny_tokenizer.eos_token_id for ids in row[COMPLETIONS_IDS])


def test_prompts_that_fill_max_length_are_dropped(args, tiny_tokenizer):
    rows = _pools(n=2) + [{"prompt": "long " * 200, "completions": [" a", " b"], "scores": [0.0, 1.0]}]
    args.max_length = 32
    prepared = prepare_pool_dataset(
        Dataset.from_list(rows),
        args,
        _trl_tokenize(tiny_tokenizer),
        embed=lambda d, a: d.map(lambda r: {"embeddings": [[1.0]] * len(r["completions"])}),
    )
    assert len(prepared) == 2
    assert prepared.column_names.count("embeddings") == 1


def test_precomputed_embeddings_are_kept(args, tiny_tokenizer):
    rows = [{**r, "embeddings": [[float(j), 1.0] for j in range(3)]} for r in _pools()]

    def must_not_embed(dataset, a):
        raise AssertionError("embeddings were given")

    prepared = prepare_pool_dataset(Dataset.from_list(rows), args, _trl_tokenize(tiny_tokenizer), embed=must_not_embed)
    assert prepared[0]["embeddings"] == rows[0]["embeddings"]
    # idempotent: an already prepared dataset is returned as is
    assert prepare_pool_dataset(prepared, args, None, embed=must_not_embed) is prepared
