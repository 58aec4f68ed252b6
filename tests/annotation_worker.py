"""Subprocess used by tests/test_store_resume.py: annotate a synthetic pool through the store, with a paid annotator.

The annotator is a TRL-style reward function that "pays" for each item by appending the item's store key to a payment
log (one `os.write` per item, so a SIGKILL loses nothing already written), then returns a deterministic score. It can
kill its own process with SIGKILL at the entry of annotator call number `kill_at_call` (`kill_mode="entry"`), or after
paying `kill_after_items` items of that call (`kill_mode="mid"`).

Usage: python tests/annotation_worker.py '<json config>'   (see DEFAULTS)
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aepo_trainer.annotation import (
    AnnotationRequest,
    AnnotationService,
    AnnotationStore,
    RewardFunctionAnnotator,
    make_key,
)

DEFAULTS = dict(
    store=None,  # path of the SQLite store (required)
    payment_log=None,  # path of the payment log (required)
    report=None,  # where the final outcome totals are written (JSON), if the run completes
    run_id="default",
    budget=None,
    n_prompts=40,
    k=4,
    prompts_per_call=8,  # prompts per `annotate` call (a trainer batch)
    batch_size=8,  # items per annotator call
    kill_at_call=0,  # 0 = never
    kill_mode="entry",  # "entry" or "mid"
    kill_after_items=3,
    sleep_per_item=0.0,
    order="forward",  # or "reverse": the order the prompts are processed in
)

IDENTITY_NAME = "payment-log"


def expected_score(prompt: str, completion: str) -> float:
    return float((len(prompt) * 31 + len(completion) * 7) % 101) / 10.0


def make_requests(n_prompts: int, k: int) -> list[AnnotationRequest]:
    return [
        AnnotationRequest(
            f"prompt {p}: say something",
            [f"answer {p}.{j} " + "x" * j for j in range(k)],
            indices=[2 * j for j in range(k)],
            row={"prompt_id": p},
        )
        for p in range(n_prompts)
    ]


_RUN: dict = {}  # the worker's config, payment log and call count (set by main)


def paid_reward(prompts, completions, **kwargs):
    """The paid annotator: one payment-log line per item (its store key), then a deterministic score."""
    cfg, identity = _RUN["cfg"], _RUN["identity"]
    _RUN["calls"] += 1
    killing = cfg["kill_at_call"] and _RUN["calls"] == cfg["kill_at_call"]
    if killing and cfg["kill_mode"] == "entry":
        os.kill(os.getpid(), signal.SIGKILL)
    out = []
    for j, (p, c) in enumerate(zip(prompts, completions)):
        if killing and cfg["kill_mode"] == "mid" and j == cfg["kill_after_items"]:
            os.kill(os.getpid(), signal.SIGKILL)
        os.write(_RUN["log_fd"], (make_key(identity, p, c) + "\n").encode())  # the payment
        if cfg["sleep_per_item"]:
            time.sleep(cfg["sleep_per_item"])
        out.append(expected_score(p, c))
    return out


def identity() -> str:
    """The store identity of the paid annotator (its name and a hash of `paid_reward`'s code)."""
    return RewardFunctionAnnotator(paid_reward, name=IDENTITY_NAME).identity


def main() -> None:
    cfg = dict(DEFAULTS)
    cfg.update(json.loads(sys.argv[1]))
    annotator = RewardFunctionAnnotator(paid_reward, name=IDENTITY_NAME)
    assert annotator.identity == identity() and annotator.identity.startswith(f"reward_function:{IDENTITY_NAME}@")
    _RUN.update(
        cfg=cfg,
        identity=annotator.identity,
        calls=0,
        log_fd=os.open(cfg["payment_log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644),
    )
    service = AnnotationService(
        annotator,
        AnnotationStore(cfg["store"]),
        budget=cfg["budget"],
        run_id=cfg["run_id"],
        batch_size=cfg["batch_size"],
        poll_interval=0.02,
    )
    requests = make_requests(cfg["n_prompts"], cfg["k"])
    if cfg["order"] == "reverse":
        requests = requests[::-1]
    totals = dict(paid=0, reused=0, recovered=0, skipped=0, invalid=0, budget_exhausted=False, calls=0)
    per = cfg["prompts_per_call"]
    for start in range(0, len(requests), per):
        outcome = service.annotate(requests[start : start + per])
        for r, scores in zip(requests[start : start + per], outcome.scores):
            if scores is not None:
                assert scores == [expected_score(r.prompt, c) for c in r.completions], "wrong score returned"
        totals["paid"] += outcome.paid
        totals["reused"] += outcome.reused
        totals["recovered"] += outcome.recovered
        totals["skipped"] += len(outcome.skipped)
        totals["invalid"] += outcome.invalid
        totals["budget_exhausted"] |= outcome.budget_exhausted
    totals["calls"] = _RUN["calls"]
    totals["spent"] = service.spent
    if cfg["report"]:
        Path(cfg["report"]).write_text(json.dumps(totals))


if __name__ == "__main__":
    main()
