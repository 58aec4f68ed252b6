"""The reference log-probs cache of the policy signals: its keys (the reference's identity, each candidate's kept
tokens) and its entries in memory. `policy_signals` owns the trainer's caches and moves their entries between ranks,
checkpoints and the run's store (`storage.reference_logps`)."""

from __future__ import annotations

import hashlib

import torch

from .candidate_scoring import kept_lengths
from .reference import reference_source

__all__ = [
    "ReferenceLogpsCache",
    "candidate_keys",
    "reference_identity",
    "reference_weights_digest",
    "weights_are_sharded",
]


class ReferenceLogpsCache:
    """Σ_t log π_ref(y_t | x, y_<t) of candidates already scored, for one reference model (`identity`).

    Keys are `candidate_keys` digests of the kept tokens. The single owner is the trainer's `policy_signals` state;
    `export`/`absorb` move entries between ranks and checkpoints."""

    def __init__(self, identity: str):
        self.identity = identity
        self.values: dict[bytes, float] = {}
        self.hits = 0
        self.misses = 0
        self.unsaved: dict[bytes, float] = {}  # computed here and not yet in the run's store

    def __len__(self) -> int:
        return len(self.values)

    def lookup(self, keys: list[bytes]) -> list[float | None]:
        found = [self.values.get(key) for key in keys]
        missing = sum(v is None for v in found)
        self.misses += missing
        self.hits += len(found) - missing
        return found

    def store(self, keys: list[bytes], values: list[float]) -> None:
        new = dict(zip(keys, (float(v) for v in values)))
        self.values.update(new)
        self.unsaved.update(new)

    def take_unsaved(self) -> dict[bytes, float]:
        """The values computed here since the last call (for the run's store); forgets them."""
        unsaved, self.unsaved = self.unsaved, {}
        return unsaved

    def export(self) -> dict:
        return {"identity": self.identity, "values": dict(self.values)}

    def absorb(self, exported: dict | None) -> int:
        """Add another cache's entries (a rank's, a checkpoint's) when they belong to the same reference."""
        if not exported or exported.get("identity") != self.identity:
            return 0
        before = len(self.values)
        self.values.update(exported["values"])
        return len(self.values) - before


def weights_are_sharded(trainer) -> bool:
    """True when FSDP or DeepSpeed ZeRO-3 shard the weights across ranks (the trainer's own flags, as `Trainer` sets
    them): no rank then holds the whole reference, so none can digest it."""
    if getattr(trainer, "is_fsdp_enabled", False):
        return True
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return plugin is not None and getattr(plugin, "zero_stage", None) == 3


def reference_weights_digest(trainer) -> str:
    """A digest of the reference the trainer uses: which one (ref_model / adapter disabled / "ref" adapter), its class
    and name, and every parameter's name, shape, dtype and full bytes (a weight edit anywhere changes it). One pass
    over the weights, once per run (`benchmarks/trainer_overhead.py --policy_signals` prints its seconds)."""
    h = hashlib.blake2b(digest_size=32)
    kind = reference_source(trainer)
    model = trainer.accelerator.unwrap_model(trainer.ref_model if kind == "ref_model" else trainer.model)
    h.update(f"{kind}|{type(model).__name__}|{getattr(model.config, '_name_or_path', '')}".encode())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name and (kind == "adapter_disabled" or ".ref." not in name):
                continue  # the trained adapter is no part of the reference (disabled, or the "ref" adapter is used)
            h.update(f"|{name}|{tuple(p.shape)}|{p.dtype}|".encode())
            h.update(p.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy())
    return h.hexdigest()


def reference_identity(weights_digest: str, precision: str) -> str:
    """The key of one cache: the reference's weights (`reference_weights_digest`) and the precision its log-probs are
    computed at (`"mixed_precision=no"`, `"...=bf16"`, `"...=fp16"`: the step's; `"autocast=bfloat16"`: the signals'
    of `policy_signals_dtype="bfloat16"`). A value of one precision is never read as another's."""
    return f"{weights_digest}|{precision}"


def candidate_keys(batch: dict, positions: list[tuple[int, int]], max_length, truncation_mode) -> list[bytes]:
    """A 16-byte digest of each candidate's kept prompt and completion tokens (the sequence its log-prob is of)."""
    prompts, prompt_lens = batch["pool_prompt_ids"], batch["pool_prompt_lengths"].tolist()
    completions, completion_lens = batch["pool_completion_ids"], batch["pool_completion_lengths"]
    keys = []
    for b, j in positions:
        p, c = prompt_lens[b], int(completion_lens[b, j])
        ((offset, pk, ck),) = kept_lengths(p, [c], max_length, truncation_mode)
        seq = torch.cat([prompts[b, :p], completions[b, j, :c]])[offset : offset + pk + ck]
        h = hashlib.blake2b(digest_size=16)
        h.update(pk.to_bytes(4, "little"))
        h.update(seq.to(torch.int64).cpu().numpy().tobytes())
        keys.append(h.digest())
    return keys
