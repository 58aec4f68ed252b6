"""The processes of one data command (`aepo select`, `aepo generate`) started by `accelerate launch` or `torchrun`.

With one process (a plain `aepo select`) nothing here runs a collective. With several, each rank does the slow,
free work on its own shard (embedding candidates, sampling completions) and sends the result to the main process,
which alone holds the budget, the annotation store and the output file — so the budget is exact, nothing needs a
shared filesystem, and the output is the one a single process writes. Ranks agree on what to do next through
`broadcast`; a bad input found on the main process (a store it cannot open, a model it cannot find) is re-raised on
every rank as the same `InputError`, so no rank waits forever for a collective the others never join.

The process group is `accelerate.PartialState` (it reads the launcher's environment: gloo on CPU, NCCL on GPUs);
gathering to the main process only is `torch.distributed.gather_object`, so the other ranks never hold everything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .errors import InputError

T = TypeVar("T")

__all__ = ["Processes", "run_in_processes"]


class Processes:
    """Rank, world size and the three collectives the data commands need (no-ops with one process)."""

    def __init__(self):
        import os

        self._state = None
        launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if launched:  # torchrun / accelerate launch: join the process group the launcher describes
            import torch
            from accelerate import PartialState
            from accelerate.utils import str_to_bool

            # accelerate only forms a CPU (gloo) group when asked: without a GPU, or with ACCELERATE_USE_CPU=1
            cpu = not torch.cuda.is_available() or str_to_bool(os.environ.get("ACCELERATE_USE_CPU", "0")) == 1
            self._state = PartialState(cpu=cpu)
        self.rank = self._state.process_index if self._state else 0
        self.world_size = self._state.num_processes if self._state else 1
        if launched and self.world_size == 1:  # a state made earlier without a process group (e.g. by a config)
            raise RuntimeError(
                "aepo: launched as one of several processes, but accelerate's state was created without a process "
                "group; create `Processes()` before any `TrainingArguments`"
            )
        self.is_main = self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def device(self):
        """The device of this rank (its GPU under a GPU launch), or None to let the command choose."""
        return self._state.device if self._state is not None and self._state.device.type != "cpu" else None

    def mine(self, items: Sequence[T]) -> list[T]:
        """This rank's share of `items`: every `world_size`-th item from its rank (interleaved, so that work units
        of the same size are spread evenly)."""
        return list(items[self.rank :: self.world_size])

    def gather_on_main(self, value: Any) -> list | None:
        """`[value of rank 0, value of rank 1, ...]` on the main process, None elsewhere."""
        if not self.distributed:
            return [value]
        import torch.distributed as dist

        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(value, out, dst=0)
        return out

    def broadcast(self, value: Any = None) -> Any:
        """The main process's `value`, on every rank."""
        if not self.distributed:
            return value
        from accelerate.utils import broadcast_object_list

        box = [value]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def on_main(self, work: Callable[[], T]) -> T | None:
        """Run `work` on the main process; its result there, None on the other ranks. An `InputError` it raises is
        raised on every rank (the same message, so every process exits with code 2)."""
        result = error = None
        if self.is_main:
            try:
                result = work()
            except InputError as raised:
                if not self.distributed:
                    raise
                error = str(raised)
        if self.distributed:
            error = self.broadcast(error)
        if error is not None:
            raise InputError(error)
        return result

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        """Leave the process group (every rank, at the end of the command). Exiting with gloo's threads still running
        aborts the process ("terminate called without an active exception") after its work is done."""
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def run_in_processes(command: Callable[[list[str], Processes], int], argv: list[str]) -> int:
    """Run a data command on this process's rank: join the launcher's process group first (before any
    `TrainingArguments` is made, which would make accelerate's state without one), leave it at the end.

    A rank of a finished multi-process run leaves by `os._exit` once its streams are flushed: with gloo, a rank can
    still abort during interpreter finalization, after all its work is done and the group is destroyed ("terminate
    called without an active exception", SIGABRT: gloo objects torn down with their worker threads still joinable),
    and the launcher then reports the whole run as failed — seen twice in about seven runs of the test suite on 2
    shared cores, once after the barrier below was added. Everything the command wrote is closed by then (the output,
    the store, the progress bars); only the interpreter's teardown is skipped. A single process returns normally."""
    processes = Processes()
    try:
        result = command(argv, processes)
        # every rank done before any leaves: a rank that tears its gloo group down while a peer is still finishing
        # (the main process writing the output) can abort that peer at exit (not on the error path: a failed rank
        # exits and the launcher stops the others, where a barrier would only wait)
        processes.barrier()
    finally:
        processes.close()
    if processes.distributed:
        _leave_now(result)
    return result


def _leave_now(code: int) -> None:
    """Flush what this process printed and logged, then exit with `code` without the interpreter's teardown."""
    import logging
    import os
    import sys

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: nothing more can reach it
            pass
    os._exit(int(code))
