"""`aepo train --config config.yaml`: a tiny model trained from YAML (AEPOConfig + ModelConfig + script arguments,
TrlParser), with an eval split, checkpoints, `resume_from_checkpoint` honoured from the config, LoRA flags, the
bundled example configs, and exit code 2 for bad settings."""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_cli import write_jsonl
from test_validation import rows as pool_rows


def _config(tmp_path, tiny_model_path, **overrides) -> str:
    data = write_jsonl(tmp_path / "pools.jsonl", pool_rows(n=10, size=4))
    config = {
        "dataset_name": str(data),
        "eval_size": 2,
        "model_name_or_path": tiny_model_path,
        "dtype": "float32",
        "num_annotations": 2,
        "diversity_weight": 0.5,
        "output_dir": str(tmp_path / "run"),
        "per_device_train_batch_size": 2,
        "per_device_eval_batch_size": 2,
        "max_steps": 2,
        "eval_strategy": "steps",
        "eval_steps": 2,
        "save_strategy": "steps",
        "save_steps": 2,
        "logging_steps": 1,
        "learning_rate": 1e-2,
        "max_length": 64,
        "bf16": False,
        "activation_checkpointing": False,
        "report_to": "none",
        "seed": 0,
        **overrides,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return str(path)


def _weights(folder) -> dict:
    return load_file(os.path.join(folder, "model.safetensors"))


def test_train_from_yaml_with_eval_split_and_resume(tmp_path, tiny_model_path, capsys):
    from aepo_trainer.cli import main

    config = _config(tmp_path, tiny_model_path)
    assert main(["train", "--config", config]) == 0
    out = capsys.readouterr().out
    assert "AEPO training summary" in out and "k=2 of N=4 candidates" in out
    run = tmp_path / "run"
    trained, initial = _weights(run), _weights(tiny_model_path)
    assert any(not torch.equal(trained[name], initial[name]) for name in initial)  # real steps changed the weights
    state = json.loads((run / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert any("eval_loss" in entry for entry in state["log_history"])  # the eval split was evaluated
    assert [e["aepo/annotations_spent"] for e in state["log_history"] if "loss" in e] == [4, 8]  # 8 train prompts

    # the same config, now resuming and going to step 3: continues from checkpoint-2, nothing re-annotated
    resumed = _config(tmp_path, tiny_model_path, max_steps=3, resume_from_checkpoint=True, eval_strategy="no")
    assert main(["train", "--config", resumed]) == 0
    capsys.readouterr()
    state = json.loads((run / "checkpoint-3" / "trainer_state.json").read_text())
    steps = [e["step"] for e in state["log_history"] if "loss" in e]
    assert steps == [1, 2, 3]  # steps 1-2 come from the checkpoint's history: only step 3 was trained now
    # the ledger continued from the 8 annotations of steps 1-2 (not paid again) with step 3's new prompts
    assert 8 < state["log_history"][-1]["aepo/annotations_spent"] <= 12


def test_lora_flags_and_every_field_parse(tmp_path, tiny_model_path):
    from trl import get_peft_config

    from aepo_trainer.cli.train import parse_arguments

    config = _config(tmp_path, tiny_model_path, use_peft=True, lora_r=4, lora_alpha=8, beta=0.25, loss_type=["ipo"])
    script, training, model = parse_arguments(["--config", config, "--selection_strategy", "kmedoids"])
    assert script.eval_size == 2 and training.beta == 0.25 and training.loss_type == ["ipo"]
    assert training.selection_strategy == "kmedoids" and training.diversity_weight == 0.5  # flag over YAML
    peft = get_peft_config(model)
    assert peft.r == 4 and peft.lora_alpha == 8


def test_bundled_configs_ship_with_the_package():
    from aepo_trainer.cli.train import bundled_configs, parse_arguments, resolve_config_argument

    configs = bundled_configs()
    assert {"demo", "paper", "qlora_consumer_gpu"} <= set(configs)
    assert os.path.realpath("examples/configs") == os.path.realpath(configs["demo"].parent)  # one copy only
    assert resolve_config_argument(["--config", "demo"]) == ["--config", str(configs["demo"])]
    for path in (
        configs[name]
        for name in ("demo", "paper", "qlora_consumer_gpu", "on_policy_demo", "on_policy_qwen05b_vllm_lora")
    ):  # every training config parses with the command's parser (bf16 off: CPU)
        script, training, model = parse_arguments(["--config", str(path), "--output_dir", "unused", "--bf16", "false"])
        assert model.model_name_or_path and training.num_annotations >= 2
    script, training, _ = parse_arguments(["--config", "demo"])
    assert script.eval_size == 8 and training.eval_strategy == "epoch"


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--num_annotations", "1"], "AEPOConfig.num_annotations=1 is invalid"),
        (["--config", "no-such-config"], "config file 'no-such-config' does not exist (bundled configs: demo"),
        (["--resume_from_checkpoint", "/no/such/checkpoint"], "no such checkpoint folder"),
    ],
)
def test_bad_settings_exit_2(tmp_path, tiny_model_path, capsys, flags, expected):
    from aepo_trainer.cli import main

    config = _config(tmp_path, tiny_model_path)
    argv = flags if flags[0] == "--config" else ["--config", config, *flags]
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
