"""`PhaseTimer`: wall-clock seconds per phase of the training step (generate / embed / select / annotate / train),
logged by `AEPOTrainer` as `aepo/time_share/*` and `aepo/seconds/*`."""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext

import torch

__all__ = ["PHASES", "PhaseTimer", "phase"]

PHASES = ("generate", "embed", "select", "annotate", "train")


class PhaseTimer:
    """Wall-clock seconds per phase of the training step since the last report (CUDA synchronised at each phase end,
    so that asynchronous kernels are charged to the phase that launched them)."""

    def __init__(self):
        self.seconds = dict.fromkeys(PHASES, 0.0)

    @contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.synchronize()
            self.seconds[name] += time.perf_counter() - start

    def report(self, reset: bool = True, accelerator=None) -> dict[str, float]:
        """`aepo/time_share/<phase>` (fractions of the total) and `aepo/seconds/<phase>` since the last report.

        With an `accelerator` of several processes the seconds are averaged over the processes (one collective), so
        every process logs the same figures, like every other logged metric."""
        seconds = dict(self.seconds)
        if accelerator is not None and accelerator.num_processes > 1:
            local = torch.tensor([seconds[name] for name in PHASES], dtype=torch.float64, device=accelerator.device)
            mean = accelerator.gather(local.unsqueeze(0)).view(-1, len(PHASES)).mean(0).tolist()
            seconds = dict(zip(PHASES, mean))
        total = sum(seconds.values())
        out = {}
        if total > 0:
            out.update({f"aepo/time_share/{name}": s / total for name, s in seconds.items()})
            out.update({f"aepo/seconds/{name}": s for name, s in seconds.items()})
        if reset:
            self.seconds = dict.fromkeys(PHASES, 0.0)
        return out


def phase(timer: PhaseTimer | None, name: str):
    """`timer`'s context for phase `name` (a no-op without a timer)."""
    return timer.phase(name) if timer is not None else nullcontext()
