"""`aepo stats --diagnostics_plot`: the per-prompt diagnostics figure (scores of chosen/rejected, diversity, AEPO vs
random, budget burn-down) is drawn from the same selections as the table."""

from __future__ import annotations

import json

from test_cli import write_jsonl
from test_validation import rows as pool_rows


def test_diagnostics_plot(tmp_path, capsys):
    from aepo_trainer.cli import main

    source = write_jsonl(tmp_path / "pools.jsonl", pool_rows(n=12, size=5))
    png, table = tmp_path / "diagnostics.png", tmp_path / "stats.json"
    argv = ["stats", "--input", str(source), "--num_annotations", "2", "3", "--annotation_budget", "20"]
    assert main([*argv, "--diagnostics_plot", str(png), "--json", str(table)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert "diagnostics plot written to" in capsys.readouterr().err
    records = json.loads(table.read_text())["strategies"]
    assert records and all("_per_prompt" not in r for r in records)  # the per-prompt data stays out of the table
