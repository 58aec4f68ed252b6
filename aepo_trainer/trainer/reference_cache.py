"""The reference log-probs cache of the policy signals: its keys (the reference's identity, each candidate's kept
tokens) and its entries in memory. `policy_signals` owns the trainer's caches and moves their entries between ranks,
checkpoints and the run's store (`storage.reference_logps`)."""

from __future__ import annotations

import hashlib

import torch
from accelerate.utils import is_peft_model

from .candidate_scoring import kept_lengths

__all__ = ["ReferenceLogpsCache", "candidate_keys", "reference_identity"]


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


def reference_identity(trainer) -> str:
    """A digest of the reference the trainer uses: which one (ref_model / adapter disabled / "ref" adapter), its class
    and name, and every parameter's name, shape, sum and first values (cheap, and changes with any real weight edit)."""
    h = hashlib.sha256()
    if trainer.ref_model is not None:
        model, kind = trainer.ref_model, "ref_model"
    else:
        model = trainer.accelerator.unwrap_model(trainer.model)
        kind = "ref_adapter" if is_peft_model(model) and "ref" in model.peft_config else "adapter_disabled"
    model = trainer.accelerator.unwrap_model(model)
    h.update(f"{kind}|{type(model).__name__}|{getattr(model.config, '_name_or_path', '')}".encode())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if kind == "adapter_disabled" and "lora_" in name:
                continue  # the adapter is disabled: its (trained) weights are not part of the reference
            head = p.detach().reshape(-1)[:8].double().cpu()
            h.update(f"{name}|{tuple(p.shape)}|{float(p.detach().double().sum())!r}|{head.tolist()!r}".encode())
    return h.hexdigest()


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
