"""The policy's implicit reward exposed to selection (issue 18 item 5): the `implicit_reward_gap` strategy, the
surrogate's implicit-reward feature, both computed in a real training step, and `aepo select` refusing them."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from datasets import Dataset
from test_pool_trainer import pool_rows

from aepo_trainer.selection.implicit_reward import (
    completion_logps,
    implicit_reward_gap_indices,
    implicit_rewards,
    select_implicit_reward_gap,
)
from aepo_trainer.selection.keys import prompt_key
from aepo_trainer.selection.surrogate import FEATURES, POLICY_FEATURES, pool_features

# ------------------------------------------------------------------------------------------------ the strategy
REWARDS = torch.tensor(
    [
        [0.3, -1.0, 2.0, 0.5, 1.1],
        [5.0, 0.0, -2.0, 9.9, 1.0],  # index 3 is padding: its 9.9 must be ignored
        [1.0, 1.0, 0.0, 0.0, 0.5],  # ties: the lowest index wins
        [0.0, 0.0, 0.0, 0.0, 0.0],  # no spread (policy = reference): falls back
    ]
)
MASK = torch.tensor([[True] * 5, [True, True, True, False, True], [True] * 5, [True] * 5])


def test_gap_indices_on_a_hand_checked_pool():
    idx, informative = implicit_reward_gap_indices(REWARDS, 2, MASK)
    assert idx.tolist() == [[1, 2], [0, 2], [0, 2], [0, 1]]
    assert informative.tolist() == [True, True, True, False]
    # k = 3, row 0: ends -1.0 (1) and 2.0 (2), then the one nearest the middle 0.5 -> index 3 (exactly 0.5)
    # k = 4, row 0: ends, then nearest 0.0 -> 0 (0.3), then nearest 1.0 -> 4 (1.1)
    assert implicit_reward_gap_indices(REWARDS[:1], 3)[0].tolist() == [[1, 2, 3]]
    assert implicit_reward_gap_indices(REWARDS[:1], 4)[0].tolist() == [[0, 1, 2, 4]]
    assert implicit_reward_gap_indices(REWARDS[:1], 5)[0].tolist() == [[0, 1, 2, 3, 4]]
    # a non-finite reward makes a row uninformative
    _, ok = implicit_reward_gap_indices(torch.tensor([[0.0, float("nan"), 1.0]]), 2)
    assert ok.tolist() == [False]
    with pytest.raises(ValueError, match="fewer than k = 5"):
        implicit_reward_gap_indices(REWARDS, 5, MASK)


def test_flat_rows_take_the_fallback_selection():
    from aepo_trainer.selection.kernel import SelectionResult

    embeddings = torch.randn(4, 5, 8, generator=torch.Generator().manual_seed(0))
    fallback_idx = torch.tensor([[3, 4]] * 4)
    fallback = SelectionResult(fallback_idx, *(torch.zeros(4),) * 3, torch.ones(4, 2, dtype=torch.bool))
    result, informative = select_implicit_reward_gap(embeddings, REWARDS, 2, mask=MASK, fallback=fallback)
    assert result.indices.tolist() == [[1, 2], [0, 2], [0, 2], [3, 4]]
    assert informative.tolist() == [True, True, True, False]
    assert result.valid.all() and torch.isfinite(result.representativeness).all()


def test_pool_reducer_dispatches_the_strategy(tmp_path):
    from aepo_trainer import AEPOConfig
    from aepo_trainer.reduction import PoolReducer
    from aepo_trainer.selection import select_subsets

    args = AEPOConfig(str(tmp_path), selection_strategy="implicit_reward_gap", report_to="none", bf16=False)
    reducer = PoolReducer(args)
    assert reducer.needed_signals == ("implicit_rewards",)
    rows = [{"prompt": f"p{i}", "completions": [f"c{j}" for j in range(5)]} for i in range(4)]
    embeddings = torch.randn(4, 5, 8, generator=torch.Generator().manual_seed(1))
    selected = reducer.select(rows, embeddings, MASK, signals={"implicit_rewards": REWARDS})
    keys = torch.tensor([prompt_key(r["prompt"]) for r in rows])
    random = select_subsets(embeddings, 2, mask=MASK, strategy="random", seed=args.seed, row_keys=keys)
    assert selected.subsets[:3] == [[1, 2], [0, 2], [0, 2]]
    assert selected.subsets[3] == random.indices[3].tolist()  # active_cold_start ('random') for the flat row
    assert selected.informative.tolist() == [True, True, True, False]
    # evaluation (learn=False) selects by the fallback alone, without signals
    assert reducer.select(rows, embeddings, MASK, learn=False).subsets == random.tolist()
    with pytest.raises(ValueError, match="only AEPOTrainer computes"):
        reducer.select(rows, embeddings, MASK)
    with pytest.raises(ValueError, match="implicit_reward_gap"):
        select_subsets(embeddings, 2, strategy="implicit_reward_gap")


def test_config_fields_are_validated(tmp_path):
    from aepo_trainer import AEPOConfig

    base = dict(output_dir=str(tmp_path), report_to="none", bf16=False)
    with pytest.raises(ValueError, match="active_implicit_reward_feature=True is invalid"):
        AEPOConfig(**base, active_implicit_reward_feature=True)  # 'aepo' has no surrogate to extend
    with pytest.raises(ValueError, match="implicit_reward_batch_size=0 is invalid"):
        AEPOConfig(**base, implicit_reward_batch_size=0)
    config = AEPOConfig(**base, selection_strategy="delta_ucb", active_implicit_reward_feature=True, beta=0.25)
    assert config.needs_implicit_rewards and config.aepo_settings()["beta"] == 0.25
    assert not AEPOConfig(**base, selection_strategy="delta_ucb").needs_implicit_rewards


# ------------------------------------------------------------------------------------------------ the feature
def test_feature_function_reads_the_signal():
    rows = [{"prompt": "p", "completions": ["a", "bb", "ccc", "dddd", "e"]}] * 4
    embeddings = torch.randn(4, 5, 8, generator=torch.Generator().manual_seed(2))
    x = pool_features(rows, embeddings, MASK, features=POLICY_FEATURES, signals={"implicit_rewards": REWARDS})
    assert x.shape == (4, 5, 8 + 1 + 1)
    assert x[..., -1].tolist() == (REWARDS.double() * MASK).tolist()  # zero on padding
    assert torch.equal(x[..., :-1], pool_features(rows, embeddings, MASK, features=FEATURES))
    with pytest.raises(ValueError, match="implicit_reward_feature.*only AEPOTrainer"):
        pool_features(rows, embeddings, MASK, features=POLICY_FEATURES)


# ------------------------------------------------------------------------------------------------ in the trainer
def _perturbed(model, scale=0.05, seed=0):
    """A copy of `model` with every weight nudged: a reference the policy differs from from the first step on."""
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return other


def _trainer(tiny_model_path, dpo_args, rows, peft_config=None, **overrides):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aepo_trainer import AEPOConfig, AEPOTrainer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    ref = None if peft_config is not None else _perturbed(model)
    trainer = AEPOTrainer(
        model=model,
        ref_model=ref,
        args=AEPOConfig(**{**dpo_args, "max_length": 64, "beta": 0.5, **overrides}),
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_path),
        peft_config=peft_config,
    )
    return trainer


def _frozen_copy(trainer, path):
    """The policy's current weights in a fresh model (a deepcopy would share TRL's fused-head forward, bound to the
    original module, and so follow the training)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    model.load_state_dict({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})
    return model


def _independent_rewards(policy, ref, row, beta, pad, disable_adapter=False):
    """β·(log π − log π_ref) of every candidate of a prepared row, by `completion_logps` (one model at a time)."""
    pi = completion_logps(policy, row["prompt_ids"], row["completions_ids"], pad_token_id=pad)
    pr = completion_logps(ref, row["prompt_ids"], row["completions_ids"], pad_token_id=pad,
                          disable_adapter=disable_adapter)  # fmt: skip
    return implicit_rewards(pi, pr, beta)


@pytest.mark.parametrize("use_peft", [False, True])
def test_pool_implicit_rewards_equal_an_independent_computation(tiny_model_path, dpo_args, use_peft):
    from aepo_trainer.data.collator import POOL_ROWS
    from aepo_trainer.trainer.implicit_rewards import pool_implicit_rewards

    peft_config = None
    if use_peft:
        peft = pytest.importorskip("peft")
        peft_config = peft.LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    rows = pool_rows(n=4, size=5)
    trainer = _trainer(tiny_model_path, dpo_args, rows, peft_config=peft_config,
                       selection_strategy="implicit_reward_gap", implicit_reward_batch_size=3)  # fmt: skip
    batch = next(iter(trainer.get_train_dataloader()))
    got = pool_implicit_rewards(trainer, batch)
    assert got.shape == batch["pool_mask"].shape == (2, 5)
    by_prompt = {r["prompt"]: r for r in trainer.train_dataset}
    pad = trainer.pad_token_id
    for b, row in enumerate(batch[POOL_ROWS]):
        prepared = by_prompt[row["prompt"]]
        ref = trainer.model if use_peft else trainer.ref_model
        expected = _independent_rewards(trainer.model, ref, prepared, 0.5, pad, disable_adapter=use_peft)
        assert got[b].tolist() == pytest.approx(expected.tolist(), abs=1e-4)
        assert expected.abs().max() > 1e-2  # the policy and its reference really differ
    trainer.model.train()  # the training mode is restored after the no-grad eval-mode passes
    pool_implicit_rewards(trainer, batch)
    assert trainer.model.training


def test_training_step_with_implicit_reward_gap_pays_k_per_prompt(tiny_model_path, dpo_args):
    rows = pool_rows(n=8, size=5)
    trainer = _trainer(tiny_model_path, dpo_args, rows, selection_strategy="implicit_reward_gap", max_steps=2)
    initial = _frozen_copy(trainer, tiny_model_path)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    # 2 steps x 2 prompts x k = 2: exactly what the step trained on
    assert trainer.annotation_service.spent == 8
    entries = [e for e in trainer.state.log_history if "aepo/annotations_paid" in e]
    assert [e["aepo/annotations_paid"] for e in entries] == [4, 4]
    assert all(e["aepo/implicit_reward_flat"] == 0 and e["aepo/implicit_reward_spread"] > 0 for e in entries)
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    # the first step's prompts were selected at the initial weights: their subsets are argmin/argmax of r
    by_prompt = {r["prompt"]: r for r in trainer.train_dataset}
    for pair in trainer.recent_pairs[:2]:
        r = _independent_rewards(initial, trainer.ref_model, by_prompt[pair["prompt"]], 0.5, trainer.pad_token_id)
        assert pair["selected"] == sorted([int(r.argmin()), int(r.argmax())])
        assert float(r.max() - r.min()) > 1e-3


def test_peft_training_step_selects_by_the_adapter_disabled_reference(tiny_model_path, dpo_args):
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    trainer = _trainer(tiny_model_path, dpo_args, pool_rows(n=4, size=5), peft_config=config,
                       selection_strategy="implicit_reward_gap", max_steps=1)  # fmt: skip
    lora = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    by_prompt = {r["prompt"]: r for r in trainer.train_dataset}
    pad = trainer.pad_token_id
    # selection happens at the initial adapter: the expected subsets, computed before the step
    expected = {
        p: _independent_rewards(trainer.model, trainer.model, row, 0.5, pad, disable_adapter=True)
        for p, row in by_prompt.items()
    }
    trainer.train()
    assert trainer.annotation_service.spent == 4 and trainer.model.training
    for pair in trainer.recent_pairs:
        r = expected[pair["prompt"]]
        assert pair["selected"] == sorted([int(r.argmin()), int(r.argmax())])
    assert any(not torch.equal(lora[n], p) for n, p in trainer.model.named_parameters() if "lora_" in n)


def test_surrogate_learns_the_implicit_reward_feature_in_the_trainer(tiny_model_path, dpo_args):
    rows = pool_rows(n=4, size=5)
    trainer = _trainer(tiny_model_path, dpo_args, rows, selection_strategy="delta_ucb",
                       active_implicit_reward_feature=True, max_steps=1)  # fmt: skip
    initial = _frozen_copy(trainer, tiny_model_path)
    trainer.train()
    labels = trainer.pool_reducer.active.surrogate.export()
    assert len(labels) == 4 and trainer.annotation_service.spent == 4  # 2 prompts x k = 2
    by_key = {prompt_key(r["prompt"]): r for r in trainer.train_dataset}
    for pk, ck, features, _score in labels:
        row = by_key[pk]
        j = next(j for j, c in enumerate(row["completions"]) if prompt_key(c) == ck)
        r = _independent_rewards(initial, trainer.ref_model, row, 0.5, trainer.pad_token_id)
        assert len(features) == 8 + 1 + 1  # embedding, log length, implicit reward
        assert features[-1] == pytest.approx(float(r[j]), abs=1e-4) and abs(features[-1]) > 1e-4
        assert features[-2] == pytest.approx(math.log1p(len(row["completions"][j])))


# ------------------------------------------------------------------------------------------------ the CLI
def test_aepo_select_refuses_policy_strategies_before_any_work(tmp_path, capsys):
    from aepo_trainer.cli import main

    missing = tmp_path / "never-read.jsonl"  # refused before the input is even opened
    out = tmp_path / "pairs.jsonl"
    assert main(["select", "--input", str(missing), "--output", str(out), "--selection_strategy",
                 "implicit_reward_gap", "--annotator", "reward_model", "--reward_model_name_or_path", "x"]) == 2  # fmt: skip
    err = " ".join(capsys.readouterr().err.split())
    assert "'selection_strategy'" in err and "implicit_reward_gap" in err and "only AEPOTrainer computes" in err
    assert list(tmp_path.iterdir()) == []  # no store, no output, nothing paid
    assert main(["stats", "--input", str(missing), "--strategies", "implicit_reward_gap"]) == 2


# ------------------------------------------------------------------------------------------------ two processes
@pytest.mark.slow
def test_two_processes_on_policy_pay_exactly_and_agree(tiny_model_path, minilm_path, tmp_path):
    """torchrun, 2 CPU processes (gloo), prompt-only dataset: each rank samples its prompts' pools, computes their
    implicit rewards and selects; the main process pays for both (one ledger): paid = k x trained prompts. Resumed
    from its first checkpoint, the run reads step 2's pools and labels back (nothing sampled or paid twice) and every
    rank's running total of generated tokens continues from the checkpoint's."""
    import json
    import shutil

    from test_exact_pay import _free_port, finish, read_calls, run_worker

    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(_free_port())]  # fmt: skip
    options = {"max_steps": 2, "num_prompts": 8, "resume": False, "prompt_only": True, "perturb_ref": True,
               "selection_strategy": "implicit_reward_gap", "embedding_model": minilm_path, "num_generations": 4,
               "max_completion_length": 8, "temperature": 1.0, "learning_rate": 1e-2,
               "save_strategy": "steps", "save_steps": 1}  # fmt: skip
    code, out = finish(run_worker(tiny_model_path, tmp_path, "out", options, launcher=launcher), timeout=400)
    assert code == 0, out[-6000:]
    results = [json.loads((tmp_path / f"result_rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in results] == [2, 2]
    assert [r["generated"] for r in results] == [4, 4]  # 2 steps x 2 prompts, each rank its own
    trained = [k for r in results for k in r["keys"]]
    assert len(trained) == 8 and len(set(trained)) == 8
    # one ledger, on the main process: k = 2 x 8 trained prompts, each paid once
    assert results[0]["spent"] == 16 and results[1]["spent"] is None
    assert len(read_calls(tmp_path, 0)) == 16 and read_calls(tmp_path, 1) == []
    assert results[0]["weights"] == results[1]["weights"]
    logged = [e for e in results[0]["logged"] if "aepo/implicit_reward_spread" in e]
    assert len(logged) == 2 and all(e["aepo/implicit_reward_flat"] == 0 for e in logged)
    totals = [e["aepo/generated_tokens"] for e in results[0]["logged"]]
    assert [r["generated_tokens_total"] for r in results] == [{"generated_tokens": totals[1]}] * 2
    assert 0 < totals[0] < totals[1]

    shutil.rmtree(tmp_path / "out" / "checkpoint-2")  # killed after step 2 paid, before its checkpoint was saved
    launcher[-1] = str(_free_port())
    options["resume"] = True
    code, out = finish(run_worker(tiny_model_path, tmp_path, "out", options, launcher=launcher), timeout=400)
    assert code == 0, out[-6000:]
    resumed = [json.loads((tmp_path / f"result_rank{r}.json").read_text()) for r in range(2)]
    assert [r["global_step"] for r in resumed] == [2, 2] and [r["generated"] for r in resumed] == [0, 0]
    assert resumed[0]["spent"] == 16 and len(read_calls(tmp_path, 0)) == 16  # nothing paid twice
    assert [r["generated_tokens_total"] for r in resumed] == [{"generated_tokens": totals[0]}] * 2
