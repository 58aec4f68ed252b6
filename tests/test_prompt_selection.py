"""Prompt-level selection (`aepo_trainer.selection.prompts`): with a budget smaller than k x prompts, the labels go to
the hand-checked most informative prompts, in `AEPOTrainer` and in `aepo select`, and the others cost nothing."""

from __future__ import annotations

import json

import pytest
import torch
from test_cli import _store_counts, read_jsonl, write_jsonl
from test_exact_pay import CountingReward, _free_port, finish, pools, read_calls, run_worker, trainer_for

from aepo_trainer import AEPOConfig
from aepo_trainer.selection.prompts import choose_prompts, planned_prompts, prompt_ratio, prompts_to_keep

#: Pair differences d = c0 - c1 of eight two-candidate pools in 3-D. Hand-checked greedy D-optimal choice of 2 with
#: V = I: row 3 first (|d|^2 = 4, gain ln 5 = 1.609 > row 5's ln 4.61 = 1.528); then along e1 V^-1 = 1/5, so row 5's
#: gain drops to ln(1 + 3.61/5) = 0.543, below row 6's ln(1 + 1) = 0.693 (orthogonal, untouched): rows {3, 6}.
#: Ranking by |d| alone would take {3, 5}; the first two rows would be {0, 1}.
DIFFS = {3: (2.0, 0.0, 0.0), 5: (1.9, 0.0, 0.0), 6: (0.0, 1.0, 0.0)}
SMALL = (0.0, 0.0, 0.1)


def planted_rows(n: int = 8) -> list[dict]:
    rows = []
    for i in range(n):
        d = torch.tensor(DIFFS.get(i, SMALL))
        rows.append(
            {
                "prompt": f"Question {i}: name a colour.",
                "completions": [f" Colour {i}.", f" Colour {i}, very much."],
                "scores": [0.0, 1.0],
                "embeddings": [(d / 2).tolist(), (-d / 2).tolist()],
            }
        )
    return rows


def test_d_optimal_greedy_matches_the_hand_computed_choice():
    rows = planted_rows()
    emb = torch.tensor([r["embeddings"] for r in rows])
    subsets = [[0, 1]] * len(rows)
    kept = choose_prompts("d_optimal", 2, embeddings=emb, subsets=subsets, keys=list(range(8)), seed=0)
    assert kept == [3, 6]
    order = [6, 0, 5, 1, 3, 2, 7, 4]  # the window's order does not matter (no ties)
    kept = choose_prompts("d_optimal", 2, embeddings=emb[order], subsets=subsets, keys=order, seed=0)
    assert sorted(order[i] for i in kept) == [3, 6]


def test_implicit_reward_spread_and_random_rules():
    emb = torch.zeros(4, 3, 2)
    subsets = [[0, 1], [0, 2], [1, 2], [0]]  # the last row cannot form a pair: never kept
    rewards = torch.tensor([[0.0, 0.5, 9.0], [0.0, 9.0, 2.0], [5.0, 1.0, 1.5], [0.0, 100.0, 0.0]])
    # spreads over the selected candidates: 0.5, 2.0, 0.5 (row 2: |1.0 - 1.5|), row 3 ineligible
    kept = choose_prompts(
        "implicit_reward_spread",
        1,
        embeddings=emb,
        subsets=subsets,
        keys=[0, 1, 2, 3],
        seed=0,
        implicit_rewards=rewards,
    )
    assert kept == [1]
    keys = [11, 22, 33, 44, 55, 66]
    subsets = [[0, 1]] * 6
    emb = torch.zeros(6, 2, 2)
    kept = choose_prompts("random", 3, embeddings=emb, subsets=subsets, keys=keys, seed=7)
    assert len(kept) == 3
    reversed_kept = choose_prompts("random", 3, embeddings=emb, subsets=subsets, keys=keys[::-1], seed=7)
    assert sorted(keys[i] for i in kept) == sorted(keys[::-1][i] for i in reversed_kept)  # keyed by prompt


def test_ratio_and_keep_counts(tmp_path):
    assert [prompts_to_keep(8, r) for r in (0.25, 0.3, 1.0, 0.01)] == [2, 3, 8, 1]
    args = AEPOConfig(
        output_dir=str(tmp_path), bf16=False, annotation_budget=40, num_train_epochs=2, prompt_selection="random"
    )
    assert planned_prompts(args, 50) == 100 and prompt_ratio(args, 100) == pytest.approx(40 / (2 * 100))
    args.max_steps, args.per_device_train_batch_size, args.gradient_accumulation_steps = 3, 4, 2
    assert planned_prompts(args, 50, world_size=2) == 48
    args = AEPOConfig(output_dir=str(tmp_path), bf16=False, prompt_selection="random", prompt_selection_ratio=0.5)
    assert prompt_ratio(args, 50) == 0.5
    with pytest.raises(ValueError, match="prompt_selection_ratio"):
        AEPOConfig(output_dir=str(tmp_path), bf16=False, prompt_selection_ratio=1.5)
    with pytest.raises(ValueError, match="prompt_selection"):
        AEPOConfig(output_dir=str(tmp_path), bf16=False, prompt_selection="best")


@pytest.mark.parametrize("strategy", ["random", "double_ts", "implicit_reward_gap"])  # plain, active, policy-aware
def test_trainer_annotates_only_the_chosen_prompts_and_pays_nothing_for_the_others(tiny_model_path, dpo_args, strategy):
    reward = CountingReward()
    trainer = trainer_for(
        tiny_model_path,
        dpo_args,
        planted_rows(),
        annotator=reward,
        per_device_train_batch_size=8,  # one window: the whole data set
        max_steps=1,
        prompt_selection="d_optimal",
        selection_strategy=strategy,  # N = 2: every strategy selects both candidates
        annotation_budget=4,  # ratio 4 / (2 x 8 prompts) = 0.25: 2 of the 8 prompts
    )
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    paid_prompts = sorted({prompt for prompt, _ in reward.calls})
    assert paid_prompts == ["Question 3: name a colour.", "Question 6: name a colour."]
    assert len(reward.calls) == 4 and trainer.annotation_service.spent == 4
    logged = [e for e in trainer.state.log_history if "aepo/prompts_unselected" in e]
    assert logged[0]["aepo/prompts_unselected"] == 6 and logged[0]["aepo/pairs"] == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))  # it trained on them


def test_a_window_of_upcoming_batches_trains_the_chosen_prompts_as_full_batches(tiny_model_path, dpo_args):
    """`prompt_selection_window=4` with 2 prompts per batch: the DataLoader gives the step one window of 4 x 2 = 8
    prompts (the whole data set), the step keeps the 2 most informative (hand-checked D-optimal: rows 3 and 6), pays
    for them only, and the epoch has 1 optimizer step instead of 4 (the schedule and resuming count windows)."""
    reward = CountingReward()
    trainer = trainer_for(
        tiny_model_path,
        dpo_args,
        planted_rows(),
        annotator=reward,
        per_device_train_batch_size=2,
        max_steps=-1,  # one epoch, as many steps as the DataLoader has windows
        num_train_epochs=1,
        prompt_selection="d_optimal",
        prompt_selection_window=4,
        selection_strategy="random",
    )
    loader = trainer.get_train_dataloader()
    assert len(loader) == 1 and len(next(iter(loader))["pool_mask"]) == 8
    trainer.train()
    assert trainer.state.global_step == 1
    assert sorted({prompt for prompt, _ in reward.calls}) == [
        "Question 3: name a colour.",
        "Question 6: name a colour.",
    ]
    assert len(reward.calls) == 4 and trainer.annotation_service.spent == 4
    logged = [e for e in trainer.state.log_history if "aepo/prompts_unselected" in e]
    assert logged[0]["aepo/prompts_unselected"] == 6 and logged[0]["aepo/pairs"] == 2  # a full batch of 2 prompts


def test_with_accumulation_every_micro_batch_of_a_window_trains_a_full_batch(tiny_model_path, dpo_args):
    """`prompt_selection_window=2`, 2 prompts per batch, `gradient_accumulation_steps=2`: one step, two micro-batches of
    2 x 2 prompts in order (rows 0-3, rows 4-7). The three strong, orthogonal pair differences are all in the first
    micro-batch: one choice across the step (keep 4 of 8) would train rows 0, 1, 2, 3 there and none in the second. Each
    micro-batch keeps its own 2 (hand-checked D-optimal: rows 0 and 1 of the tied strong rows, window order; rows 4
    and 5 of the identical weak ones), so each trains a full batch of 2 prompts, and only those 4 are paid (k = 2)."""
    strong = {0: (2.0, 0.0, 0.0, 0.0), 1: (0.0, 2.0, 0.0, 0.0), 2: (0.0, 0.0, 2.0, 0.0)}
    rows = planted_rows()
    for i, row in enumerate(rows):
        d = torch.tensor(strong.get(i, (0.0, 0.0, 0.0, 0.1)))
        row["embeddings"] = [(d / 2).tolist(), (-d / 2).tolist()]
    reward = CountingReward()
    trainer = trainer_for(
        tiny_model_path,
        dpo_args,
        rows,
        annotator=reward,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        train_sampling_strategy="sequential",
        max_steps=-1,
        num_train_epochs=1,
        prompt_selection="d_optimal",
        prompt_selection_window=2,
        selection_strategy="random",
    )
    kept_per_micro_batch, select = [], trainer.pool_reducer.select

    def recording_select(batch_rows, *args, **kwargs):  # the selection objects the step then trims, one per micro-batch
        picked = select(batch_rows, *args, **kwargs)
        kept_per_micro_batch.append(picked)
        return picked

    trainer.pool_reducer.select = recording_select
    trainer.train()
    assert trainer.state.global_step == 1
    kept = [[key for key, subset in zip(p.keys, p.subsets) if subset] for p in kept_per_micro_batch]
    assert [len(p.keys) for p in kept_per_micro_batch] == [4, 4] and [len(k) for k in kept] == [2, 2]
    assert sorted({prompt for prompt, _ in reward.calls}) == [f"Question {i}: name a colour." for i in (0, 1, 4, 5)]
    assert len(reward.calls) == 8 and trainer.annotation_service.spent == 8
    logged = [e for e in trainer.state.log_history if "aepo/prompts_unselected" in e]
    assert logged[0]["aepo/prompts_unselected"] == 4 and logged[0]["aepo/pairs"] == 4


def test_a_windowed_run_resumed_after_its_first_step_trains_and_pays_as_the_uninterrupted_run(
    tiny_model_path, dpo_args, tmp_path
):
    """16 prompts, windows of 2 x 4: two steps. Stopped after step 1 (its checkpoint saved) and resumed, the run pays
    for the same prompts' candidates as the uninterrupted run, none twice: the Trainer skips whole windows."""
    from transformers import TrainerCallback

    class StopAfterFirstStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = True

    settings = dict(
        annotator=None,
        per_device_train_batch_size=2,
        max_steps=-1,
        num_train_epochs=1,
        prompt_selection="d_optimal",
        prompt_selection_window=4,
        selection_strategy="random",
        save_strategy="steps",
        save_steps=1,
    )
    runs = {}
    for name in ("whole", "killed"):
        reward = CountingReward()
        settings["annotator"] = reward
        trainer = trainer_for(tiny_model_path, {**dpo_args, "output_dir": str(tmp_path / name)}, pools(16), **settings)
        if name == "killed":
            trainer.add_callback(StopAfterFirstStep())
        trainer.train()
        runs[name] = (trainer, reward)
    assert runs["whole"][0].state.global_step == 2 and runs["killed"][0].state.global_step == 1
    reward = CountingReward()
    settings["annotator"] = reward
    resumed = trainer_for(tiny_model_path, {**dpo_args, "output_dir": str(tmp_path / "killed")}, pools(16), **settings)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 2
    whole, first = runs["whole"][1].calls, runs["killed"][1].calls
    assert len(whole) == 2 * 2 * 2  # 2 steps x 2 prompts kept of 8 x k = 2
    assert sorted(first + reward.calls) == sorted(whole)  # the same prompts and candidates, each paid once


def test_a_window_is_refused_where_it_cannot_be_honoured(tmp_path, capsys):
    from aepo_trainer.cli import main

    with pytest.raises(ValueError, match="prompt_selection_window"):  # a window needs a rule that chooses
        AEPOConfig(output_dir=str(tmp_path), bf16=False, prompt_selection_window=2)
    with pytest.raises(ValueError, match="prompt_selection_window"):  # the window fixes the share: 1 / window
        AEPOConfig(
            output_dir=str(tmp_path),
            bf16=False,
            prompt_selection="random",
            prompt_selection_ratio=0.5,
            prompt_selection_window=2,
        )
    args = AEPOConfig(output_dir=str(tmp_path), bf16=False, prompt_selection="random", prompt_selection_window=4)
    assert prompt_ratio(args, 100) == 0.25
    # aepo select has chunks, not upcoming batches: no such flag, and a config that sets it is refused by name
    from aepo_trainer.data.validation import policy_signal_problems

    assert [p.column for p in policy_signal_problems(args, "aepo select")] == ["prompt_selection_window"]
    pools = write_jsonl(tmp_path / "pools.jsonl", planted_rows())
    argv = ["select", "--input", str(pools), "--output", str(tmp_path / "o.jsonl"), "--prompt_selection", "random"]
    assert main([*argv, "--prompt_selection_window", "2"]) == 2
    assert "unrecognized arguments: --prompt_selection_window" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("rule, expected", [("d_optimal", [3, 6]), ("all", [0, 1])])
def test_aepo_select_spends_a_small_budget_on_the_most_informative_prompts(tmp_path, rule, expected, capsys):
    from aepo_trainer.cli import main

    pools = write_jsonl(tmp_path / "pools.jsonl", planted_rows())
    out = tmp_path / "pairs.jsonl"
    argv = ["select", "--input", str(pools), "--output", str(out), "--selection_strategy", "random"]
    argv += ["--annotation_budget", "4", "--prompt_selection", rule, "--batch_size", "4"]
    code = main(argv)
    err = " ".join(capsys.readouterr().err.split())
    pairs = read_jsonl(out)
    assert sorted(int(p["prompt"].split()[1].rstrip(":")) for p in pairs) == expected
    if rule == "all":  # the first prompts took the budget; the rest were skipped for budget
        assert code == 3
    else:  # the budget covered exactly the chosen prompts; the others were never requested
        assert code == 0 and "left 6 prompts unannotated" in err
    stored, spent = _store_counts(f"{out}.annotations.sqlite", f"aepo-select:{out}")
    assert stored == 4 and spent == 4  # the chosen prompts' 2 candidates each, nothing for the others


@pytest.mark.parametrize(
    "rule, needed, covered",
    [("d_optimal", 4, "2 of 8"), ("all", 16, "2 of 8 (the rest would be skipped: budget exhausted)")],
)
def test_aepo_select_dry_run_costs_the_prompts_the_run_would_choose(tmp_path, capsys, rule, needed, covered):
    """The dry run chooses prompts as the run does: with d_optimal and a budget of 4, 2 prompts x k = 2 are needed
    (and all paid), 6 are left out; without prompt selection all 8 prompts' 16 annotations are needed."""
    from aepo_trainer.cli import main

    pools = write_jsonl(tmp_path / "pools.jsonl", planted_rows())
    argv = ["select", "--input", str(pools), "--output", str(tmp_path / "o.jsonl"), "--selection_strategy", "random"]
    argv += ["--annotation_budget", "4", "--prompt_selection", rule, "--batch_size", "4", "--dry-run"]
    assert main(argv) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "dry run: 8 prompts" in out
    assert f"annotations needed {needed} (2 per prompt)" in out and f"would be paid {needed}" in out
    assert f"prompts covered {covered}" in out
    assert ("left out by prompt choice 6 (--prompt_selection d_optimal" in out) == (rule == "d_optimal")
    assert not (tmp_path / "o.jsonl").exists()


def test_aepo_select_refuses_the_policy_rule(tmp_path, capsys):
    from aepo_trainer.cli import main

    pools = write_jsonl(tmp_path / "pools.jsonl", planted_rows())
    argv = ["select", "--input", str(pools), "--output", str(tmp_path / "o.jsonl")]
    assert main([*argv, "--prompt_selection", "implicit_reward_spread"]) == 2
    assert "prompt_selection" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_choose_by_the_rule_and_pay_once_on_the_main_process(tiny_model_path, tmp_path):
    """torchrun, 2 CPU processes (gloo), d_optimal over windows of 2 upcoming batches of 2: every rank's choice in every
    window is exactly the rule's choice on that window (recomputed here), the kept prompts are the only ones paid (k
    each, once, on the main process), the logged count covers both ranks, and the weights agree."""
    from collections import Counter

    from train_worker import rows

    from aepo_trainer.selection.keys import prompt_key

    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(_free_port())]  # fmt: skip
    options = {"max_steps": 2, "num_prompts": 16, "resume": False, "selection_strategy": "random",
               "prompt_selection": "d_optimal", "prompt_selection_window": 2, "record_selections": True}  # fmt: skip
    code, out = finish(run_worker(tiny_model_path, tmp_path, "out", options, launcher=launcher))
    assert code == 0, out[-6000:]
    results = [json.loads((tmp_path / f"result_rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in results] == [2, 2] and [r["global_step"] for r in results] == [2, 2]
    data = {prompt_key(row["prompt"]): row for row in rows(16)}
    kept_rows = {}
    for result in results:
        assert len(result["selections"]) == 2  # one window of 2 x 2 prompts per step on each rank
        mine = []
        for window in result["selections"]:
            keys, selected = window["keys"], window["selected"]
            embeddings = torch.tensor([data[k]["embeddings"] for k in keys])
            expected = choose_prompts("d_optimal", 2, embeddings=embeddings, subsets=selected, keys=keys, seed=0)
            assert [i for i, kept in enumerate(window["kept"]) if kept] == expected
            mine += [k for k, kept in zip(keys, window["kept"]) if kept]
            kept_rows.update({keys[i]: selected[i] for i in expected})
        seen = [k for window in result["selections"] for k in window["keys"]]
        assert sorted(result["keys"]) == sorted(seen) and set(mine) < set(seen)  # its windows' prompts, each once
    windows = [k for result in results for window in result["selections"] for k in window["keys"]]
    assert len(windows) == len(set(windows)) == 16 and len(kept_rows) == 8  # every prompt seen once, half kept
    calls = read_calls(tmp_path, 0)
    assert not read_calls(tmp_path, 1) and results[1]["spent"] is None  # one ledger, on the main process
    assert len(calls) == results[0]["spent"] == 2 * 8
    assert Counter(prompt_key(c["prompt"]) for c in calls) == dict.fromkeys(kept_rows, 2)
    for key, selected in kept_rows.items():  # exactly the selected candidates of each kept prompt
        paid = sorted(c["completion"] for c in calls if prompt_key(c["prompt"]) == key)
        assert paid == sorted(data[key]["completions"][j] for j in selected)
    assert [e["aepo/prompts_unselected"] for e in results[0]["logged"]] == [4.0, 4.0]  # both ranks' 2 each
    assert results[0]["weights"] == results[1]["weights"]
