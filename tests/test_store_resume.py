"""Crash safety: a process killed mid-annotation, then resumed, re-pays nothing and loses nothing.

Each scenario runs tests/annotation_worker.py in subprocesses sharing one SQLite store. The worker's annotator
appends the store key of every item it pays for to a payment log; afterwards we compare that log with the store:

* re-paid = payment-log lines − distinct keys in the log (an item the annotator was paid for twice);
* lost    = paid keys without a score in the store;
* the budget ledger (`spent`) must equal the distinct paid keys and never exceed the budget.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from aepo_trainer.annotation import AnnotationStore, make_key

WORKER = Path(__file__).with_name("annotation_worker.py")
sys.path.insert(0, str(WORKER.parent))
import annotation_worker  # noqa: E402

IDENTITY = annotation_worker.identity()
N_PROMPTS, K = 40, 4


def _run(tmp_path: Path, **cfg) -> subprocess.CompletedProcess:
    cfg.setdefault("store", str(tmp_path / "annotations.sqlite"))
    cfg.setdefault("payment_log", str(tmp_path / "payments.log"))
    cfg.setdefault("report", str(tmp_path / "report.json"))
    return subprocess.run([sys.executable, str(WORKER), json.dumps(cfg)], capture_output=True, text=True, timeout=60)


def _spawn(tmp_path: Path, **cfg) -> subprocess.Popen:
    cfg.setdefault("store", str(tmp_path / "annotations.sqlite"))
    cfg.setdefault("payment_log", str(tmp_path / "payments.log"))
    return subprocess.Popen(
        [sys.executable, str(WORKER), json.dumps(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _all_keys(n_prompts=N_PROMPTS, k=K) -> list[str]:
    return [
        make_key(IDENTITY, r.prompt, c) for r in annotation_worker.make_requests(n_prompts, k) for c in r.completions
    ]


def _audit(tmp_path: Path, run_id: str = "default") -> dict:
    log = (tmp_path / "payments.log").read_text().split()
    counts = Counter(log)
    store = AnnotationStore(tmp_path / "annotations.sqlite")
    stored = store.get(counts)
    return dict(
        payments=len(log),
        distinct_paid=len(counts),
        repaid=len(log) - len(counts),
        lost=sum(1 for k in counts if k not in stored or stored[k].score is None),
        stored=len(store),
        spent=store.spent(run_id),
        ledger=store.ledger_summary(run_id),
        store=store,
    )


def _check_scores(store: AnnotationStore, keys: list[str]) -> None:
    by_key = {
        make_key(IDENTITY, r.prompt, c): annotation_worker.expected_score(r.prompt, c)
        for r in annotation_worker.make_requests(N_PROMPTS, K)
        for c in r.completions
    }
    got = store.get(keys)
    assert all(got[k].score == by_key[k] for k in keys)


def test_sigkill_at_annotator_call_then_resume(tmp_path):
    # run 1: 8 prompts (32 items) per annotate call, 8 items per annotator call; SIGKILL at the entry of call 7
    first = _run(tmp_path, kill_at_call=7)
    assert first.returncode == -signal.SIGKILL, first.stderr
    crashed = _audit(tmp_path)
    assert crashed["payments"] == 6 * 8 and crashed["repaid"] == 0 and crashed["lost"] == 0
    assert crashed["stored"] == 48
    # calls 5-8 belonged to the second annotate call: 32 items charged, 16 paid, 16 reserved when killed
    assert crashed["spent"] == 64 and crashed["ledger"] == {"paid": 48, "reserved": 16, "queued": 0}

    # run 2, same store: completes, re-annotating the 16 reserved items without charging them again
    second = _run(tmp_path)
    assert second.returncode == 0, second.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["recovered"] == 16 and report["reused"] == 48 and report["paid"] == 160 - 64
    final = _audit(tmp_path)
    assert final["payments"] == final["distinct_paid"] == N_PROMPTS * K  # zero re-paid
    assert final["repaid"] == 0 and final["lost"] == 0  # zero lost
    assert final["spent"] == N_PROMPTS * K and final["ledger"]["paid"] == N_PROMPTS * K
    keys = _all_keys()
    assert set(final["store"].get(keys)) == set(keys)
    _check_scores(final["store"], keys)

    # run 3: everything is in the store: nothing paid, nothing charged
    third = _run(tmp_path)
    assert third.returncode == 0, third.stderr
    assert json.loads((tmp_path / "report.json").read_text())["reused"] == N_PROMPTS * K
    assert _audit(tmp_path)["payments"] == N_PROMPTS * K


def test_sigkill_with_budget_never_exceeds_it(tmp_path):
    budget = 100  # 25 of the 40 prompts (k = 4)
    first = _run(tmp_path, budget=budget, kill_at_call=7)
    assert first.returncode == -signal.SIGKILL
    second = _run(tmp_path, budget=budget)
    assert second.returncode == 0, second.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["budget_exhausted"] and report["skipped"] == N_PROMPTS - budget // K
    final = _audit(tmp_path)
    assert final["spent"] == budget and final["payments"] == final["distinct_paid"] == budget
    assert final["lost"] == 0 and final["ledger"] == {"paid": budget, "reserved": 0, "queued": 0}
    # the skipped prompts were skipped whole: every stored prompt has its 4 scores
    stored_prompts = Counter(r.prompt for r in final["store"].records())
    assert set(stored_prompts.values()) == {K} and len(stored_prompts) == budget // K
    # a rerun with the same budget pays nothing; a larger budget pays only for the rest
    assert _run(tmp_path, budget=budget).returncode == 0
    assert _audit(tmp_path)["payments"] == budget
    assert _run(tmp_path, budget=budget + 20).returncode == 0
    final = _audit(tmp_path)
    assert final["spent"] == final["payments"] == final["distinct_paid"] == budget + 20


def test_sigkill_inside_an_annotator_call(tmp_path):
    """Killed after paying 3 items of an 8-item call: those 3 results never came back (the only re-payment possible),
    and the budget ledger still charges each key once."""
    first = _run(tmp_path, kill_at_call=5, kill_mode="mid", kill_after_items=3)
    assert first.returncode == -signal.SIGKILL
    assert _audit(tmp_path)["payments"] == 4 * 8 + 3
    assert _run(tmp_path).returncode == 0
    final = _audit(tmp_path)
    assert final["repaid"] == 3 and final["lost"] == 0
    assert final["distinct_paid"] == final["spent"] == final["stored"] == N_PROMPTS * K


def test_sigkill_from_outside_at_an_arbitrary_moment(tmp_path):
    proc = _spawn(tmp_path, sleep_per_item=0.004, budget=150)
    log = tmp_path / "payments.log"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if log.exists() and len(log.read_text().split()) >= 50:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at = len(log.read_text().split())
    assert _run(tmp_path, budget=150).returncode == 0
    final = _audit(tmp_path)
    # only the in-flight annotator call (<= batch_size = 8 items) can be paid twice; nothing is lost or overspent
    assert 0 <= final["repaid"] <= 8, final
    assert final["lost"] == 0
    assert final["spent"] == final["distinct_paid"] == 148  # 37 whole prompts of 4 fit in 150
    assert killed_at >= 50


def test_concurrent_processes_share_one_budget(tmp_path):
    """Three processes, one store and one run id, the same 40 prompts in different orders, budget 60."""
    budget = 60
    procs = [
        _spawn(tmp_path, budget=budget, order=order, sleep_per_item=0.005, prompts_per_call=4)
        for order in ("forward", "reverse", "forward")
    ]
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    final = _audit(tmp_path)
    assert final["spent"] <= budget
    assert final["spent"] == final["distinct_paid"] == final["payments"]  # nobody paid for a key twice
    assert final["lost"] == 0 and final["ledger"]["reserved"] == 0
    stored_prompts = Counter(r.prompt for r in final["store"].records())
    assert set(stored_prompts.values()) == {K}  # whole prompts only


@pytest.mark.parametrize("n", [0])
def test_worker_is_importable_without_torch(n):
    code = "import sys, aepo_trainer.annotation; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ},
    )
    assert out.stdout.strip() == "False"
