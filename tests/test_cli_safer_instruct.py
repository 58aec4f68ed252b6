"""`aepo safer-instruct`: the dry run writes nothing and forecasts the cost; `all` runs end to end on tiny models and
is served from its checkpoint when rerun; bad input exits with code 2 and a message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aepo_trainer.cli import main

DEMO_TEXTS = str(Path(__file__).resolve().parents[1] / "examples" / "data" / "safer_instruct" / "texts.jsonl")


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture
def demo_files(tmp_path, tiny_model_path):
    sft = tmp_path / "sft.jsonl"
    _write_jsonl(
        sft,
        [{"instruction": f"Tell me about item {i}.", "output": f"Item {i} is blue and small."} for i in range(6)],
    )
    texts = tmp_path / "texts.jsonl"
    _write_jsonl(
        texts,
        [{"id": f"t{i}", "text": f"The sea is calm today, number {i}."} for i in range(3)]
        + [{"id": "empty", "text": " "}, {"id": "dup", "text": "The sea is calm today, number 0."}],
    )
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""
work_dir: {tmp_path / "work"}
sft_dataset: {sft}
texts: {texts}
id_column: id
model_name_or_path: {tiny_model_path}
judge_model: {tiny_model_path}
judge_retries: 1
judge_max_new_tokens: 8
keep_unparsed: true
num_instructions: 2
induce_max_new_tokens: 8
response_max_new_tokens: 8
judge_price_input_per_1m: 3.0
judge_price_output_per_1m: 15.0
backend: transformers
max_length: 96
max_steps: 1
per_device_train_batch_size: 2
save_strategy: "no"
bf16: false
dataloader_pin_memory: false
disable_tqdm: true
"""
    )
    return tmp_path, config


def test_dry_run_forecasts_and_writes_nothing(demo_files, capsys):
    tmp_path, config = demo_files
    assert main(["safer-instruct", "all", "--config", str(config), "--dry_run", "true"]) == 0
    out = capsys.readouterr()
    assert not (tmp_path / "work").exists()
    assert "[dry run] reverse-sft: would fine-tune" in out.out and "on 6 reversed examples" in out.out
    assert "induce: 3 usable texts (2 skipped: {'empty': 1, 'duplicate': 1})" in out.out
    assert "filter: 6 instruction(s) to judge" in out.out and "$" in out.out
    assert "nothing was written" in out.err


def test_all_runs_end_to_end_and_resumes_from_its_checkpoint(demo_files, capsys):
    from aepo_trainer import AEPOConfig
    from aepo_trainer.data.pools import validate_pool_dataset
    from aepo_trainer.synthesis.texts import read_texts

    tmp_path, config = demo_files
    work = tmp_path / "work"
    assert main(["safer-instruct", "all", "--config", str(config)]) == 0
    first = capsys.readouterr().err
    assert "induce: 3 rows computed, 0 served" in first
    assert (work / "reverse-model" / "safer_instruct_reverse_sft.json").exists()
    pools = read_texts(str(work / "pools.jsonl"))
    validate_pool_dataset(pools, AEPOConfig(output_dir=str(tmp_path / "x"), bf16=False, report_to="none"))
    pairs = [json.loads(line) for line in (work / "pairs.jsonl").read_text().splitlines()]
    assert pairs and {"prompt", "chosen", "rejected", "provenance", "verdict"} <= set(pairs[0])
    assert pairs[0]["rejected"].startswith("The sea is calm today")
    assert (
        pairs[0]["provenance"]["filter"]["model"]
        == f"transformers:{config.read_text().split('judge_model: ')[1].split()[0]}"
    )
    card = (work / "README.md").read_text()
    assert "skipped" in card and "safer-instruct" in card

    assert main(["safer-instruct", "all", "--config", str(config)]) == 0
    second = capsys.readouterr()
    assert "already holds this reversed model; skipping (cached)" in second.out
    for stage in ("induce", "filter", "respond"):
        assert f"{stage}: 0 rows computed" in second.err
        assert "0 model calls" in second.err

    assert main(["safer-instruct", "respond", "--config", str(config), "--dry_run", "true"]) == 0
    assert "already answered" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["safer-instruct", "nope"], "unknown step 'nope'"),
        (["safer-instruct", "induce", "--reverse_model", "x", "--bf16", "false"], "--texts is required"),
        (["safer-instruct", "filter", "--bf16", "false", "--judge_model", "j", "--work_dir", "/nonexistent/w"],
         "run `aepo safer-instruct induce` first"),
        (["safer-instruct", "induce", "--num_instructions", "0", "--bf16", "false"], "num_instructions must be >= 1"),
        (["safer-instruct", "induce", "--texts", DEMO_TEXTS, "--bf16", "false", "--reverse_model", "/nonexistent/m"],
         "run `aepo safer-instruct reverse-sft` first"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_with_a_message(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_help_lists_the_steps(capsys):
    assert main(["safer-instruct", "--help"]) == 0
    assert "reverse-sft" in capsys.readouterr().out
    assert main(["--help"]) == 0
    assert "safer-instruct" in capsys.readouterr().out


def test_demo_config_dry_run(monkeypatch, tmp_path, capsys):
    """The shipped demo config parses and plans every step (its full run is what the demo itself does)."""
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    config = "examples/configs/safer_instruct_demo.yaml"
    argv = ["safer-instruct", "all", "--config", config, "--dry_run", "true", "--work_dir", str(tmp_path / "w")]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "on 40 reversed examples" in out.out
    assert "skipped 5: duplicate 1, empty 2, non_utf8 1, not_text 1" in out.err
    assert not (tmp_path / "w").exists()


def test_docs_recipe_keys_are_flags():
    """Every key of the realistic recipe in docs/safer-instruct.md is a field of the parsed dataclasses."""
    import dataclasses

    import yaml
    from trl import ModelConfig, SFTConfig

    from aepo_trainer.synthesis.arguments import SaferInstructArguments

    page = (Path(__file__).resolve().parents[1] / "docs" / "safer-instruct.md").read_text()
    block = "#" + page.split("# safer_instruct_real.yaml", 1)[1].split("```", 1)[0]
    keys = set(yaml.safe_load(block))
    fields = {f.name for cls in (SaferInstructArguments, SFTConfig, ModelConfig) for f in dataclasses.fields(cls)}
    assert keys and keys <= fields, keys - fields


def test_reverse_sft_with_lora_then_induce_from_the_adapter(demo_files, capsys):
    tmp_path, config = demo_files
    argv = ["--config", str(config), "--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8"]
    assert main(["safer-instruct", "reverse-sft", *argv]) == 0
    adapter = tmp_path / "work" / "reverse-model" / "adapter_config.json"
    assert adapter.exists() and json.loads(adapter.read_text())["r"] == 4
    assert main(["safer-instruct", "induce", *argv]) == 0
    induced = (tmp_path / "work" / "induced.jsonl").read_text().splitlines()
    assert induced and json.loads(induced[0])["provenance"]["induce"]["num_instructions"] == 2
    assert "induce: 3 rows computed" in capsys.readouterr().err
