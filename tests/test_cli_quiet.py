"""What the `aepo` command writes besides its output: log lines through tqdm (never glued to a progress bar), and
nothing at all with `--dry-run` (not even the SQLite store)."""

from __future__ import annotations

import logging
import os
import re
import sys
import types

from test_cli import write_jsonl
from test_validation import rows as pool_rows


def test_log_lines_do_not_break_progress_bars(monkeypatch, capsys):
    from tqdm.auto import tqdm

    from aepo_trainer import cli

    def fake_main(argv):
        bar = tqdm(total=3, desc="annotate", file=sys.stderr, mininterval=0)
        bar.update(1)
        logging.getLogger("aepo_trainer.annotation.service").warning("halfway there")
        logging.getLogger("aepo_trainer.reduction").info("an info line")
        bar.update(2)
        bar.close()
        return 0

    module = types.ModuleType("aepo_trainer.cli.fakebar")
    module.main = fake_main
    monkeypatch.setitem(sys.modules, "aepo_trainer.cli.fakebar", module)
    monkeypatch.setitem(cli.COMMANDS, "fakebar", "a command drawing a bar and logging under it")
    handlers_before = list(logging.getLogger("aepo_trainer").handlers)
    assert cli.main(["fakebar"]) == 0
    err = capsys.readouterr().err
    # each record on a line of its own: the bar was cleared first (a bare "\r"), not written after the bar's text
    assert re.search(r"(^|\r|\n)aepo: WARNING: halfway there\n", err), repr(err)
    assert re.search(r"(^|\r|\n)aepo: INFO: an info line\n", err), repr(err)
    assert "3/3" in err  # the bar was drawn to the end
    assert logging.getLogger("aepo_trainer").handlers == handlers_before  # restored after the command


def _listing(folder):
    return sorted((p, os.path.getsize(os.path.join(folder, p))) for p in os.listdir(folder))


def test_dry_run_writes_nothing(tmp_path, capsys):
    from aepo_trainer.cli import main

    source = write_jsonl(tmp_path / "pools.jsonl", pool_rows(n=4))
    out = tmp_path / "pairs.jsonl"
    argv = ["select", "--input", str(source), "--output", str(out)]

    before = _listing(tmp_path)
    assert main([*argv, "--dry-run"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "annotations needed 8" in text and "would be paid 8" in text and "(nothing is written)" in text
    assert _listing(tmp_path) == before  # no store, no output, no queue

    assert main(argv) == 0  # a real run creates the store
    capsys.readouterr()
    store = f"{out}.annotations.sqlite"
    with open(store, "rb") as f:
        store_bytes = f.read()
    after_run = _listing(tmp_path)
    assert main([*argv, "--dry-run"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "already in the store 8" in text and "would be paid 0" in text  # read from the existing store
    assert _listing(tmp_path) == after_run  # no -wal/-shm, nothing new
    with open(store, "rb") as f:
        assert f.read() == store_bytes
