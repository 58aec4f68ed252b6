"""The labelling page for a team, over real HTTP (uvicorn on 127.0.0.1, httpx and raw sockets as clients).

Covered (issue 30): malformed bodies (a 400-digit score, JSON nested 100,000 deep, NaN) get 400 JSON with the
security headers; an oversized body gets 413 before it is read (declared, and streamed without a length); sessions
are random per sign-in, expire, end at /logout and when the labeller leaves the token file; failed sign-ins are
limited per client address (the address in the log); a world-readable token file is warned about; the Origin check
compares the scheme and follows `public_url`; a labeller answers only tasks shown to them; shuffled presentation
order stored with each answer and the position-bias figure of `aepo stats`; tie / all-bad / rationale; the reviewer
role and `require_review`; guidelines; per-labeller pace; `aepo label --export` as a dataset folder with a card.
Every loop is bounded; every request goes to 127.0.0.1.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("krippendorff")
httpx = pytest.importorskip("httpx")

from aepo_trainer.annotation import (  # noqa: E402
    AnnotationRequest,
    AnnotationService,
    AnnotationsPending,
    AnnotationStore,
    HumanQueueAnnotator,
)
from aepo_trainer.labelling import (  # noqa: E402
    LabelBook,
    LabellerTokens,
    LabellingServer,
    LabellingSettings,
    ServerLimits,
    create_app,
    load_tokens,
)

ALICE, BOB, RITA = "alice-token-0123456789", "bob-token-9876543210", "rita-token-1212121212"
CSP = "content-security-policy"


@pytest.fixture
def queued(tmp_path):
    """A store and a queue with 5 items (2 prompts: 3 + 2 candidates) charged as 'queued'."""
    store, queue = tmp_path / "annotations.sqlite", tmp_path / "queue.jsonl"
    with pytest.raises(AnnotationsPending):
        AnnotationService(HumanQueueAnnotator(queue), AnnotationStore(store)).annotate(_requests())
    return store, queue


def _requests():
    return [
        AnnotationRequest("Name a colour.", ["Blue.", "Seven.", "Red, obviously."], indices=[0, 4, 7]),
        AnnotationRequest("Say hi.", ["hi", "no"], indices=[1, 2]),
    ]


def _client(server, token=None, **kw):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=server.url, headers=headers, timeout=30, **kw)


def _by_pool_index(task):
    return sorted(task["candidates"], key=lambda c: c["pool_index"])


def _scores(task, values):
    return {"task": task["id"], "scores": {c["key"]: v for c, v in zip(_by_pool_index(task), values)}}


def _raw_http(server, request: bytes) -> bytes:
    """Send `request` on a plain socket; read one response (until its Content-Length is in, or the server closes)."""
    with socket.create_connection((server.host, server.port), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        for _ in range(1000):  # bounded: a response is a few hundred bytes
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            lengths = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
            if sep and lengths and len(body) >= int(lengths[0].split(b":")[1]):
                break
        return data


# ----------------------------------------------------------------------------------------------- server defects


def test_malformed_bodies_get_400_json_with_the_security_headers(queued):
    store, queue = queued
    limits = ServerLimits(max_body_bytes=1_000_000)  # let the 200 KB deep body through to the parser
    with LabellingServer(create_app(store, queue, limits=limits)) as server, _client(server) as client:
        task = client.get("/api/state").json()["task"]
        key = task["candidates"][0]["key"]
        answer = '{"task": "%s", "scores": {"%s": %s}}'
        bodies = {
            "400 digits": answer % (task["id"], key, "9" * 400),
            "5000 digits": answer % (task["id"], key, "1" * 5000),  # past Python's int-from-str limit
            "1e999": answer % (task["id"], key, "1e999"),
            "NaN": answer % (task["id"], key, "NaN"),
            "deep": "[" * 100_000 + "]" * 100_000,
            "not JSON": "{'task': 1}",
        }
        for what, body in bodies.items():
            response = client.post("/api/answer", content=body, headers={"Content-Type": "application/json"})
            assert response.status_code == 400, (what, response.text)
            assert response.headers["content-type"] == "application/json" and response.json()["detail"], what
            assert "script-src 'self'" in response.headers[CSP], what
        detail = client.post(
            "/api/answer", content=bodies["deep"], headers={"Content-Type": "application/json"}
        ).json()["detail"]
        assert detail == "the body is nested deeper than 8 levels"
        # the limits are settings: a page that allows fewer characters per number refuses a 3-digit one
    strict = create_app(store, queue, limits=ServerLimits(max_number_chars=2))
    with LabellingServer(strict) as server, _client(server) as client:
        task = client.get("/api/state").json()["task"]
        response = client.post("/api/answer", json=_scores(task, [100, 1, 1]))
        assert response.status_code == 400 and "more than 2 characters" in response.json()["detail"]
    assert LabelBook(store).answers() == {}


def test_an_oversized_body_gets_413_before_it_is_read(queued):
    store, queue = queued
    tokens = LabellerTokens({"alice": ALICE})
    limits = ServerLimits(max_body_bytes=1024)
    with LabellingServer(create_app(store, queue, tokens=tokens, limits=limits)) as server:
        host = f"127.0.0.1:{server.port}".encode()
        # 250 MB announced, not one byte of it sent: the answer comes at once (the body is never waited for)
        head = b"POST /login HTTP/1.1\r\nHost: " + host + b"\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        response = _raw_http(server, head + b"Content-Length: 250000000\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 413"), response[:200]
        assert b"content-security-policy:" in response.lower() and b"larger than 1024 bytes" in response
        # streamed without a length: counted as it arrives, refused past the limit
        chunk = b"token=" + b"x" * 2000
        chunked = head + b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(chunk) + chunk + b"\r\n0\r\n\r\n"
        response = _raw_http(server, chunked)
        assert response.startswith(b"HTTP/1.1 413"), response[:200]
        with _client(server, ALICE) as alice:  # the same through the API, signed in
            task = alice.get("/api/state").json()["task"]
            body = {**_scores(task, [5, 5, 5]), "padding": "x" * 2000}
            response = alice.post("/api/answer", json=body)
            assert response.status_code == 413 and CSP in response.headers
            assert alice.post("/api/answer", json=_scores(task, [5, 5, 5])).status_code == 200


def _sign_in(server, token, **headers):
    """A fresh browser-like client signed in with `token`; returns (client, session cookie value)."""
    client = _client(server)
    response = client.post("/login", data={"token": token}, headers=headers)
    assert response.status_code == 303, response.text
    return client, client.cookies["aepo_label_session"]


def test_sessions_are_random_expire_and_can_be_revoked(queued, tmp_path):
    store, queue = queued
    path = tmp_path / "team.txt"
    path.write_text(f"alice:{ALICE}\nbob:{BOB}\n")
    path.chmod(0o600)
    tokens = load_tokens(str(path))
    limits = ServerLimits(session_hours=2)
    with LabellingServer(create_app(store, queue, tokens=tokens, limits=limits)) as server:
        first, cookie1 = _sign_in(server, ALICE)
        second, cookie2 = _sign_in(server, ALICE)
        assert cookie1 != cookie2 and ALICE not in cookie1 + cookie2  # a new random id per sign-in
        response = _client(server).post("/login", data={"token": ALICE})
        assert "max-age=7200" in response.headers["set-cookie"].lower()
        assert first.get("/api/state").json()["labeller"] == "alice"
        # /logout ends the session on the server: the old cookie no longer works, even replayed
        first.post("/logout")
        stolen = _client(server)
        stolen.cookies.set("aepo_label_session", cookie1)
        assert stolen.get("/api/state").status_code == 401
        assert second.get("/api/state").status_code == 200  # the other sign-in is untouched
        # expiry is enforced by the server, whatever the browser keeps
        with sqlite3.connect(store) as conn:
            conn.execute("UPDATE label_sessions SET expires_at = 0")
        assert second.get("/api/state").status_code == 401
        # removing a labeller from the token file signs them out at once (the file is re-read when it changes)
        bob, _ = _sign_in(server, BOB)
        assert bob.get("/api/state").status_code == 200
        path.write_text(f"alice:{ALICE}\n")
        os.utime(path, ns=(path.stat().st_mtime_ns + 10**9, path.stat().st_mtime_ns + 10**9))
        assert bob.get("/api/state").status_code == 401
        assert _client(server, BOB).get("/api/state").status_code == 401
        with sqlite3.connect(store) as conn:
            assert conn.execute("SELECT COUNT(*) FROM label_sessions WHERE labeller = 'bob'").fetchone()[0] == 0
        assert _client(server, ALICE).get("/api/state").status_code == 200


def test_failed_sign_ins_are_limited_per_address(queued, tmp_path, caplog):
    store, queue = queued
    caplog.set_level(logging.INFO, logger="aepo_trainer")
    path = tmp_path / "team.txt"
    path.write_text(f"alice:{ALICE}\n")
    path.chmod(0o644)
    tokens = load_tokens(str(path))
    assert "readable by other users" in caplog.text and "chmod 600" in caplog.text
    limits = ServerLimits(login_attempts=3)
    app = create_app(store, queue, tokens=tokens, limits=limits)
    with LabellingServer(app, trusted_proxies="127.0.0.1") as server, _client(server) as client:
        attacker, other = {"X-Forwarded-For": "203.0.113.5"}, {"X-Forwarded-For": "198.51.100.7"}
        statuses = [
            client.post("/login", data={"token": f"guess-{i:012d}"}, headers=attacker).status_code for i in range(3)
        ]
        assert statuses == [401, 401, 401]
        blocked = client.post("/login", data={"token": ALICE}, headers=attacker)  # even the right token, now
        assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0 and CSP in blocked.headers
        bearer = client.get("/api/state", headers={**attacker, "Authorization": f"Bearer {ALICE}"})
        assert bearer.status_code == 429  # the API's bearer tokens count against the same limit
        assert client.post("/login", data={"token": "wrong-token-000000"}, headers=other).status_code == 401
        assert client.post("/login", data={"token": ALICE}, headers=other).status_code == 303
    assert "invalid token from 203.0.113.5 was refused" in caplog.text
    assert "sign-in from 203.0.113.5 was refused (too many failed attempts)" in caplog.text
    assert "alice signed in from 198.51.100.7" in caplog.text and ALICE not in caplog.text


def test_the_origin_check_compares_the_scheme_and_follows_public_url(queued):
    store, queue = queued
    tokens = LabellerTokens({"alice": ALICE})
    with LabellingServer(create_app(store, queue, tokens=tokens)) as server, _client(server) as client:
        own = f"http://127.0.0.1:{server.port}"
        assert client.post("/login", data={"token": ALICE}, headers={"Origin": own}).status_code == 303
        for origin in (f"https://127.0.0.1:{server.port}", "http://127.0.0.1", "null", "http://evil.example"):
            response = client.post("/login", data={"token": ALICE}, headers={"Origin": origin})
            assert response.status_code == 403 and CSP in response.headers, origin
    # behind a TLS proxy that rewrites Host (nginx's default `proxy_set_header Host $proxy_host`)
    public = "https://label.example.org"
    app = create_app(store, queue, tokens=tokens, public_url=public + "/")
    with LabellingServer(app, trusted_proxies="127.0.0.1") as server, _client(server) as client:
        proxied = {"Origin": public, "Host": "127.0.0.1:7860", "X-Forwarded-Proto": "https"}
        response = client.post("/login", data={"token": ALICE}, headers=proxied)
        assert response.status_code == 303 and "secure" in response.headers["set-cookie"].lower()
        plain = {**proxied, "Origin": "http://label.example.org"}
        assert client.post("/login", data={"token": ALICE}, headers=plain).status_code == 403


def test_only_a_task_shown_to_you_can_be_answered(queued):
    store, queue = queued
    tokens = LabellerTokens({"alice": ALICE, "bob": BOB})
    settings = LabellingSettings(labels_per_item=2)
    with LabellingServer(create_app(store, queue, tokens=tokens, settings=settings)) as server:
        alice, bob = _client(server, ALICE), _client(server, BOB)
        task = alice.get("/api/state").json()["task"]
        response = bob.post("/api/answer", json=_scores(task, [1, 2, 3]))  # bob never asked for a task
        assert response.status_code == 403 and "not shown to you" in response.json()["detail"]
        other = bob.get("/api/state").json()["task"]
        assert other["id"] != task["id"]  # alice's lease keeps it from bob
        assert bob.post("/api/answer", json=_scores(task, [1, 2, 3])).status_code == 403
        assert alice.post("/api/answer", json=_scores(task, [4, 5, 6])).status_code == 200
    assert {a.labeller for rows in LabelBook(store).answers().values() for a in rows} == {"alice"}


# ----------------------------------------------------------------------------------------------- team features


def test_order_is_shuffled_per_labeller_stored_and_position_bias_reported(tmp_path, capsys):
    store, queue = tmp_path / "s.sqlite", tmp_path / "q.jsonl"
    requests = [AnnotationRequest(f"Prompt {p}?", [f"c{i} of {p}" for i in range(4)]) for p in range(6)]
    with pytest.raises(AnnotationsPending):
        AnnotationService(HumanQueueAnnotator(queue), AnnotationStore(store)).annotate(requests)
    tokens = LabellerTokens({"alice": ALICE, "bob": BOB})
    settings = LabellingSettings(labels_per_item=2, shuffle_seed=7)
    orders = {}
    with LabellingServer(create_app(store, queue, tokens=tokens, settings=settings)) as server:
        for name, token in (("alice", ALICE), ("bob", BOB)):
            with _client(server, token) as client:
                state = client.get("/api/state").json()
                for _ in range(6):  # every prompt once; the labeller always gives the first-shown candidate 9
                    task = state["task"]
                    shown = [c["key"] for c in task["candidates"]]
                    assert client.get("/api/state").json()["task"]["candidates"] == task["candidates"]  # stable
                    orders[name, task["id"]] = shown
                    scores = {key: (9 if i == 0 else 2) for i, key in enumerate(shown)}
                    state = client.post("/api/answer", json={"task": task["id"], "scores": scores}).json()
                assert state["task"] is None
    queue_order = set()
    for task_id in {t for _, t in orders}:
        by_position = {}
        for key, rows in LabelBook(store).answers(orders["alice", task_id]).items():
            for a in rows:
                by_position[a.labeller, a.raw["position"]] = key
                assert a.raw["shown"] == 4 and a.raw["seconds"] >= 0
        assert [by_position["alice", i] for i in range(4)] == orders["alice", task_id]  # stored with the label
        queue_order.add(task_id)
    assert any(orders["alice", t] != orders["bob", t] for t in queue_order)  # per labeller
    tasks = {t.id: t.keys for t in create_app(store, queue, settings=settings).state.view.tasks()}
    first_in_queue_order = {tasks[t].index(orders[name, t][0]) for name, t in orders}
    assert len(first_in_queue_order) > 1  # not always the same queue position first: per prompt
    from aepo_trainer.cli import main
    from aepo_trainer.labelling.summary import labelling_summary

    bias = labelling_summary(store)["position_bias"]
    assert bias == {"answers": 12, "first_shown_wins": 1.0, "chance": 0.25}
    assert main(["stats", "--labels", str(store)]) == 0
    out = capsys.readouterr().out
    assert "position bias: the first-shown candidate won 100.0% of 12 answer(s) (chance 25.0%)" in out
    # and no shuffle: everybody sees the queue order
    view = create_app(store, queue, settings=LabellingSettings(labels_per_item=2, shuffle_seed=None)).state.view
    task = view.tasks()[0]
    assert view.order("alice", task, task.keys) == task.keys == view.order("bob", task, task.keys)


def test_tie_all_bad_rationale_guidelines_and_pace(queued, tmp_path):
    store, queue = queued
    guidelines = tmp_path / "guidelines.md"
    guidelines.write_text("# How we label\n\nPrefer **correct** answers. <script>x()</script>\n")
    settings = LabellingSettings(allow_tie=True, allow_all_bad=True, rationale=True)
    app = create_app(
        store, queue, settings=settings, guidelines=guidelines, limits=ServerLimits(max_rationale_chars=50)
    )
    with LabellingServer(app) as server, _client(server) as client:
        state = client.get("/api/state").json()
        assert state["options"] == {"tie": True, "all_bad": True, "rationale": True, "max_rationale_chars": 50}
        assert state["guidelines"] is True
        page = client.get("/guidelines")
        assert "<strong>correct</strong>" in page.text and "&lt;script&gt;" in page.text and CSP in page.headers
        first = state["task"]
        too_long = {"task": first["id"], "tie": True, "rationale": "x" * 51}
        assert client.post("/api/answer", json=too_long).status_code == 400
        state = client.post("/api/answer", json={"task": first["id"], "tie": True, "rationale": "same facts"}).json()
        second = state["task"]
        state = client.post("/api/answer", json={"task": second["id"], "all_bad": True}).json()
        assert state["task"] is None
        pace = state["progress"]["labellers"]["local"]
        assert pace["answered"] == 5 and pace["median_seconds_per_item"] >= 0
    final = LabelBook(store).final_scores()
    assert sorted(final[c["key"]] for c in first["candidates"]) == [5.5, 5.5, 5.5]  # the middle of 1..10
    assert sorted(final[c["key"]] for c in second["candidates"]) == [1.0, 1.0]  # the bottom
    rationale = {
        a.raw.get("rationale") for c in first["candidates"] for a in LabelBook(store).answers([c["key"]])[c["key"]]
    }
    assert rationale == {"same facts"}
    # not offered: refused
    with LabellingServer(create_app(tmp_path / "other.sqlite", queue)) as server, _client(server) as client:
        task = client.get("/api/state").json()["task"]
        for body in ({"tie": True}, {"all_bad": True}, {"skip": True, "rationale": "why"}):
            assert client.post("/api/answer", json={"task": task["id"], **body}).status_code == 400, body
        assert client.get("/guidelines").status_code == 404


def test_reviewers_accept_or_override_and_require_review_holds_items_back(queued, tmp_path):
    store, queue = queued
    path = tmp_path / "team.txt"
    path.write_text(f"alice:{ALICE}\nbob:{BOB}\nrita:{RITA}:reviewer\n")
    path.chmod(0o600)
    tokens = load_tokens(str(path))
    assert tokens.role("rita") == "reviewer" and tokens.role("alice") == "labeller"
    settings = LabellingSettings(labels_per_item=2, require_review=True)
    with LabellingServer(create_app(store, queue, tokens=tokens, settings=settings)) as server:
        alice, bob, rita = _client(server, ALICE), _client(server, BOB), _client(server, RITA)
        for client, values in ((alice, ([9, 2, 5], [4, 4])), (bob, ([3, 2, 5], [4, 4]))):
            for scores in values:
                task = client.get("/api/state").json()["task"]
                client.post("/api/answer", json=_scores(task, scores)).raise_for_status()
        assert alice.get("/api/review").status_code == 403  # roles are enforced by the server
        assert alice.post("/api/review", json={"key": "x", "decision": "accept"}).status_code == 403
        assert LabelBook(store).final_scores() == {}  # answered twice, but nothing is final before a review
        listing = rita.get("/api/review").json()
        assert listing["require_review"] and len(listing["items"]) == 5
        top = listing["items"][0]
        assert top["spread"] == 6 and sorted(x["score"] for x in top["labels"]) == [3.0, 9.0]  # disagreement first
        keys = [item["key"] for item in listing["items"]]
        assert (
            rita.post("/api/review", json={"key": top["key"], "decision": "override", "score": 11}).status_code == 400
        )
        rita.post("/api/review", json={"key": top["key"], "decision": "override", "score": 8}).raise_for_status()
        for key in keys[1:]:
            rita.post("/api/review", json={"key": key, "decision": "accept"}).raise_for_status()
    final = LabelBook(store).final_scores()
    assert final[top["key"]] == 8.0 and len(final) == 5 and sorted(final.values()) == [2.0, 4.0, 4.0, 5.0, 8.0]
    outcome = AnnotationService(HumanQueueAnnotator(queue, store=store), AnnotationStore(store)).annotate(_requests())
    assert outcome.paid == 0 and outcome.recovered == 5


def test_export_writes_a_dataset_folder_with_a_card(queued, tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    from aepo_trainer.cli import main

    store, queue = queued
    tokens = LabellerTokens({"alice": ALICE, "bob": BOB})
    with LabellingServer(
        create_app(store, queue, tokens=tokens, settings=LabellingSettings(labels_per_item=2))
    ) as server:
        for token, values in ((ALICE, ([8, 3, 5], [6, 1])), (BOB, ([7, 3, 2], [6, 2]))):
            with _client(server, token) as client:
                for scores in values:
                    task = client.get("/api/state").json()["task"]
                    client.post("/api/answer", json=_scores(task, scores)).raise_for_status()
    out = tmp_path / "labels"
    assert main(["label", "--store", str(store), "--queue", str(queue), "--export", str(out)]) == 0
    answers = datasets.load_dataset(str(out), "answers", split="train")
    items = datasets.load_dataset(str(out), "items", split="train")
    labellers = datasets.load_dataset(str(out), "labellers", split="train")
    assert len(answers) == 10 and sorted(set(answers["labeller"])) == ["alice", "bob"]
    assert sorted(answers["position"]) == sorted([0, 1, 2, 0, 1] * 2) and set(answers["shown"]) == {2, 3}
    assert len(items) == 5 and all(items["final"]) and sorted(items["final_score"]) == [1.5, 3.0, 3.5, 6.0, 7.5]
    assert sorted(labellers["labeller"]) == ["alice", "bob"] and set(labellers["answered"]) == {5}
    card = (out / "README.md").read_text()
    assert "config_name: answers" in card and "10 answer(s) by 2 labeller(s) on 5 queued item(s)" in card
    assert "Krippendorff's alpha (interval)" in card
    assert main(["label", "--store", str(tmp_path / "none.sqlite"), "--export", str(out)]) == 2


def test_gold_items_are_mixed_in_and_measure_each_labeller(queued, tmp_path, capsys):
    store, queue = queued
    gold = tmp_path / "gold.jsonl"
    gold.write_text(
        '{"prompt": "2 + 2?", "completions": ["5", "4", "22"], "best": 1}\n'
        '{"prompt": "Capital of France?", "completions": ["Paris", "Lyon"], "best": 0}\n'
    )
    tokens = LabellerTokens({"alice": ALICE, "bob": BOB, "rita": RITA}, roles={"rita": "reviewer"})
    settings = LabellingSettings(labels_per_item=2)
    app = create_app(store, queue, tokens=tokens, settings=settings, gold_items=gold, gold_every=1)
    texts = {"5": 0, "4": 9, "22": 0, "Paris": 9, "Lyon": 0}  # alice knows; bob always likes the last one shown
    seen = {}
    with LabellingServer(app) as server:
        for name, token in (("alice", ALICE), ("bob", BOB)):
            with _client(server, token) as client:
                state = client.get("/api/state").json()
                for _ in range(10):  # 2 real + 2 gold tasks, bounded
                    task = state["task"]
                    if task is None:
                        break
                    seen.setdefault(name, []).append(task["id"][:5])
                    keys = [c["key"] for c in task["candidates"]]
                    if task["id"].startswith("gold-"):
                        shown = [texts[c["html"][3:-5]] for c in task["candidates"]]
                        values = shown if name == "alice" else [0] * (len(keys) - 1) + [9]
                        if name == "bob" and shown[-1] == 9:
                            values = [9] + [0] * (len(keys) - 1)  # bob misses every gold task
                        scores = dict(zip(keys, [max(v, 1) for v in values]))
                    else:
                        scores = dict.fromkeys(keys, 5)
                    state = client.post("/api/answer", json={"task": task["id"], "scores": scores}).json()
                assert state["task"] is None
                assert "gold_accuracy" not in state["progress"]["labellers"].get(name, {})  # not for labellers
        lead = _client(server, RITA).get("/api/state").json()["progress"]["labellers"]
        assert lead["alice"]["gold_accuracy"] == 1.0 and lead["bob"]["gold_accuracy"] == 0.0
    # one gold task after every real submission; the gold answers never reach the run's labels
    assert [s == "gold-" for s in seen["bob"]] == [False, True, False, True]
    assert [s == "gold-" for s in seen["alice"]] == [False, True, False, True]
    assert not any(key.startswith("gold:") for key in LabelBook(store).answers())
    outcome = AnnotationService(HumanQueueAnnotator(queue, store=store), AnnotationStore(store)).annotate(_requests())
    assert outcome.paid == 0 and outcome.recovered == 5
    from aepo_trainer.cli import main

    assert main(["stats", "--labels", str(store)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2].startswith("alice") and out[-2].endswith("1.00 (2)")
    assert out[-1].startswith("bob") and out[-1].endswith("0.00 (2)")


def test_aepo_label_rereads_the_token_file_on_sighup_and_warns_about_its_mode(queued, tmp_path):
    import signal
    import subprocess
    import sys

    from conftest import REPO_ROOT

    store, queue = queued
    path = tmp_path / "team.txt"
    path.write_text(f"alice:{ALICE}\nbob:{BOB}\n")
    path.chmod(0o644)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "aepo_trainer.cli", "label", "--store", str(store), "--queue", str(queue)]
    process = subprocess.Popen(
        command + ["--port", "0", "--auth", str(path)], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        lines = [process.stderr.readline() for _ in range(2)]
        assert "readable by other users" in lines[0] and "chmod 600" in lines[0], lines
        url = lines[1].split(" on ", 1)[1].split(" ", 1)[0]
        bob = {"Authorization": f"Bearer {BOB}"}
        assert httpx.get(url + "api/state", headers=bob).status_code == 200
        # an edit that keeps size, inode and modification time: only SIGHUP can tell
        stat = path.stat()
        with open(path, "r+") as f:
            f.write(f"alice:{ALICE}\nbob:{BOB[::-1]}\n")  # bob's token changed
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert httpx.get(url + "api/state", headers=bob).status_code == 200
        process.send_signal(signal.SIGHUP)
        for _ in range(100):  # bounded: the handler runs at the server's next bytecode
            if httpx.get(url + "api/state", headers=bob).status_code == 401:
                break
        assert httpx.get(url + "api/state", headers=bob).status_code == 401
        assert httpx.get(url + "api/state", headers={"Authorization": f"Bearer {ALICE}"}).status_code == 200
    finally:
        process.send_signal(signal.SIGINT)
        _, rest = process.communicate(timeout=30)
    assert process.returncode == 0 and ALICE not in rest and BOB not in rest


def test_undo_goes_back_several_answers(queued):
    store, queue = queued
    with LabellingServer(create_app(store, queue)) as server, _client(server) as client:
        first = client.get("/api/state").json()["task"]
        second = client.post("/api/answer", json=_scores(first, [1, 2, 3])).json()["task"]
        state = client.post("/api/answer", json=_scores(second, [4, 5])).json()
        assert state["task"] is None and state["can_undo"]
        state = client.post("/api/undo", json={}).json()
        assert state["task"]["id"] == second["id"] and state["can_undo"]  # the one before can be taken back too
        state = client.post("/api/undo", json={}).json()
        assert state["task"]["id"] == first["id"] and not state["can_undo"]
        assert LabelBook(store).answers() == {}
        assert client.post("/api/undo", json={}).status_code == 409
