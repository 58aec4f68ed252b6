"""Prompt-level selection: when the budget covers fewer prompts than the data holds, choose *which prompts* to annotate.

Candidate selection (`kernel`, `active`, `implicit_reward`) picks k of each prompt's N candidates; it says nothing
about which prompts deserve labels at all. With `AEPOConfig.prompt_selection` set, every window of prompts — in
`AEPOTrainer` the micro-batches of one optimizer step on one process, or with `prompt_selection_window` W > 1 each
micro-batch alone (it holds W upcoming batches, see below); in `aepo select` one chunk — is first selected as usual (no
label is bought for that), then only the `ceil(ratio x window)` most informative prompts are annotated; the others get
an empty request (the annotation service pays nothing for it) and form no pair. The choice depends only on the
window's data, the policy's weights and the seed, so it is the same in a resumed run and needs no collective across
processes (each rank chooses among its own prompts; the main process still pays every rank's requests in one call, so
the budget stays exact).

A window of upcoming batches (`prompt_selection_window` W > 1, trainer only) is not a look-ahead into the
DataLoader: the training DataLoader itself is built with W x `per_device_train_batch_size` prompts per micro-batch
(`AEPOTrainer.get_train_dataloader`), and the step keeps 1/W of each micro-batch's prompts, chosen within that
micro-batch (`step_windows`). So every micro-batch trains at most `per_device_train_batch_size` prompts (exactly that
many when each has enough prompts that can form a pair), whatever `gradient_accumulation_steps`: peak memory is that of
a run without a window. And the Trainer's own bookkeeping stays true as it is — steps per epoch (len(dataloader) /
accumulation), the learning-rate schedule, `max_steps`, and the batches a resumed run skips (whole windows, as
trained) — with no custom sampler, and each process still chooses among its own shard of prompts.

Rules (`choices.PROMPT_SELECTIONS`):

* `all` — no prompt selection (the default): every prompt of the window is annotated until the budget runs out.
* `random` — `m` prompts of the window chosen uniformly, keyed by `prompt_key` and the seed (the same prompt is kept
  or dropped whatever batch it lands in). The control for the rules below: it covers the same number of prompts.
* `d_optimal` — greedy D-optimal design on the selected pairs' feature differences, as APO (Das et al., "Active
  Preference Optimization for Sample Efficient RLHF", arXiv 2402.10500, Alg. 1) chooses prompts: with a linear
  reward r(y) = θᵀφ(y), the label of a pair (a, b) informs θ along d = φ(a) − φ(b), and the posterior variance of
  that pair's reward difference is dᵀ V⁻¹ d for the design matrix V = λI + Σ d dᵀ of the pairs already chosen.
  The rule repeatedly keeps the prompt with the largest log(1 + dᵀ V⁻¹ d) (the log-determinant gain of adding it)
  and adds its d d ᵀ to V. V starts from λI in every window (so nothing needs saving for a resume); φ are the
  candidate embeddings, d is the most distant pair among the k selected candidates.
* `implicit_reward_spread` (trainer only) — the prompts whose selected candidates the policy being trained rates
  most differently: the spread max − min of the implicit reward β·(log π − log π_ref) over the k selected
  candidates (the policy's own disagreement between them; ActiveDPO, arXiv 2505.19241, selects by the implicit
  reward of the policy being trained). Largest first; prompts of equal spread keep their window order.
"""

from __future__ import annotations

import math

import torch

from ..choices import POLICY_PROMPT_SELECTIONS
from .search import hash32

__all__ = [
    "choose_prompts",
    "chosen_rows",
    "dataset_size",
    "drop_unchosen_prompts",
    "informative_rows",
    "planned_prompts",
    "prompt_ratio",
    "prompts_to_keep",
    "step_windows",
]

#: Ridge λ of the D-optimal design matrix V = λI + Σ d dᵀ (embeddings are unit-norm, so |d| <= 2).
D_OPTIMAL_RIDGE = 1.0
#: The counter that separates the prompt draw from every other keyed draw of the same seed.
_PROMPT_DRAW = 0x50524F4D


def dataset_size(dataset) -> int | None:
    """len(dataset), or None for an iterable data set (the ratio then falls back to `prompt_selection_ratio` or 1)."""
    try:
        return len(dataset)
    except TypeError:
        return None


def planned_prompts(args, dataset_size: int | None, world_size: int = 1) -> int | None:
    """How many prompts the run will train on: `max_steps` x batch x accumulation x processes when `max_steps` is
    set, else the data set's size x epochs (None when neither is known, e.g. an iterable data set)."""
    if getattr(args, "max_steps", -1) and args.max_steps > 0:
        per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, world_size)
        return args.max_steps * per_step
    if dataset_size is None:
        return None
    return dataset_size * max(1, math.ceil(float(getattr(args, "num_train_epochs", 1) or 1)))


def prompt_ratio(args, prompts: int | None = None) -> float:
    """The share of each window's prompts to annotate: `args.prompt_selection_ratio`, or by default the share the
    budget pays for, `annotation_budget / (k x prompts)` for the `prompts` the run goes through (1.0 without a
    budget or a known count). With `prompt_selection_window` W > 1 (trainer): 1 / W, so that every step trains as many
    prompts as a step without a window."""
    window = getattr(args, "prompt_selection_window", 1)
    if window > 1:
        return 1.0 / window
    if args.prompt_selection_ratio is not None:
        return float(args.prompt_selection_ratio)
    budget = args.annotation_budget
    if budget is None or not prompts:
        return 1.0
    return min(1.0, budget / (args.num_annotations * prompts))


def prompts_to_keep(window: int, ratio: float) -> int:
    """ceil(ratio x window), at least 1 and at most the window (rounding up: the budget, not the ratio, stops)."""
    if window <= 0:
        return 0
    return max(1, min(window, math.ceil(ratio * window - 1e-9)))


def choose_prompts(
    rule: str,
    keep: int,
    *,
    embeddings: torch.Tensor,
    subsets: list[list[int]],
    keys: list[int],
    seed: int,
    implicit_rewards: torch.Tensor | None = None,
) -> list[int]:
    """Indices (ascending) of the `keep` rows of a window to annotate.

    Args:
        rule: one of `choices.PROMPT_SELECTIONS`.
        keep: how many rows to keep.
        embeddings: `[R, N, D]` candidate features (padding rows are never read: only `subsets` entries are).
        subsets: the candidates selected per row (a row with fewer than 2 is never kept: it cannot form a pair).
        keys: `prompt_key` of every row.
        seed: the selection seed (`random`).
        implicit_rewards: `[R, N]` for `implicit_reward_spread`.
    """
    rows = len(subsets)
    eligible = [i for i in range(rows) if len(subsets[i]) >= 2]
    if keep >= len(eligible) or rule == "all":
        return eligible
    if rule == "random":
        draw = hash32(seed, torch.tensor(keys, dtype=torch.long), _PROMPT_DRAW).tolist()  # per prompt, batch-free
        order = sorted(eligible, key=lambda i: (draw[i], i))
        return sorted(order[:keep])
    if rule == "implicit_reward_spread":
        if implicit_rewards is None:
            raise ValueError("prompt_selection='implicit_reward_spread' needs the policy's implicit rewards.")
        r = implicit_rewards.detach().float().cpu()
        spread = {i: float(r[i, subsets[i]].max() - r[i, subsets[i]].min()) for i in eligible}
        order = sorted(eligible, key=lambda i: (-spread[i], i))
        return sorted(order[:keep])
    if rule == "d_optimal":
        return _greedy_d_optimal(embeddings, subsets, eligible, keep)
    raise ValueError(f"Unknown prompt_selection {rule!r}.")


def _greedy_d_optimal(embeddings: torch.Tensor, subsets, eligible: list[int], keep: int) -> list[int]:
    e = embeddings.detach().to("cpu", torch.float64)
    diffs = []
    for i in eligible:
        x = e[i, subsets[i]]  # [k, D]
        dist = torch.cdist(x, x)
        a, b = divmod(int(dist.argmax()), x.shape[0])
        diffs.append(x[a] - x[b])
    d = torch.stack(diffs)  # [E, D]
    precision_inv = torch.eye(d.shape[1], dtype=torch.float64) / D_OPTIMAL_RIDGE  # V⁻¹
    chosen: list[int] = []
    free = torch.ones(len(eligible), dtype=torch.bool)
    for _ in range(keep):
        variance = ((d @ precision_inv) * d).sum(1)  # dᵀ V⁻¹ d per candidate prompt
        gain = torch.log1p(variance.clamp_min(0)).masked_fill(~free, -math.inf)
        j = int(gain.argmax())  # first maximum: ties keep window order
        chosen.append(eligible[j])
        free[j] = False
        v = precision_inv @ d[j]  # Sherman-Morrison: (V + d dᵀ)⁻¹
        precision_inv = precision_inv - torch.outer(v, v) / (1.0 + d[j] @ v)
    return sorted(chosen)


def chosen_rows(args, picks: list, embeddings: list, *, ratio: float, signals: list | None = None) -> set[int]:
    """The rows (numbered across the window's batches) that prompt selection keeps in one window of selected batches
    (`reduction.Selected` each). `embeddings`: each batch's `[B, N, D]` features; `signals`: each batch's policy
    signals (or None)."""
    subsets = [list(s) for sel in picks for s in sel.subsets]
    if args.prompt_selection == "all":
        return set(range(len(subsets)))
    if not subsets:
        return set()
    width = max(e.shape[1] for e in embeddings)
    feats = torch.cat([_pad_to(e.detach().float().cpu(), width) for e in embeddings])
    rewards = None
    if args.prompt_selection in POLICY_PROMPT_SELECTIONS:
        rewards = torch.cat([_pad_to(s["implicit_rewards"].detach().float().cpu(), width) for s in signals or []])
    return set(
        choose_prompts(
            args.prompt_selection,
            prompts_to_keep(len(subsets), ratio),
            embeddings=feats,
            subsets=subsets,
            keys=[k for sel in picks for k in sel.keys],
            seed=int(args.effective_selection_seed),
            implicit_rewards=rewards,
        )
    )


def step_windows(args, batches: int) -> list[range]:
    """The windows of one optimizer step's `batches` micro-batches (indices into them): all of them together, or,
    with `prompt_selection_window` W > 1, each micro-batch alone — it already holds W batches' prompts, and choosing
    within it keeps exactly 1/W of them there, so that no micro-batch trains more than `per_device_train_batch_size`
    prompts (a choice across micro-batches could crowd up to min(W, accumulation) batches' prompts into one)."""
    if getattr(args, "prompt_selection_window", 1) > 1:
        return [range(i, i + 1) for i in range(batches)]
    return [range(batches)]


def drop_unchosen_prompts(args, picks: list, embeddings: list, *, ratio: float, signals: list | None = None) -> int:
    """Prompt selection over the selected micro-batches of one optimizer step, in place (`AEPOTrainer`'s step), window
    by window (`step_windows`): the subsets of the prompts not chosen are emptied, so that their requests cost nothing
    and they form no pair. Returns how many prompts were left out (0 with `prompt_selection='all'`)."""
    if args.prompt_selection == "all":
        return 0
    signals = signals if signals is not None else [None] * len(picks)
    dropped = 0
    for window in step_windows(args, len(picks)):
        part = [picks[i] for i in window]
        kept = chosen_rows(
            args, part, [embeddings[i] for i in window], ratio=ratio, signals=[signals[i] for i in window]
        )
        row = 0
        for sel in part:
            for i in range(len(sel.subsets)):
                if row not in kept and sel.subsets[i]:
                    sel.subsets[i] = []
                    dropped += 1
                row += 1
    return dropped


def informative_rows(reducer, rows: list[dict], embeddings: list, *, ratio: float, batch_size: int) -> list[int]:
    """`aepo select`: the indices (ascending) of the rows of one chunk (the window) worth annotating. Each batch is
    selected as the reducer would select it without learning (active strategies: their cold-start strategy, so that
    the surrogate's state is untouched; nothing is paid), then the window's prompts are chosen by
    `args.prompt_selection`. `embeddings`: one `[N, D]` tensor per row."""
    from ..embedding import stack_pool_embeddings

    args = reducer.args
    drop = args.embeddings_column
    picks, features = [], []
    for start in range(0, len(rows), batch_size):
        tensor, mask = stack_pool_embeddings(embeddings[start : start + batch_size])
        batch = [{k: v for k, v in row.items() if k != drop} for row in rows[start : start + batch_size]]
        picks.append(reducer.select(batch, tensor, mask, learn=False))
        features.append(tensor)
    return sorted(chosen_rows(args, picks, features, ratio=ratio))


def _pad_to(t: torch.Tensor, width: int) -> torch.Tensor:
    if t.shape[1] == width:
        return t
    pad = [0, 0] * (t.dim() - 2) + [0, width - t.shape[1]]
    return torch.nn.functional.pad(t, pad)
