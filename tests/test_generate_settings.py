"""`aepo generate` on an existing output: same settings resume (or do nothing, and say so), other settings are
refused with the difference named, `--overwrite` samples again."""

from __future__ import annotations

import json

from test_cli import read_jsonl, write_jsonl


def test_changed_settings_are_refused_then_overwritten(tmp_path, tiny_model_path, capsys):
    from aepo_trainer.cli import main

    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Hello there"}, {"prompt": "Name a colour"}])
    out = tmp_path / "pools.jsonl"
    common = ["generate", "--model", tiny_model_path, "--input", str(prompts), "--output", str(out)]
    common += ["--num_completions", "2", "--max_new_tokens", "4", "--seed", "3"]

    assert main(common) == 0
    first = read_jsonl(out)
    record = json.loads((tmp_path / "pools.jsonl.generate.json").read_text())
    assert record["temperature"] == 1.0 and record["num_completions"] == 2 and record["seed"] == 3
    assert "sampled 2 new pools" in capsys.readouterr().err

    assert main(common) == 0  # same settings: nothing to do, and it says so (not "wrote 2 pools")
    err = capsys.readouterr().err
    assert "all 2 pools are already there (same settings); nothing was sampled" in err and "sampled 2" not in err
    assert read_jsonl(out) == first

    assert main([*common, "--temperature", "0.5", "--num_completions", "3"]) == 2
    err = capsys.readouterr().err
    assert "--num_completions 2 -> 3" in err and "--temperature 1.0 -> 0.5" in err and "--overwrite" in err
    assert "Traceback" not in err and read_jsonl(out) == first  # the old pools are untouched

    assert main([*common, "--temperature", "0.5", "--num_completions", "3", "--overwrite"]) == 0
    assert "--overwrite: removed" in capsys.readouterr().err
    rows = read_jsonl(out)
    assert len(rows) == 2 and all(len(r["completions"]) == 3 for r in rows)
    assert json.loads((tmp_path / "pools.jsonl.generate.json").read_text())["temperature"] == 0.5


def test_output_without_recorded_settings_is_refused(tmp_path, tiny_model_path, capsys):
    from aepo_trainer.cli import main

    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Hello there"}])
    out = write_jsonl(tmp_path / "pools.jsonl", [{"prompt": "Hello there", "completions": [" made by hand"]}])
    argv = ["generate", "--model", tiny_model_path, "--input", str(prompts), "--output", str(out)]
    assert main(argv) == 2
    assert "cannot be checked that resuming would sample the same way" in capsys.readouterr().err
    assert read_jsonl(out) == [{"prompt": "Hello there", "completions": [" made by hand"]}]
