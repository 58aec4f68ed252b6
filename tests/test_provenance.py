"""Provenance on every output: the dataset card of `aepo select` pairs and `aepo generate` pools (source, strategy,
λ, k, seed, annotator identity, budget spent, machine-readable in the YAML header), and a model card listing the AEPO
settings and the annotation spend also when no checkpoint is saved (`save_strategy="no"`)."""

from __future__ import annotations

import os

from datasets import Dataset
from huggingface_hub import DatasetCard
from test_cli import write_jsonl
from test_validation import rows as pool_rows


def test_select_writes_a_dataset_card_with_provenance(tmp_path, capsys):
    from aepo_trainer.cli import main

    source = write_jsonl(tmp_path / "pools.jsonl", pool_rows(n=4))
    out = tmp_path / "pairs.jsonl"
    argv = ["select", "--input", str(source), "--output", str(out), "--selection_strategy", "aepo", "--diversity_weight", "0.5",
            "--seed", "11"]  # fmt: skip
    assert main([*argv, "--annotation_budget", "100"]) == 0
    card = DatasetCard.load(f"{out}.README.md")
    record = card.data.aepo_provenance
    assert record["kind"] == "preference pairs" and record["source"] == str(source)
    assert record["selection_strategy"] == "aepo" and record["diversity_weight"] == 0.5
    assert record["num_annotations"] == 2 and record["selection_seed"] == 11
    assert record["annotator_identity"] == "dataset_scores:scores" and record["annotation_budget"] == 100
    assert record["annotations_spent_by_run"] == 8 and record["annotations_paid_this_run"] == 8
    assert record["pairs"] == 4 and record["created_by"].startswith("aepo-trainer ")
    assert "aepo" in card.data.tags and "| `diversity_weight` | `0.5` |" in card.text
    assert "annotated by `dataset_scores:scores`" in card.text


def test_generate_writes_a_dataset_card(tmp_path, tiny_model_path):
    from aepo_trainer.cli import main

    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Hello there"}])
    out = tmp_path / "pools.jsonl"
    argv = ["generate", "--model", tiny_model_path, "--input", str(prompts), "--output", str(out)]
    assert main([*argv, "--num_completions", "2", "--max_new_tokens", "3", "--temperature", "0.7"]) == 0
    record = DatasetCard.load(f"{out}.README.md").data.aepo_provenance
    assert record["kind"] == "candidate pools" and record["model_name_or_path"] == tiny_model_path
    assert record["temperature"] == 0.7 and record["num_completions"] == 2 and record["prompts"] == 1


def test_model_card_without_checkpoints(tiny_model_path, dpo_args):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aepo_trainer import AEPOConfig, AEPOTrainer

    args = AEPOConfig(**{**dpo_args, "max_steps": 1, "save_strategy": "no", "diversity_weight": 0.25})
    trainer = AEPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_path),
        ref_model=AutoModelForCausalLM.from_pretrained(tiny_model_path),
        args=args,
        train_dataset=Dataset.from_list(pool_rows(n=4)),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_path),
    )
    trainer.train()
    trainer.save_model()  # no checkpoint was ever saved: TRL alone would write no card
    card = open(os.path.join(args.output_dir, "README.md"), encoding="utf-8").read()
    assert "## AEPO" in card and "| `diversity_weight` | `0.25` |" in card
    spent = trainer.annotation_service.spent
    assert spent >= 4 and f"| annotations spent | {spent} |" in card and "| annotation budget | unlimited |" in card
