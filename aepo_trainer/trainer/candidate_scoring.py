"""Scoring every candidate of a pool batch with a causal LM, each prompt encoded once (issue 33).

`score_pool_candidates` returns, for each candidate `(row, index)` of an `AEPODataCollator` pool batch, the summed
log-prob of its kept completion tokens and (optionally) the mean of the model's last hidden state over them. The
sequences are those `group_batch.build_group_batch` lays out (TRL's truncation). One prompt is one forward unit: the
prompt is encoded once (`use_cache=True`), its key/value cache is expanded over the candidates
(`DynamicCache.batch_repeat_interleave`) and they are scored from that prefix, in chunks; so a candidate's value
depends only on its own pool. Log-probs go through the output embedding in float32 (the LM head TRL fuses);
`prefix_scoring_supported` says which models this applies to. A pure function of a model and a batch: the trainer's
use of it (caching, the reference, the step) is `policy_signals`.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass

import torch
from accelerate.utils import is_peft_model

__all__ = ["CandidateScores", "kept_lengths", "prefix_scoring_supported", "score_pool_candidates"]

_LOGIT_CHUNK = 512  # tokens per LM-head projection (bounds the [tokens, vocab] logits of a large vocabulary)


def kept_lengths(prompt_len: int, completion_lens: list[int], max_length, truncation_mode):
    """(start offset, kept prompt length, kept completion length) of each candidate, as `build_group_batch` lays it."""
    out = []
    for c in completion_lens:
        total = prompt_len + c
        kept = total if max_length is None else min(total, max_length)
        offset = total - kept if truncation_mode == "keep_end" else 0
        prompt_kept = max(0, min(prompt_len, offset + kept) - offset)
        out.append((offset, prompt_kept, kept - prompt_kept))
    return out


@dataclass
class CandidateScores:
    """Per scored candidate (in `positions` order): summed completion log-prob, and the mean last hidden state."""

    logps: torch.Tensor  # [R] float32
    features: torch.Tensor | None  # [R, H] float32, or None when not asked for


def _backbone_and_head(model):
    """The transformer body (returns `last_hidden_state`) and the output embedding of a causal LM, PEFT or not."""
    base = model.get_base_model() if is_peft_model(model) else model
    return base.base_model, base.get_output_embeddings()


def prefix_scoring_supported(model) -> bool:
    """False for models the fused head scores differently (logit scaling / soft-capping) and prompt-learning PEFT."""
    base = model.get_base_model() if is_peft_model(model) else model
    peft_config = getattr(model, "active_peft_config", None) if is_peft_model(model) else None
    if getattr(peft_config, "is_prompt_learning", False):
        return False
    config = base.config.get_text_config()
    scaled = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")
    if any(getattr(config, name, None) not in (None, 1.0) for name in scaled):
        return False
    return base.get_output_embeddings() is not None and base.base_model is not base


def _cache_kwarg(backbone, cache) -> dict:
    """transformers 5.25 renamed the forward's `past_key_values` to `cache` (the old name is deprecated)."""
    parameters = inspect.signature(type(backbone).forward).parameters
    return {"cache": cache} if "cache" in parameters else {"past_key_values": cache}


def _returned_cache(outputs):
    cache = getattr(outputs, "cache", None)
    return cache if cache is not None else outputs.past_key_values


def _token_logps(hidden: torch.Tensor, targets: torch.Tensor, head) -> torch.Tensor:
    """log p(target) of each row of `hidden` [T, H] through the LM head, in float32, in chunks of tokens."""
    out = []
    for start in range(0, hidden.shape[0], _LOGIT_CHUNK):
        logits = head(hidden[start : start + _LOGIT_CHUNK]).float()
        out.append(logits.log_softmax(-1).gather(1, targets[start : start + _LOGIT_CHUNK, None]).squeeze(1))
    return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)


@torch.no_grad()
def _score_prompt(backbone, head, prompt, completions, lengths, chunk, features, shared):
    """One prompt's candidates: (logps [n], features [n, H] or None). `prompt` [P] kept tokens; `completions` [n, Lc]
    right-padded; `lengths` [n] kept completion lengths. With `shared`, the prompt is encoded once and its cache is
    expanded over the candidates; otherwise each candidate is encoded as prompt + completion."""
    device = prompt.device
    n, P = completions.shape[0], prompt.shape[0]
    logps = torch.zeros(n, dtype=torch.float32, device=device)
    feats = None
    prefix = None
    for start in range(0, n, chunk):
        rows = slice(start, min(n, start + chunk))
        lens = lengths[rows]
        width = int(lens.max()) if lens.numel() else 0
        m = lens.numel()
        if width == 0:  # nothing of these completions survived truncation: log-prob 0, no representation
            if features and feats is None:
                feats = torch.zeros(n, head.weight.shape[1], dtype=torch.float32, device=device)
            continue
        ids = completions[rows, :width]
        real = torch.arange(width, device=device)[None, :] < lens[:, None]  # [m, W]
        ids = ids.masked_fill(~real, 0)
        if shared:
            if prefix is None:
                out = backbone(input_ids=prompt[None], use_cache=True)
                prefix = (_returned_cache(out), out.last_hidden_state[0, -1])
            cache = copy.deepcopy(prefix[0])
            cache.batch_repeat_interleave(m)
            attention = torch.cat([torch.ones(m, P, dtype=torch.long, device=device), real.long()], 1)
            positions = (P + torch.arange(width, device=device))[None].expand(m, -1)
            hidden = backbone(
                input_ids=ids,
                attention_mask=attention,
                position_ids=positions,
                use_cache=True,
                **_cache_kwarg(backbone, cache),
            ).last_hidden_state  # [m, W, H]
            before = torch.cat([prefix[1].expand(m, 1, -1), hidden[:, :-1]], 1)  # state predicting each token
        else:
            seq = torch.cat([prompt[None].expand(m, -1), ids], 1)
            attention = torch.cat([torch.ones(m, P, dtype=torch.long, device=device), real.long()], 1)
            full = backbone(input_ids=seq, attention_mask=attention, use_cache=False).last_hidden_state
            hidden = full[:, P:]
            before = full[:, P - 1 : P - 1 + width]
        token = _token_logps(before[real], ids[real], head)
        logps[rows] = torch.zeros(m, width, dtype=torch.float32, device=device).masked_scatter(real, token).sum(1)
        if features:
            if feats is None:
                feats = torch.zeros(n, hidden.shape[-1], dtype=torch.float32, device=device)
            weights = real.float()
            feats[rows] = (hidden.float() * weights[..., None]).sum(1) / weights.sum(1, keepdim=True).clamp_min(1.0)
    return logps, feats


@torch.no_grad()
def score_pool_candidates(
    model,
    batch: dict,
    positions: list[tuple[int, int]],
    *,
    max_length: int | None,
    truncation_mode: str = "keep_start",
    batch_size: int = 64,
    features: bool = False,
    shared_prefix: bool = True,
) -> CandidateScores:
    """Σ log p of the kept completion tokens of each candidate `(row, index)` of a pool batch, and with `features` the
    mean last hidden state over them, one prompt at a time (see the module). `model`: an unwrapped causal LM (or PEFT
    model, in whatever adapter state the caller set). The sequences are those `build_group_batch` lays out."""
    backbone, head = _backbone_and_head(model)
    device = head.weight.device
    prompts, prompt_lens = batch["pool_prompt_ids"].to(device), batch["pool_prompt_lengths"].tolist()
    completions = batch["pool_completion_ids"].to(device)
    completion_lens = batch["pool_completion_lengths"].tolist()
    by_row: dict[int, list[int]] = {}
    for order, (b, _) in enumerate(positions):
        by_row.setdefault(b, []).append(order)
    logps = torch.zeros(len(positions), dtype=torch.float32, device=device)
    feats = None
    for b, orders in by_row.items():
        cands = [positions[o][1] for o in orders]
        kept = kept_lengths(prompt_lens[b], [completion_lens[b][j] for j in cands], max_length, truncation_mode)
        if any(offset > 0 for offset, _, _ in kept):
            # keep_end cut some candidate's prompt: each candidate keeps a different part of it, so score it alone
            pieces = [
                _score_one_cut(backbone, head, prompts[b], prompt_lens[b], completions[b, j], completion_lens[b][j], k)
                for j, k in zip(cands, kept)
            ]
            row_logps = torch.stack([p[0] for p in pieces])
            row_feats = torch.stack([p[1] for p in pieces]) if features else None
        else:
            prompt_kept = kept[0][1]
            lens = torch.tensor([c for _, _, c in kept], dtype=torch.long, device=device)
            row_logps, row_feats = _score_prompt(
                backbone,
                head,
                prompts[b, :prompt_kept],
                completions[b, cands],
                lens,
                batch_size,
                features,
                shared_prefix,
            )
        index = torch.tensor(orders, dtype=torch.long, device=device)
        logps[index] = row_logps
        if features:
            if feats is None:
                feats = torch.zeros(len(positions), row_feats.shape[-1], dtype=torch.float32, device=device)
            feats[index] = row_feats
    return CandidateScores(logps, feats)


def _score_one_cut(backbone, head, prompt, prompt_len, completion, completion_len, kept):
    """One candidate whose kept sequence starts inside its prompt (`keep_end` truncation): a whole-sequence pass."""
    offset, pk, ck = kept
    seq = torch.cat([prompt[:prompt_len], completion[:completion_len]])[offset : offset + pk + ck]
    if pk == 0:  # the kept sequence starts inside the completion: its first token is never predicted (TRL's shift)
        pk, ck = 1, ck - 1
    lens = torch.tensor([ck], dtype=torch.long, device=seq.device)
    logps, feats = _score_prompt(backbone, head, seq[:pk], seq[None, pk:], lens, 1, True, shared=False)
    return logps[0], feats[0]
