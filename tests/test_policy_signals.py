"""Policy signals at the cost of a DPO step (issue 33): the prefix-shared pass equals the plain computation, the
reference log-probs are computed once and reused (by later steps, resumes, and the step's own DPO loss), the hidden
features equal an independent computation, and selections and pay are those of the whole-sequence computation."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from test_implicit_reward_selection import _perturbed
from test_pool_trainer import pool_rows

from aepo_trainer.selection.implicit_reward import completion_logps


def _uneven_rows(n=4, size=5):
    """Pools whose prompts and candidates differ in length (right padding on both), one candidate long enough for
    `max_length=40` to cut it, and one pool with a missing candidate (padding slot)."""
    rows = pool_rows(n=n, size=size)
    for i, row in enumerate(rows):
        row["prompt"] = row["prompt"] + " please" * i
        row["completions"] = [c + " and more" * ((i + j) % 4) for j, c in enumerate(row["completions"])]
    rows[1]["completions"][2] = rows[1]["completions"][2] + " very long indeed" * 8
    rows[2]["completions"] = rows[2]["completions"][:4]
    rows[2]["scores"] = rows[2]["scores"][:4]
    rows[2]["embeddings"] = rows[2]["embeddings"][:4]
    return rows


def _trainer(tiny_model_path, dpo_args, rows, peft_config=None, perturb=True, **overrides):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aepo_trainer import AEPOConfig, AEPOTrainer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    ref = None
    if peft_config is None:
        ref = _perturbed(model) if perturb else AutoModelForCausalLM.from_pretrained(tiny_model_path)
    settings = {**dpo_args, "max_length": 40, "beta": 0.5, "selection_strategy": "implicit_reward_gap", **overrides}
    return AEPOTrainer(
        model=model,
        ref_model=ref,
        args=AEPOConfig(**settings),
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_path),
        peft_config=peft_config,
    )


def _positions(batch):
    return [(b, j) for b, row in enumerate(batch["pool_mask"].tolist()) for j, ok in enumerate(row) if ok]


def _kept(batch, b, j, max_length):
    """The kept prompt and completion tokens of a candidate (keep_start), as TRL's truncation keeps them."""
    p = int(batch["pool_prompt_lengths"][b])
    c = int(batch["pool_completion_lengths"][b, j])
    prompt = batch["pool_prompt_ids"][b, :p].tolist()[:max_length]
    completion = batch["pool_completion_ids"][b, j, :c].tolist()[: max(0, max_length - len(prompt))]
    return prompt, completion


@pytest.mark.parametrize("truncation_mode", ["keep_start", "keep_end"])
def test_prefix_shared_logps_and_features_equal_the_plain_computation(tiny_model_path, dpo_args, truncation_mode):
    from aepo_trainer.trainer.candidate_scoring import score_pool_candidates

    trainer = _trainer(tiny_model_path, dpo_args, _uneven_rows(), per_device_train_batch_size=4,
                       truncation_mode=truncation_mode)  # fmt: skip
    batch = next(iter(trainer.get_train_dataloader()))
    positions = _positions(batch)
    assert len(positions) == 19 and len(set(batch["pool_prompt_lengths"].tolist())) == 4  # uneven on both sides
    model = trainer.model
    model.eval()
    common = dict(max_length=40, truncation_mode=truncation_mode, features=True)
    shared = score_pool_candidates(model, batch, positions, batch_size=3, **common)
    plain = score_pool_candidates(model, batch, positions, batch_size=64, shared_prefix=False, **common)
    torch.testing.assert_close(shared.logps, plain.logps, rtol=0, atol=1e-4)
    torch.testing.assert_close(shared.features, plain.features, rtol=0, atol=1e-5)
    if truncation_mode == "keep_end":
        return
    # independent: the model's own logits over the whole sequence, and its backbone's last hidden state
    truncated = 0
    for r, (b, j) in enumerate(positions):
        prompt, completion = _kept(batch, b, j, 40)
        truncated += len(completion) < int(batch["pool_completion_lengths"][b, j])
        expected = completion_logps(model, prompt, [completion], pad_token_id=trainer.pad_token_id)
        assert float(shared.logps[r]) == pytest.approx(float(expected[0]), abs=1e-4)
        with torch.no_grad():
            hidden = model.model(input_ids=torch.tensor([prompt + completion])).last_hidden_state[0]
        torch.testing.assert_close(shared.features[r], hidden[len(prompt) :].mean(0), rtol=0, atol=1e-5)
    assert truncated >= 1  # max_length really cut a candidate


def test_trainer_signals_equal_the_whole_sequence_pass_and_are_exactly_zero_at_the_reference(tiny_model_path, dpo_args):
    from aepo_trainer.trainer.implicit_rewards import pool_implicit_rewards
    from aepo_trainer.trainer.policy_signals import compute_policy_signals

    trainer = _trainer(tiny_model_path, dpo_args, _uneven_rows(), per_device_train_batch_size=4,
                       implicit_reward_batch_size=2)  # fmt: skip
    batch = next(iter(trainer.get_train_dataloader()))
    got = compute_policy_signals(trainer, batch)
    today = pool_implicit_rewards(trainer, batch)  # the whole-sequence fused-head pass used until issue 33
    torch.testing.assert_close(got.implicit_rewards, today, rtol=0, atol=5e-5)
    assert today.abs().max() > 1e-2
    assert got.implicit_rewards.argmax(1).tolist() == today.argmax(1).tolist()
    assert got.implicit_rewards.argmin(1).tolist() == today.argmin(1).tolist()
    # policy = reference (identical weights): every implicit reward is exactly 0, so every prompt falls back
    same = _trainer(tiny_model_path, dpo_args, _uneven_rows(), per_device_train_batch_size=4, perturb=False)
    assert compute_policy_signals(same, batch).implicit_rewards.abs().max() == 0


def test_reference_logps_are_computed_once_and_reused(tiny_model_path, dpo_args):
    from aepo_trainer.trainer.policy_signals import compute_policy_signals, signals_state

    trainer = _trainer(tiny_model_path, dpo_args, _uneven_rows(), per_device_train_batch_size=4)
    calls = {"n": 0}
    ref_forward = trainer.ref_model.model.forward

    def counted(*args, **kwargs):
        calls["n"] += 1
        return ref_forward(*args, **kwargs)

    trainer.ref_model.model.forward = counted
    batch = next(iter(trainer.get_train_dataloader()))
    first = compute_policy_signals(trainer, batch)
    state = signals_state(trainer)
    assert calls["n"] == 8  # 4 prompts: one prompt pass + one candidates pass each
    assert len(state.cache) == 19 and state.cache.misses == 19 and state.cache.hits == 0
    second = compute_policy_signals(trainer, batch)  # the next epoch: no reference pass at all
    assert calls["n"] == 8 and state.cache.hits == 19
    assert torch.equal(first.ref_logps, second.ref_logps)
    # a fresh cache computes bitwise the same values (a candidate's value depends only on its own pool)
    state.cache.values.clear()
    assert torch.equal(compute_policy_signals(trainer, batch).ref_logps, first.ref_logps)


@pytest.mark.parametrize(
    "loss_type, signals_dtype", [(["sigmoid"], "auto"), (["sigmoid", "rpo_sq"], "auto"), (["sigmoid"], "bfloat16")]
)
def test_training_step_takes_the_pair_reference_logps_from_the_signals_pass(
    tiny_model_path, dpo_args, loss_type, signals_dtype
):
    """The step makes no reference pass (TRL's precomputed-reference path, and the reward-aware losses) and its loss
    equals the loss with one. With bf16 signals the loss's float32 reference values are scored for the selected
    candidates only."""
    from aepo_trainer.trainer.batch_keys import REF_LOGPS
    from aepo_trainer.trainer.policy_signals import signals_state
    from aepo_trainer.trainer.pool_loss import compute_pool_loss

    trainer = _trainer(tiny_model_path, dpo_args, _uneven_rows(), per_device_train_batch_size=4, max_steps=1,
                       loss_type=loss_type, policy_signals_dtype=signals_dtype)  # fmt: skip
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    batch = next(iter(trainer.get_train_dataloader()))
    (group,) = trainer._aepo_reduce([batch], "train")
    assert REF_LOGPS in group and group["pair_chosen_rows"].numel() >= 3
    if signals_dtype == "bfloat16":  # every candidate in bf16, the selected ones (k = 2 of 4 prompts) in float32
        state = signals_state(trainer)
        assert len(state.signals_cache) == 19 and len(state.cache) == 8 == int(group[REF_LOGPS].ne(0).sum())
    calls = {"n": 0}
    ref_forward = trainer.ref_model.forward

    def counted(*args, **kwargs):
        calls["n"] += 1
        return ref_forward(*args, **kwargs)

    trainer.ref_model.forward = counted
    trainer.model.train()
    reused = compute_pool_loss(trainer, trainer.model, dict(group)).loss
    assert calls["n"] == 0
    without = {k: v for k, v in group.items() if k != REF_LOGPS}
    fresh = compute_pool_loss(trainer, trainer.model, without).loss
    assert calls["n"] == 1
    assert float(reused) == pytest.approx(float(fresh), abs=1e-5)
    # and the cached values are those of the step's own reference pass
    ids, mask, comp = group["input_ids"], group["attention_mask"], group["completion_mask"]
    with torch.no_grad():
        out = ref_forward(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(comp == 0, -100),
                          fused_lm_head=True, use_cache=False)  # fmt: skip
    own = (out.log_probs * comp[:, 1:]).sum(1)
    torch.testing.assert_close(group[REF_LOGPS], own, rtol=0, atol=1e-4)


def test_peft_signals_use_the_adapter_disabled_reference_and_cache_it(tiny_model_path, dpo_args):
    peft = pytest.importorskip("peft")
    from aepo_trainer.trainer.policy_signals import compute_policy_signals, signals_state

    config = peft.LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    trainer = _trainer(tiny_model_path, dpo_args, _uneven_rows(), peft_config=config, per_device_train_batch_size=4)
    batch = next(iter(trainer.get_train_dataloader()))
    got = compute_policy_signals(trainer, batch)
    model, pad = trainer.model, trainer.pad_token_id
    for b, j in _positions(batch):
        prompt, completion = _kept(batch, b, j, 40)
        pi = completion_logps(model, prompt, [completion], pad_token_id=pad)[0]
        ref = completion_logps(model, prompt, [completion], pad_token_id=pad, disable_adapter=True)[0]
        assert float(got.ref_logps[b, j]) == pytest.approx(float(ref), abs=1e-4)
        assert float(got.implicit_rewards[b, j]) == pytest.approx(0.5 * float(pi - ref), abs=1e-4)
    assert got.implicit_rewards.abs().max() > 1e-2
    assert len(signals_state(trainer).cache) == 19
    # the identity ignores the adapter's weights (they train; the disabled-adapter reference does not change)
    from aepo_trainer.trainer.reference_cache import reference_weights_digest

    before = reference_weights_digest(trainer)
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "lora_" in n).add_(1.0)
    assert reference_weights_digest(trainer) == before


def test_precomputed_cache_survives_a_resume_and_every_interval(tiny_model_path, dpo_args, tmp_path):
    """precompute_pool_ref_logps fills the cache before training; checkpoints carry it; a resumed run makes no
    reference pass. policy_signals_every=2: the second step selects by the fallback; pay is exactly k per prompt."""
    from aepo_trainer.trainer.policy_signals import REF_LOGPS_FILE, signals_state

    rows = pool_rows(n=8, size=5)
    trainer = _trainer(tiny_model_path, dpo_args, rows, max_steps=2, save_steps=1, save_strategy="steps",
                       precompute_pool_ref_logps=True, policy_signals_every=2)  # fmt: skip
    trainer.train()
    state = signals_state(trainer)
    assert len(state.cache) == 40 and state.forward_passes["reference"] == 8  # each prompt once, before training
    assert trainer.annotation_service.spent == 8  # 2 steps x 2 prompts x k = 2, exactly as without signals
    flat = [e["aepo/implicit_reward_flat"] for e in trainer.state.log_history if "aepo/implicit_reward_flat" in e]
    assert flat == [0, 2]  # step 0: fresh signals; step 1: both prompts by the fallback
    checkpoint = tmp_path / "out" / "checkpoint-1"
    assert (checkpoint / REF_LOGPS_FILE).exists()
    resumed = _trainer(tiny_model_path, {**dpo_args}, rows, max_steps=2, save_strategy="no",
                       precompute_pool_ref_logps=True, policy_signals_every=2)  # fmt: skip
    resumed.ref_model.load_state_dict(trainer.ref_model.state_dict())  # the same reference (same identity)
    resumed.aepo_policy_signals = None
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert signals_state(resumed).forward_passes["reference"] == 0 and len(signals_state(resumed).cache) == 40


def test_active_policy_features_reach_the_surrogate(tiny_model_path, dpo_args):
    from transformers import AutoModelForCausalLM

    from aepo_trainer.selection.keys import prompt_key

    rows = pool_rows(n=4, size=5)
    trainer = _trainer(tiny_model_path, dpo_args, rows, selection_strategy="delta_ucb", active_policy_features=True,
                       active_implicit_reward_feature=True, max_steps=1, max_length=64)  # fmt: skip
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    initial.load_state_dict({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})
    trainer.train()
    labels = trainer.pool_reducer.active.surrogate.export()
    assert len(labels) == 4
    by_key = {prompt_key(r["prompt"]): r for r in trainer.train_dataset}
    for pk, ck, features, _score in labels:
        row = by_key[pk]
        j = next(j for j, c in enumerate(row["completions"]) if prompt_key(c) == ck)
        assert len(features) == 8 + 1 + 1 + 32  # embedding, log length, implicit reward, hidden state
        with torch.no_grad():
            hidden = initial.model(input_ids=torch.tensor([row["prompt_ids"] + row["completions_ids"][j]]))
        mean = hidden.last_hidden_state[0, len(row["prompt_ids"]) :].mean(0).double()
        torch.testing.assert_close(
            torch.tensor(features[-32:], dtype=torch.float64), mean / mean.norm(), rtol=0, atol=1e-5
        )


def test_config_validates_the_new_fields(tmp_path):
    from aepo_trainer import AEPOConfig

    base = dict(output_dir=str(tmp_path), report_to="none", bf16=False)
    with pytest.raises(ValueError, match="active_policy_features=True is invalid"):
        AEPOConfig(**base, active_policy_features=True)
    with pytest.raises(ValueError, match="policy_signals_every=2 is invalid"):
        AEPOConfig(**base, selection_strategy="delta_ucb", active_implicit_reward_feature=True, policy_signals_every=2)
    with pytest.raises(ValueError, match="policy_signals_every=0 is invalid"):
        AEPOConfig(**base, selection_strategy="implicit_reward_gap", policy_signals_every=0)
    with pytest.raises(ValueError, match="precompute_pool_ref_logps=True is invalid"):
        AEPOConfig(**base, precompute_pool_ref_logps=True)
    assert AEPOConfig(**base, selection_strategy="delta_ucb", active_policy_features=True).needs_implicit_rewards


def test_reference_logps_live_in_the_runs_store_and_a_restarted_run_computes_none(tiny_model_path, dpo_args):
    """A second run on the same store, without any checkpoint, makes no reference pass: every value comes from the
    store's `reference_logps` table, bitwise. A run against another reference computes its own, kept beside them."""
    from aepo_trainer.storage.annotations import AnnotationStore
    from aepo_trainer.storage.reference_logps import ReferenceLogpsTable
    from aepo_trainer.trainer.policy_signals import signals_state

    rows = pool_rows(n=4, size=5)
    first = _trainer(tiny_model_path, dpo_args, rows, max_steps=2, save_strategy="no")
    first.train()
    computed = signals_state(first)
    assert computed.forward_passes["reference"] == 4 and len(computed.cache) == 20  # each prompt once, in the steps
    store = first.annotation_service.store
    table = ReferenceLogpsTable(store)
    assert table.load(computed.cache.identity) == computed.cache.values

    again = _trainer(tiny_model_path, dpo_args, rows, max_steps=2, save_strategy="no")
    again.ref_model.load_state_dict(first.ref_model.state_dict())  # the same reference weights: the same identity
    again.train()
    reused = signals_state(again)
    assert reused.cache.identity == computed.cache.identity
    assert reused.forward_passes["reference"] == 0 and reused.cache.hits == 20 and reused.cache.misses == 0
    assert reused.cache.values == computed.cache.values

    other = _trainer(tiny_model_path, dpo_args, rows, max_steps=1, save_strategy="no")
    with torch.no_grad():
        next(other.ref_model.parameters()).add_(0.01)  # another reference: nothing of the first may be used
    other.train()
    assert signals_state(other).forward_passes["reference"] == 2 and signals_state(other).cache.hits == 0
    assert ReferenceLogpsTable(AnnotationStore(store.path)).count() == 20 + 10


def test_bfloat16_signals_select_as_float32_and_leave_the_loss_reference_at_the_steps_precision(
    tiny_model_path, dpo_args
):
    """policy_signals_dtype="bfloat16" while training in float32: implicit rewards within bf16 rounding of the float32
    ones and the same selection on these pools; exactly 0 when the policy is its reference (bf16 on both sides); the
    reference log-probs the DPO loss reads are float32 ones, computed for the selected candidates only (not all N);
    each candidate's reference is scored at most once per precision, and both caches reach the run's store under their
    own identities."""
    from aepo_trainer.selection.implicit_reward import implicit_reward_gap_indices
    from aepo_trainer.storage.reference_logps import ReferenceLogpsTable
    from aepo_trainer.trainer.policy_signals import (
        compute_policy_signals,
        group_reference_logps,
        save_to_store,
        signals_state,
    )

    rows = _uneven_rows()
    exact = _trainer(tiny_model_path, dpo_args, rows, per_device_train_batch_size=4)
    fast = _trainer(tiny_model_path, dpo_args, rows, per_device_train_batch_size=4, policy_signals_dtype="bfloat16")
    fast.ref_model.load_state_dict(exact.ref_model.state_dict())
    batch = next(iter(exact.get_train_dataloader()))
    mask = batch["pool_mask"].bool()
    want, got = compute_policy_signals(exact, batch), compute_policy_signals(fast, batch)
    assert want.implicit_rewards.abs().max() > 0.05  # a perturbed reference: rewards with spread
    torch.testing.assert_close(got.implicit_rewards, want.implicit_rewards, rtol=0, atol=0.02)
    assert not torch.equal(got.implicit_rewards, want.implicit_rewards)  # really scored in bf16
    assert torch.equal(
        implicit_reward_gap_indices(got.implicit_rewards, 2, mask)[0],
        implicit_reward_gap_indices(want.implicit_rewards, 2, mask)[0],
    )
    state = signals_state(fast)
    assert state.signals_cache.identity.endswith("|autocast=bfloat16")
    assert state.cache.identity.endswith("|mixed_precision=no") and state.cache.identity != state.signals_cache.identity
    # the bf16 pass scored the reference of all 19 candidates in bf16, and no float32 reference yet
    assert len(state.signals_cache) == 19 and len(state.cache) == 0 and state.forward_passes["reference"] == 4
    # the loss's reference: float32, of the selected candidates only (2 of each prompt)
    assert got.ref_logps is None
    picks = implicit_reward_gap_indices(got.implicit_rewards, 2, mask)[0]
    group = {
        "response_groups": torch.tensor([b for b in range(4) for _ in range(2)] + [-1]),
        "response_candidates": torch.tensor([int(j) for row in picks for j in row] + [0]),
    }
    loss_ref = group_reference_logps(got, group)
    expected = torch.tensor([float(want.ref_logps[b, j]) for b, row in enumerate(picks) for j in row] + [0.0])
    torch.testing.assert_close(loss_ref, expected, rtol=0, atol=1e-5)  # float32 values, as without the option
    assert len(state.cache) == 8 and state.forward_passes["reference"] == 8  # 8 candidates, not 19
    compute_policy_signals(fast, batch)
    group_reference_logps(compute_policy_signals(fast, batch), group)
    assert state.forward_passes["reference"] == 8  # both precisions cached
    assert save_to_store(fast, all_ranks=True) == 19 + 8
    table = ReferenceLogpsTable(fast.annotation_service.store)
    assert table.count(state.cache.identity) == 8 and table.count(state.signals_cache.identity) == 19
    same = _trainer(tiny_model_path, dpo_args, rows, per_device_train_batch_size=4, perturb=False,
                    policy_signals_dtype="bfloat16")  # fmt: skip
    assert compute_policy_signals(same, batch).implicit_rewards.abs().max() == 0


def test_a_bf16_runs_reference_values_are_not_read_by_a_float32_run(tiny_model_path, dpo_args):
    """The cache key holds the precision the values were computed at: a float32 run on the store of a bf16
    mixed-precision run (same reference weights) computes its own values; it reads only its own precision's."""
    from aepo_trainer.trainer.policy_signals import (
        compute_policy_signals,
        load_from_store,
        save_to_store,
        signals_state,
    )

    rows = pool_rows(n=4, size=5)
    low = _trainer(tiny_model_path, dpo_args, rows, per_device_train_batch_size=4, bf16=True, use_cpu=True)
    batch = next(iter(low.get_train_dataloader()))
    compute_policy_signals(low, batch)
    assert save_to_store(low, all_ranks=True) == 20
    exact = _trainer(tiny_model_path, dpo_args, rows, per_device_train_batch_size=4)  # float32, the same store
    exact.ref_model.load_state_dict(low.ref_model.state_dict())
    assert load_from_store(exact) == 0
    compute_policy_signals(exact, batch)
    state = signals_state(exact)
    assert state.forward_passes["reference"] == 4 and state.cache.hits == 0 and state.cache.misses == 20
    assert save_to_store(exact, all_ranks=True) == 20
    again = _trainer(tiny_model_path, dpo_args, rows, per_device_train_batch_size=4)
    again.ref_model.load_state_dict(low.ref_model.state_dict())
    assert load_from_store(again) == 20  # its own precision's values are found
    assert signals_state(low).cache.identity.endswith("|mixed_precision=bf16")


def test_the_reference_digest_covers_every_weight_value_and_dtype(tiny_model_path, dpo_args):
    """A weight edit that keeps each tensor's sum and first values (moving one value) changes the reference's
    identity, as does the weights' dtype."""
    from aepo_trainer.trainer.reference_cache import reference_weights_digest

    trainer = _trainer(tiny_model_path, dpo_args, pool_rows(n=2, size=3))
    weight = next(p for p in trainer.ref_model.parameters() if p.numel() > 200)
    with torch.no_grad():
        weight.zero_()
        weight.view(-1)[100] = 1.0
    before = reference_weights_digest(trainer)
    with torch.no_grad():
        weight.view(-1)[100], weight.view(-1)[101] = 0.0, 1.0  # same sum, same first 8 values
    moved = reference_weights_digest(trainer)
    assert moved != before
    trainer.ref_model.to(torch.bfloat16)
    assert reference_weights_digest(trainer) != moved


def test_policy_signals_refuse_sharded_weights_and_bf16_on_a_gpu_without_it(monkeypatch):
    """Checked at trainer init (`check_policy_signals_setup`): FSDP or ZeRO-3 shard the reference the cache key
    digests; bf16 signals need a GPU with bf16."""
    from types import SimpleNamespace

    from aepo_trainer.trainer.policy_signals import check_policy_signals_setup

    def fake(fsdp=False, zero_stage=None, device="cpu", dtype="auto"):
        plugin = None if zero_stage is None else SimpleNamespace(zero_stage=zero_stage)
        state = SimpleNamespace(deepspeed_plugin=plugin)
        accelerator = SimpleNamespace(state=state, device=torch.device(device))
        return SimpleNamespace(is_fsdp_enabled=fsdp, accelerator=accelerator,
                               args=SimpleNamespace(policy_signals_dtype=dtype))  # fmt: skip

    with pytest.raises(ValueError, match="not supported with FSDP or DeepSpeed ZeRO-3.*precompute_pool_ref_logps"):
        check_policy_signals_setup(fake(fsdp=True))
    with pytest.raises(ValueError, match="FSDP or DeepSpeed ZeRO-3"):
        check_policy_signals_setup(fake(zero_stage=3))
    check_policy_signals_setup(fake(zero_stage=2))  # ZeRO-2: every rank holds the whole weights
    check_policy_signals_setup(fake(dtype="bfloat16"))  # CPU bf16 autocast works
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(ValueError, match="policy_signals_dtype='bfloat16' is invalid on this GPU"):
        check_policy_signals_setup(fake(device="cuda", dtype="bfloat16"))
    check_policy_signals_setup(fake(device="cuda"))


def test_config_refuses_bfloat16_signals_where_they_would_be_ignored_or_overridden(tmp_path):
    from aepo_trainer import AEPOConfig

    base = dict(output_dir=str(tmp_path), report_to="none", bf16=False)
    with pytest.raises(ValueError, match="policy_signals_dtype='bfloat16' is invalid.*only with policy signals"):
        AEPOConfig(**base, policy_signals_dtype="bfloat16")  # selection_strategy without policy signals
    with pytest.raises(ValueError, match="policy_signals_dtype='bfloat16' is invalid.*not with fp16=True"):
        AEPOConfig(**base, selection_strategy="implicit_reward_gap", fp16=True, policy_signals_dtype="bfloat16")
    assert AEPOConfig(**base, selection_strategy="implicit_reward_gap", policy_signals_dtype="bfloat16")


@pytest.mark.parametrize("main_process", [True, False])
def test_a_resume_writes_only_checkpoint_values_the_store_lacks_and_only_from_the_main_process(
    tiny_model_path, dpo_args, tmp_path, monkeypatch, main_process
):
    """On a resume the checkpoint's values go to the store from the main process only (no rank gathers the whole
    cache), and only those the store does not hold yet."""
    from accelerate import Accelerator

    from aepo_trainer.storage.reference_logps import ReferenceLogpsTable
    from aepo_trainer.trainer.policy_signals import (
        REF_LOGPS_FILE,
        compute_policy_signals,
        exported_for_checkpoint,
        prepare_reference_cache,
        save_to_store,
        signals_state,
    )

    rows = pool_rows(n=4, size=5)
    first = _trainer(tiny_model_path, dpo_args, rows, per_device_train_batch_size=4)
    compute_policy_signals(first, next(iter(first.get_train_dataloader())))
    checkpoint = tmp_path / "checkpoint-1"
    checkpoint.mkdir()
    torch.save(exported_for_checkpoint(first), checkpoint / REF_LOGPS_FILE)
    assert save_to_store(first, all_ranks=True) == 20  # the store holds them already
    written = []
    save = ReferenceLogpsTable.save
    monkeypatch.setattr(ReferenceLogpsTable, "save", lambda self, ref, values: written.append(len(values)) or save(
        self, ref, values))  # fmt: skip
    resumed = _trainer(tiny_model_path, dpo_args, rows, per_device_train_batch_size=4)
    resumed.ref_model.load_state_dict(first.ref_model.state_dict())
    signals_state(resumed)  # its key, digested (on the main process) before this process plays another rank
    monkeypatch.setattr(Accelerator, "is_main_process", property(lambda self: main_process))
    prepare_reference_cache(resumed, str(checkpoint))
    state = signals_state(resumed)
    assert len(state.cache) == 20 and state.cache.unsaved == {}  # restored, nothing left to write
    assert written == ([0] if main_process else [])  # nothing written twice; other ranks write nothing
