"""How `aepo select` scales with the number of prompts, and with a second process.

Synthetic pools with precomputed embeddings (N candidates x D dimensions, random unit-free normals; scores random, so
the `dataset_scores` annotator is free) are written as Parquet at each size, then `aepo select` runs on them as a user
would run it — a subprocess, one process or `torchrun --nproc_per_node P` (gloo on CPU) — and the script prints wall
time, time per prompt and peak RSS (the largest process), then the ratios measured side by side in this one run:

    time per prompt at the largest size / at the smallest   (flat streaming: goal <= 1.2)
    peak RSS at the largest size / at the smallest           (flat memory: goal <= 1.5)
    speed-up of P processes over 1, at each size

Usage:
    python benchmarks/scale.py                                  # 10k, 100k, 300k prompts; 1 and 2 processes
    python benchmarks/scale.py --sizes 2000 20000 --procs 1     # a quick look
Disk: N x D x 4 bytes per prompt (49 KB at N = 32, D = 384): 300k prompts take ~15 GB under --workdir.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time


def write_pools(path: str, prompts: int, pool_size: int, dim: int, rows_per_group: int = 4096, seed: int = 0):
    """Parquet pools: prompt, completions (short strings), scores, embeddings (list of N lists of D float32)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    writer = None
    try:
        for start in range(0, prompts, rows_per_group):
            rows = min(rows_per_group, prompts - start)
            vectors = rng.standard_normal((rows * pool_size * dim,), dtype=np.float32)
            inner = pa.ListArray.from_arrays(np.arange(0, rows * pool_size * dim + 1, dim, dtype=np.int32), vectors)
            embeddings = pa.ListArray.from_arrays(np.arange(0, rows * pool_size + 1, pool_size, dtype=np.int32), inner)
            scores = pa.ListArray.from_arrays(
                np.arange(0, rows * pool_size + 1, pool_size, dtype=np.int32),
                pa.array(rng.random(rows * pool_size)),
            )
            completions = pa.array(
                [[f"candidate {j} of prompt {start + i}" for j in range(pool_size)] for i in range(rows)]
            )
            table = pa.table(
                {
                    "prompt": pa.array([f"synthetic prompt {start + i}" for i in range(rows)]),
                    "completions": completions,
                    "scores": scores,
                    "embeddings": embeddings,
                }
            )
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, compression="none")
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


_MEASURE = """
import resource, subprocess, sys, time
t = time.perf_counter()
with open(sys.argv[1], 'w') as log:
    code = subprocess.call(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=log)
seconds = time.perf_counter() - t
# RUSAGE_CHILDREN: the largest resident set of any process waited for below this one (torchrun's workers included)
print(code, seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def run_select(pools: str, output: str, procs: int, chunk_size: int) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB of the largest process) of one `aepo select` run."""
    argv = ["select", "--input", pools, "--output", output, "--annotator", "dataset_scores"]
    argv += ["--num_annotations", "2", "--chunk_size", str(chunk_size), "--batch_size", "512"]
    if procs == 1:
        cmd = [sys.executable, "-m", "aepo_trainer.cli", *argv]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)]
        cmd += ["-m", "aepo_trainer.cli", *argv]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", ACCELERATE_USE_CPU="1")
    if procs > 1:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // procs))
    log = f"{output}.log"
    result = subprocess.run([sys.executable, "-c", _MEASURE, log, *cmd], env=env, capture_output=True, text=True)
    code, seconds, rss_kb = result.stdout.split()
    if int(code) != 0:
        with open(log, encoding="utf-8") as f:
            raise RuntimeError(f"aepo select exited {code}: {' '.join(cmd)}\n{f.read()[-3000:]}")
    return float(seconds), int(rss_kb) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 300_000])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--pool_size", type=int, default=32)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--chunk_size", type=int, default=4096)
    parser.add_argument("--workdir", default=None, help="Where the pools go (default: a temporary folder, removed).")
    parser.add_argument("--json", default=None, help="Also write the measurements to this JSON file.")
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="aepo-scale-")
    os.makedirs(workdir, exist_ok=True)
    records = []
    try:
        for size in args.sizes:
            pools = os.path.join(workdir, f"pools-{size}.parquet")
            t = time.perf_counter()
            write_pools(pools, size, args.pool_size, args.dim)
            gb = os.path.getsize(pools) / 2**30
            print(f"{size} prompts: {gb:.2f} GB of Parquet written in {time.perf_counter() - t:.0f}s", flush=True)
            for procs in args.procs:
                output = os.path.join(workdir, f"pairs-{size}-{procs}.jsonl")
                seconds, rss = run_select(pools, output, procs, args.chunk_size)
                records.append(dict(prompts=size, procs=procs, seconds=seconds, rss_mb=rss, gb=gb))
                print(
                    f"  {procs} process(es): {seconds:8.1f}s  {1e3 * seconds / size:.3f} ms/prompt  "
                    f"peak RSS {rss:7.0f} MB",
                    flush=True,
                )
                os.remove(output)
            os.remove(pools)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    report(records, args)


def report(records: list[dict], args) -> None:
    small, large = min(args.sizes), max(args.sizes)
    by = {(r["prompts"], r["procs"]): r for r in records}
    print(f"\nN = {args.pool_size}, D = {args.dim}, chunk {args.chunk_size} prompts, {os.cpu_count()} CPU cores")
    print("| prompts | processes | wall s | ms / prompt | peak RSS MB |")
    print("|---:|---:|---:|---:|---:|")
    for r in records:
        print(
            f"| {r['prompts']} | {r['procs']} | {r['seconds']:.1f} | {1e3 * r['seconds'] / r['prompts']:.3f} "
            f"| {r['rss_mb']:.0f} |"
        )
    base = min(args.procs)
    if small != large:
        a, b = by[(small, base)], by[(large, base)]
        per_prompt = (b["seconds"] / large) / (a["seconds"] / small)
        print(f"time per prompt at {large} / at {small} ({base} proc): {per_prompt:.2f}  (goal <= 1.2)")
        print(f"peak RSS at {large} / at {small} ({base} proc): {b['rss_mb'] / a['rss_mb']:.2f}  (goal <= 1.5)")
    for procs in args.procs:
        if procs == base:
            continue
        for size in args.sizes:
            print(
                f"speed-up of {procs} processes over {base} at {size} prompts: "
                f"{by[(size, base)]['seconds'] / by[(size, procs)]['seconds']:.2f}"
            )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(records, f, indent=1)


if __name__ == "__main__":
    main()
