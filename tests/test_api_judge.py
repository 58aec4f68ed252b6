"""The `api_judge` annotator against a real local OpenAI-compatible server (tests/openai_server.py), through the real
`openai` client: exact debiased verdicts from logprobs and from text, the shared tournament, rubric scores,
unparseable verdicts retried then invalid, the cost budget stopping annotation exactly, a SIGKILL mid-run that re-pays
no completed call, and an AEPOTrainer run with `annotator="api_judge"`."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("openai")
sys.path.insert(0, str(Path(__file__).parent))

from api_judge_worker import requests as worker_requests
from openai_server import API_KEY, BIAS, KEY_ENV

from aepo_trainer.annotation import AnnotationRequest, AnnotationService, ApiJudgeAnnotator
from aepo_trainer.annotation.base import canonical_json
from aepo_trainer.annotation.judge import tournament_scores
from aepo_trainer.generation import ChatClient, UsageLedger
from aepo_trainer.storage.annotations import AnnotationStore
from aepo_trainer.storage.usage import summary as usage_summary

WORKER = Path(__file__).parent / "api_judge_worker.py"


def make_judge(url, ledger=None, concurrency=1, **kwargs):
    client = ChatClient(url, "judge-model", api_key_env=KEY_ENV, concurrency=concurrency, ledger=ledger)
    return ApiJudgeAnnotator(client, **kwargs)


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def oracle_pref(qa, qb):
    """What the server's judge gives, debiased: (P(a first wins) + 1 - P(b first wins)) / 2."""
    return (sigmoid(qa - qb + BIAS) + 1 - sigmoid(qb - qa + BIAS)) / 2


def body_key(body) -> str:
    return hashlib.sha256(canonical_json({"endpoint": "chat", **body}).encode()).hexdigest()


def test_pairwise_verdict_from_logprobs_is_the_exact_debiased_preference(server):
    state, url = server
    (scores,) = make_judge(url).score([AnnotationRequest("Q?", ["first q=3", "second q=1"])])
    assert scores == pytest.approx([oracle_pref(3, 1), 1 - oracle_pref(3, 1)])
    assert len(state.log) == 2  # both orders
    texts = [e["body"]["messages"][0]["content"] for e in state.log]
    assert texts[0].index("first q=3") < texts[0].index("second q=1")
    assert texts[1].index("second q=1") < texts[1].index("first q=3")
    assert all(e["body"]["logprobs"] is True and e["body"]["max_tokens"] == 1 for e in state.log)


def test_pairwise_verdict_from_text_when_the_server_has_no_logprobs(server):
    state, url = server
    state.logprobs = False
    judge = make_judge(url)
    scores = judge.score(
        [AnnotationRequest("Q?", ["a q=3", "b q=1"]), AnnotationRequest("Q?", ["c q=2", "d q=2"])]  # a tie
    )
    assert scores == [[1.0, 0.0], [0.5, 0.5]]  # the tie: "A" both times, position bias removed by debiasing


def test_tournament_for_k_greater_than_2_is_the_shared_one(server):
    state, url = server
    qualities = [2, 7, 4, 9, 1]
    req = AnnotationRequest("Q?", [f"answer {i} q={q}" for i, q in enumerate(qualities)])
    (scores,) = make_judge(url, concurrency=4).score([req])

    def oracle(triples):
        return [oracle_pref(int(a.split("q=")[1]), int(b.split("q=")[1])) for _, a, b in triples]

    assert scores == pytest.approx(tournament_scores([req], oracle)[0])
    assert max(range(5), key=lambda i: scores[i]) == 3  # the best answer is the champion
    assert len(state.log) == 2 * (5 - 1)  # k - 1 matches, both orders


def test_unparseable_verdicts_are_retried_then_invalid_and_reported(server, tmp_path):
    state, url = server
    state.faults.extend(["unparseable"])
    judge = make_judge(url, parse_retries=2)
    (scores,) = judge.score([AnnotationRequest("Q?", ["a q=3", "b q=1"])])
    assert scores == pytest.approx([oracle_pref(3, 1), 1 - oracle_pref(3, 1)])
    retry = state.log[-1]["body"]
    assert retry["seed"] == 1 and retry["temperature"] == 0.7 and judge.parse_retries_used == 1

    state.log.clear()
    state.faults.extend(["unparseable"] * 6)  # 2 orders x 3 attempts
    service = AnnotationService(make_judge(url, parse_retries=2), tmp_path / "s.sqlite")
    outcome = service.annotate([AnnotationRequest("Q2?", ["a q=3", "b q=1"])])
    assert outcome.scores == [[None, None]] and outcome.invalid == 2 and len(state.log) == 6


def test_rubric_mode_scores_each_completion_alone(server):
    state, url = server
    judge = make_judge(url, mode="rubric")
    assert judge.relative is False and "|rubric|" in judge.identity
    (scores,) = judge.score([AnnotationRequest("Q?", ["a q=3", "b q=8", "c q=5", "d q=12"])])
    expected = [0.99 * 3 + 0.01 * 5, 0.99 * 8 + 0.01 * 5, 0.99 * 5 + 0.01 * 6, 0.99 * 10 + 0.01 * 5]
    assert scores == pytest.approx(expected)
    assert len(state.log) == 4 and "Rubric:" in state.log[0]["body"]["messages"][0]["content"]
    state.logprobs = False
    (scores,) = make_judge(url, mode="rubric").score([AnnotationRequest("Q?", ["a q=3", "d q=12"])])
    assert scores == [3.0, 10.0]


def test_identity_names_model_mode_and_settings(server):
    _, url = server
    base = make_judge(url).identity
    assert base == make_judge(url).identity and base.startswith("api_judge:judge-model|pairwise|")
    assert make_judge(url, template="{prompt} {response_a} {response_b} ?").identity != base
    assert make_judge(url, debias=False).identity != base
    assert make_judge(url, mode="rubric").identity != make_judge(url, mode="rubric", rubric="1 bad, 10 good").identity


def test_cost_budget_stops_annotation_exactly_and_a_bigger_one_resumes_without_repaying(server, tmp_path):
    state, url = server
    store = tmp_path / "s.sqlite"
    reqs = worker_requests(6, k=2)
    budget = 0.0004  # $1 / 1M tokens; a call costs ~34 tokens but reserves its bound ~230: 5 of the 12 calls fit
    ledger = UsageLedger(store, run_id="r", prices={"*": [1.0, 1.0]}, budget=budget)
    service = AnnotationService(make_judge(url, ledger=ledger), ledger.store, run_id="r", batch_size=4)
    outcome = service.annotate(reqs)
    done = [i for i, s in enumerate(outcome.scores) if s is not None]
    assert outcome.budget_exhausted and outcome.skipped and done == list(range(len(done)))
    assert all(None not in outcome.scores[i] for i in done)
    assert ledger.spent <= budget
    (upper,) = ledger.store._conn().execute("SELECT MAX(reserved_cost) FROM usage WHERE status = 'done'").fetchone()
    assert 0 < len(state.paid()) < 12 and ledger.spent > budget - upper  # it stopped only when a call did not fit
    assert ledger.totals()["prompt_tokens"] == state.prompt_tokens  # the ledger is the server's own count
    first = len(state.log)

    bigger = UsageLedger(store, run_id="r", prices={"*": [1.0, 1.0]}, budget=1.0)
    service = AnnotationService(make_judge(url, ledger=bigger), bigger.store, run_id="r", batch_size=4)
    outcome = service.annotate(reqs)
    assert not outcome.skipped and all(None not in s for s in outcome.scores)
    assert len(state.log) > first
    keys = [body_key(e["body"]) for e in state.paid()]
    assert len(keys) == len(set(keys)) == 2 * len(reqs)  # every call paid exactly once over both runs
    assert bigger.totals()["prompt_tokens"] == state.prompt_tokens


def test_kill_and_resume_repays_no_completed_call(server, tmp_path):
    state, url = server
    state.delay = 0.03
    store = tmp_path / "s.sqlite"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    args = [sys.executable, str(WORKER), url, str(store), "16"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while len(state.log) < 30 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    ledger = UsageLedger(store, run_id="kill")
    rows = ledger.store._conn().execute("SELECT key FROM usage WHERE status = 'done'").fetchall()
    done_before = {r[0] for r in rows}
    assert done_before  # the kill landed mid-run
    first_run = len(state.log)

    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    totals = json.loads(result.stdout.strip().splitlines()[-1])
    assert totals["skipped"] == 0 and totals["invalid"] == 0
    second = [body_key(e["body"]) for e in state.log[first_run:] if e["path"] == "/v1/chat/completions"]
    assert not done_before & set(second)  # nothing completed before the kill was asked again
    paid = [body_key(e["body"]) for e in state.paid()]
    repaid = {k for k in paid if paid.count(k) > 1}
    in_flight = {r[0] for r in ledger.store._conn().execute("SELECT key FROM usage WHERE status = 'unknown'")}
    assert repaid <= in_flight and len(in_flight) <= 4  # only calls cut by the kill (at most `concurrency`)
    assert len(set(paid)) == 16 * 3 * 2  # k = 4: 3 matches x 2 orders per prompt


def test_aepo_trainer_with_api_judge_trains_and_pays_exactly(server, tiny_model_path, dpo_args):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aepo_trainer import AEPOConfig, AEPOTrainer

    state, url = server
    g = torch.Generator().manual_seed(0)
    rows = [
        {
            "prompt": f"Question {i}: say something.",
            "completions": [f" Answer {j} q={(i + j) % 4}." for j in range(4)],
            "embeddings": torch.randn(4, 8, generator=g).tolist(),
        }
        for i in range(8)
    ]
    config = AEPOConfig(
        **{**dpo_args, "max_steps": 2},
        max_length=64,
        annotator="api_judge",
        judge_api_base=url,
        judge_model="judge-model",
        judge_api_key_env=KEY_ENV,
        api_prices='{"judge-model": {"input": 1.0, "output": 2.0}}',
        annotation_cost_budget=1.0,
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    trainer = AEPOTrainer(
        model=model,
        ref_model=AutoModelForCausalLM.from_pretrained(tiny_model_path),
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_path),
    )
    assert not state.paid()  # the probe is a free GET /models
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    store = AnnotationStore(os.path.join(config.output_dir, "annotations.sqlite"))
    # k = 2: one match judged in both orders = 2 calls per prompt = 1 call per stored annotation; annotation happens
    # in the training step, so exactly the 2 steps x 2 prompts trained on are paid for
    assert len(state.paid()) == len(store) == 2 * 2 * 2
    (row,) = usage_summary(store)
    assert row["prompt_tokens"] == state.prompt_tokens and row["completion_tokens"] == state.completion_tokens
    assert row["cost"] == pytest.approx((state.prompt_tokens * 1.0 + state.completion_tokens * 2.0) / 1e6)


@pytest.mark.skipif(not os.environ.get("AEPO_VLLM_BASE_URL"), reason="set AEPO_VLLM_BASE_URL to a `vllm serve` /v1 URL")
def test_against_a_real_vllm_server(tmp_path):
    url = os.environ["AEPO_VLLM_BASE_URL"]
    model = os.environ.get("AEPO_VLLM_MODEL", "Qwen/Qwen2.5-0.5B-Instruct")
    client = ChatClient(url, model, api_key_env="AEPO_VLLM_API_KEY", concurrency=16, ledger=UsageLedger(tmp_path / "s"))
    client.probe()
    judge = ApiJudgeAnnotator(client, max_tokens=1)
    (scores,) = judge.score([AnnotationRequest("What is 2 + 2?", ["4", "2 + 2 = 5"])])
    assert scores[0] is not None and scores[0] + scores[1] == pytest.approx(1.0)
    results = client.complete_chat([[{"role": "user", "content": "Say hi"}]] * 32, max_tokens=8, n=2)
    assert all(r.ok and len(r.texts) == 2 for r in results)
    totals = client.ledger.totals()
    assert totals["calls"] >= 33 and totals["completion_tokens"] > 0


def test_aepo_trainer_stops_cleanly_when_the_cost_budget_is_spent(server, tiny_model_path, dpo_args, caplog):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aepo_trainer import AEPOConfig, AEPOTrainer

    state, url = server
    g = torch.Generator().manual_seed(0)
    rows = [
        {
            "prompt": f"Question {i}: say something.",
            "completions": [f" Answer {j} q={(i + j) % 4}." for j in range(4)],
            "embeddings": torch.randn(4, 8, generator=g).tolist(),
        }
        for i in range(16)
    ]
    budget = 0.0005  # $1 / 1M tokens: a call reserves ~$0.0002 and costs ~$0.00004 -> about 8 calls of the 32
    config = AEPOConfig(
        **{**dpo_args, "max_steps": 8},
        max_length=64,
        annotator="api_judge",
        judge_api_base=url,
        judge_model="judge-model",
        judge_api_key_env=KEY_ENV,
        api_prices='{"*": [1.0, 1.0]}',
        annotation_cost_budget=budget,
    )
    trainer = AEPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_path),
        ref_model=AutoModelForCausalLM.from_pretrained(tiny_model_path),
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_path),
    )
    trainer.train()
    assert 0 < trainer.state.global_step < 8
    assert "annotation_cost_budget exhausted" in caplog.text
    ledger = UsageLedger(os.path.join(config.output_dir, "annotations.sqlite"))
    (row,) = usage_summary(ledger.store)
    assert row["cost"] <= budget and row["calls"] == len(state.paid()) < 32
    assert row["prompt_tokens"] == state.prompt_tokens


def test_build_annotator_probes_the_server_before_any_paid_call(server, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from aepo_trainer.annotation import build_annotator
    from aepo_trainer.generation import ApiConfigError

    state, url = server
    args = SimpleNamespace(
        annotator="api_judge",
        output_dir=str(tmp_path),
        annotation_store=None,
        judge_api_base=url,
        judge_model="judge-model",
        judge_api_key_env=KEY_ENV,
        judge_mode="rubric",
        judge_max_tokens=1,
        judge_parse_retries=1,
        api_concurrency=2,
        api_requests_per_minute=None,
        api_tokens_per_minute=None,
        api_timeout=5.0,
        api_max_retries=1,
        api_prices=None,
        annotation_cost_budget=None,
    )
    judge = build_annotator(args, run_id="r")
    assert isinstance(judge, ApiJudgeAnnotator) and judge.mode == "rubric" and judge.client.max_retries == 1
    monkeypatch.setenv(KEY_ENV, "sk-revoked")
    with pytest.raises(ApiConfigError, match="Bad API key"):
        build_annotator(args, run_id="r")
    args.judge_model = "gpt-unknown"
    monkeypatch.setenv(KEY_ENV, API_KEY)
    with pytest.raises(ApiConfigError, match="Unknown model 'gpt-unknown'"):
        build_annotator(args, run_id="r")
    assert not state.log  # the log holds POSTs: only the free GET /models was asked
