"""AEPOTrainer with an active strategy (issue 15), single process: the surrogate learns each step's labels."""

from __future__ import annotations

from test_pool_trainer import make_trainer, pool_rows


def test_trainer_selects_actively_and_learns_after_every_step(tiny_model_path, dpo_args):
    trainer = make_trainer(
        tiny_model_path,
        dpo_args,
        rows=pool_rows(size=5),
        selection_strategy="double_ts",
        active_warmup_annotations=4,
        active_safety_margin=None,  # the safety rule off: the learning mechanics alone (the safety rule: the resume test below)
    )
    trainer.train()
    active = trainer.pool_reducer.active
    assert active is not None and len(active.surrogate) == 12  # k = 2 x 6 trained prompts, all valid
    assert [q.cold_start for q in active.history] == [True, False, False]  # 4 labels after the first step
    assert active.history[1].pairs_evaluated == 2  # measured on the step's labels before learning them
    assert trainer.annotation_service.spent == 12
    assert trainer.args.aepo_settings()["active_warmup_annotations"] == 4


def test_resume_restores_the_surrogate_and_selects_as_an_uninterrupted_run(tiny_model_path, dpo_args, tmp_path):
    settings = dict(selection_strategy="double_ts", active_warmup_annotations=4, save_strategy="steps", save_steps=2)
    whole = make_trainer(tiny_model_path, {**dpo_args, "output_dir": str(tmp_path / "a")}, max_steps=4, **settings)
    whole.train()
    first = make_trainer(tiny_model_path, {**dpo_args, "output_dir": str(tmp_path / "b")}, max_steps=2, **settings)
    first.train()
    resumed = make_trainer(tiny_model_path, {**dpo_args, "output_dir": str(tmp_path / "b")}, max_steps=4, **settings)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.pool_reducer.active.surrogate.export() == whole.pool_reducer.active.surrogate.export()
    # the safety rule's out-of-sample record travels in the checkpoint too (issue 27): the same decisions after it
    assert resumed.pool_reducer.active.safety.export() == whole.pool_reducer.active.safety.export()
    assert len(whole.pool_reducer.active.safety.export()) == 6  # 2 prompts tested per step after the first
    assert first.seen_prompt_keys + resumed.seen_prompt_keys == whole.seen_prompt_keys
    assert resumed.annotation_service.spent == whole.annotation_service.spent == 16
    assert [(p["chosen"], p["rejected"]) for p in resumed.recent_pairs[-4:]] == [
        (p["chosen"], p["rejected"]) for p in whole.recent_pairs[-4:]
    ]  # the steps after the resume selected and paired the same candidates
    logged = [e for e in whole.state.log_history if "aepo/active_labels" in e]
    assert [e["aepo/active_labels"] for e in logged] == [4, 8, 12, 16] and "aepo/active_spearman" in logged[-1]
    assert [e["aepo/active_prompts_tested"] for e in logged] == [0, 2, 4, 6]
    assert resumed.pool_reducer.active.safety.state() == whole.pool_reducer.active.safety.state()
    follows = [e["aepo/active_follows"] for e in logged]
    assert follows == [float(b > 0.52) for b in (e["aepo/active_safety_lower_bound"] for e in logged)]


def test_evaluation_with_an_active_strategy_is_reproducible_and_teaches_nothing(tiny_model_path, dpo_args):
    from datasets import Dataset

    rows = pool_rows(n=12, size=5)
    trainer = make_trainer(tiny_model_path, dpo_args, rows=rows[:8], selection_strategy="double_ts",
                           active_warmup_annotations=2, max_steps=2)  # fmt: skip
    trainer.train()
    learned = trainer.pool_reducer.active.surrogate.export()
    eval_pools = Dataset.from_list(rows[8:])
    first, second = trainer.evaluate(eval_pools), trainer.evaluate(eval_pools)
    assert first["eval_loss"] == second["eval_loss"]  # the cold-start strategy: the same candidates each time
    assert trainer.pool_reducer.active.surrogate.export() == learned
