"""The bad-input matrix: every defect of issue 17 (D1-D10 and the other rows) is stopped by the one validation pass,
before anything is embedded or paid — through `AEPOTrainer` (annotator call count 0, no store written) and through
`aepo select` (exit code 2, no traceback, no store file)."""

from __future__ import annotations

import json
import math
import os
import sqlite3

import pytest
from datasets import Dataset

from aepo_trainer import AEPOConfig, AEPOTrainer
from aepo_trainer.annotation.dataset_scores import DatasetScoresAnnotator
from aepo_trainer.data.validation import (
    MAX_LISTED_PROBLEMS,
    InputValidationError,
    is_blank,
    pool_problems,
    validate_pool_dataset,
)
from aepo_trainer.storage.annotations import AnnotationStore, AnnotationStoreError


class CountingScores(DatasetScoresAnnotator):
    """The dataset-scores annotator, counting its (paid, in real life) calls."""

    def __init__(self):
        super().__init__("scores")
        self.calls = 0

    def score(self, requests):
        self.calls += 1
        return super().score(requests)


def rows(n=4, size=3):
    return [
        {
            "prompt": f"Question {i}?",
            "completions": [f" answer {i}.{j}" for j in range(size)],
            "scores": [float(j) for j in range(size)],
            "embeddings": [[1.0, float(j), float(i)] for j in range(size)],
        }
        for i in range(n)
    ]


def edit(**changes):
    """rows() with `changes` = {"<column>": {row: value}} or {"<column>[j]": {row: value}} applied."""

    def apply(data):
        for key, per_row in changes.items():
            column, _, j = key.partition("[")
            for i, value in per_row.items():
                if j:
                    data[i][column][int(j.rstrip("]"))] = value
                elif value is _DROP:
                    data[i].pop(column)
                else:
                    data[i][column] = value
        return data

    return apply


_DROP = object()


def drop_column(name):
    return lambda data: [{k: v for k, v in r.items() if k != name} for r in data]


# (case id, how to break rows(), config overrides, what the message must contain: the field and the row)
TRAINER_CASES = [
    ("D1-nan-score", edit(**{"scores[1]": {2: math.nan}}), {}, "row 2, field 'scores'[1]"),
    ("D1-none-score", edit(**{"scores[0]": {3: None}}), {}, "row 3, field 'scores'[0]"),
    ("D2-zero-embedding", edit(**{"embeddings[2]": {1: [0.0, 0.0, 0.0]}}), {}, "row 1, field 'embeddings'[2]"),
    ("D3-null-embeddings-row", edit(embeddings={2: None}), {}, "row 2, field 'embeddings'"),
    ("D3-null-embedding-entry", edit(**{"embeddings[1]": {3: None}}), {}, "row 3, field 'embeddings'[1]"),
    ("D4-no-scores-column", drop_column("scores"), {}, "row 0, field 'scores': missing column 'scores'"),
    (
        "D8-pools-and-pairs",
        lambda d: [{**r, "chosen": "a", "rejected": "b"} for r in d],
        {},
        "row 0, field 'completions'",
    ),
    ("D9-no-completions-column", drop_column("completions"), {}, "row 0, field 'completions': missing column"),
    ("D9-empty-dataset", lambda d: [], {}, "the dataset is empty"),
    (
        "D10-zero-width-only",
        edit(**{"completions[2]": {1: "\u200b\u200d\ufeff "}}),
        {"empty_completions": "error"},  # the default, 'keep', keeps it (`aepo_trainer.data.empty_completions`)
        "row 1, field 'completions'[2]",
    ),
    (
        "short-pool",
        edit(completions={0: [" only one"]}, scores={0: [1.0]}, embeddings={0: [[1.0, 0, 0]]}),
        {},
        "row 0, field 'completions': 1 completion(s), fewer than num_annotations = 2",
    ),
    ("budget-below-one-prompt", lambda d: d, {"annotation_budget": 1}, "'annotation_budget': 1 cannot pay"),
    ("bad-dimension", edit(**{"embeddings[0]": {2: [1.0, 2.0]}}), {}, "row 2, field 'embeddings'[0]"),
]


def _dataset(data):
    if not data:
        return Dataset.from_dict({"prompt": [], "completions": []})
    return Dataset.from_list(data)


@pytest.mark.parametrize("case, breaks, overrides, expected", TRAINER_CASES, ids=[c[0] for c in TRAINER_CASES])
def test_trainer_stops_bad_input_before_paid_work(tiny_model_path, dpo_args, case, breaks, overrides, expected):
    annotator = CountingScores()
    args = AEPOConfig(**{**dpo_args, **overrides})
    with pytest.raises(InputValidationError) as info:
        AEPOTrainer(model=tiny_model_path, args=args, train_dataset=_dataset(breaks(rows())), annotator=annotator)
    assert expected in str(info.value), str(info.value)
    assert annotator.calls == 0  # nothing was paid
    assert not os.path.exists(os.path.join(args.output_dir, "annotations.sqlite"))  # nothing was written


def test_missing_reward_model_is_found_before_embedding(tiny_model_path, dpo_args, tmp_path):
    args = AEPOConfig(**dpo_args, annotator="reward_model", reward_model_name_or_path=str(tmp_path / "no-such-rm"))
    data = Dataset.from_list([{k: v for k, v in r.items() if k != "embeddings"} for r in rows()])  # would be embedded
    with pytest.raises(InputValidationError, match=r"'reward_model_name_or_path': the model folder .*no-such-rm"):
        AEPOTrainer(model=tiny_model_path, args=args, train_dataset=data)
    assert not os.path.exists(os.path.join(args.output_dir, "annotations.sqlite"))


def test_corrupt_store_is_found_before_training(tiny_model_path, dpo_args, tmp_path):  # D6
    store = tmp_path / "annotations.sqlite"
    store.write_bytes(b"this is not an sqlite file, it was overwritten by accident" * 20)
    annotator = CountingScores()
    args = AEPOConfig(**dpo_args, annotation_store=str(store))
    with pytest.raises(InputValidationError, match="'annotation_store': Annotation store .* corrupt or not an SQLite"):
        AEPOTrainer(model=tiny_model_path, args=args, train_dataset=Dataset.from_list(rows()), annotator=annotator)
    assert annotator.calls == 0


def test_store_errors_are_clear(tmp_path):  # D6, at the store itself
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"\x00garbage" * 200)
    with pytest.raises(AnnotationStoreError, match="corrupt or not an SQLite annotation store"):
        AnnotationStore(corrupt)
    locked = tmp_path / "locked.sqlite"
    AnnotationStore(locked).close()
    holder = sqlite3.connect(locked, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process mid-write
    try:
        store = AnnotationStore.__new__(AnnotationStore)
        with pytest.raises(AnnotationStoreError, match=r"locked by another process \(waited 0.2s"):
            AnnotationStore.__init__(store, locked, timeout=0.2)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_problems_are_listed_up_to_the_limit_then_counted(dpo_args):
    data = rows(n=MAX_LISTED_PROBLEMS + 5)
    for row in data:
        row["scores"][0] = None
    with pytest.raises(InputValidationError) as info:
        validate_pool_dataset(Dataset.from_list(data), AEPOConfig(**dpo_args), need_scores=True)
    message = str(info.value)
    assert message.startswith(
        f"train pool dataset: {MAX_LISTED_PROBLEMS + 5} problems found (nothing was annotated or paid for)"
    )
    assert message.count("field 'scores'[0]") == MAX_LISTED_PROBLEMS
    assert f"row {MAX_LISTED_PROBLEMS - 1}, field" in message and f"row {MAX_LISTED_PROBLEMS}, field" not in message
    assert message.endswith("... and 5 more problem(s)")
    assert len(info.value.problems) == MAX_LISTED_PROBLEMS + 5


def test_string_score_and_lone_surrogate_in_plain_rows(dpo_args):
    # Arrow cannot even hold these (a string among floats; invalid UTF-8): they arrive from JSON files as Python rows.
    data = rows()
    data[1]["scores"][2] = "high"
    data[3]["completions"][0] = " broken \ud83d text"
    problems = {(p.column, p.row): p for p in pool_problems(data, AEPOConfig(**dpo_args), need_scores=True)}
    assert set(problems) == {("scores[2]", 1), ("completions[0]", 3)}
    assert problems["scores[2]", 1].excerpt == "'high'"
    assert "lone surrogate code point U+D83D at character 8" in problems["completions[0]", 3].message
    assert "\\ud83d" in problems["completions[0]", 3].excerpt  # the excerpt itself is printable


def test_scores_are_only_required_by_dataset_scores(dpo_args):
    data = rows()
    data[0]["scores"][0] = None
    args = AEPOConfig(**dpo_args)
    assert pool_problems(data, args, need_scores=False) == []  # a reward model ignores them
    assert [(p.column, p.row) for p in pool_problems(data, args, need_scores=True)] == [("scores[0]", 0)]


@pytest.mark.parametrize(
    "text, blank",
    [
        ("\u200b", True),
        ("\u200b\u200c\u200d\u2060\ufeff", True),
        (" \t\n\u00a0\u3000", True),
        ("\u3164\u2800", True),  # Hangul filler, braille blank: letters/symbols that display nothing
        ("\u0301", True),  # a combining mark alone
        ("a\u200b", False),
        ("\u00e9", False),
        ("😀", False),
    ],
)
def test_is_blank(text, blank):
    assert is_blank(text) is blank


# --------------------------------------------------------------------------------------------------- CLI: exit 2


def _write_jsonl(path, data):
    with open(path, "w", encoding="utf-8") as f:
        for row in data:
            f.write(json.dumps(row) + "\n")  # ensure_ascii: a lone surrogate is written as \\udXXX
    return path


CLI_CASES = [
    ("D1-string-score", edit(**{"scores[0]": {1: "n/a"}}), [], "row 1, field 'scores'[0]"),
    ("D7-lone-surrogate", edit(**{"completions[1]": {2: " cut \udc80 here"}}), [], "row 2, field 'completions'[1]"),
    ("D8-pools-and-pairs", lambda d: [{**r, "chosen": "a", "rejected": "b"} for r in d], [], "pair column(s)"),
    ("D9-empty-file", lambda d: [], [], "the dataset is empty"),
    (
        "D10-invisible",
        edit(**{"completions[0]": {0: "\u200b\u2060"}}),
        ["--empty_completions", "error"],  # the default, 'keep', keeps it
        "row 0, field 'completions'[0]: empty",
    ),
    (
        "missing-reward-model",
        lambda d: d,
        ["--annotator", "reward_model", "--reward_model_name_or_path", "./no-such-reward-model"],
        "'reward_model_name_or_path': the model folder './no-such-reward-model' does not exist",
    ),
]


@pytest.mark.parametrize("case, breaks, flags, expected", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_select_exits_2_before_paid_work(tmp_path, case, breaks, flags, expected):
    from test_cli import aepo

    source = _write_jsonl(tmp_path / "pools.jsonl", breaks(rows()))
    out = tmp_path / "pairs.jsonl"
    result = aepo("select", "--input", source, "--output", out, *flags, check_rc=2, cwd=tmp_path)
    assert expected in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not out.exists() and not os.path.exists(f"{out}.annotations.sqlite")  # nothing paid, nothing written


def test_select_corrupt_store_exits_2(tmp_path):  # D6 through the CLI
    from test_cli import aepo

    source = _write_jsonl(tmp_path / "pools.jsonl", rows())
    store = tmp_path / "store.sqlite"
    store.write_bytes(b"not a database" * 100)
    result = aepo(
        "select", "--input", source, "--output", tmp_path / "o.jsonl", "--annotation_store", store, check_rc=2
    )
    assert "corrupt or not an SQLite annotation store" in result.stderr and "Traceback" not in result.stderr
