"""On prompt/chosen/rejected data, AEPOTrainer is DPOTrainer: same logged losses at every step, bitwise-equal weights."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

from aepo_trainer import AEPOConfig, AEPOTrainer

STANDARD = {
    "prompt": ["The sky is", "Two plus two is", "The capital of France is", "Water boils at", "Cats like to"],
    "chosen": [" blue.", " four.", " Paris.", " 100 degrees.", " sleep in the sun."],
    "rejected": [" green.", " five.", " Rome.", " 10 degrees.", " bark loudly."],
}


def _conversational():
    return {
        "prompt": [[{"role": "user", "content": p}] for p in STANDARD["prompt"]],
        "chosen": [[{"role": "assistant", "content": c}] for c in STANDARD["chosen"]],
        "rejected": [[{"role": "assistant", "content": r}] for r in STANDARD["rejected"]],
    }


def _implicit_prompt():
    return {
        "chosen": [p + c for p, c in zip(STANDARD["prompt"], STANDARD["chosen"])],
        "rejected": [p + r for p, r in zip(STANDARD["prompt"], STANDARD["rejected"])],
    }


DATASETS = {"standard": lambda: STANDARD, "conversational": _conversational, "implicit_prompt": _implicit_prompt}


def _train(trainer_cls, config_cls, model_path, data, dpo_args, peft_config=None):
    model = AutoModelForCausalLM.from_pretrained(model_path)
    ref_model = None if peft_config is not None else AutoModelForCausalLM.from_pretrained(model_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    trainer = trainer_cls(
        model=model,
        ref_model=ref_model,
        args=config_cls(**dpo_args),
        train_dataset=Dataset.from_dict(data),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    weights = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    return losses, weights


def _assert_identical(reference, candidate):
    ref_losses, ref_weights = reference
    losses, weights = candidate
    assert len(ref_losses) == 3
    assert losses == ref_losses  # exact float equality, step by step
    assert weights.keys() == ref_weights.keys()
    for name in ref_weights:
        assert torch.equal(weights[name], ref_weights[name]), name


@pytest.mark.parametrize("fmt", sorted(DATASETS))
def test_aepo_trainer_equals_dpo_trainer_on_pairs(fmt, tiny_model_path, dpo_args):
    data = DATASETS[fmt]()
    reference = _train(DPOTrainer, DPOConfig, tiny_model_path, data, dpo_args)
    candidate = _train(AEPOTrainer, AEPOConfig, tiny_model_path, data, dpo_args)
    _assert_identical(reference, candidate)
    # training really happened: the weights moved away from the initial checkpoint
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    moved = [not torch.equal(p, candidate[1][n]) for n, p in initial.named_parameters() if n in candidate[1]]
    assert any(moved)


def test_aepo_trainer_equals_dpo_trainer_with_lora(tiny_model_path, dpo_args):
    from peft import LoraConfig

    def lora():
        return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")

    reference = _train(DPOTrainer, DPOConfig, tiny_model_path, STANDARD, dpo_args, peft_config=lora())
    candidate = _train(AEPOTrainer, AEPOConfig, tiny_model_path, STANDARD, dpo_args, peft_config=lora())
    _assert_identical(reference, candidate)
    assert any("lora_" in name for name in candidate[1])


def test_aepo_config_where_dpo_config_is_expected(tiny_model_path, dpo_args):
    """AEPOConfig is a DPOConfig: DPOTrainer takes it, and AEPOTrainer takes a plain DPOConfig."""
    reference = _train(DPOTrainer, DPOConfig, tiny_model_path, STANDARD, dpo_args)
    dpo_with_aepo_config = _train(DPOTrainer, AEPOConfig, tiny_model_path, STANDARD, dpo_args)
    aepo_with_dpo_config = _train(AEPOTrainer, DPOConfig, tiny_model_path, STANDARD, dpo_args)
    _assert_identical(reference, dpo_with_aepo_config)
    _assert_identical(reference, aepo_with_dpo_config)


def test_plain_dpo_config_is_upgraded(tmp_path, tiny_model_path, dpo_args):
    from aepo_trainer.trainer.run_control import as_aepo_config

    upgraded = as_aepo_config(DPOConfig(**dpo_args, beta=0.3))
    assert isinstance(upgraded, AEPOConfig)
    assert upgraded.beta == 0.3 and upgraded.num_annotations == 2 and upgraded.selection_strategy == "random"
    with pytest.raises(TypeError, match="AEPOConfig or a DPOConfig"):
        as_aepo_config(object())
