"""Throughput and latency of `ChatClient` against an OpenAI-compatible server, by concurrency.

Against the test server of the suite (tests/openai_server.py, each request held `--delay` seconds to stand for model
time) by default, or against a real one with `--base_url` (e.g. a `vllm serve` on a GPU machine). Prints requests/s,
p50/p95 latency of the HTTP attempts, and the speed-up over concurrency 1.

    python benchmarks/llm_client.py                               # local test server, 0.05 s per request
    python benchmarks/llm_client.py --base_url http://localhost:8000/v1 --model Qwen/Qwen2.5-0.5B-Instruct \\
        --requests 256 --concurrency 1 8 32 64 --max_tokens 32
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from aepo_trainer.generation import ChatClient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base_url", default=None, help="Server to measure (default: start the local test server).")
    parser.add_argument("--model", default="gen-model")
    parser.add_argument("--api_key_env", default="AEPO_BENCH_API_KEY")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max_tokens", type=int, default=16)
    parser.add_argument("--delay", type=float, default=0.05, help="Seconds the local test server holds a request.")
    args = parser.parse_args()
    url = args.base_url
    if url is None:
        from openai_server import API_KEY, ServerState, start_server

        os.environ[args.api_key_env] = API_KEY
        _, _, url = start_server(ServerState(delay=args.delay))
    print(f"{url} model={args.model} requests={args.requests} max_tokens={args.max_tokens}")
    print(f"{'concurrency':>11}  {'req/s':>8}  {'p50 (s)':>8}  {'p95 (s)':>8}  {'speed-up':>8}")
    base = None
    for concurrency in args.concurrency:
        client = ChatClient(url, args.model, api_key_env=args.api_key_env, concurrency=concurrency)
        messages = [
            [{"role": "user", "content": f"Write a sentence about the number {i} ({concurrency})."}]
            for i in range(args.requests)
        ]
        started = time.perf_counter()
        results = client.complete_chat(messages, max_tokens=args.max_tokens, temperature=0)
        elapsed = time.perf_counter() - started
        client.close()
        latencies = sorted(r.latency for r in results if r.ok)
        rate = len(latencies) / elapsed
        base = base or rate
        p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
        print(
            f"{concurrency:>11}  {rate:>8.1f}  {statistics.median(latencies):>8.3f}  {p95:>8.3f}  {rate / base:>7.1f}x"
        )


if __name__ == "__main__":
    main()
