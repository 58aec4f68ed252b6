"""Resume time of `aepo select` with an active strategy: replaying the finished chunks vs restoring the surrogate.

A killed active run used to select every finished chunk again on resume (its labels free, from the store) so that the
surrogate saw them batch by batch; now each finished chunk keeps the labels it taught the surrogate and a resume
restores them in one fit. On the real AlpacaEval pools (../shared/data/alpaca_eval_pools.jsonl.gz, 805 prompts x 32,
scores as the annotator; a hashed bag-of-words `embeddings` column, so no embedder time is measured) this times, side
by side in one process:

  replay   a rerun whose finished chunks are gone but whose store holds every label: it selects every chunk again,
           which is what a resume did before (the same work: embeddings from the column, labels from the store);
  restore  a rerun after a kill in the last chunk: the finished chunks are restored in one fit, the last one selected.

Both write the same bytes (checked). Prints seconds (median of --repeats) and the ratio, with the machine's load.

    python benchmarks/active_resume.py [--prompts 805] [--strategy delta_ucb] [--chunk_size 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
POOLS = (
    next(  # the repository next to ../shared (a clone), or a worktree two levels down
        (p for p in (REPO_ROOT.parent / "shared", REPO_ROOT.parents[1] / "shared") if p.is_dir()),
        REPO_ROOT.parent / "shared",
    )
    / "data"
    / "alpaca_eval_pools.jsonl.gz"
)


def bag_of_words(texts: list[str], dim: int = 64) -> list[list[float]]:
    vectors = []
    for text in texts:
        v = [0.0] * dim
        for word in text.lower().split():
            v[int.from_bytes(hashlib.md5(word.encode()).digest()[:4], "little") % dim] += 1.0
        v[0] += 1e-3  # never all-zero (an empty answer)
        vectors.append(v)
    return vectors


def select(argv: list[str]) -> int:
    from aepo_trainer.cli import main

    with contextlib.redirect_stderr(io.StringIO()):
        return main(argv)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=805)
    parser.add_argument("--strategy", default="delta_ucb")
    parser.add_argument("--chunk_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    from aepo_trainer.cli.streaming import ChunkedOutput

    work = Path(tempfile.mkdtemp(prefix="aepo-active-resume-"))
    source = work / "pools.jsonl"
    with gzip.open(POOLS, "rt", encoding="utf-8") as f, open(source, "w", encoding="utf-8") as out:
        for _, line in zip(range(args.prompts), f):
            row = json.loads(line)
            out.write(json.dumps({**row, "embeddings": bag_of_words(row["completions"])}) + "\n")
    chunks = -(-args.prompts // args.chunk_size)

    def argv(output):
        return [
            "select",
            "--input",
            str(source),
            "--output",
            str(output),
            "--selection_strategy",
            args.strategy,
            "--active_batch_size",
            str(args.chunk_size),
            "--chunk_size",
            str(args.chunk_size),
            "--annotation_store",
            str(work / "store.sqlite"),
            "--run_id",
            "bench",
        ]

    reference = work / "reference.jsonl"
    started = time.perf_counter()
    assert select(argv(reference)) == 0
    full = time.perf_counter() - started
    write = ChunkedOutput.write

    def killed_in_the_last_chunk(self, index, rows, stats, *, complete):
        if index == chunks - 1:
            raise KeyboardInterrupt
        write(self, index, rows, stats, complete=complete)

    times = {"replay": [], "restore": []}
    for repeat in range(args.repeats):
        for mode in ("replay", "restore"):
            output = work / f"{mode}-{repeat}.jsonl"
            if mode == "restore":
                ChunkedOutput.write = killed_in_the_last_chunk
                assert select(argv(output)) == 130
                ChunkedOutput.write = write
            started = time.perf_counter()
            assert select(argv(output)) == 0  # replay: no chunk finished; restore: all but the last
            times[mode].append(time.perf_counter() - started)
            assert output.read_bytes() == reference.read_bytes(), mode
    replay, restore = statistics.median(times["replay"]), statistics.median(times["restore"])
    print(f"aepo select --selection_strategy {args.strategy}: {args.prompts} prompts x 32, {chunks} chunks of")
    print(f"{args.chunk_size} prompts; uninterrupted run {full:.1f} s (labels paid from the scores column)")
    print(f"resume, replaying the {chunks - 1} finished chunks:  {replay:.2f} s  (median of {args.repeats})")
    print(f"resume, restoring them in one fit:      {restore:.2f} s")
    print(f"ratio replay / restore: {replay / restore:.1f}x; outputs byte-identical to the uninterrupted run")
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"load average (1, 5, 15 min): {' '.join(load)}; cpus {os.cpu_count()}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
