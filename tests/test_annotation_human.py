"""Human/external annotation: queue file out, labels in, stop while pending, resume without re-queuing or re-paying."""

from __future__ import annotations

import csv
import json

import pytest

from aepo_trainer.annotation import (
    AnnotationError,
    AnnotationRequest,
    AnnotationService,
    AnnotationsPending,
    AnnotationStore,
    HumanQueueAnnotator,
)
from aepo_trainer.annotation.human import default_labels_path


def _requests():
    return [
        AnnotationRequest(
            "Name a colour.", ["Blue.", "Seven.", "Red, obviously."], indices=[0, 4, 7], row={"example_id": "ex-1"}
        ),
        AnnotationRequest(
            [{"role": "user", "content": "Say hi"}],
            [[{"role": "assistant", "content": "hi"}], [{"role": "assistant", "content": "no"}]],
            indices=[1, 2],
            row={"example_id": "ex-2"},
        ),
    ]


def _service(tmp_path, queue_name="queue.jsonl", budget=None, **kw):
    ann = HumanQueueAnnotator(tmp_path / queue_name, extra_columns=["example_id"], **kw)
    return AnnotationService(ann, AnnotationStore(tmp_path / "store.sqlite"), budget=budget), ann


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_jsonl_queue_round_trip(tmp_path):
    svc, ann = _service(tmp_path)
    assert ann.labels_path == tmp_path / "queue.labels.jsonl"
    with pytest.raises(AnnotationsPending, match=r"5 annotation\(s\) are waiting for labels in .*queue.jsonl") as info:
        svc.annotate(_requests())
    assert info.value.pending == 5 and info.value.labels_path.endswith("queue.labels.jsonl")
    queued = _read_jsonl(tmp_path / "queue.jsonl")
    assert [q["completion"] for q in queued][:3] == ["Blue.", "Seven.", "Red, obviously."]
    assert [q["pool_index"] for q in queued] == [0, 4, 7, 1, 2]
    assert queued[3]["prompt"] == [{"role": "user", "content": "Say hi"}] and queued[0]["example_id"] == "ex-1"
    assert svc.spent == 5 and svc.store.ledger_summary()["queued"] == 5  # items sent out are charged once

    # rerun while waiting: nothing queued twice, nothing charged twice
    svc2, _ = _service(tmp_path)
    with pytest.raises(AnnotationsPending):
        svc2.annotate(_requests())
    assert len(_read_jsonl(tmp_path / "queue.jsonl")) == 5 and svc2.spent == 5

    # partial labels: saved before the run stops again
    ids = [q["id"] for q in queued]
    with open(tmp_path / "queue.labels.jsonl", "w") as f:
        f.write(json.dumps({"id": ids[0], "score": 4}) + "\n")
        f.write(json.dumps({"id": ids[1], "score": "1.5"}) + "\n")
        f.write(json.dumps({"id": ids[3], "score": None}) + "\n")  # null = not labelled yet
    with pytest.raises(AnnotationsPending, match=r"3 annotation\(s\)") as info:
        _service(tmp_path)[0].annotate(_requests())
    assert info.value.pending == 3
    assert len(AnnotationStore(tmp_path / "store.sqlite")) == 2
    assert ann.pending_items() and len(ann.pending_items()) == 3

    # all labelled (one corrected: the last line wins, one unscorable)
    with open(tmp_path / "queue.labels.jsonl", "a") as f:
        f.write(json.dumps({"id": ids[2], "score": 2}) + "\n")
        f.write(json.dumps({"id": ids[2], "score": 5}) + "\n")
        f.write(json.dumps({"id": ids[3], "score": 1}) + "\n")
        f.write(json.dumps({"id": ids[4], "score": "skip"}) + "\n")
    svc3, _ = _service(tmp_path)
    out = svc3.annotate(_requests())
    assert out.scores == [[4.0, 1.5, 5.0], [1.0, None]] and out.invalid == 1
    assert out.paid == 0 and out.recovered == 3 and out.reused == 2
    assert svc3.spent == 5 and svc3.store.ledger_summary() == {"paid": 5, "reserved": 0, "queued": 0}
    assert len(_read_jsonl(tmp_path / "queue.jsonl")) == 5


def test_csv_queue_and_labels_in_the_queue_file(tmp_path):
    svc, ann = _service(tmp_path, "queue.csv")
    assert ann.labels_path == tmp_path / "queue.labels.csv"
    with pytest.raises(AnnotationsPending):
        svc.annotate(_requests())
    with open(tmp_path / "queue.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["completion"] for r in rows][:3] == ["Blue.", "Seven.", "Red, obviously."]
    assert json.loads(rows[3]["prompt"]) == [{"role": "user", "content": "Say hi"}]
    assert rows[0]["example_id"] == "ex-1" and all(r["score"] == "" for r in rows)
    # the team labels three items in a labels CSV and two directly in the queue's score column
    with open(tmp_path / "queue.labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "score"])
        for r, s in zip(rows[:3], ["0.1", "0.9", "0.5"]):
            w.writerow([r["id"], s])
    rows[3]["score"], rows[4]["score"] = "1", "0"
    with open(tmp_path / "queue.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out = _service(tmp_path, "queue.csv")[0].annotate(_requests())
    assert out.scores == [[0.1, 0.9, 0.5], [1.0, 0.0]]


def test_labels_file_in_the_other_format(tmp_path):
    svc, ann = _service(tmp_path, labels_path=tmp_path / "team.csv")
    with pytest.raises(AnnotationsPending):
        svc.annotate(_requests()[:1])
    ids = [q["id"] for q in _read_jsonl(tmp_path / "queue.jsonl")]
    (tmp_path / "team.csv").write_text("id,score\n" + "".join(f"{i},{n}\n" for n, i in enumerate(ids)))
    assert svc.annotate(_requests()[:1]).scores == [[0.0, 1.0, 2.0]]


def test_bad_labels_are_clear_errors(tmp_path):
    svc, ann = _service(tmp_path)
    with pytest.raises(AnnotationsPending):
        svc.annotate(_requests()[:1])
    first = _read_jsonl(tmp_path / "queue.jsonl")[0]["id"]
    (tmp_path / "queue.labels.jsonl").write_text(json.dumps({"id": first, "score": "great"}) + "\n")
    with pytest.raises(AnnotationError, match=r"queue.labels.jsonl, line 1: score 'great' is not a number"):
        svc.annotate(_requests()[:1])
    (tmp_path / "queue.labels.jsonl").write_text(json.dumps({"score": 1}) + "\n")
    with pytest.raises(AnnotationError, match="needs an 'id'"):
        svc.annotate(_requests()[:1])
    (tmp_path / "queue.labels.jsonl").write_text("{not json}\n")
    with pytest.raises(AnnotationError, match="line 1: not valid JSON"):
        svc.annotate(_requests()[:1])
    with pytest.raises(ValueError, match=".jsonl or .csv"):
        HumanQueueAnnotator(tmp_path / "queue.txt")


def test_budget_limits_what_is_queued(tmp_path):
    svc, _ = _service(tmp_path, budget=4)
    with pytest.raises(AnnotationsPending, match=r"3 annotation\(s\)"):
        svc.annotate(_requests())  # the second prompt (2 items) would exceed 4: only the first is queued
    assert len(_read_jsonl(tmp_path / "queue.jsonl")) == 3 and svc.spent == 3


def test_a_queue_write_cut_short_by_a_crash_is_repaired(tmp_path):
    svc, ann = _service(tmp_path)
    (tmp_path / "queue.jsonl").write_text('{"id": "abc", "prompt": "cut sh')  # killed mid-line
    with pytest.raises(AnnotationsPending, match=r"5 annotation\(s\)"):
        svc.annotate(_requests())
    lines = (tmp_path / "queue.jsonl").read_text().splitlines()
    assert len(lines) == 6 and lines[0].startswith('{"id": "abc"')
    assert len(ann.queued_ids()) == 5  # the fragment is skipped (with a warning), the queue stays readable
    assert len(ann.pending_items()) == 5


def test_default_labels_path():
    assert str(default_labels_path("/a/b/queue.jsonl")) == "/a/b/queue.labels.jsonl"
    assert str(default_labels_path("q.csv")) == "q.labels.csv"
