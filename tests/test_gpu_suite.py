"""benchmarks/gpu_suite.py: its CPU fallback runs every part (so the script is known to work before GPU time is spent),
and one part's time cap, crash or missing dependency never takes the rest of the suite down."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
SUITE = BENCHMARKS / "gpu_suite.py"
sys.path.insert(0, str(BENCHMARKS))

import gpu_suite  # noqa: E402
import gpu_suite_parts  # noqa: E402

TITLES = {
    "memory": "QLoRA / LoRA peak memory",
    "overhead": "AEPOTrainer step vs DPOTrainer step",
    "embedding": "Embedding throughput",
    "selection": "Selection vs the GEMM floor",
    "generation": "Generation throughput (transformers)",
}
# LoRA r = 16 on q, k, v, o, gate, up, down of the tiny configs (2 layers, hidden 64, MLP 128, 4 heads of 16, 2 KV
# heads): per layer 16 x ((64+64) + (64+32) + (64+32) + (64+64) + 2 x (64+128) + (128+64)) = 16,384.
TINY_LORA_PARAMETERS = 2 * 16 * (128 + 96 + 96 + 128 + 192 + 192 + 192)


def run_suite(out: Path, *args: str) -> tuple[dict, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, str(SUITE), "--out", str(out), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["gpu_suite.json", "gpu_suite.log", "gpu_suite.md"]
    return json.loads((out / "gpu_suite.json").read_text()), (out / "gpu_suite.md").read_text()


@pytest.mark.slow
def test_cpu_fallback_runs_or_skips_every_part_with_a_reason(tmp_path):
    report, markdown = run_suite(tmp_path, "--cpu", "--minilm", "random", "--budget_s", "800")
    assert report["mode"] == "cpu" and report["device"] == "cpu"
    assert list(report["parts"]) == list(gpu_suite.PART_NAMES)
    for part, entry in report["parts"].items():
        assert f"## {TITLES[part]}" in markdown
        for job in entry["jobs"]:
            assert job["status"] in ("ran", "skipped"), (part, job["status"], job.get("reason"), job.get("output_tail"))
            if job["status"] == "skipped":
                assert job["reason"], (part, job)
                assert f"| {job['name']} | skipped | {job['reason']} |" in markdown
            else:
                assert job["device"] == "cpu" and job["rows"], (part, job)

    memory = [j for j in report["parts"]["memory"]["jobs"] if j["status"] == "ran"]
    assert memory, "the LoRA job needs nothing beyond the package's own dependencies"
    for job in memory:
        for row in job["rows"]:
            assert row["tiny"] and row["max_length"] == 64 and row["sequences_per_step"] == 2
            assert row["steps"] == 2 and math.isfinite(row["last_loss"])
            assert row["trainable_parameters"] == TINY_LORA_PARAMETERS
            assert row["annotations_paid"] == 2 * row["steps"]  # k = 2 per pool, one pool per step, paid exactly once
            assert row["peak_rss_mib"] > 0 and "peak_allocated_gib" not in row  # CUDA figures only on CUDA
    qlora = next(j for j in report["parts"]["memory"]["jobs"] if j["spec"]["method"] == "qlora")
    if qlora["status"] == "skipped":
        assert "bitsandbytes" in qlora["reason"]
    else:
        assert [r["model"] for r in qlora["rows"]] == ["mistral-7b", "qwen2.5-0.5b"]

    (overhead,) = report["parts"]["overhead"]["jobs"][0]["rows"]
    assert overhead["time_ratio_aepo_over_dpo"] > 0 and overhead["annotations_paid"] > 0 and not overhead["bf16"]

    embedding = report["parts"]["embedding"]["jobs"][0]
    assert "random weights" in embedding["weights"]
    assert [r["batch_size"] for r in embedding["rows"]] == [8, 32]
    assert all(r["texts"] == 32 and r["dimension"] == 384 and r["dtype"] == "float32" for r in embedding["rows"])

    selection = report["parts"]["selection"]["jobs"][0]["rows"]
    assert [(r["B"], r["N"], r["k"]) for r in selection] == [(64, 8, 2), (64, 32, 2)]
    # k = 2 is solved exactly (exhaustively): never worse than the greedy + local search reference
    assert all(r["a"] > 0 and r["c"] > 0 and r["objective_a_minus_b"] >= -1e-9 for r in selection)

    generation = report["parts"]["generation"]["jobs"][0]["rows"]
    assert [r["status"] for r in generation] == ["ran", "ran", "ran", "skipped"]
    assert all(r["generated_tokens"] == 2 * 8 for r in generation[:3])
    assert "CUDA only" in generation[3]["reason"]


def test_a_suite_past_its_budget_skips_the_remaining_parts_with_that_reason(tmp_path):
    report, markdown = run_suite(tmp_path, "--cpu", "--budget_s", "0", "--parts", "selection", "generation")
    assert list(report["parts"]) == ["selection", "generation"]
    for entry in report["parts"].values():
        assert entry["status"] == "skipped"
        assert [j["reason"] for j in entry["jobs"]] == ["the suite's time budget (--budget_s) was spent"]
    assert "Status: **skipped**" in markdown


def _cpu_job(part: str, spec: dict) -> dict:
    return gpu_suite.job(part, "test", 60, spec)


def test_a_part_past_its_cap_is_killed_reported_and_keeps_its_finished_rows():
    # 100,000 interleaved repeats of a tiny selection: far more than the cap allows
    spec = dict(batch=4, sizes=[8], ks=[2], repeats=100_000, min_time=0.0, ref_budget=0.0)
    log = io.StringIO()
    record = gpu_suite.run_job(_cpu_job("selection", spec), "cpu", timeout=6, log=log)
    assert record["status"] == "timed out"
    assert record["reason"] == "killed at its time cap of 6 s; 0 row(s) finished"
    assert "===== selection: test" in log.getvalue()


def test_a_crashing_part_is_reported_failed_with_its_error():
    record = gpu_suite.run_job(_cpu_job("generation", dict(arch="no-such-architecture")), "cpu", 120, io.StringIO())
    assert record["status"] == "failed"
    assert "no-such-architecture" in record["reason"] and record["reason"].split(":")[0].endswith("Error")
    assert "Traceback" in record["output_tail"]


def test_missing_dependencies_skip_a_part_with_the_reason(monkeypatch):
    monkeypatch.setattr(gpu_suite_parts, "missing", lambda *names: [n for n in names if n in ("bitsandbytes", "trl")])
    spec = dict(archs=["mistral-7b"], max_lengths=[64], steps=1, pool_size=4)
    assert gpu_suite_parts.run_memory(dict(spec, method="qlora"), "cpu", print) == {
        "status": "skipped",
        "reason": "trl not installed",
        "rows": [],
    }
    monkeypatch.setattr(gpu_suite_parts, "missing", lambda *names: [n for n in names if n == "bitsandbytes"])
    skipped = gpu_suite_parts.run_memory(dict(spec, method="qlora"), "cpu", print)
    assert skipped["status"] == "skipped" and skipped["reason"].startswith("bitsandbytes is not installed")
    monkeypatch.setattr(gpu_suite_parts, "missing", lambda *names: list(names))
    assert gpu_suite_parts.run_overhead({"argv": []}, "cpu", print)["reason"] == "trl, datasets not installed"
    assert gpu_suite_parts.run_embedding({}, "cpu", print)["reason"] == "sentence-transformers not installed"


def test_the_report_renders_from_its_json_alone(tmp_path):
    report = {
        "started": "2026-12-02T00:00:00+00:00",
        "budget_s": 450,
        "wall_s": 12.0,
        "device": "NVIDIA H100 80GB HBM3",
        "mode": "gpu",
        "command": "python benchmarks/gpu_suite.py --out x",
        "environment": {"torch": "2.11.0"},
        "parts": {
            "memory": {
                "status": "ran",
                "jobs": [
                    {
                        "name": "mistral-7b qlora",
                        "status": "ran",
                        "cap_s": 150,
                        "wall_s": 80.0,
                        "rows": [
                            {
                                "model": "mistral-7b",
                                "tiny": False,
                                "parameters": 7_241_732_096,
                                "method": "qlora",
                                "max_length": 1024,
                                "sequences_per_step": 2,
                                "peak_allocated_gib": 5.5,
                                "peak_reserved_gib": 6.0,
                                "peak_device_gib": 6.6,
                                "fits_24gb_card": True,
                                "docs_computed_total_gib": 6.1,
                                "docs_computed_tensors_gib": 5.7,
                                "s_per_step": 1.25,
                                "trainable_parameters": 41_943_040,
                            }
                        ],
                    }
                ],
            }
        },
    }
    from gpu_suite_report import markdown

    text = markdown(report)
    assert (
        "| mistral-7b (7.24 B) | QLoRA (NF4 + double quant) | 1024 | 2 | 5.50 | 6.00 | 6.60 | yes | "
        "~6.1 total, ~5.7 tensors | 1.250 | 41,943,040 |"
    ) in text
    assert "| mistral-7b qlora | ran |  | 80.0 | 150 |" in text


def test_a_failing_generation_backend_leaves_the_other_backends_rows(monkeypatch):
    monkeypatch.setattr(
        gpu_suite_parts,
        "GENERATION_BACKENDS",
        (("eager, dynamic cache", "eager", None, False), ("bogus", "no-such-attention", None, False)),
    )
    emitted = []
    spec = dict(arch="qwen2.5-0.5b", batch=2, max_new_tokens=3, repeats=1)
    result = gpu_suite_parts.run_generation(spec, "cpu", lambda r: emitted.append(len(r["rows"])))
    ran, failed = result["rows"]
    assert ran["status"] == "ran" and ran["generated_tokens"] == 2 * 3 and ran["tokens_per_s"] > 0
    assert failed["status"] == "failed" and "no-such-attention" in failed["reason"]
    assert emitted == [1, 2]  # the result file is rewritten after every backend
