"""The `aepo` command, run as a subprocess on real AlpacaEval pools and a tiny offline model.

Covered: `--help` (fast, flags from AEPOConfig), `generate` (resumes after an interruption and a torn last line,
writes the same pools as an uninterrupted run), `select` (end to end with the real MiniLM embedder; dry-run counts;
budget exhausted -> exit 3 with partial output; a crash mid-annotation then a rerun: zero annotations re-paid and
the same output as an uninterrupted run), `stats` (table + PNG), and the exit code 2 errors that name the file, row,
field or column.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DEMO_POOLS, REPO_ROOT

ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TQDM_MININTERVAL": "5",
    "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
}
DEMO_PROMPTS = 48


def aepo(*args, timeout=180, check_rc=0, cwd=None) -> subprocess.CompletedProcess:
    """Run `python -m aepo_trainer.cli *args`; assert its exit code (unless check_rc is None)."""
    result = subprocess.run(
        [sys.executable, "-m", "aepo_trainer.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
        cwd=cwd or REPO_ROOT,
    )
    if check_rc is not None:
        assert result.returncode == check_rc, (result.returncode, result.stdout[-3000:], result.stderr[-3000:])
    return result


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path, rows) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return Path(path)


# --------------------------------------------------------------------------------------------------------- help
def test_top_level_help_is_fast_and_lists_commands_and_exit_codes():
    started = time.perf_counter()
    result = aepo("--help")
    assert time.perf_counter() - started < 5  # no torch/trl import for the top-level help
    for word in ("generate", "select", "stats", "exit codes", "budget exhausted"):
        assert word in result.stdout
    assert aepo("frobnicate", check_rc=2).stderr.count("invalid choice") == 1


def test_select_help_documents_every_aepo_config_field(capsys):
    from aepo_trainer.cli import main
    from aepo_trainer.cli.args import aepo_fields
    from aepo_trainer.config import TRAINING_ONLY_FIELDS

    assert main(["select", "--help"]) == 0
    text = capsys.readouterr().out
    for field in aepo_fields():
        if field.name != "reward_scale" and field.name not in TRAINING_ONLY_FIELDS:  # training settings
            assert f"--{field.name}" in text
    flat = " ".join(text.split())
    assert "representativeness + lambda * diversity" in flat  # help comes from AEPOConfig metadata["help"]
    from aepo_trainer.choices import SELECTION_STRATEGIES

    assert "{" + ",".join(SELECTION_STRATEGIES) + "}" in flat  # choices from metadata["choices"]
    assert "--dry-run" in text and "--seed" in text and "--config" in text


# ----------------------------------------------------------------------------------------------------- generate
@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory, demo_pool_rows):
    rows = []
    for i, row in enumerate(demo_pool_rows[:5]):
        text = row["prompt"][:60]
        rows.append({"prompt": [{"role": "user", "content": text}], "id": i})
    return write_jsonl(tmp_path_factory.mktemp("prompts") / "prompts.jsonl", rows)


def test_generate_resumes_after_interruption_and_matches_an_uninterrupted_run(tmp_path, tiny_model_path, prompt_file):
    from aepo_trainer.cli import main

    common = [
        "generate",
        "--model",
        tiny_model_path,
        "--input",
        str(prompt_file),
        "--num_completions",
        3,
        "--max_new_tokens",
        8,
        "--batch_size",
        2,
        "--seed",
        7,
    ]
    reference = tmp_path / "reference.jsonl"
    assert main([str(a) for a in common + ["--output", reference]]) == 0  # in-process: the uninterrupted run

    resumed = tmp_path / "pools.jsonl"
    aepo(*common, "--output", resumed, "--max_prompts", 2)  # "interrupted" after the first batch
    assert len(read_jsonl(resumed)) == 2
    with open(resumed, "a", encoding="utf-8") as f:  # and a crash in the middle of appending a line
        f.write('{"prompt": [{"role": "user", "content": "What ar')
    result = aepo(*common, "--output", resumed)
    assert "2 of 5 prompts already" in result.stderr and "truncated last line" in result.stderr
    rows = read_jsonl(resumed)
    assert rows == read_jsonl(reference)
    assert [r["id"] for r in rows] == [0, 1, 2, 3, 4]
    for row in rows:  # conversational prompts give conversational completions
        assert len(row["completions"]) == 3
        assert all(c[0]["role"] == "assistant" and isinstance(c[0]["content"], str) for c in row["completions"])
    assert main([str(a) for a in common + ["--output", resumed]]) == 0  # nothing left to do
    assert read_jsonl(resumed) == rows


def test_generate_bad_prompt_column_exits_2(tmp_path, tiny_model_path, capsys):
    from aepo_trainer.cli import main

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "hi"}])
    assert (
        main(["generate", "--model", tiny_model_path, "--input", str(bad), "--output", str(tmp_path / "o.jsonl")]) == 2
    )
    err = capsys.readouterr().err
    assert "row 0 has no 'prompt' column" in err and "'question'" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------------------- select
def _bag_of_words_embeddings(completions: list[str], dim: int = 48) -> list[list[float]]:
    """A cheap deterministic text embedding (hashed word counts) for the tests of resume/budget/dry-run mechanics,
    which read it from the `embeddings` column; the end-to-end test uses the real MiniLM embedder instead."""
    import hashlib

    vectors = []
    for text in completions:
        v = [0.0] * dim
        for word in text.lower().split():
            v[int.from_bytes(hashlib.md5(word.encode()).digest()[:4], "little") % dim] += 1.0
        vectors.append(v)
    return vectors


@pytest.fixture(scope="module")
def embedded_pools(tmp_path_factory, demo_pool_rows) -> Path:
    """The 48 real demo pools with an `embeddings` column (precomputed embeddings: no embedder in the subprocess)."""
    rows = [{**row, "embeddings": _bag_of_words_embeddings(row["completions"])} for row in demo_pool_rows]
    return write_jsonl(tmp_path_factory.mktemp("pools") / "pools.jsonl", rows)


@pytest.fixture(scope="module")
def reference_pairs(tmp_path_factory, embedded_pools) -> list[dict]:
    """An uninterrupted `aepo select` run (in-process: `main()` is the console script's entry point)."""
    from aepo_trainer.cli import main

    out = tmp_path_factory.mktemp("reference") / "pairs.jsonl"
    assert main(["select", "--input", str(embedded_pools), "--output", str(out), "--batch_size", "8"]) == 0
    return read_jsonl(out)


def _check_pairs(pairs: list[dict], pools: list[dict]):
    by_prompt = {json.dumps(p["prompt"]): p for p in pools}
    for pair in pairs:
        pool = by_prompt[json.dumps(pair["prompt"])]
        assert pair["chosen_score"] >= pair["rejected_score"]
        assert pair["chosen"] == pool["completions"][pair["chosen_index"]]
        assert pair["rejected"] == pool["completions"][pair["rejected_index"]]
        assert pair["selected_indices"] == sorted(pair["selected_indices"]) and len(pair["selected_indices"]) == 2
        assert {pair["chosen_index"], pair["rejected_index"]} <= set(pair["selected_indices"])
        assert pair["selected_scores"] == [pool["scores"][i] for i in pair["selected_indices"]]
        assert pair["chosen_score"] == pool["scores"][pair["chosen_index"]]
        assert pair["dataset"] == pool["dataset"]  # per-prompt columns are kept
        assert "generators" not in pair and "completions" not in pair  # per-candidate columns are not


def test_select_end_to_end_with_the_real_minilm_embedder(tmp_path, minilm_path, demo_pool_rows, monkeypatch):
    cache = tmp_path / "datasets-cache"
    monkeypatch.setitem(ENV, "HF_DATASETS_CACHE", str(cache))  # embeddings are cached there, not in ~/.cache
    out = tmp_path / "pairs.parquet"
    result = aepo(
        "select",
        "--input",
        DEMO_POOLS,
        "--output",
        out,
        "--embedding_model",
        minilm_path,
        "--max_prompts",
        12,
        "--batch_size",
        5,
    )
    import pyarrow.parquet as pq

    pairs = pq.read_table(out).to_pylist()
    assert list(pairs[0])[:9] == [
        "prompt",
        "chosen",
        "rejected",
        "chosen_score",
        "rejected_score",
        "chosen_index",
        "rejected_index",
        "selected_indices",
        "selected_scores",
    ]
    assert 0 < len(pairs) <= 12
    _check_pairs(pairs, demo_pool_rows)
    assert "annotations: paid 24" in result.stderr and "prompt/s" in result.stderr  # progress bar with a rate
    assert Path(f"{out}.annotations.sqlite").exists()
    assert list(cache.rglob("*.arrow"))  # the embeddings are cached: a rerun does not embed again


def test_select_pairs_do_not_depend_on_the_batch_size(tmp_path, embedded_pools, reference_pairs, demo_pool_rows):
    from aepo_trainer.cli import main

    _check_pairs(reference_pairs, demo_pool_rows)
    # one best-vs-worst pair per prompt, but for the one prompt where random k (the default) drew two equal scores
    assert len(reference_pairs) == DEMO_PROMPTS - 1
    out = tmp_path / "pairs.jsonl"
    assert main(["select", "--input", str(embedded_pools), "--output", str(out), "--batch_size", "48"]) == 0
    assert read_jsonl(out) == reference_pairs


def _store_counts(path: str, run_id: str) -> tuple[int, int]:
    from aepo_trainer.annotation import AnnotationStore

    store = AnnotationStore(path)
    return len(store), store.spent(run_id)


def test_dry_run_budget_exhaustion_and_resume_pay_each_annotation_once(
    tmp_path, embedded_pools, reference_pairs, capsys
):
    from aepo_trainer.cli import main

    out = tmp_path / "pairs.jsonl"
    store = f"{out}.annotations.sqlite"
    run_id = f"aepo-select:{out}"
    base = ["select", "--input", str(embedded_pools), "--output", str(out), "--batch_size", "8"]

    assert main(base + ["--dry-run", "--annotation_budget", "41"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "annotations needed 96" in text and "already in the store 0" in text and "would be paid 96" in text
    assert "prompts covered 20 of 48" in text  # prompts are covered whole: 20 x 2 <= 41
    assert not out.exists() and _store_counts(store, run_id) == (0, 0)  # a dry run calls no annotator

    result = aepo(*base, "--annotation_budget", 41, check_rc=3)  # budget exhausted: exit 3, partial output
    assert "Annotation budget exhausted: 40/41" in result.stderr
    assert read_jsonl(out) == reference_pairs[:20]
    assert _store_counts(store, run_id) == (40, 40)

    assert main(base + ["--dry-run"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "already in the store 40" in text and "would be paid 56" in text

    assert main(base) == 0  # resume without a budget: only the missing annotations are paid
    assert "annotations: paid 56 reused from store 40" in " ".join(capsys.readouterr().err.split())
    assert _store_counts(store, run_id) == (96, 96)
    assert read_jsonl(out) == reference_pairs


CRASH_AFTER_TWO_CALLS = """
import os, sys
from aepo_trainer.annotation import DatasetScoresAnnotator
score, calls = DatasetScoresAnnotator.score, []
def crashing_score(self, requests):
    calls.append(1)
    if len(calls) == 3:
        os._exit(137)  # like `kill -9` in the middle of the third annotator call
    return score(self, requests)
DatasetScoresAnnotator.score = crashing_score
from aepo_trainer.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_select_killed_mid_annotation_resumes_without_paying_twice(tmp_path, embedded_pools, reference_pairs):
    out = tmp_path / "pairs.jsonl"
    args = [
        "select",
        "--input",
        str(embedded_pools),
        "--output",
        str(out),
        "--batch_size",
        "8",
        "--annotation_batch_size",
        "16",
    ]  # one annotator call per batch of 8 prompts (16 annotations)
    crashed = subprocess.run(
        [sys.executable, "-c", CRASH_AFTER_TWO_CALLS, *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=180,
        cwd=REPO_ROOT,
    )
    assert crashed.returncode == 137, crashed.stderr[-2000:]
    assert not out.exists()  # the output is only written at the end
    store, run_id = f"{out}.annotations.sqlite", f"aepo-select:{out}"
    # the two finished calls are in the store; the killed call's 16 items stay charged to the run (reserved)
    assert _store_counts(store, run_id) == (32, 48)

    result = aepo(*args)  # rerun the same command
    flat = " ".join(result.stderr.split())
    # 32 reused, the 16 reserved ones annotated under their existing charge, only the 48 never charged are paid
    assert "annotations: paid 48 reused from store 32" in flat
    assert _store_counts(store, run_id) == (96, 96)  # every annotation stored, and charged exactly once
    assert read_jsonl(out) == reference_pairs  # same pairs as an uninterrupted run


def test_select_bad_column_exits_2_naming_the_column(tmp_path, demo_pool_rows):
    bad = write_jsonl(
        tmp_path / "bad.jsonl",
        [{"prompt": r["prompt"], "candidates": r["completions"], "scores": r["scores"]} for r in demo_pool_rows[:3]],
    )
    result = aepo("select", "--input", bad, "--output", tmp_path / "o.jsonl", check_rc=2)
    assert "missing column 'completions'" in result.stderr and "'candidates'" in result.stderr
    assert "--completions_column" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda rows: rows[2].update(completions="just one string"), "row 2, field 'completions'"),
        (lambda rows: rows[1]["scores"].pop(), "row 1, field 'scores': expected one score per completion (8)"),
        (lambda rows: rows[3]["completions"].__setitem__(5, "  "), "row 3, field 'completions'[5]: empty completion"),
        (lambda rows: [r.pop("scores") for r in rows], "missing column 'scores', which --annotator dataset_scores"),
    ],
)
def test_select_bad_rows_exit_2_naming_row_and_field(tmp_path, demo_pool_rows, capsys, mutate, expected):
    import copy

    from aepo_trainer.cli import main

    rows = copy.deepcopy(demo_pool_rows[:4])
    mutate(rows)
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    flags = ["--empty_completions", "error"]  # the default, 'keep', keeps an empty completion
    assert main(["select", "--input", str(bad), "--output", str(tmp_path / "o.jsonl"), *flags]) == 2
    assert expected in capsys.readouterr().err


def test_input_errors_exit_2(tmp_path, capsys):
    from aepo_trainer.cli import main

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a", "completions": ["x", "y"]}\n{"prompt": \n')
    cases = [
        (["select", "--input", str(tmp_path / "missing.jsonl"), "--output", "o.jsonl"], "no such file"),
        (["select", "--input", str(broken), "--output", "o.jsonl"], "line 2 is not valid JSON"),
        (
            ["select", "--input", str(broken), "--output", "o.jsonl", "--selection_strategy", "greedy"],
            "invalid choice: 'greedy'",
        ),
        (
            ["select", "--input", str(broken), "--output", "o.jsonl", "--num_annotations", "1"],
            "AEPOConfig.num_annotations=1 is invalid: expected an integer >= 2",
        ),
        (["select", "--output", "o.jsonl"], "the following arguments are required: --input"),
    ]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        assert expected in capsys.readouterr().err, argv


def test_yaml_config_sets_defaults_and_flags_override(tmp_path, embedded_pools, capsys):
    from aepo_trainer.cli import main

    config = tmp_path / "select.yaml"
    config.write_text(
        f"input: {embedded_pools}\nnum_annotations: 3\nannotation_budget: 30\n"
        "learning_rate: 1.0e-6\n"  # a training key (DPOConfig): ignored
        "env:\n  AEPO_TEST_VARIABLE: from-yaml\n"
    )
    out = str(tmp_path / "o.jsonl")
    assert main(["select", "--config", str(config), "--output", out, "--dry-run", "--annotation_budget", "12"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "annotations needed 144 (3 per prompt)" in text and "budget 12" in text and "prompts covered 4 of 48" in text
    assert os.environ.pop("AEPO_TEST_VARIABLE") == "from-yaml"

    config.write_text("num_anotations: 3\n")
    assert main(["select", "--config", str(config), "--input", "x.jsonl", "--output", out]) == 2
    assert "unknown key(s) 'num_anotations'" in capsys.readouterr().err


# -------------------------------------------------------------------------------------------------------- stats
def test_stats_prints_the_table_and_writes_a_png(tmp_path, embedded_pools):
    png, table = tmp_path / "stats.png", tmp_path / "stats.json"
    result = aepo(
        "stats",
        "--input",
        embedded_pools,
        "--num_annotations",
        2,
        4,
        "--annotation_budget",
        100,
        "--plot",
        png,
        "--json",
        table,
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    records = json.loads(table.read_text())["strategies"]
    labels = {(r["strategy"], r["k"]) for r in records}
    for label in ("aepo λ=0", "aepo λ=0.5", "aepo λ=1", "aepo λ=2", "random", "representativeness", "kmedoids"):
        assert (label, 2) in labels and (label, 4) in labels
        assert label in result.stdout
    assert ("west_of_n", "N") in labels
    by = {(r["strategy"], r["k"]): r for r in records}
    assert by[("aepo λ=1", 2)]["annotations"] == 96 and by[("west_of_n", "N")]["annotations"] == 48 * 8
    assert by[("aepo λ=1", 2)]["prompts_covered"] == 48 and by[("aepo λ=1", 4)]["prompts_covered"] == 25
    assert by[("west_of_n", "N")]["prompts_covered"] == 12
    # λ trades representativeness for diversity; a larger λ never gives a less diverse pair
    assert by[("aepo λ=0", 2)]["representativeness"] >= by[("aepo λ=2", 2)]["representativeness"]
    assert by[("aepo λ=0", 2)]["diversity"] <= by[("aepo λ=2", 2)]["diversity"]
    assert by[("west_of_n", "N")]["gap"] >= max(r["gap"] for r in records)  # the whole pool has the widest gap
    for column in ("representativeness", "diversity", "best score", "gap", "covered/48 (budget 100)"):
        assert column in result.stdout


def test_select_with_a_human_queue_exits_4_then_finishes_once_labelled(
    tmp_path, embedded_pools, demo_pool_rows, capsys
):
    from aepo_trainer.cli import main

    out = tmp_path / "pairs.jsonl"
    argv = [
        "select",
        "--input",
        str(embedded_pools),
        "--output",
        str(out),
        "--annotator",
        "human",
        "--max_prompts",
        "6",
        "--batch_size",
        "4",
    ]
    assert main(argv) == 4
    err = " ".join(capsys.readouterr().err.split())
    queue = Path(f"{out}.annotation_queue.jsonl")
    assert "12 annotation(s) are waiting for labels in" in err and str(queue) in err and not out.exists()
    items = read_jsonl(queue)
    assert len(items) == 12  # k = 2 selected items for each of the 6 prompts, from both batches
    with open(queue.with_name(queue.stem + ".labels.jsonl"), "w") as f:  # the labelling team's answers
        for item in items:
            f.write(json.dumps({"id": item["id"], "score": len(item["completion"])}) + "\n")
    assert main(argv) == 0
    pairs = read_jsonl(out)
    assert len(pairs) == 6 and all(len(p["chosen"]) > len(p["rejected"]) for p in pairs)
    assert main(argv) == 0 and len(read_jsonl(queue)) == 12  # rerun: nothing queued twice


# ----------------------------------------------------------------------------------------------------------- io
@pytest.mark.parametrize(
    "name", ["pools.jsonl", "pools.jsonl.gz", "pools.json", "pools.parquet", "pools.csv", "pools_folder"]
)
def test_every_output_format_reads_back(tmp_path, demo_pool_rows, name):
    from aepo_trainer.cli.io import read_rows, write_rows

    rows = [{k: r[k] for k in ("prompt", "completions", "scores", "dataset")} for r in demo_pool_rows[:3]]
    path = write_rows(rows, str(tmp_path / name))
    assert read_rows(path) == rows
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # atomic writes leave no temporary file
