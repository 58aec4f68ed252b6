"""Reward-aware (RPO) losses: values against independent plain-math references, stability, limits, multi-response."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from aepo_trainer.trainer.losses import (
    RPO_LOSS_TYPES,
    mean_multi_response_reward_aware_loss,
    mean_over_groups,
    multi_response_reward_aware_loss,
    reward_aware_loss,
)

KINDS = ("rpo_sq", "rpo_bwd_kl", "rpo_fwd_kl")
KL_KINDS = ("rpo_bwd_kl", "rpo_fwd_kl")


# ------------------------------------------------------------------------------------------ independent references
def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _bernoulli_kl(p: float, q: float) -> float:
    return p * math.log(p / q) + (1.0 - p) * math.log((1.0 - p) / (1.0 - q))


def _reference(delta: float, target: float, kind: str) -> float:
    """The METHODS.md formulas, naively, in float64 Python math (fine for |x| <= ~10)."""
    if kind == "rpo_sq":
        return (delta - target) ** 2
    if kind == "rpo_bwd_kl":
        return _bernoulli_kl(_sigmoid(target), _sigmoid(delta))
    if kind == "rpo_fwd_kl":
        return _bernoulli_kl(_sigmoid(delta), _sigmoid(target))
    raise AssertionError(kind)


DELTAS = [-6.0, -2.5, -0.7, 0.0, 0.3, 1.0, 2.0, 5.5, -1.2, 0.05]
TARGETS = [3.0, -1.0, 0.0, 0.0, 2.0, -4.0, 2.0, 1.5, -1.2, 0.5]


# ------------------------------------------------------------------------------------------ reward_aware_loss
def test_kinds_match_config():
    from aepo_trainer.config import RPO_LOSS_TYPES as CONFIG_RPO_LOSS_TYPES

    assert tuple(RPO_LOSS_TYPES) == tuple(CONFIG_RPO_LOSS_TYPES) == KINDS


@pytest.mark.parametrize("kind", KINDS)
def test_values_match_reference(kind):
    out = reward_aware_loss(torch.tensor(DELTAS), torch.tensor(TARGETS), kind)
    expected = [_reference(d, t, kind) for d, t in zip(DELTAS, TARGETS)]
    assert out.shape == (len(DELTAS),)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_matches_reference(kind):
    # d/dΔ: sq -> 2(Δ - Δr*); bwd KL -> σ(Δ) - σ(Δr*); fwd KL -> σ(Δ)(1 - σ(Δ))(Δ - Δr*)
    delta = torch.tensor(DELTAS, dtype=torch.float64, requires_grad=True)
    reward_aware_loss(delta, torch.tensor(TARGETS, dtype=torch.float64), kind).sum().backward()
    expected = []
    for d, t in zip(DELTAS, TARGETS):
        if kind == "rpo_sq":
            expected.append(2 * (d - t))
        elif kind == "rpo_bwd_kl":
            expected.append(_sigmoid(d) - _sigmoid(t))
        else:
            expected.append(_sigmoid(d) * (1 - _sigmoid(d)) * (d - t))
    torch.testing.assert_close(delta.grad, torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=1e-12)


def test_multidimensional_input_is_elementwise():
    d = torch.tensor(DELTAS).reshape(2, 5)
    t = torch.tensor(TARGETS).reshape(2, 5)
    for kind in KINDS:
        out = reward_aware_loss(d, t, kind)
        assert out.shape == (2, 5)
        torch.testing.assert_close(out.flatten(), reward_aware_loss(d.flatten(), t.flatten(), kind))


def test_unknown_kind_raises_with_allowed_values():
    with pytest.raises(ValueError, match="rpo_sq.*rpo_bwd_kl.*rpo_fwd_kl"):
        reward_aware_loss(torch.zeros(3), torch.zeros(3), "sigmoid")
    with pytest.raises(ValueError, match="rpo_sq"):
        multi_response_reward_aware_loss(
            torch.zeros(2), torch.zeros(2), torch.zeros(2, dtype=torch.long), "rpo_kl", beta=0.1, reward_scale=1.0
        )


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match=r"shape \(4, 1\).*shape \(4,\)"):
        reward_aware_loss(torch.zeros(4), torch.zeros(4, 1), "rpo_sq")
    with pytest.raises(ValueError, match="must match"):
        reward_aware_loss(torch.zeros(4), torch.zeros(3), "rpo_bwd_kl")
    with pytest.raises(ValueError, match=r"\[R\]"):
        multi_response_reward_aware_loss(
            torch.zeros(4), torch.zeros(3), torch.zeros(4, dtype=torch.long), "rpo_sq", beta=0.1, reward_scale=1.0
        )


def test_bad_inputs_raise():
    with pytest.raises(TypeError, match="floating"):
        reward_aware_loss(torch.zeros(3, dtype=torch.long), torch.zeros(3), "rpo_sq")
    with pytest.raises(TypeError):
        reward_aware_loss([0.0, 1.0], torch.zeros(2), "rpo_sq")
    lr, sc, gr = torch.zeros(3), torch.zeros(3), torch.tensor([0, 0, 1])
    with pytest.raises(ValueError, match="beta"):
        multi_response_reward_aware_loss(lr, sc, gr, "rpo_sq", beta=0.0, reward_scale=1.0)
    with pytest.raises(ValueError, match="reward_scale"):
        multi_response_reward_aware_loss(lr, sc, gr, "rpo_sq", beta=0.1, reward_scale=float("nan"))
    with pytest.raises(ValueError, match=">= 0"):
        multi_response_reward_aware_loss(lr, sc, torch.tensor([0, -1, 1]), "rpo_sq", beta=0.1, reward_scale=1.0)
    with pytest.raises(ValueError, match="finite"):
        multi_response_reward_aware_loss(
            lr, torch.tensor([0.0, float("inf"), 1.0]), gr, "rpo_sq", beta=0.1, reward_scale=1.0
        )
    with pytest.raises(ValueError, match="num_groups"):
        multi_response_reward_aware_loss(lr, sc, gr, "rpo_sq", beta=0.1, reward_scale=1.0, num_groups=1)
    with pytest.raises(TypeError, match="integer"):
        multi_response_reward_aware_loss(lr, sc, gr.float(), "rpo_sq", beta=0.1, reward_scale=1.0)


EXTREMES = [-1e4, -100.0, -30.0, -1.0, 0.0, 1.0, 30.0, 100.0, 1e4]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_finite_values_and_gradients_at_extreme_margins(kind, dtype):
    grid = list(itertools.product(EXTREMES, EXTREMES))  # every value is exactly representable in bf16 and fp16
    delta = torch.tensor([d for d, _ in grid], dtype=dtype, requires_grad=True)
    target = torch.tensor([t for _, t in grid], dtype=dtype)
    out = reward_aware_loss(delta, target, kind)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all(), out
    out.sum().backward()
    assert delta.grad.dtype == dtype
    assert torch.isfinite(delta.grad).all(), delta.grad
    if kind in KL_KINDS:
        assert (out >= 0).all()


@pytest.mark.parametrize("kind", KL_KINDS)
def test_kl_at_saturation_matches_closed_form(kind):
    # Δ = -100, Δr* = +100 (and the mirror image): bwd = 1·(log 1 - log σ(-100)) + ~0 ≈ 100;
    # fwd = ~0 + 1·(log 1 - log(1 - σ(100))) = -log σ(-100) ≈ 100. Naive log(sigmoid) would give inf here.
    out = reward_aware_loss(torch.tensor([-100.0, 100.0]), torch.tensor([100.0, -100.0]), kind)
    torch.testing.assert_close(out, torch.tensor([100.0, 100.0]), rtol=1e-5, atol=1e-4)


def test_bwd_kl_huge_gap_is_dpo_sigmoid_loss():
    delta = torch.linspace(-100.0, 100.0, 401)
    for sign in (1.0, -1.0):
        d = delta.clone().requires_grad_(True)
        out = reward_aware_loss(d, torch.full_like(d, sign * 1e4), "rpo_bwd_kl")
        # TRL's `sigmoid` loss: -F.logsigmoid(beta * delta_score), here with the margin already multiplied by beta
        # (for sign = -1 the preference is reversed).
        d_ref = delta.clone().requires_grad_(True)
        dpo = -F.logsigmoid(sign * d_ref)
        torch.testing.assert_close(out, dpo, rtol=1e-5, atol=1e-5)
        out.sum().backward()
        dpo.sum().backward()
        torch.testing.assert_close(d.grad, d_ref.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_zero_loss_and_gradient_when_margin_equals_target(kind):
    values = [-100.0, -7.0, -1.0, -0.1, 0.0, 0.25, 3.0, 42.0, 100.0]
    delta = torch.tensor(values, requires_grad=True)
    out = reward_aware_loss(delta, torch.tensor(values), kind)
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert torch.allclose(delta.grad, torch.zeros_like(delta.grad), atol=1e-7)


@pytest.mark.parametrize("kind", KL_KINDS)
def test_kl_losses_are_non_negative(kind):
    gen = torch.Generator().manual_seed(0)
    for scale in (1e-4, 1e-2, 1.0, 10.0, 100.0):
        delta = torch.randn(20000, generator=gen) * scale
        target = torch.randn(20000, generator=gen) * scale
        near = target + 1e-6 * torch.randn(20000, generator=gen)  # where rounding would otherwise go negative
        assert (reward_aware_loss(delta, target, kind) >= 0).all()
        assert (reward_aware_loss(near, target, kind) >= 0).all()


def test_square_loss_is_non_negative_and_symmetric_under_swap():
    gen = torch.Generator().manual_seed(1)
    d, t = torch.randn(1000, generator=gen) * 5, torch.randn(1000, generator=gen) * 5
    for kind in KINDS:  # D(-Δ ‖ -Δr*) = D(Δ ‖ Δr*): swapping chosen and rejected changes nothing
        torch.testing.assert_close(reward_aware_loss(-d, -t, kind), reward_aware_loss(d, t, kind))
    assert (reward_aware_loss(d, t, "rpo_sq") >= 0).all()


def test_ipo_is_square_loss_with_constant_target():
    # IPO: (h - 1/(2β))² on the log-ratio margin h. With Δ = β·h: rpo_sq(Δ, 1/2) = β²·(h - 1/(2β))².
    beta = 0.1
    h = [-3.0, 0.0, 2.0, 5.0, 11.0]
    out = reward_aware_loss(beta * torch.tensor(h, dtype=torch.float64), 0.5, "rpo_sq")
    expected = [beta**2 * (x - 1 / (2 * beta)) ** 2 for x in h]
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64))


def test_reward_margin_is_a_constant():
    delta = torch.tensor([0.5, -1.0], requires_grad=True)
    target = torch.tensor([1.0, 2.0], requires_grad=True)
    for kind in KINDS:
        reward_aware_loss(delta, target, kind).sum().backward()
    assert target.grad is None
    assert delta.grad is not None


def test_precision_contract():
    d, t = torch.tensor(DELTAS), torch.tensor(TARGETS)
    for kind in KINDS:
        bf16 = reward_aware_loss(d.bfloat16(), t.bfloat16(), kind)
        assert bf16.dtype == torch.float32  # computed and returned in fp32, not rounded back to bf16
        torch.testing.assert_close(bf16, reward_aware_loss(d.bfloat16().float(), t.bfloat16().float(), kind))
        f64 = reward_aware_loss(d.double(), t.double(), kind)
        assert f64.dtype == torch.float64
        # fp32 target with fp64 margin, and a bf16 target with an fp32 margin, are both accepted
        assert reward_aware_loss(d, t.bfloat16(), kind).dtype == torch.float32


# ------------------------------------------------------------------------------------------ multi-response
# A ragged batch of 3 prompts (sizes 4, 2, 3), responses interleaved across prompts, plus a tie inside prompt 0.
RAGGED_GROUPS = [0, 1, 0, 2, 0, 2, 1, 0, 2]
RAGGED_LOGRATIOS = [1.5, -2.0, 0.3, 4.0, -7.5, 0.0, 2.2, 3.1, -1.1]
RAGGED_SCORES = [0.9, 0.2, 0.4, 0.75, 0.1, 0.5, 0.8, 0.4, 0.05]


def _double_loop_reference(logratios, scores, groups, kind, beta, eta):
    """Explicit Python loop over every ordered pair (i, j), i != j, of each group; mean per group."""
    per_group = {}
    for i in range(len(groups)):
        for j in range(len(groups)):
            if i == j or groups[i] != groups[j]:
                continue
            delta = beta * (logratios[i] - logratios[j])
            target = eta * (scores[i] - scores[j])
            per_group.setdefault(groups[i], []).append(_reference(delta, target, kind))
    return {g: (sum(v) / len(v), len(v)) for g, v in per_group.items()}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("beta,eta", [(0.1, 5.0), (0.5, 1.0), (1.0, 10.0)])
def test_multi_response_matches_double_loop(kind, beta, eta):
    loss, num_pairs = multi_response_reward_aware_loss(
        torch.tensor(RAGGED_LOGRATIOS), torch.tensor(RAGGED_SCORES), torch.tensor(RAGGED_GROUPS), kind, beta, eta
    )
    ref = _double_loop_reference(RAGGED_LOGRATIOS, RAGGED_SCORES, RAGGED_GROUPS, kind, beta, eta)
    assert loss.shape == num_pairs.shape == (3,)
    assert num_pairs.tolist() == [ref[g][1] for g in range(3)] == [12, 2, 6]
    torch.testing.assert_close(
        loss.double(), torch.tensor([ref[g][0] for g in range(3)], dtype=torch.float64), rtol=1e-5, atol=1e-6
    )
    mean = mean_multi_response_reward_aware_loss(
        torch.tensor(RAGGED_LOGRATIOS), torch.tensor(RAGGED_SCORES), torch.tensor(RAGGED_GROUPS), kind, beta, eta
    )
    assert mean.dim() == 0
    assert math.isclose(mean.item(), sum(ref[g][0] for g in range(3)) / 3, rel_tol=1e-5, abs_tol=1e-6)


def test_single_response_groups_contribute_nothing():
    # prompt 1 has one response, prompt 3 has none (num_groups=4), prompts 0 and 2 have pairs.
    groups = [0, 1, 0, 2, 2, 2]
    logratios = [1.0, 50.0, -1.0, 0.5, 0.0, -0.5]
    scores = [1.0, -3.0, 0.0, 0.2, 0.3, 0.1]
    lr = torch.tensor(logratios, requires_grad=True)
    loss, num_pairs = multi_response_reward_aware_loss(
        lr, torch.tensor(scores), torch.tensor(groups), "rpo_bwd_kl", beta=0.1, reward_scale=2.0, num_groups=4
    )
    assert num_pairs.tolist() == [2, 0, 6, 0]
    assert loss[1].item() == 0.0 and loss[3].item() == 0.0
    ref = _double_loop_reference(logratios, scores, groups, "rpo_bwd_kl", 0.1, 2.0)
    mean = mean_over_groups(loss, num_pairs)
    assert math.isclose(mean.item(), (ref[0][0] + ref[2][0]) / 2, rel_tol=1e-5)
    mean.backward()
    assert lr.grad[1].item() == 0.0  # the lone response gets no gradient
    assert torch.isfinite(lr.grad).all() and (lr.grad[[0, 2, 3, 4, 5]] != 0).all()


def test_no_pairs_at_all_gives_a_differentiable_zero():
    lr = torch.tensor([0.3, -0.2], requires_grad=True)
    mean = mean_multi_response_reward_aware_loss(
        lr, torch.tensor([1.0, 0.0]), torch.tensor([0, 1]), "rpo_sq", beta=0.1, reward_scale=1.0
    )
    assert mean.item() == 0.0
    mean.backward()
    assert torch.equal(lr.grad, torch.zeros(2))
    empty = torch.zeros(0, requires_grad=True)
    loss, num_pairs = multi_response_reward_aware_loss(
        empty, torch.zeros(0), torch.zeros(0, dtype=torch.long), "rpo_fwd_kl", beta=0.1, reward_scale=1.0
    )
    assert loss.shape == num_pairs.shape == (0,)
    mean_over_groups(loss, num_pairs).backward()


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_flow_to_logratios_only(kind):
    lr = torch.tensor(RAGGED_LOGRATIOS, requires_grad=True)
    scores = torch.tensor(RAGGED_SCORES, requires_grad=True)
    mean = mean_multi_response_reward_aware_loss(lr, scores, torch.tensor(RAGGED_GROUPS), kind, 0.1, 5.0)
    mean.backward()
    assert scores.grad is None
    assert lr.grad is not None and torch.isfinite(lr.grad).all() and (lr.grad != 0).any()
    # the gradient of every group's mean sums to zero (it only depends on differences of log-ratios)
    groups = torch.tensor(RAGGED_GROUPS)
    for g in range(3):
        assert abs(lr.grad[groups == g].sum().item()) < 1e-6


@pytest.mark.parametrize("kind", KINDS)
def test_k_equals_two_is_the_pairwise_loss(kind):
    beta, eta = 0.1, 5.0
    chosen_lr, rejected_lr = torch.tensor([2.0, -1.0, 30.0]), torch.tensor([-1.0, 0.5, -20.0])
    chosen_s, rejected_s = torch.tensor([0.9, 0.6, 0.7]), torch.tensor([0.1, 0.5, 0.65])
    logratios = torch.stack([chosen_lr, rejected_lr], dim=1).flatten()  # [c0, r0, c1, r1, c2, r2]
    scores = torch.stack([chosen_s, rejected_s], dim=1).flatten()
    groups = torch.arange(3).repeat_interleave(2)
    loss, num_pairs = multi_response_reward_aware_loss(logratios, scores, groups, kind, beta, eta)
    pairwise = reward_aware_loss(beta * (chosen_lr - rejected_lr), eta * (chosen_s - rejected_s), kind)
    assert num_pairs.tolist() == [2, 2, 2]
    torch.testing.assert_close(loss, pairwise)
    torch.testing.assert_close(mean_over_groups(loss, num_pairs), pairwise.mean())


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_at_reference_is_leave_one_out_reinforce(kind):
    # At π = π_ref (all log-ratios 0) and ∂logratio_m = ∂log π(y_m):
    #   rpo_sq:     ∂L/∂logratio_m = -(4βη/k)·(s_m - mean_{j≠m} s_j)   (REINFORCE, leave-one-out baseline)
    #   rpo_fwd_kl: the same divided by 8 (∂D/∂Δ = -Δr*/4 at Δ = 0)
    #   rpo_bwd_kl: -(2β/k)·mean_{j≠m}(σ(η(s_m - s_j)) - 1/2)
    beta, eta = 0.2, 3.0
    s = [0.9, 0.1, 0.5, 0.3, 0.7]
    k = len(s)
    lr = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    mean_multi_response_reward_aware_loss(
        lr, torch.tensor(s, dtype=torch.float64), torch.zeros(k, dtype=torch.long), kind, beta, eta
    ).backward()
    if kind == "rpo_bwd_kl":
        adv = [sum(_sigmoid(eta * (s[m] - s[j])) - 0.5 for j in range(k) if j != m) / (k - 1) for m in range(k)]
        expected = [-2 * beta / k * a for a in adv]
    else:
        loo = [s[m] - (sum(s) - s[m]) / (k - 1) for m in range(k)]
        expected = [-4 * beta * eta / k * a * (1 / 8 if kind == "rpo_fwd_kl" else 1) for a in loo]
    torch.testing.assert_close(lr.grad, torch.tensor(expected, dtype=torch.float64))


def test_multi_response_random_batch_matches_double_loop_and_is_order_invariant():
    gen = torch.Generator().manual_seed(3)
    sizes = [5, 1, 3, 8, 2]
    groups = torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))
    perm = torch.randperm(groups.numel(), generator=gen)
    groups = groups[perm]
    lr = torch.randn(groups.numel(), generator=gen, dtype=torch.float64) * 20
    sc = torch.rand(groups.numel(), generator=gen, dtype=torch.float64)
    for kind in KINDS:
        loss, num_pairs = multi_response_reward_aware_loss(lr, sc, groups, kind, 0.1, 8.0)
        ref = _double_loop_reference(lr.tolist(), sc.tolist(), groups.tolist(), kind, 0.1, 8.0)
        for g, n in enumerate(sizes):
            assert num_pairs[g].item() == n * (n - 1)
            expected = ref[g][0] if n > 1 else 0.0
            assert math.isclose(loss[g].item(), expected, rel_tol=1e-9, abs_tol=1e-12)
        # permuting the responses does not change anything
        p = torch.randperm(groups.numel(), generator=gen)
        loss_p, _ = multi_response_reward_aware_loss(lr[p], sc[p], groups[p], kind, 0.1, 8.0)
        torch.testing.assert_close(loss_p, loss)


@pytest.mark.parametrize("kind", KINDS)
def test_multi_response_bf16_and_extreme_inputs_are_finite(kind):
    lr = torch.tensor([1000.0, -1000.0, 0.0, 500.0, -500.0], dtype=torch.bfloat16, requires_grad=True)
    sc = torch.tensor([100.0, -100.0, 0.0, 3.0, -3.0])
    groups = torch.tensor([0, 0, 0, 1, 1])
    loss, _ = multi_response_reward_aware_loss(lr, sc, groups, kind, beta=0.1, reward_scale=1.0)
    assert loss.dtype == torch.float32 and torch.isfinite(loss).all()
    mean_over_groups(loss, _).backward()
    assert lr.grad.dtype == torch.bfloat16 and torch.isfinite(lr.grad).all()
