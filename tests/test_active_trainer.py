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
    )
    trainer.train()
    active = trainer.pool_reducer.active
    assert active is not None and len(active.surrogate) == 12  # k = 2 x 6 trained prompts, all valid
    assert [q.cold_start for q in active.history] == [True, False, False]  # 4 labels after the first step
    assert active.history[1].pairs_evaluated == 2  # measured on the step's labels before learning them
    assert trainer.annotation_service.spent == 12
    assert trainer.args.aepo_settings()["active_warmup_annotations"] == 4
