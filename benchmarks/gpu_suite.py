"""One command for the package's GPU promises: QLoRA/LoRA peak memory, AEPO-vs-DPO step time, embedding and selection
throughput, generation throughput. One JSON + one Markdown report.

    python benchmarks/gpu_suite.py --out reports/                # on a CUDA GPU: ~8 minutes on one H100-class GPU
    python benchmarks/gpu_suite.py --out /tmp/suite --cpu        # CPU fallback: tiny configs, every part, minutes

Each part runs in its own subprocess with its own time cap (`--cap part=seconds`), so one slow part cannot eat the
others: a part past its cap is killed and reported "timed out" with the rows it finished; a part whose dependency is
missing (bitsandbytes, trl, ...) reports "skipped: <reason>"; a part that crashes reports "failed" with the error. The
whole suite also keeps to `--budget_s`: a part that would start past it is skipped with that reason.

Parts (the workers are in `benchmarks/gpu_suite_parts.py`; models are built from `benchmarks/configs/*/config.json`
with random weights, so nothing is downloaded):
  memory      AEPOTrainer steps with QLoRA (NF4 + double quantization) and LoRA (bf16) r = 16 on all linear layers,
              gradient checkpointing, paged 8-bit AdamW, one pool of k = 2 per step, max_length 512 and 1024, for the
              Mistral-7B, Qwen2.5-7B and Qwen2.5-0.5B architectures: torch.cuda.max_memory_allocated / reserved
              against the 24 GB consumer-card line and the figure computed in docs/training.md
  overhead    AEPOTrainer step / DPOTrainer step on the same pairs, interleaved, bf16 (benchmarks/trainer_overhead.py)
  embedding   texts/s of the fp16 MiniLM embedder at batch 256 and 1024
  selection   select_subsets for B = 1024 prompts x N = 32 / 128 vs the GEMM floor (benchmarks/selection.py)
  generation  transformers `generate` tokens/s: eager vs sdpa, dynamic vs static cache (+ torch.compile); vLLM is
              not compared (its wheel cannot be carried to the device the suite was written for)

The device recipe (wheels to carry, the one `run` command) is benchmarks/gpu_suite_device.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
PART_NAMES = ("memory", "overhead", "embedding", "selection", "generation")
PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "sentence-transformers")


def plan(mode: str, minilm: str) -> list[dict]:
    """The jobs, in the order they run (most important first), each `{part, name, cap_s, spec}`."""
    if mode == "cpu":  # tiny configs: proves every part works before device time is spent
        # each architecture once, each method once (the paths differ by config and by method, not by their pairing)
        memory = dict(max_lengths=[64], steps=2, pool_size=4)
        return [
            job("memory", "qlora, tiny configs", 120, dict(memory, method="qlora", archs=["mistral-7b", "qwen2.5-0.5b"])),
            job("memory", "lora, tiny configs", 120, dict(memory, method="lora", archs=["qwen2.5-7b"])),
            job("overhead", "tiny Qwen2", 120, dict(argv=tiny_overhead_argv())),
            job("embedding", "MiniLM", 90, dict(texts=32, max_chars=200, batch_sizes=[8, 32], weights=minilm)),
            job("selection", "B=64", 60, dict(batch=64, sizes=[8, 32], ks=[2], repeats=2, min_time=0.0, ref_budget=0.05)),
            job("generation", "tiny qwen2.5-0.5b", 90, dict(arch="qwen2.5-0.5b", batch=2, max_new_tokens=8, repeats=1)),
        ]  # fmt: skip
    both, long = [512, 1024], [1024]
    m = dict(steps=4, pool_size=8)
    return [
        job("memory", "mistral-7b qlora", 150, dict(m, archs=["mistral-7b"], method="qlora", max_lengths=both)),
        job("memory", "mistral-7b lora", 100, dict(m, archs=["mistral-7b"], method="lora", max_lengths=both)),
        job("overhead", "Qwen2 600M, bf16", 100, dict(argv=gpu_overhead_argv())),
        job("embedding", "MiniLM fp16", 45, dict(texts=16384, batch_sizes=[256, 1024], weights=minilm)),
        job("selection", "B=1024", 45, dict(batch=1024, sizes=[32, 128], ks=[2], repeats=5, min_time=1.0, ref_budget=1.0)),
        job("generation", "qwen2.5-0.5b", 120, dict(arch="qwen2.5-0.5b", batch=32, max_new_tokens=128, repeats=2)),
        job("memory", "qwen2.5-0.5b qlora", 50, dict(m, archs=["qwen2.5-0.5b"], method="qlora", max_lengths=both)),
        job("memory", "qwen2.5-0.5b lora", 45, dict(m, archs=["qwen2.5-0.5b"], method="lora", max_lengths=both)),
        job("memory", "qwen2.5-7b qlora", 90, dict(m, archs=["qwen2.5-7b"], method="qlora", max_lengths=long)),
        job("memory", "qwen2.5-7b lora", 70, dict(m, archs=["qwen2.5-7b"], method="lora", max_lengths=long)),
    ]  # fmt: skip


def job(part: str, name: str, cap_s: float, spec: dict) -> dict:
    return {"part": part, "name": name, "cap_s": cap_s, "spec": spec}


def tiny_overhead_argv() -> list:
    return ["--hidden", 64, "--layers", 2, "--prompts", 12, "--pool_size", 8, "--batch_size", 2, "--max_length", 64,
            "--steps", 2, "--warmup", 1]  # fmt: skip


def gpu_overhead_argv() -> list:
    return ["--hidden", 2048, "--layers", 12, "--prompts", 128, "--pool_size", 32, "--batch_size", 4,
            "--max_length", 512, "--steps", 16, "--warmup", 3]  # fmt: skip


# ------------------------------------------------------------------------------------------------ running jobs
def run_job(entry: dict, mode: str, timeout: float, log) -> dict:
    """Run one job in a subprocess (own process group, killed whole at the cap) and return its record."""
    record = {"part": entry["part"], "name": entry["name"], "cap_s": entry["cap_s"], "spec": entry["spec"]}
    if timeout < 5:
        return dict(record, status="skipped", reason="the suite's time budget (--budget_s) was spent", rows=[])
    work = Path(tempfile.mkdtemp(prefix="gpu-suite-job-"))
    result_file, output_file = work / "result.json", work / "output.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["HF_DATASETS_CACHE"] = str(work / "datasets-cache")
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if mode == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        entry["part"],
        "--spec",
        json.dumps(entry["spec"]),
    ]
    cmd += ["--result", str(result_file), "--device", "cuda" if mode == "gpu" else "cpu"]
    start = time.perf_counter()
    with open(output_file, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            timed_out = True
    record["wall_s"] = round(time.perf_counter() - start, 1)
    output = output_file.read_text(encoding="utf-8", errors="replace")
    log.write(f"\n===== {entry['part']}: {entry['name']} ({record['wall_s']} s, cap {timeout:.0f} s)\n{output}")
    log.flush()
    result = json.loads(result_file.read_text()) if result_file.exists() else {"rows": []}
    record.update(result)
    if timed_out:
        record["status"] = "timed out"
        record["reason"] = f"killed at its time cap of {timeout:.0f} s; {len(result.get('rows', []))} row(s) finished"
    elif proc.returncode != 0:
        lines = [line for line in output.splitlines() if line.strip()]
        errors = [line for line in lines if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b", line)]
        record["status"] = "failed"
        record["reason"] = (errors or lines or [f"exit status {proc.returncode}"])[-1][:500]
        record["output_tail"] = "\n".join(lines[-30:])
    elif "status" not in result:
        record.update(status="failed", reason="the worker wrote no result")
    return record


def worker(part: str, spec: dict, result_path: str, device: str) -> None:
    import gpu_suite_parts

    def emit(result: dict) -> None:
        tmp = Path(result_path + ".tmp")
        tmp.write_text(json.dumps(result, default=str))
        tmp.replace(result_path)

    emit(gpu_suite_parts.PARTS[part](spec, device, emit))


# ------------------------------------------------------------------------------------------------ environment
def environment(cpu: bool) -> dict:
    """Versions and the device, read in a short subprocess: the suite's own process never touches CUDA, so the GPU
    memory the parts read off the device (`torch.cuda.mem_get_info`) holds no CUDA context of the parent's."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="") if cpu else None
    cmd = [sys.executable, str(Path(__file__).resolve()), "--probe"]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout.splitlines()[-1])


def probe() -> None:
    import platform

    import torch

    env = {"python": platform.python_version(), "cpu_count": os.cpu_count()}
    for name in PACKAGES:
        try:
            env[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            env[name] = None
    env["cuda_available"] = torch.cuda.is_available()
    if env["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 1024**3, 1), cuda=torch.version.cuda)
    print(json.dumps(env))


def part_status(jobs: list[dict]) -> str:
    statuses = {j["status"] for j in jobs}
    return statuses.pop() if len(statuses) == 1 else "mixed: " + ", ".join(sorted(statuses))


def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="folder for gpu_suite.json, gpu_suite.md and gpu_suite.log (created)")
    p.add_argument("--cpu", action="store_true", help="CPU fallback with tiny configs (automatic without CUDA)")
    p.add_argument("--parts", nargs="+", choices=PART_NAMES, default=list(PART_NAMES), help="parts to run")
    p.add_argument("--cap", action="append", default=[], metavar="PART=SECONDS", help="a part's time cap per job")
    p.add_argument("--budget_s", type=float, default=450, help="the whole suite's time budget (default 450 s)")
    p.add_argument(
        "--minilm",
        choices=["auto", "bundled", "random"],
        default="auto",
        help="embedder weights: the bundled all-MiniLM-L6-v2 when installed (auto), or its architecture with random "
        "weights (what the device run uses: same speed, no 87 MB weights to carry)",
    )
    p.add_argument("--worker", choices=PART_NAMES, help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--device", help=argparse.SUPPRESS)
    p.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.probe:
        return probe()
    if args.worker:
        return worker(args.worker, json.loads(args.spec), args.result, args.device)
    if not args.out:
        p.error("--out is required")

    env = environment(args.cpu)
    mode = "gpu" if env["cuda_available"] else "cpu"
    caps = {}
    for item in args.cap:
        part, _, seconds = item.partition("=")
        if part not in PART_NAMES or not seconds:
            p.error(f"--cap {item!r}: expected PART=SECONDS with PART one of {', '.join(PART_NAMES)}")
        caps[part] = float(seconds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.timezone.utc)
    report = {
        "suite": "aepo-trainer benchmarks/gpu_suite.py",
        "command": " ".join(["python", "benchmarks/gpu_suite.py", *(argv if argv is not None else sys.argv[1:])]),
        "started": started.isoformat(timespec="seconds"),
        "mode": mode,
        "device": env["gpu"] if mode == "gpu" else "cpu",
        "budget_s": args.budget_s,
        "environment": env,
        "parts": {},
    }
    deadline = time.perf_counter() + args.budget_s
    with open(out / "gpu_suite.log", "w", encoding="utf-8") as log:
        for entry in plan(mode, args.minilm):
            if entry["part"] not in args.parts:
                continue
            entry["cap_s"] = caps.get(entry["part"], entry["cap_s"])
            timeout = min(entry["cap_s"], deadline - time.perf_counter())
            print(f"[gpu_suite] {entry['part']}: {entry['name']} (cap {max(timeout, 0):.0f} s) ...", flush=True)
            record = run_job(entry, mode, timeout, log)
            print(f"[gpu_suite]   -> {record['status']}" + (f": {record['reason']}" if record.get("reason") else ""))
            report["parts"].setdefault(entry["part"], {"jobs": []})["jobs"].append(record)
            for part in report["parts"].values():
                part["status"] = part_status(part["jobs"])
            report["wall_s"] = round(time.perf_counter() - (deadline - args.budget_s), 1)
            write_reports(report, out)  # after every job: a suite stopped from outside still leaves a report
    report["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    write_reports(report, out)
    print(f"[gpu_suite] wrote {out / 'gpu_suite.json'} and {out / 'gpu_suite.md'} ({report['wall_s']} s)")
    return report


def write_reports(report: dict, out: Path) -> None:
    from gpu_suite_report import markdown

    (out / "gpu_suite.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "gpu_suite.md").write_text(markdown(report))


if __name__ == "__main__":
    sys.path.insert(0, str(BENCHMARKS))
    main()
