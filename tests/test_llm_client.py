"""`ChatClient` against a real local OpenAI-compatible HTTP server (tests/openai_server.py), through the real `openai`
client: retries counted, Retry-After honoured, rate limit respected, probe errors before spending, the usage ledger
equal to the server's own token count, the response cache, the cost budget, the store migration."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path

import pytest

pytest.importorskip("openai")
sys.path.insert(0, str(Path(__file__).parent))

from openai_server import API_KEY, KEY_ENV

from aepo_trainer.generation import (
    ApiConfigError,
    ChatClient,
    PriceTable,
    RateLimiter,
    UsageLedger,
    backoff_delay,
    parse_retry_after,
)
from aepo_trainer.storage.annotations import AnnotationStore


def client(url, tmp_path=None, model="judge-model", **kwargs):
    kwargs.setdefault("backoff_base", 0.01)
    return ChatClient(url, model, api_key_env=KEY_ENV, **kwargs)


def judge_messages(n):
    return [[{"role": "user", "content": f"[Assistant A] q={i % 5} [Assistant B] q=2"}] for i in range(n)]


def test_every_fault_is_retried_counted_and_survived(server):
    state, url = server
    state.faults.extend(["429", "500", "drop", "garbage", "slow"])
    state.retry_after = "0.3"
    with client(url, concurrency=1, timeout=0.5) as c:
        results = c.complete_chat(judge_messages(5), max_tokens=1)
    assert [r.text for r in results] == ["B", "B", "A", "A", "A"]
    assert all(r.ok for r in results) and [r.attempts for r in results] == [6, 1, 1, 1, 1]  # concurrency 1
    assert c.stats["retries"] == 5 and c.stats["requests"] == 10
    for reason in ("429", "500", "connection", "bad_response", "timeout"):
        assert c.stats[f"retry:{reason}"] == 1, reason
    log = state.log
    first_429 = next(i for i, e in enumerate(log) if e["fault"] == "429")
    assert log[first_429 + 1]["t"] - log[first_429]["t"] >= 0.3  # Retry-After honoured (server's timestamps)


def test_a_request_that_keeps_failing_is_an_error_not_a_crash(server):
    state, url = server
    state.faults.extend(["500", "500"])
    with client(url, concurrency=1, max_retries=1) as c:
        results = c.complete_chat(judge_messages(2), max_tokens=1)
    assert not results[0].ok and "500" in results[0].error and results[0].attempts == 2
    assert results[1].ok and results[1].text == "B"
    assert c.stats["failed"] == 1


def test_bad_request_is_not_retried(server):
    state, url = server
    with client(url) as c:
        (result,) = c.complete_chat([[{"role": "user", "content": "hi"}]], max_tokens=1, n=1, extra_body={"x": 1})
    assert result.ok  # the server ignores unknown fields
    assert len(state.log) == 1


def test_rate_limit_is_respected_on_the_servers_clock(server):
    state, url = server
    rpm, n = 600, 25  # 10 requests/s, burst of 10
    with client(url, concurrency=8, requests_per_minute=rpm) as c:
        results = c.complete_chat(judge_messages(n), max_tokens=1)
    assert all(r.ok for r in results)
    times = sorted(e["t"] for e in state.log)
    assert len(times) == n
    rate, burst, slack = rpm / 60, 10, 2  # slack: network jitter between the client sending and the server receiving
    for i, start in enumerate(times):
        for window in (0.3, 0.5, 1.0):
            inside = sum(1 for t in times[i:] if t < start + window)
            assert inside <= burst + rate * window + slack, (window, inside)
    assert times[-1] - times[0] >= (n - burst) / rate - 0.3


def test_probe_fails_before_any_paid_call(server, monkeypatch, tmp_path):
    state, url = server
    monkeypatch.setenv(KEY_ENV, "sk-wrong")
    with pytest.raises(ApiConfigError, match=r"Bad API key.*401.*AEPO_TEST_API_KEY"):
        client(url).probe()
    monkeypatch.setenv(KEY_ENV, API_KEY)
    with pytest.raises(ApiConfigError, match=r"Unknown model 'nope'.*judge-model, gen-model"):
        client(url, model="nope").probe()
    with pytest.raises(ApiConfigError, match=r"404.*wrong base URL"):
        client(url[: -len("/v1")]).probe()  # no /models there, and the tiny request 404s too
    with pytest.raises(ApiConfigError, match="Cannot reach"):
        client("http://127.0.0.1:9/v1").probe()
    assert not state.paid()  # nothing was ever billed
    client(url).probe()  # the right settings pass


def test_api_key_is_never_stored_or_shown(server, tmp_path, caplog):
    state, url = server
    ledger = UsageLedger(tmp_path / "s.sqlite")
    state.faults.extend(["500"])
    with client(url, ledger=ledger) as c:
        c.complete_chat(judge_messages(2), max_tokens=1)
        assert API_KEY not in repr(c)
    blob = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert API_KEY.encode() not in blob
    assert API_KEY not in caplog.text


def test_ledger_equals_the_servers_token_count_and_prices_it(server, tmp_path):
    state, url = server
    state.faults.extend(["429", "500", None, "429"])  # HTTP errors are not billed
    prices = {"judge-model": {"input": 2.0, "output": 10.0}}
    ledger = UsageLedger(tmp_path / "s.sqlite", run_id="r1", prices=prices)
    with client(url, ledger=ledger, concurrency=3) as c:
        results = c.complete_chat(judge_messages(12), max_tokens=1)
    assert all(r.ok for r in results)
    totals = ledger.totals()
    assert totals["prompt_tokens"] == state.prompt_tokens > 0
    assert totals["completion_tokens"] == state.completion_tokens == 12
    assert totals["calls"] == len(state.paid()) == 12 and totals["failed"] == 3 and totals["unknown"] == 0
    expected = (state.prompt_tokens * 2.0 + state.completion_tokens * 10.0) / 1e6
    assert totals["cost"] == pytest.approx(expected) and ledger.spent == pytest.approx(expected)


def test_completed_calls_are_served_from_the_store_not_paid_again(server, tmp_path):
    state, url = server
    store = tmp_path / "s.sqlite"
    with client(url, ledger=UsageLedger(store)) as c:
        first = c.complete_chat(judge_messages(4), max_tokens=1, logprobs=True, top_logprobs=5)
    assert len(state.log) == 4
    with client(url, ledger=UsageLedger(store)) as c:
        again = c.complete_chat(judge_messages(4), max_tokens=1, logprobs=True, top_logprobs=5)
        other = c.complete_chat(judge_messages(4), max_tokens=1, temperature=0.5)  # a different request is paid
    assert len(state.log) == 8
    assert all(r.cached for r in again) and not any(r.cached for r in other)
    assert [r.texts for r in again] == [r.texts for r in first] and again[0].logprobs == first[0].logprobs


def test_completions_endpoint_with_n_samples(server):
    state, url = server
    with client(url, model="gen-model") as c:
        results = c.complete_text(["Tell me about the sea", "Count to three"], n=3, max_tokens=4)
    assert [r.texts for r in results] == [
        ["echo 0 Tell me", "echo 1 Tell me", "echo 2 Tell me"],
        ["echo 0 Count to", "echo 1 Count to", "echo 2 Count to"],
    ]
    assert {e["path"] for e in state.log} == {"/v1/completions"}
    assert results[0].completion_tokens == 12


def test_cost_budget_is_never_exceeded_and_stops_exactly(server, tmp_path):
    state, url = server
    prices = {"*": [1000.0, 1000.0]}  # $ per 1M tokens: a call (~40 tokens) costs ~ $0.04
    messages = judge_messages(10)
    probe = client(url)
    uppers = [sum(probe._upper_tokens({"messages": m, "max_tokens": 1})) * 1000.0 / 1e6 for m in messages]
    budget = 0.08
    ledger = UsageLedger(tmp_path / "s.sqlite", prices=prices, budget=budget)
    with client(url, ledger=ledger, concurrency=1) as c:
        results = c.complete_chat(messages, max_tokens=1)
    # simulate the rule: a call is sent iff spent + its upper bound fits; it then costs what the server counted
    spent, sent = 0.0, 0
    for upper, entry in zip(uppers, state.log + [None] * 10):
        if spent + upper > budget:
            break
        spent += (entry["prompt_tokens"] + entry["completion_tokens"]) * 1000.0 / 1e6
        sent += 1
    assert 0 < sent < 10
    assert len(state.paid()) == sent and [r.ok for r in results] == [True] * sent + [False] * (10 - sent)
    assert all(r.budget_exhausted for r in results[sent:])
    assert ledger.spent == pytest.approx(spent) and ledger.spent <= budget
    assert ledger.spent + uppers[sent] > budget  # it stopped only when the next call could not fit
    with pytest.raises(Exception, match="annotation_cost_budget exhausted"):
        c.check_budget()


def test_price_table_forms_and_errors(tmp_path):
    (tmp_path / "p.yaml").write_text("m: {input: 1.5, output: 3}\n")
    assert PriceTable(str(tmp_path / "p.yaml")).cost("m", 1_000_000, 2_000_000) == pytest.approx(7.5)
    assert PriceTable('{"m": [1, 2], "*": [0.5, 0.5]}').cost("other", 2_000_000, 0) == pytest.approx(1.0)
    assert PriceTable(None).cost("m", 10, 10) == 0.0
    with pytest.raises(ValueError, match="'input' and 'output'"):
        PriceTable({"m": {"in": 1}})
    with pytest.raises(ValueError, match="has no price"):
        PriceTable({"a": [1, 1]}).require("b")
    with pytest.raises(ValueError, match=">= 0"):
        PriceTable({"a": [-1, 1]})


def test_retry_after_parsing_and_backoff():
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # a date in the past
    assert parse_retry_after({"retry-after": "soon"}) is None and parse_retry_after({}) is None
    import random

    rng = random.Random(0)
    delays = [backoff_delay(a, None, base=1.0, maximum=8.0, rng=rng) for a in range(1, 8)]
    assert all(0 <= d <= min(8.0, 2 ** (a - 1)) for a, d in zip(range(1, 8), delays))
    assert 3.0 <= backoff_delay(1, 3.0, base=0.1, rng=rng) <= 3.3  # Retry-After is a floor


def test_rate_limiter_debt_and_refund():
    limiter = RateLimiter(per_minute=60, burst=5)  # 1 unit/s
    waited = asyncio.run(limiter.acquire(5))
    assert waited == 0.0 and limiter._level == pytest.approx(0.0, abs=1e-3)
    limiter.refund(3)  # the request used 2 of the 5 units it reserved
    assert limiter._level == pytest.approx(3.0, abs=1e-2)
    assert asyncio.run(RateLimiter(None).acquire(10**9)) == 0.0


def test_version_1_store_is_upgraded_in_place(tmp_path):
    path = tmp_path / "old.sqlite"
    store = AnnotationStore(path)
    store.write("r", [("k1", "a", '"p"', '"c"', 1.0, 1, None)])
    store.close()
    conn = sqlite3.connect(path)  # make it what version 1 wrote: no usage table
    conn.execute("DROP TABLE usage")
    conn.execute("UPDATE meta SET value = '1' WHERE name = 'schema_version'")
    conn.commit()
    conn.close()
    store = AnnotationStore(path)
    assert store.get(["k1"])["k1"].score == 1.0
    ledger = UsageLedger(store)
    assert ledger.spent == 0.0 and ledger.reserve("key", "m", "chat", 0.0) is not None
    version = store._conn().execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()[0]
    assert version == "2"


def test_a_configuration_error_mid_batch_raises_it_and_settles_every_reservation(server, tmp_path):
    state, url = server
    ledger = UsageLedger(tmp_path / "s.sqlite")
    state.delay = 0.2
    with client(url, ledger=ledger, concurrency=4) as c:
        state.api_key = "rotated"  # the key is revoked while the batch runs
        with pytest.raises(ApiConfigError, match="401"):
            c.complete_chat(judge_messages(8), max_tokens=1)
    rows = ledger.store._conn().execute("SELECT status, COUNT(*) FROM usage GROUP BY status").fetchall()
    assert "reserved" not in dict(rows)  # nothing left dangling: failed (401) or unknown (cancelled in flight)
