"""Subprocess of tests/test_api_judge.py: annotate synthetic pools with the API judge through the store.

Usage: python tests/api_judge_worker.py <base_url> <store> <n_prompts> [budget_dollars]
The API key is read from AEPO_TEST_API_KEY. Prints the outcome totals as one JSON line when it completes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aepo_trainer.annotation import AnnotationRequest, AnnotationService, ApiJudgeAnnotator
from aepo_trainer.generation import ChatClient, UsageLedger


def requests(n_prompts: int, k: int = 4) -> list[AnnotationRequest]:
    return [
        AnnotationRequest(f"Question {i}?", [f"answer {i}.{j} q={(i * 7 + j * 3) % 10}" for j in range(k)])
        for i in range(n_prompts)
    ]


def main() -> None:
    url, store, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    budget = float(sys.argv[4]) if len(sys.argv) > 4 else None
    ledger = UsageLedger(store, run_id="kill", prices={"*": [1.0, 1.0]}, budget=budget)
    client = ChatClient(url, "judge-model", api_key_env="AEPO_TEST_API_KEY", concurrency=4, ledger=ledger)
    client.probe()
    service = AnnotationService(ApiJudgeAnnotator(client), ledger.store, run_id="kill", batch_size=8)
    reqs = requests(n)
    totals = {"paid": 0, "skipped": 0, "invalid": 0}
    for start in range(0, len(reqs), 4):
        outcome = service.annotate(reqs[start : start + 4])
        totals["paid"] += outcome.paid
        totals["skipped"] += len(outcome.skipped)
        totals["invalid"] += outcome.invalid
    print(json.dumps({**totals, "stats": dict(client.stats)}), flush=True)


if __name__ == "__main__":
    main()
