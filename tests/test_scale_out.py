"""`aepo select` past one process and one memory: sharded under torchrun, streamed in chunks, resumed after a kill.

Every multi-process run here is `torchrun` (gloo, `ACCELERATE_USE_CPU=1`): `accelerate launch --cpu --num_processes 2`
starts a single process on CPU. The runs compare their output files byte for byte with a single process's and count
what the one ledger (the main process's store) charged.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from aepo_trainer.annotation import AnnotationStore
from aepo_trainer.cli.io import read_rows

ENV = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", ACCELERATE_USE_CPU="1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pools(path: Path, prompts: int, *, embeddings: bool, pool_size: int = 6, dim: int = 16, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(prompts):
            row = {
                "prompt": f"Prompt {i}: say something about the number {i}.",
                "completions": [f"Answer {j} to prompt {i}: {rng.random():.6f} is a number." for j in range(pool_size)],
                "scores": [round(rng.random(), 6) for _ in range(pool_size)],
            }
            if embeddings:
                row["embeddings"] = [[rng.gauss(0, 1) for _ in range(dim)] for _ in range(pool_size)]
            f.write(json.dumps(row) + "\n")
    return path


def _select_args(pools: Path, output: str, *extra: str) -> list[str]:
    return [
        "select",
        "--input",
        str(pools),
        "--output",
        output,
        "--annotator",
        "dataset_scores",
        "--num_annotations",
        "3",
        "--batch_size",
        "4",
        "--chunk_size",
        "8",
        *extra,
    ]


def _run(argv: list[str], *, procs: int = 1, cwd=None, env=None, timeout: int = 240) -> subprocess.CompletedProcess:
    if procs == 1:
        cmd = [sys.executable, "-m", "aepo_trainer.cli", *argv]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)]
        cmd += ["-m", "aepo_trainer.cli", *argv]
    return subprocess.run(cmd, env=env or ENV, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _spent(output: Path) -> int:
    store = AnnotationStore(f"{output}.annotations.sqlite")
    try:
        return store.spent(f"aepo-select:{output}")
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_two_processes_write_the_bytes_of_one_and_pay_the_same(tmp_path, minilm_path, suffix):
    """Each rank embeds its share of every chunk (the real MiniLM embedder); the main process alone selects,
    annotates, pays and writes: same bytes, same payments, one store."""
    pools = _pools(tmp_path / "pools.jsonl", 20, embeddings=False)
    one, two = tmp_path / f"one{suffix}", tmp_path / f"two{suffix}"
    extra = ("--embedding_model", minilm_path)
    single = _run(_select_args(pools, str(one), *extra))
    assert single.returncode == 0, single.stderr[-4000:]
    double = _run(_select_args(pools, str(two), *extra), procs=2)
    assert double.returncode == 0, double.stderr[-4000:]
    assert one.read_bytes() == two.read_bytes()
    assert _spent(one) == _spent(two) == 20 * 3  # k = 3 of 6 candidates, every prompt once
    assert not Path(f"{two}.chunks").exists()  # the chunk files are gone once the output is assembled


@pytest.mark.slow
def test_two_nodes_with_separate_working_directories_share_one_ledger(tmp_path):
    """Two torchrun "nodes" on localhost, each in its own folder (no shared filesystem): node 0 writes the output and
    the store, node 1 writes nothing, and every item is paid once (not 2x)."""
    pools = _pools(tmp_path / "pools.jsonl", 24, embeddings=True)
    reference = tmp_path / "reference.jsonl"
    assert _run(_select_args(pools, str(reference))).returncode == 0
    port = _free_port()
    nodes = []
    for rank in range(2):
        folder = tmp_path / f"node{rank}"
        folder.mkdir()
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank)]
        cmd += ["--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port)]
        cmd += ["-m", "aepo_trainer.cli", *_select_args(pools, "pairs.jsonl")]
        log = open(tmp_path / f"node{rank}.log", "w")  # files, not pipes: a full pipe would block a node
        nodes.append(subprocess.Popen(cmd, env=ENV, cwd=folder, stdout=log, stderr=subprocess.STDOUT))
        log.close()
    codes = [node.wait(timeout=240) for node in nodes]
    logs = "".join((tmp_path / f"node{rank}.log").read_text()[-4000:] for rank in range(2))
    assert codes == [0, 0], logs
    written = tmp_path / "node0" / "pairs.jsonl"
    assert written.read_bytes() == reference.read_bytes()
    assert _spent(written) == 24 * 3
    assert os.listdir(tmp_path / "node1") == []


@pytest.mark.slow
def test_a_killed_sharded_run_resumes_at_its_last_chunk_and_pays_nothing_twice(tmp_path, minilm_path):
    pools = _pools(tmp_path / "pools.jsonl", 60, embeddings=False)
    reference, resumed = tmp_path / "reference.jsonl", tmp_path / "resumed.jsonl"
    args = ("--embedding_model", minilm_path, "--chunk_size", "4")  # 15 chunks: most of the run is left
    env = dict(ENV, HF_DATASETS_CACHE=str(tmp_path / "cache"))  # a cold embedding cache: the run takes its time
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    cmd += ["aepo_trainer.cli", *_select_args(pools, str(resumed), *args)]
    victim = subprocess.Popen(
        cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    first = Path(f"{resumed}.chunks") / "chunk-000001.stats.json"
    deadline = time.monotonic() + 200
    while not first.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert victim.poll() is None, "the run finished before it could be killed"
    tree = [*psutil.Process(victim.pid).children(recursive=True), psutil.Process(victim.pid)]
    for process in tree:
        process.kill()  # torchrun starts its workers in sessions of their own: kill each one
    victim.wait()
    psutil.wait_procs(tree, timeout=30)
    assert not resumed.exists()
    spent_before = _spent(resumed)
    assert 2 * 4 * 3 <= spent_before < 60 * 3  # at least 2 chunks of 4 prompts paid, not all
    rerun = _run(_select_args(pools, str(resumed), *args), procs=2, env=env)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert _run(_select_args(pools, str(reference), *args), env=env).returncode == 0
    assert "resumed:" in rerun.stderr and "were finished by an earlier run" in rerun.stderr
    assert resumed.read_bytes() == reference.read_bytes()
    assert _spent(resumed) == 60 * 3  # every item once: the kill and the rerun paid nothing twice


def _data_mb(argv: list[str], limit_mb: int | None = None) -> tuple[int, float, str]:
    """Run `aepo <argv>` in a child whose data segment (heap and private mappings: what Python objects live in) is
    capped at `limit_mb` (`resource.setrlimit(RLIMIT_DATA)`); (exit code, its data size at the end in MB, stderr)."""
    code = (
        "import resource, sys, runpy\n"
        f"limit = {limit_mb!r}\n"
        "if limit: resource.setrlimit(resource.RLIMIT_DATA, (limit << 20, limit << 20))\n"
        f"sys.argv = ['aepo', *{argv!r}]\n"
        "try:\n"
        "    runpy.run_module('aepo_trainer.cli', run_name='__main__')\n"
        "finally:\n"
        "    data = [line.split()[1] for line in open('/proc/self/status') if line.startswith('VmData')]\n"
        "    print('VM_DATA_KB', data[0], file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=600)
    data = [line for line in result.stderr.splitlines() if line.startswith("VM_DATA_KB")]
    return result.returncode, int(data[-1].split()[1]) / 1024 if data else float("nan"), result.stderr


@pytest.mark.slow
def test_a_streamed_run_over_an_input_larger_than_its_memory_limit_completes(tmp_path):
    """Pools with precomputed 384-d embeddings, 96 MB of JSON Lines; the run may use half of that on top of what a
    64-prompt run uses. Chunk by chunk, `aepo select` never holds more than one chunk (the whole input as Python
    lists would take several times the file's size)."""
    small = _pools(tmp_path / "small.jsonl", 64, embeddings=True, pool_size=8, dim=384)
    big = _pools(tmp_path / "big.jsonl", 1500, embeddings=True, pool_size=8, dim=384, seed=1)
    size_mb = big.stat().st_size / 2**20
    assert size_mb > 80
    flags = ("--batch_size", "64", "--chunk_size", "64")
    code, baseline, stderr = _data_mb(_select_args(small, str(tmp_path / "small-pairs.jsonl"), *flags))
    assert code == 0, stderr[-3000:]
    limit = int(baseline + 0.5 * size_mb)
    code, _, stderr = _data_mb(_select_args(big, str(tmp_path / "big-pairs.jsonl"), *flags), limit_mb=limit)
    assert code == 0, stderr[-3000:]
    with open(tmp_path / "big-pairs.jsonl", encoding="utf-8") as f:
        assert sum(1 for _ in f) == 1500  # one pair per prompt (random scores: no ties)


@pytest.mark.slow
@pytest.mark.parametrize("output_name", ["pools.jsonl", "pools.parquet"])
def test_aepo_generate_on_two_processes_writes_the_pools_of_one(tmp_path, tiny_model_path, output_name):
    """Each rank samples its share of every batch (per-prompt seeds); the main process alone writes, in input order."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Tell me about {i}", "id": i}) + "\n" for i in range(7)))
    outputs = []
    for procs in (1, 2):
        folder = tmp_path / f"procs{procs}"
        folder.mkdir()
        argv = ["generate", "--model", tiny_model_path, "--input", str(prompts), "--output", str(folder / output_name)]
        argv += ["--num_completions", "3", "--max_new_tokens", "6", "--batch_size", "3", "--seed", "5"]
        result = _run(argv, procs=procs)
        assert result.returncode == 0, result.stderr[-4000:]
        outputs.append(folder / output_name)
    assert outputs[0].read_bytes() == outputs[1].read_bytes()
    rows = read_rows(str(outputs[1]))
    assert [row["id"] for row in rows] == list(range(7)) and all(len(row["completions"]) == 3 for row in rows)
    assert len({c for row in rows for c in row["completions"]}) > 7  # sampled, not one answer repeated


def test_streamed_parquet_reads_embeddings_as_arrays_and_names_the_bad_row_of_the_whole_input(tmp_path, capsys):
    """Chunks of a Parquet file carry `[N, D]` float32 arrays; a bad vector in the third chunk is reported with its
    row number in the whole input, before anything is paid."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from aepo_trainer.cli import main
    from aepo_trainer.cli.streaming import iter_row_chunks

    rows = [json.loads(line) for line in _pools(tmp_path / "pools.jsonl", 10, embeddings=True).read_text().splitlines()]
    good = tmp_path / "good.parquet"
    pq.write_table(pa.Table.from_pylist(rows), good)
    chunks = list(iter_row_chunks(str(good), chunk_rows=4))
    assert [len(c) for c in chunks] == [4, 4, 2]
    first = chunks[0][0]["embeddings"]
    assert isinstance(first, np.ndarray) and first.dtype == np.float32 and first.shape == (6, 16)
    np.testing.assert_allclose(first, np.asarray(rows[0]["embeddings"], dtype=np.float32))
    assert [r["prompt"] for c in chunks for r in c] == [r["prompt"] for r in rows]
    assert [r["prompt"] for c in iter_row_chunks(str(good), chunk_rows=4, max_rows=5) for r in c] == [
        r["prompt"] for r in rows[:5]
    ]

    rows[9]["embeddings"][2] = [float("nan")] * 16
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist(rows), bad)
    output = tmp_path / "pairs.jsonl"
    assert main(_select_args(bad, str(output))) == 2  # chunks of 8 prompts: row 9 is in the second one
    assert "row 9, field 'embeddings'[2]: non-finite or non-numeric embedding value" in capsys.readouterr().err
    assert not Path(f"{output}.annotations.sqlite").exists() or _spent(output) == 0
    assert not output.exists()
