"""Reward-aware preference losses (RPO, Sun et al. 2025, arXiv 2502.00203; NeMo-Aligner's `rpo_*` losses).

DPO only uses *which* response won. AEPO has already paid for a score per annotated response, so the size of the
score gap is available too. The reward-aware losses make the policy's implicit reward margin match it:

    r_pi(x, y) = beta * log(pi(y|x) / pi_ref(y|x))                 implicit reward of the policy
    delta      = r_pi(x, y_chosen) - r_pi(x, y_rejected)            policy margin        ("Δ")
    target     = eta * (r*(x, y_chosen) - r*(x, y_rejected))        annotated reward gap ("Δr*"), eta = reward_scale
    loss       = D(delta || target)

with `D` one of

    rpo_sq      (delta - target)^2
    rpo_bwd_kl  KL(Bern(sigmoid(target)) || Bern(sigmoid(delta)))   ->  -logsigmoid(delta) (DPO) as target -> +inf
    rpo_fwd_kl  KL(Bern(sigmoid(delta))  || Bern(sigmoid(target)))

Public functions:

* `reward_aware_loss(policy_margin, reward_margin, kind)` - elementwise `D`, no reduction (pairs).
* `multi_response_reward_aware_loss(logratios, scores, groups, kind, beta, reward_scale)` - `D` averaged over all
  ordered pairs of responses of the same prompt, in one vectorised pass; returns per-group losses and pair counts.
* `mean_multi_response_reward_aware_loss(...)` - the scalar the trainer adds: the mean over groups that have pairs.

Precision: everything is computed in float32 (float64 when the policy input is float64) and returned in that dtype,
also for bf16/fp16 inputs; gradients flow back into the low-precision input through the cast. The annotated targets
are constants: `reward_margin` and `scores` are detached.

See docs/losses.md for when to use which loss and how to pick `reward_scale`.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

__all__ = [
    "RPO_LOSS_TYPES",
    "mean_multi_response_reward_aware_loss",
    "mean_over_groups",
    "multi_response_reward_aware_loss",
    "reward_aware_loss",
]

from ..choices import RPO_LOSS_TYPES


def _check_kind(kind) -> None:
    if kind not in RPO_LOSS_TYPES:
        allowed = ", ".join(repr(k) for k in RPO_LOSS_TYPES)
        raise ValueError(f"Unknown reward-aware loss kind {kind!r}: expected one of {allowed}.")


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _check_finite_positive(name: str, value) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}.")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")
    return float(value)


def _bernoulli_kl_from_logits(p_logit: torch.Tensor, q_logit: torch.Tensor) -> torch.Tensor:
    """KL(Bern(sigmoid(p_logit)) || Bern(sigmoid(q_logit))), elementwise, through logsigmoid only.

    p*(log p - log q) + (1-p)*(log(1-p) - log(1-q)) with log x = logsigmoid(logit), log(1-x) = logsigmoid(-logit) and
    p, 1-p taken as sigmoid(+-p_logit) (never 1 - sigmoid, which cancels). Finite for logits of any finite size: a
    weight that underflows to 0 multiplies a finite log-ratio, never an infinite one.
    """
    log_p, log_1mp = F.logsigmoid(p_logit), F.logsigmoid(-p_logit)
    log_q, log_1mq = F.logsigmoid(q_logit), F.logsigmoid(-q_logit)
    kl = torch.sigmoid(p_logit) * (log_p - log_q) + torch.sigmoid(-p_logit) * (log_1mp - log_1mq)
    # Near p == q the two terms cancel and rounding can leave ~-1e-7. Clamp the *value* at 0 but keep the exact
    # analytic gradient (straight-through), so that near-equal margins still get their (tiny) gradient.
    return kl + (kl.clamp_min(0.0) - kl).detach()


def reward_aware_loss(policy_margin: torch.Tensor, reward_margin: torch.Tensor | float, kind: str) -> torch.Tensor:
    """Elementwise reward-aware (RPO) loss `D(policy_margin || reward_margin)`; no reduction.

    Args:
        policy_margin: `Δ = β·(log π/π_ref)(chosen) − β·(log π/π_ref)(rejected)`, **already multiplied by β**
            (floating tensor, any shape, fp32/bf16/fp16/fp64; receives the gradient).
        reward_margin: `Δr* = η·(r*(chosen) − r*(rejected))`, **already multiplied by η** (`reward_scale`). A tensor of
            exactly the same shape as `policy_margin` (no silent broadcasting: a `[P]` vs `[P, 1]` mix-up would
            otherwise become a `[P, P]` loss), or a Python number used for every element (e.g. IPO's constant
            target). Treated as a constant: it is detached.
        kind: `"rpo_sq"` → `(Δ − Δr*)²`; `"rpo_bwd_kl"` → `KL(Bern(σ(Δr*)) ‖ Bern(σ(Δ)))`;
            `"rpo_fwd_kl"` → `KL(Bern(σ(Δ)) ‖ Bern(σ(Δr*)))`.

    Returns:
        A tensor with the shape of `policy_margin`, in float32 (float64 if `policy_margin` is float64) whatever the
        input precision: the loss is computed in float32 and not rounded back to bf16/fp16.

    `rpo_bwd_kl` with `Δr* → +∞` is DPO's sigmoid loss `−logsigmoid(Δ)`. The KL kinds are ≥ 0 (float rounding near
    `Δ ≈ Δr*`, ~1e-7, is clamped in the value only; the gradient is left exact) and exactly 0 where `Δ == Δr*`;
    all kinds are finite, with finite gradients, for any finite inputs (the KLs go through `logsigmoid`, never
    `log(sigmoid)` or `log(1 − sigmoid)`).
    """
    _check_kind(kind)
    if not isinstance(policy_margin, torch.Tensor):
        raise TypeError(f"policy_margin must be a torch.Tensor, got {type(policy_margin).__name__}.")
    if not policy_margin.is_floating_point():
        raise TypeError(f"policy_margin must be a floating-point tensor, got dtype {policy_margin.dtype}.")
    dtype = _compute_dtype(policy_margin)
    delta = policy_margin.to(dtype)
    if isinstance(reward_margin, torch.Tensor):
        if reward_margin.shape != policy_margin.shape:
            raise ValueError(
                f"reward_margin has shape {tuple(reward_margin.shape)} but policy_margin has shape "
                f"{tuple(policy_margin.shape)}: they must match exactly (one target per policy margin)."
            )
        target = reward_margin.detach().to(device=delta.device, dtype=dtype)
    elif isinstance(reward_margin, numbers.Real) and not isinstance(reward_margin, bool):
        target = torch.full_like(delta, float(reward_margin), requires_grad=False)
    else:
        raise TypeError(f"reward_margin must be a torch.Tensor or a number, got {type(reward_margin).__name__}.")

    if kind == "rpo_sq":
        return (delta - target).square()
    if kind == "rpo_bwd_kl":
        return _bernoulli_kl_from_logits(target, delta)
    return _bernoulli_kl_from_logits(delta, target)  # rpo_fwd_kl


def _pairwise_inputs(logratios, scores, groups, num_groups):
    """Validates the multi-response inputs; returns (logratios, scores, groups, G) on logratios' device."""
    for name, t in (("logratios", logratios), ("scores", scores), ("groups", groups)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}.")
        if t.dim() != 1:
            raise ValueError(f"{name} must be 1-D ([R], one entry per response), got shape {tuple(t.shape)}.")
    if not (logratios.shape == scores.shape == groups.shape):
        raise ValueError(
            f"logratios {tuple(logratios.shape)}, scores {tuple(scores.shape)} and groups {tuple(groups.shape)} "
            "must all have shape [R] (one entry per response)."
        )
    if not logratios.is_floating_point():
        raise TypeError(f"logratios must be a floating-point tensor, got dtype {logratios.dtype}.")
    if groups.is_floating_point() or groups.is_complex() or groups.dtype == torch.bool:
        raise TypeError(f"groups must be an integer tensor (prompt index of each response), got dtype {groups.dtype}.")
    device = logratios.device
    dtype = _compute_dtype(logratios)
    scores = scores.detach().to(device=device, dtype=dtype)
    groups = groups.to(device=device, dtype=torch.long)
    num_responses = groups.numel()
    if num_responses:
        # One host sync for all checks (a handful of scalars per training step).
        g_min, g_max, finite = torch.stack([groups.min(), groups.max(), torch.isfinite(scores).all().long()]).tolist()
        if g_min < 0:
            raise ValueError(f"groups must be >= 0 (prompt indices 0..G-1), got a minimum of {g_min}.")
        if not finite:
            raise ValueError("scores must be finite (NaN/inf annotations must be dropped before the loss).")
        if num_groups is None:
            num_groups = g_max + 1
        elif g_max >= num_groups:
            raise ValueError(f"groups contains index {g_max} but num_groups={num_groups}.")
    elif num_groups is None:
        num_groups = 0
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 0:
        raise ValueError(f"num_groups must be None or an integer >= 0, got {num_groups!r}.")
    return logratios, scores, groups, num_groups


def multi_response_reward_aware_loss(
    logratios: torch.Tensor,
    scores: torch.Tensor,
    groups: torch.Tensor,
    kind: str,
    beta: float,
    reward_scale: float,
    num_groups: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reward-aware loss averaged over all ordered pairs of responses to the same prompt (RPO's multi-response form).

    For every prompt g with responses `I_g` (`n_g = |I_g|`) and every ordered pair `i ≠ j` in `I_g`:

        Δ_ij   = β·(logratios[i] − logratios[j])
        Δr*_ij = η·(scores[i] − scores[j])
        loss_g = 1/(n_g(n_g − 1)) · Σ_{i≠j ∈ I_g} D(Δ_ij ‖ Δr*_ij)      with D = `reward_aware_loss(..., kind)`

    All pairs of the batch are evaluated in one vectorised pass over a masked `[R, R]` matrix (no Python loop over
    groups or pairs). Each response appears once, so its log-probabilities are computed once however many pairs it
    is in. Pairs with equal scores are kept: their target is 0 (no preference), which is the point of a reward-aware
    loss. For k = 2 the two ordered pairs have the same loss (every `D` is symmetric under swapping the pair), so
    `loss_g` is exactly the pairwise loss of the (chosen, rejected) pair.

    Args:
        logratios: `[R]` floating, `log π(y_r|x) − log π_ref(y_r|x)` per response (sequence sums); gets the gradient.
        scores: `[R]` annotated rewards `r*` (constants: detached; must be finite).
        groups: `[R]` integer, the prompt index of each response, in `0..G-1` (need not be contiguous or sorted).
        kind: one of `"rpo_sq"`, `"rpo_bwd_kl"`, `"rpo_fwd_kl"`.
        beta: β (> 0), as in DPO.
        reward_scale: η (> 0), `AEPOConfig.reward_scale`.
        num_groups: G. Defaults to `groups.max() + 1`; pass it to fix the output length (e.g. prompts of the batch).

    Returns:
        `(loss_per_group, num_pairs)`, both `[G]`. `loss_per_group` is float32 (float64 for float64 `logratios`);
        `num_pairs[g] = n_g(n_g − 1)` (long) is the number of ordered pairs of prompt g. Groups with fewer than two
        responses have no pairs: their loss is 0 and contributes no gradient; average with `mean_over_groups`.
    """
    _check_kind(kind)
    beta = _check_finite_positive("beta", beta)
    reward_scale = _check_finite_positive("reward_scale", reward_scale)
    logratios, scores, groups, num_groups = _pairwise_inputs(logratios, scores, groups, num_groups)
    dtype = _compute_dtype(logratios)
    device = logratios.device

    rewards = beta * logratios.to(dtype)  # r_π per response
    policy_margin = rewards[:, None] - rewards[None, :]  # [R, R], Δ_ij
    reward_margin = reward_scale * (scores[:, None] - scores[None, :])  # [R, R], Δr*_ij
    same_group = groups[:, None] == groups[None, :]
    pair_mask = same_group & ~torch.eye(groups.numel(), dtype=torch.bool, device=device)

    pair_loss = reward_aware_loss(policy_margin, reward_margin, kind)
    # torch.where (not a multiplication) so that the masked-out cross-group entries can never leak into the values or
    # the gradients.
    row_sums = torch.where(pair_mask, pair_loss, torch.zeros((), dtype=dtype, device=device)).sum(dim=1)  # [R]

    loss_sums = torch.zeros(num_groups, dtype=dtype, device=device).index_add(0, groups, row_sums)
    sizes = torch.bincount(groups, minlength=num_groups)
    num_pairs = sizes * (sizes - 1)
    loss_per_group = loss_sums / num_pairs.clamp(min=1).to(dtype)
    return loss_per_group, num_pairs


def mean_over_groups(loss_per_group: torch.Tensor, num_pairs: torch.Tensor) -> torch.Tensor:
    """Mean of `loss_per_group` over the groups with at least one pair (`num_pairs > 0`).

    Returns a 0-d tensor. When no group has a pair the result is a zero that is still attached to the graph of
    `loss_per_group`, so `backward()` works (and distributed training sees every parameter used).
    """
    has_pairs = num_pairs > 0
    count = has_pairs.sum().clamp(min=1).to(loss_per_group.dtype)
    return torch.where(has_pairs, loss_per_group, torch.zeros_like(loss_per_group)).sum() / count


def mean_multi_response_reward_aware_loss(
    logratios: torch.Tensor,
    scores: torch.Tensor,
    groups: torch.Tensor,
    kind: str,
    beta: float,
    reward_scale: float,
    num_groups: int | None = None,
) -> torch.Tensor:
    """The scalar the trainer adds to its loss: `multi_response_reward_aware_loss` averaged over the groups (prompts)
    that have at least two responses. Every prompt weighs the same, however many responses it has; with k = 2 this
    is the mean pairwise loss over the batch's pairs, as TRL averages its own losses. 0-d float32 (float64) tensor.
    """
    loss_per_group, num_pairs = multi_response_reward_aware_loss(
        logratios, scores, groups, kind, beta, reward_scale, num_groups=num_groups
    )
    return mean_over_groups(loss_per_group, num_pairs)
