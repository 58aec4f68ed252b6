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
    result = subprocess.run([sys.executable, "-m", "aepo_trainer.cli", *map(str, args)], capture_output=True,
                            text=True, env=ENV, timeout=timeout, cwd=cwd or REPO_ROOT)
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


def test_select_help_documents_every_aepo_config_field():
    from aepo_trainer.cli.args import aepo_fields

    text = aepo("select", "--help").stdout
    for field in aepo_fields():
        assert f"--{field.name}" in text
    flat = " ".join(text.split())
    assert "representativeness + lambda * diversity" in flat  # help comes from AEPOConfig metadata["help"]
    assert "{aepo,random,west_of_n,representativeness,kmedoids}" in flat  # choices from metadata["choices"]
    assert "--dry-run" in text and "--seed" in text and "--config" in text


# ----------------------------------------------------------------------------------------------------- generate
@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory, demo_pool_rows):
    rows = []
    for i, row in enumerate(demo_pool_rows[:5]):
        text = row["prompt"][:60]
        rows.append({"prompt": [{"role": "user", "content": text}], "id": i})
    return write_jsonl(tmp_path_factory.mktemp("prompts") / "prompts.jsonl", rows)


def test_generate_resumes_after_interruption_and_matches_an_uninterrupted_run(tmp_path, tiny_model_path,
                                                                              prompt_file):
    from aepo_trainer.cli import main

    common = ["generate", "--model", tiny_model_path, "--input", str(prompt_file), "--num_completions", 3,
              "--max_new_tokens", 8, "--batch_size", 2, "--seed", 7]
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
    result = aepo(*common, "--output", resumed)  # nothing left to do
    assert "5 of 5 prompts already" in result.stderr and read_jsonl(resumed) == rows


def test_generate_bad_prompt_column_exits_2(tmp_path, tiny_model_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "hi"}])
    result = aepo("generate", "--model", tiny_model_path, "--input", bad, "--output", tmp_path / "o.jsonl",
                  check_rc=2)
    assert "row 0 has no 'prompt' column" in result.stderr and "'question'" in result.stderr
    assert "Traceback" not in result.stderr
