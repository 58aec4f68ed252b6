"""AEPOTrainer on candidate pools: end-to-end training, equality with DPOTrainer on the same pairs, per-batch
selection, budget, metrics, resume without re-annotating, LoRA, model card, and the refusals."""

from __future__ import annotations

import math
import os

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

from aepo_trainer import AEPOConfig, AEPOTrainer
from aepo_trainer.annotation.dataset_scores import DatasetScoresAnnotator
from aepo_trainer.annotation.service import AnnotationService
from aepo_trainer.reduction import PoolReducer
from aepo_trainer.selection import prompt_key

WORDS = ["blue", "green", "Paris", "four", "the sea", "a cat", "yes", "no", "maybe", "sleep"]


def pool_rows(n=8, size=4, seed=0, ties=()):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        scores = torch.randperm(size, generator=g).float().div(size).tolist()  # distinct: no ties
        rows.append(
            {
                "prompt": f"Question {i}: tell me about {WORDS[i % len(WORDS)]}.",
                "completions": [f" It is {WORDS[(i + j) % len(WORDS)]}, {j}." for j in range(size)],
                "scores": [0.5] * size if i in ties else scores,
                "embeddings": torch.randn(size, 8, generator=g).tolist(),
            }
        )
    return rows


def make_trainer(model_path, dpo_args, rows=None, peft_config=None, annotator=None, **overrides):
    kwargs = {**dpo_args, "max_length": 64, **overrides}
    model = AutoModelForCausalLM.from_pretrained(model_path)
    ref = None if peft_config is not None else AutoModelForCausalLM.from_pretrained(model_path)
    return AEPOTrainer(
        model=model,
        ref_model=ref,
        args=AEPOConfig(**kwargs),
        train_dataset=Dataset.from_list(rows if rows is not None else pool_rows()),
        processing_class=AutoTokenizer.from_pretrained(model_path),
        peft_config=peft_config,
        annotator=annotator,
    )


def logged(trainer):
    return [e for e in trainer.state.log_history if "loss" in e]


def test_training_on_pools_changes_weights_and_logs_metrics(tiny_model_path, dpo_args):
    trainer = make_trainer(tiny_model_path, dpo_args)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    entries = logged(trainer)
    assert len(entries) == 3
    for key in (
        "aepo/representativeness",
        "aepo/diversity",
        "aepo/reward_chosen",
        "aepo/reward_rejected",
        "aepo/annotations_spent",
        "aepo/ties_dropped",
        "rewards/margins",
        "logps/chosen",
    ):
        assert key in entries[-1], key
    assert [e["aepo/annotations_spent"] for e in entries] == [4, 8, 12]  # k = 2 per prompt, 2 prompts per step
    assert all(e["aepo/reward_chosen"] > e["aepo/reward_rejected"] for e in entries)
    assert all(-1.0 <= e["aepo/representativeness"] <= 1.0 and 0.0 <= e["aepo/diversity"] <= 2.0 for e in entries)
    assert trainer.recent_pairs and trainer.recent_pairs[0]["chosen_score"] > trainer.recent_pairs[0]["rejected_score"]


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"ld_alpha": 0.5},
        {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5]},
    ],
)
def test_pool_training_equals_dpo_on_the_selected_pairs(tiny_model_path, dpo_args, tmp_path, overrides):
    """With k = 2, training on pools is DPO on the pairs AEPO selects: same losses and weights, step by step."""
    rows = pool_rows()
    trainer = make_trainer(tiny_model_path, dpo_args, rows, **overrides)
    trainer.train()

    # The same pairs, formed offline by the same PoolReducer (fresh store), as a prompt/chosen/rejected dataset.
    args = AEPOConfig(**{**dpo_args, "output_dir": str(tmp_path / "offline")})
    reducer = PoolReducer(args, AnnotationService(DatasetScoresAnnotator(), tmp_path / "offline.sqlite"))
    reduced = reducer.reduce(rows, torch.tensor([r["embeddings"] for r in rows]))
    assert len(reduced.pairs) == len(rows)
    pairs = [
        {
            "prompt": rows[p.row]["prompt"],
            "chosen": rows[p.row]["completions"][reduced.subsets[p.row][p.chosen]],
            "rejected": rows[p.row]["completions"][reduced.subsets[p.row][p.rejected]],
        }
        for p in reduced.pairs
    ]
    dpo = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_path),
        ref_model=AutoModelForCausalLM.from_pretrained(tiny_model_path),
        args=DPOConfig(**{**dpo_args, "max_length": 64, "output_dir": str(tmp_path / "dpo"), **overrides}),
        train_dataset=Dataset.from_list(pairs),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_path),
    )
    dpo.train()
    ours, theirs = logged(trainer), logged(dpo)
    for key in ("loss", "rewards/chosen", "rewards/margins", "logps/rejected", "num_tokens"):
        assert [e[key] for e in ours] == pytest.approx([e[key] for e in theirs], rel=1e-4, abs=1e-5), key
    theirs_weights = dict(dpo.model.named_parameters())
    for name, p in trainer.model.named_parameters():
        torch.testing.assert_close(p, theirs_weights[name], rtol=1e-4, atol=1e-5)


def test_selection_happens_per_batch_in_the_step(tiny_model_path, dpo_args):
    trainer = make_trainer(tiny_model_path, dpo_args)
    calls = []
    original = trainer.pool_reducer.select

    def spy(rows, embeddings, mask=None, **kwargs):
        calls.append([r["prompt"] for r in rows])
        return original(rows, embeddings, mask, **kwargs)

    trainer.pool_reducer.select = spy
    trainer.train()
    # One reduction per trained batch of 2 pools, in the training step: the batch the DataLoader prepares ahead
    # (accelerate looks one batch ahead to detect the end of the epoch) is neither selected nor paid for.
    assert len(calls) == 3 and all(len(c) == 2 for c in calls)
    assert trainer.seen_prompt_keys == [prompt_key(p) for c in calls for p in c]
    assert trainer.annotation_service.spent == 12  # exactly k = 2 x 6 trained prompts


def test_budget_is_respected_and_training_stops_with_a_checkpoint(tiny_model_path, dpo_args, caplog):
    trainer = make_trainer(tiny_model_path, dpo_args, annotation_budget=6, max_steps=10)
    with caplog.at_level("WARNING"):
        trainer.train()
    assert trainer.annotation_service.spent == 6  # 3 prompts x k = 2; the 4th prompt did not fit and was skipped
    assert trainer.state.global_step == 2  # step 2 trained on what was annotated, then stopped
    assert "budget exhausted" in trainer.aepo_stop_reason and "6/6" in trainer.aepo_stop_reason
    assert any("stopping training" in r.getMessage() for r in caplog.records)
    assert os.path.isdir(os.path.join(trainer.args.output_dir, "checkpoint-2"))
    assert logged(trainer)[-1]["aepo/budget_left"] == 0


def test_resume_does_not_re_annotate(tiny_model_path, dpo_args):
    first = make_trainer(tiny_model_path, dpo_args, max_steps=2, save_strategy="steps", save_steps=2)
    first.train()
    assert first.annotation_service.spent == 8  # 2 trained batches x 2 prompts x k = 2: nothing for the look-ahead
    resumed = make_trainer(tiny_model_path, dpo_args, max_steps=4, save_strategy="steps", save_steps=2)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 4
    assert resumed.annotation_service.spent == 16  # same ledger: 8 prompts x k = 2, nothing paid twice
    entries = logged(resumed)[-2:]  # the log history of steps 1-2 is restored from the checkpoint
    assert [e["aepo/annotations_paid"] for e in entries] == [4, 4]  # nothing was paid ahead of its step
    assert [e["aepo/annotations_reused"] for e in entries] == [0, 0]
    assert len(set(first.seen_prompt_keys + resumed.seen_prompt_keys)) == 8  # no prompt seen twice


def test_a_step_without_pairs_takes_no_optimizer_step(tiny_model_path, dpo_args):
    """All prompts of the step tie: no pair, so no loss term, no update of weights, optimizer state or schedule."""
    rows = pool_rows(n=4, ties=(0, 1))  # step 1: both prompts tie; step 2: two real pairs
    trainer = make_trainer(tiny_model_path, dpo_args, rows=rows, max_steps=1, lr_scheduler_type="linear")
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    entry = logged(trainer)[0]
    assert math.isnan(entry["loss"]) and entry["aepo/empty_batches"] == 1 and entry["aepo/ties_dropped"] == 2
    assert "rewards/chosen" not in entry  # no NaN metric from a step without pairs
    assert all(torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    assert trainer.optimizer.state_dict()["state"] == {}  # Adam never stepped: no momentum to move weights later
    scheduler = trainer.lr_scheduler
    assert scheduler.last_epoch == 0 and set(scheduler.get_last_lr()) == {dpo_args["learning_rate"]}


def test_lora_on_pools_with_gradient_checkpointing(tiny_model_path, dpo_args):
    from peft import LoraConfig

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = make_trainer(tiny_model_path, dpo_args, peft_config=lora, activation_checkpointing=True, max_steps=2)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)
    assert logged(trainer)[-1]["rewards/margins"] != 0  # the reference (adapter disabled) differs from the policy


def test_reward_function_annotator(tiny_model_path, dpo_args):
    seen = {}

    def length_reward(prompts, completions, **columns):
        seen.setdefault("columns", set(columns))
        return [float(len(c)) for c in completions]

    trainer = make_trainer(tiny_model_path, dpo_args, annotator=length_reward, max_steps=1)
    trainer.train()
    assert "scores" in seen["columns"]  # the row's other columns reach the reward function
    assert all(p["chosen_score"] == len(p["chosen"]) for p in trainer.recent_pairs)


def test_model_card_mentions_aepo(tiny_model_path, dpo_args):
    trainer = make_trainer(tiny_model_path, dpo_args, max_steps=1, diversity_weight=0.5)
    trainer.train()
    trainer.create_model_card()
    card = open(os.path.join(trainer.args.output_dir, "README.md"), encoding="utf-8").read()
    assert "trained with **AEPO**" in card and "| `diversity_weight` | `0.5` |" in card
    assert "annotations spent" in card


def test_refusals(tiny_model_path, dpo_args):
    with pytest.raises(ValueError, match="precompute_ref_log_probs=True` cannot be used with candidate-pool"):
        make_trainer(tiny_model_path, dpo_args, precompute_ref_log_probs=True)
    with pytest.raises(
        ValueError, match=r"`padding_free=True` cannot be used with candidate-pool .*padding_free=False"
    ):
        make_trainer(tiny_model_path, dpo_args, padding_free=True)
    pairs = Dataset.from_dict({"prompt": ["a"], "chosen": [" b"], "rejected": [" c"]})
    with pytest.raises(ValueError, match="reward-aware losses"):
        AEPOTrainer(
            model=AutoModelForCausalLM.from_pretrained(tiny_model_path),
            ref_model=AutoModelForCausalLM.from_pretrained(tiny_model_path),
            args=AEPOConfig(**dpo_args, loss_type=["rpo_sq"]),
            train_dataset=pairs,
            processing_class=AutoTokenizer.from_pretrained(tiny_model_path),
        )
    with pytest.raises(ValueError, match=r"row 1, field 'completions': 1 completion"):
        bad = pool_rows(n=2)
        bad[1]["completions"], bad[1]["scores"], bad[1]["embeddings"] = [" x"], [0.1], [[0.0] * 8]
        make_trainer(tiny_model_path, dpo_args, rows=bad)


def test_on_the_fly_pairs_equal_aepo_select(tiny_model_path, dpo_args, tmp_path):
    """Same seed and settings: the pairs formed during training are exactly those `aepo select` writes."""
    import json

    from aepo_trainer.cli import main as aepo

    rows = pool_rows(n=8, size=6, seed=3)
    pools_path, pairs_path = tmp_path / "pools.jsonl", tmp_path / "pairs.jsonl"
    pools_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = {"num_annotations": 3, "pairing_rule": "best_vs_random", "selection_strategy": "random"}
    flags = [f"--{name}={value}" for name, value in settings.items()]
    assert aepo(["select", "--input", str(pools_path), "--output", str(pairs_path), "--seed", "0", *flags]) == 0
    offline = {(r["prompt"], r["chosen"], r["rejected"]) for r in map(json.loads, pairs_path.read_text().splitlines())}

    trainer = make_trainer(tiny_model_path, dpo_args, rows, max_steps=-1, num_train_epochs=1, **settings)
    on_the_fly = set()
    original = trainer.pool_reducer.finish

    def spy(batch_rows, selected, reply):
        reduced = original(batch_rows, selected, reply)
        for p in reduced.pairs:
            row, subset = batch_rows[p.row], reduced.subsets[p.row]
            on_the_fly.add(
                (row["prompt"], row["completions"][subset[p.chosen]], row["completions"][subset[p.rejected]])
            )
        return reduced

    trainer.pool_reducer.finish = spy
    trainer.train()
    assert len(offline) == 8 and on_the_fly == offline


def test_pools_without_embeddings_use_the_sentence_embedder(tiny_model_path, dpo_args, minilm_path):
    rows = [{k: v for k, v in r.items() if k != "embeddings"} for r in pool_rows(n=4)]
    trainer = make_trainer(tiny_model_path, dpo_args, rows=rows, max_steps=1, embedding_model=minilm_path)
    vectors = torch.as_tensor(trainer.train_dataset[0]["embeddings"])
    assert vectors.shape == (4, 384)
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(4), atol=1e-4, rtol=0)
    trainer.train()
    assert logged(trainer)[0]["aepo/representativeness"] > 0  # real sentence similarities of related answers


def test_evaluate_on_pools(tiny_model_path, dpo_args):
    rows = pool_rows(n=8)
    trainer = make_trainer(tiny_model_path, dpo_args, rows=rows[:4], max_steps=1)
    trainer.eval_dataset = trainer._prepare_dataset(
        Dataset.from_list(rows[4:]), trainer.processing_class, trainer.args, "eval"
    )
    metrics = trainer.evaluate()
    assert metrics["eval_loss"] == pytest.approx(0.6931, abs=1e-3)  # policy = reference before training
    assert metrics["eval_aepo/pairs"] == 4 and "eval_rewards/margins" in metrics
    assert trainer.seen_prompt_keys == []  # evaluation prompts are not counted as trained


def test_human_annotation_pending_stops_cleanly(tiny_model_path, dpo_args):
    trainer = AEPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_path),
        ref_model=AutoModelForCausalLM.from_pretrained(tiny_model_path),
        args=AEPOConfig(**{**dpo_args, "max_length": 64, "annotator": "human"}),
        train_dataset=Dataset.from_list(pool_rows()),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_path),
    )
    trainer.train()  # returns normally: no exception escapes the training loop
    assert trainer.state.global_step == 1
    assert "pending" in trainer.aepo_stop_reason.lower() and "labels" in trainer.aepo_stop_reason
    queue = os.path.join(trainer.args.output_dir, "annotation_queue.jsonl")
    assert os.path.exists(queue)
    assert logged(trainer)[0]["aepo/empty_batches"] == 1  # nothing was trained on unlabeled items


def test_label_agreement_with_gold_scores_is_logged(tiny_model_path, dpo_args):
    """A reward function annotates; the dataset's scores column is gold: the log says how often they agree."""
    rows = pool_rows(n=8)
    for row in rows:  # distinct lengths; gold: the longest is best; the reward below agrees on even prompts only
        row["completions"] = [f" It is {'a' * (j + 1)}." for j in range(4)]
        row["scores"] = [float(len(c)) for c in row["completions"]]

    def reward(prompts, completions, **columns):
        sign = [1.0 if int(p.split()[1].rstrip(":")) % 2 == 0 else -1.0 for p in prompts]
        return [s * len(c) for s, c in zip(sign, completions)]

    trainer = make_trainer(tiny_model_path, dpo_args, rows=rows, annotator=reward, max_steps=4)
    trainer.train()
    agreement = [e["aepo/label_gold_agreement"] for e in logged(trainer) if "aepo/label_gold_agreement" in e]
    assert len(agreement) == 4 and sum(agreement) / 4 == pytest.approx(0.5)  # 2 pairs a step; 4 of 8 prompts agree
    assert "aepo/label_gold_agreement" not in logged(make_and_train_with_dataset_scores(tiny_model_path, dpo_args))[-1]


def make_and_train_with_dataset_scores(tiny_model_path, dpo_args):
    trainer = make_trainer(tiny_model_path, dpo_args, max_steps=1)
    trainer.train()
    return trainer
