"""AnnotationService + AnnotationStore: keys, reuse, budget ledger, whole-prompt skipping, bad annotator output."""

from __future__ import annotations

import math
import os
import sqlite3
import threading
import time

import pytest

from aepo_trainer.annotation import (
    AnnotationError,
    AnnotationOutcome,
    AnnotationRequest,
    AnnotationService,
    AnnotationStore,
    Annotator,
    BudgetExhausted,
    RewardFunctionAnnotator,
    make_key,
)


class CountingAnnotator(Annotator):
    """Scores = completion length; records every item it is asked to score."""

    def __init__(self, identity="counting", values=None):
        self.identity = identity
        self.calls: list[list[tuple]] = []
        self.values = values  # optional: completion -> score override

    def score(self, requests):
        self.calls.append([(r.prompt, c) for r in requests for c in r.completions])
        out = []
        for r in requests:
            out.append([self.values.get(c, float(len(c))) if self.values else float(len(c)) for c in r.completions])
        return out

    @property
    def items(self):
        return [item for call in self.calls for item in call]


def _requests(n=4, k=3, tag=""):
    return [
        AnnotationRequest(f"prompt {i}{tag}", [f"c{i}-" + "x" * j for j in range(k)], indices=[5, 1, 3][:k])
        for i in range(n)
    ]


@pytest.fixture
def store(tmp_path):
    return AnnotationStore(tmp_path / "store.sqlite")


def test_store_is_wal_and_keys_are_stable(store, tmp_path):
    conn = sqlite3.connect(store.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    k1 = make_key("a", "p", "c")
    assert k1 == make_key("a", "p", "c") and len(k1) == 64
    assert k1 != make_key("b", "p", "c") and k1 != make_key("a", "p2", "c") and k1 != make_key("a", "p", "c2")
    msgs = [{"role": "user", "content": "hi"}]
    assert make_key("a", msgs, "c") == make_key("a", [{"content": "hi", "role": "user"}], "c")  # canonical JSON
    assert make_key("a", "p", "c") != make_key("a", "p", "c", context="subset")
    # framing is unambiguous: moving text between fields changes the key
    assert make_key("a", "pc", "") != make_key("a", "p", "c")


def test_annotate_pays_once_and_reuses(store):
    ann = CountingAnnotator()
    svc = AnnotationService(ann, store, batch_size=4)
    out = svc.annotate(_requests())
    assert isinstance(out, AnnotationOutcome)
    assert out.scores == [[3.0, 4.0, 5.0]] * 4
    assert (out.paid, out.reused, out.skipped, out.budget_exhausted, out.invalid) == (12, 0, [], False, 0)
    assert [len(c) for c in ann.calls] == [4, 4, 4]  # batch_size items per annotator call, across prompts
    assert svc.spent == 12 and svc.remaining is None and len(store) == 12
    again = AnnotationService(ann, store).annotate(_requests())
    assert again.scores == out.scores and again.paid == 0 and again.reused == 12
    assert len(ann.items) == 12  # nothing scored twice
    # a different run reuses the annotations for free too (they are keyed by annotator, not by run)
    other = AnnotationService(ann, store, run_id="other", budget=0)
    assert other.annotate(_requests()).scores == out.scores and other.spent == 0


def test_annotator_only_sees_missing_selected_items(store):
    ann = CountingAnnotator()
    svc = AnnotationService(ann, store)
    svc.annotate([AnnotationRequest("p", ["a", "bb"], [0, 4], row={"x": 1})])
    out = svc.annotate([AnnotationRequest("p", ["bb", "ccc", "a"], [4, 6, 0])])
    assert out.scores == [[2.0, 3.0, 1.0]] and out.paid == 1 and out.reused == 2
    assert ann.calls[-1] == [("p", "ccc")]


def test_duplicate_items_in_one_call_are_paid_once(store):
    ann = CountingAnnotator()
    svc = AnnotationService(ann, store)
    out = svc.annotate([AnnotationRequest("p", ["a", "a", "b"]), AnnotationRequest("p", ["b", "c"])])
    assert out.scores == [[1.0, 1.0, 1.0], [1.0, 1.0]]
    assert out.paid == 3 and sorted(c for _, c in ann.items) == ["a", "b", "c"]


def test_budget_skips_whole_prompts_and_never_exceeds(store, caplog):
    ann = CountingAnnotator()
    svc = AnnotationService(ann, store, budget=7)
    out = svc.annotate(_requests(n=4, k=3))
    assert out.skipped == [2, 3] and out.budget_exhausted
    assert out.scores[2] is None and out.scores[3] is None and out.scores[0] == [3.0, 4.0, 5.0]
    assert out.paid == 6 and svc.spent == 6 and svc.remaining == 1
    assert "6/7 annotations spent" in caplog.text
    # a smaller prompt still fits in what is left; cached prompts are always served
    out2 = svc.annotate([AnnotationRequest("tiny", ["z"])] + _requests(n=2, k=3))
    assert out2.scores[0] == [1.0] and out2.paid == 1 and out2.reused == 6 and not out2.budget_exhausted
    assert svc.spent == 7 and svc.remaining == 0
    out3 = svc.annotate(_requests(n=4, k=3))
    assert out3.skipped == [2, 3] and out3.paid == 0
    assert len(ann.items) == 7


def test_budget_exhausted_can_raise_with_the_outcome(store):
    svc = AnnotationService(CountingAnnotator(), store, budget=3, on_budget_exhausted="raise")
    with pytest.raises(BudgetExhausted, match=r"3/3 annotations spent for run 'default'") as info:
        svc.annotate(_requests(n=2, k=3))
    err = info.value
    assert err.spent == 3 and err.budget == 3 and err.outcome.skipped == [1]
    assert err.outcome.scores[0] == [3.0, 4.0, 5.0]
    assert len(store) == 3  # what was paid for is saved


def test_zero_budget_pays_nothing(store):
    ann = CountingAnnotator()
    out = AnnotationService(ann, store, budget=0).annotate(_requests(n=2))
    assert out.skipped == [0, 1] and ann.calls == [] and len(store) == 0


def test_budget_is_per_run_and_survives_restarts(tmp_path):
    path = tmp_path / "s.sqlite"
    ann = CountingAnnotator()
    AnnotationService(ann, AnnotationStore(path), budget=6, run_id="A").annotate(_requests(n=2, tag="a"))
    svc = AnnotationService(ann, AnnotationStore(path), budget=6, run_id="A")
    assert svc.spent == 6
    assert svc.annotate(_requests(n=1, tag="b")).skipped == [0]
    assert (
        AnnotationService(ann, AnnotationStore(path), budget=6, run_id="B").annotate(_requests(n=1, tag="b")).paid == 3
    )


def test_wrong_number_of_scores_is_a_clear_error_and_pays_no_twice(store):
    class Short(CountingAnnotator):
        def score(self, requests):
            out = super().score(requests)
            out[-1] = out[-1][:-1]
            return out

    svc = AnnotationService(Short("short"), store)
    with pytest.raises(AnnotationError, match=r"Annotator short returned 2 scores for request 1 .*3 completions"):
        svc.annotate(_requests(n=2))
    assert len(store) == 0 and svc.spent == 6  # charged once, nothing saved
    assert store.ledger_summary()["reserved"] == 6
    fixed = AnnotationService(CountingAnnotator("short"), store)  # a fixed annotator with the same identity
    out = fixed.annotate(_requests(n=2))
    assert out.paid == 0 and out.recovered == 6 and fixed.spent == 6


def test_wrong_number_of_score_lists(store):
    class Missing(CountingAnnotator):
        def score(self, requests):
            return super().score(requests)[:-1]

    with pytest.raises(AnnotationError, match="returned 1 score lists for 2 requests"):
        AnnotationService(Missing("m"), store).annotate(_requests(n=2))


def test_invalid_scores_are_saved_counted_and_not_repaid(store, caplog):
    values = {"c0-": None, "c1-x": float("nan"), "c2-xx": math.inf}
    ann = CountingAnnotator("bad", values=values)
    svc = AnnotationService(ann, store)
    out = svc.annotate(_requests(n=3))
    assert out.scores[0] == [None, 4.0, 5.0] and out.scores[1] == [3.0, None, 5.0] and out.scores[2] == [3.0, 4.0, None]
    assert out.invalid == 3 and out.paid == 9
    assert "3 invalid score" in caplog.text
    rec = store.get([make_key("bad", "prompt 1", "c1-x")])
    assert list(rec.values())[0].valid is False and list(rec.values())[0].raw == "nan"
    again = svc.annotate(_requests(n=3))
    assert again.invalid == 3 and again.paid == 0 and len(ann.items) == 9
    with pytest.raises(AnnotationError, match="3 invalid score"):
        AnnotationService(ann, store, on_invalid="raise").annotate(_requests(n=3))


def test_annotator_exception_releases_reservations_for_free_retry(store):
    class Flaky(CountingAnnotator):
        fail = True

        def score(self, requests):
            if self.fail and len(self.calls) == 1:
                self.calls.append([])
                raise RuntimeError("API down")
            return super().score(requests)

    ann = Flaky("flaky")
    svc = AnnotationService(ann, store, batch_size=3, budget=12)
    with pytest.raises(RuntimeError, match="API down"):
        svc.annotate(_requests(n=3))
    assert len(store) == 3 and svc.spent == 9  # first batch saved; the rest stays charged
    ann.fail = False
    out = svc.annotate(_requests(n=3))
    assert out.paid == 0 and out.reused == 3 and out.recovered == 6 and svc.spent == 9
    assert store.ledger_summary() == {"paid": 9, "reserved": 0, "queued": 0}


def test_waits_for_a_live_process_holding_a_reservation(store):
    """A key reserved by another live process is not annotated twice: the service waits for its score."""
    req = AnnotationRequest("shared prompt", ["a", "b"])
    keys = [make_key("counting", req.prompt, c) for c in req.completions]
    now = time.time()
    conn = store._conn()
    conn.executemany(
        "INSERT INTO ledger(run_id, key, status, owner, pid, host, created_at, updated_at) "
        "VALUES ('default', ?, 'reserved', 'someone-else', ?, ?, ?, ?)",
        [(k, os.getppid(), __import__("socket").gethostname(), now, now) for k in keys],
    )
    conn.execute("INSERT INTO runs(run_id, spent, updated_at) VALUES ('default', 2, ?)", (now,))

    def other_process_finishes():
        time.sleep(0.3)
        AnnotationStore(store.path).write(
            "default",
            [(k, "counting", '"shared prompt"', f'"{c}"', 7.0, 1, None) for k, c in zip(keys, req.completions)],
        )

    t = threading.Thread(target=other_process_finishes)
    t.start()
    ann = CountingAnnotator()
    start = time.monotonic()
    out = AnnotationService(ann, store, poll_interval=0.02).annotate([req])
    t.join()
    assert time.monotonic() - start >= 0.25
    assert out.scores == [[7.0, 7.0]] and out.paid == 0 and ann.calls == []


def test_reservation_of_a_dead_process_is_recovered_without_charge(store):
    req = AnnotationRequest("p", ["a"])
    key = make_key("counting", "p", "a")
    now = time.time()
    conn = store._conn()
    conn.execute(
        "INSERT INTO ledger VALUES ('default', ?, 'reserved', 'dead', 2147483646, ?, ?, ?)",
        (key, __import__("socket").gethostname(), now, now),
    )
    conn.execute("INSERT INTO runs(run_id, spent, updated_at) VALUES ('default', 1, ?)", (now,))
    svc = AnnotationService(CountingAnnotator(), store, budget=1)
    out = svc.annotate([req])
    assert out.scores == [[1.0]] and out.paid == 0 and out.recovered == 1 and svc.spent == 1


def test_relative_annotators_get_whole_subsets_and_subset_keys(store):
    class Relative(CountingAnnotator):
        relative = True

    ann = Relative("rel")
    svc = AnnotationService(ann, store, batch_size=1)
    out = svc.annotate([AnnotationRequest("p", ["a", "bb", "ccc"]), AnnotationRequest("q", ["d", "ee"])])
    assert [len(c) for c in ann.calls] == [3, 2]  # one whole subset per call even with batch_size=1
    assert out.paid == 5
    # the same completion against other rivals is a new judgment
    out2 = svc.annotate([AnnotationRequest("p", ["a", "bb"])])
    assert out2.paid == 2 and out2.reused == 0
    assert svc.annotate([AnnotationRequest("p", ["a", "bb", "ccc"])]).paid == 0


def test_reward_function_annotator_through_the_service(store):
    def reward(prompts, completions, lang, **kwargs):
        assert "trainer_state" in kwargs and "completion_ids" in kwargs
        return [float(len(c)) if lng == "en" else None for c, lng in zip(completions, lang)]

    svc = AnnotationService(RewardFunctionAnnotator(reward), store)
    out = svc.annotate(
        [AnnotationRequest("p", ["aa", "b"], row={"lang": "en"}), AnnotationRequest("q", ["c"], row={"lang": "fr"})]
    )
    assert out.scores == [[2.0, 1.0], [None]] and out.invalid == 1


def test_empty_requests_and_bad_arguments(store):
    svc = AnnotationService(CountingAnnotator(), store)
    assert svc.annotate([]).scores == []
    assert svc.annotate([AnnotationRequest("p", [])]).scores == [[]]
    with pytest.raises(TypeError, match="AnnotationRequest"):
        svc.annotate([("p", ["a"])])
    with pytest.raises(ValueError, match="budget"):
        AnnotationService(CountingAnnotator(), store, budget=-1)
    with pytest.raises(TypeError, match="not an annotator"):
        AnnotationService(object(), store)
    with pytest.raises(ValueError, match="indices"):
        AnnotationRequest("p", ["a", "b"], indices=[0])
    with pytest.raises(TypeError, match="list of completions"):
        AnnotationRequest("p", "just one string")


def test_from_config_uses_output_dir_and_budget(tmp_path):
    from types import SimpleNamespace

    args = SimpleNamespace(
        output_dir=str(tmp_path / "out"), annotation_store=None, annotation_budget=5, annotation_batch_size=2
    )
    svc = AnnotationService.from_config(args, CountingAnnotator())
    assert svc.store.path == str(tmp_path / "out" / "annotations.sqlite")
    assert svc.budget == 5 and svc.batch_size == 2 and svc.remaining == 5


def test_store_survives_fork_and_pickling(store):
    import pickle

    AnnotationService(CountingAnnotator(), store).annotate(_requests(n=1))
    clone = pickle.loads(pickle.dumps(store))
    assert len(clone) == 3 and clone.path == store.path
    assert [r.completion for r in clone.records()] == ["c0-", "c0-x", "c0-xx"]


def test_array_outputs_and_progress_bar(store, capsys):
    np = pytest.importorskip("numpy")

    class ArrayAnnotator(Annotator):
        identity = "arrays"

        def score(self, requests):
            return [np.arange(len(r.completions), dtype=np.float32) for r in requests]

    out = AnnotationService(ArrayAnnotator(), store, progress=True).annotate(_requests(n=2))
    assert out.scores == [[0.0, 1.0, 2.0]] * 2
    assert "annotating (arrays)" in capsys.readouterr().err


def test_forked_children_share_the_store_and_budget(store):
    import multiprocessing as mp

    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork on this platform")
    svc = AnnotationService(CountingAnnotator(), store, budget=9)
    svc.annotate(_requests(n=1, tag="parent"))  # the parent's connection exists before the fork
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=svc.annotate, args=(_requests(n=4, tag="child"),)) for c in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert svc.spent == 9 and len(store) == 9  # the same 4 prompts in both children: 2 fit, each paid once
    assert store.ledger_summary() == {"paid": 9, "reserved": 0, "queued": 0}


def test_cost_counts_what_annotating_would_pay_without_calling_the_annotator(store):
    ann = CountingAnnotator()
    svc = AnnotationService(ann, store)
    request = AnnotationRequest("p", ["a", "bb", "a"], [0, 1, 2])  # a duplicate completion is one annotation
    assert svc.cost(request) == (2, 0)
    assert ann.calls == []
    svc.annotate([AnnotationRequest("p", ["a"], [0])])
    assert svc.cost(request) == (2, 1)
    svc.annotate([request])
    assert svc.cost(request) == (2, 2) and svc.spent == 2
