"""The labelling page's server, driven over real HTTP (uvicorn on a free local port, httpx as the client).

Covered: answers land in the store and a run reads them with zero new charges; forged requests (unknown task, keys of
another task, out-of-range or non-numeric scores, a second answer, one answer too many, wrong content type, no or a
wrong token) get 4xx and change nothing; undo until a run has read the label; ranking and best/worst become the
documented Borda points; agreement against a hand computation; tokens never reach a log; the human annotator's
`wait_timeout` picks up labels given while it waits; `aepo label` refuses a public bind without `--auth`.
The page itself (keyboard, rendering, reload) is tested in a real browser in test_labelling_browser.py.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

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
    agreement,
    create_app,
    load_tokens,
)

ALICE, BOB, CAROL = "alice-token-0123456789", "bob-token-9876543210", "carol-token-5555555555"


def _requests():
    return [
        AnnotationRequest("Name a colour.", ["Blue.", "Seven.", "Red, obviously."], indices=[0, 4, 7]),
        AnnotationRequest("Say hi.", ["hi", "no"], indices=[1, 2]),
    ]


@pytest.fixture
def queued(tmp_path):
    """A store and a queue with 5 items (2 prompts) charged as 'queued', as a human run leaves them."""
    store = tmp_path / "annotations.sqlite"
    queue = tmp_path / "queue.jsonl"
    service = AnnotationService(HumanQueueAnnotator(queue), AnnotationStore(store))
    with pytest.raises(AnnotationsPending):
        service.annotate(_requests())
    assert service.store.ledger_summary() == {"paid": 0, "reserved": 0, "queued": 5}
    return store, queue


def _serve(store, queue, **kw):
    return LabellingServer(create_app(store, queue, **kw))


def _client(server, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=server.url, headers=headers, timeout=30)


def _queue_order(task) -> list[dict]:
    """The task's candidates in queue (pool index) order: the page shows them shuffled per labeller."""
    return sorted(task["candidates"], key=lambda c: c["pool_index"])


def _scores(task, values):
    """An answer giving `values` to the candidates in queue order."""
    return {"task": task["id"], "scores": {c["key"]: v for c, v in zip(_queue_order(task), values)}}


def _rerun(store, queue):
    service = AnnotationService(HumanQueueAnnotator(queue, store=store), AnnotationStore(store))
    return service, service.annotate(_requests())


def test_answers_are_stored_then_read_by_a_run_without_new_charges(queued):
    store, queue = queued
    with _serve(store, queue) as server, _client(server) as client:
        state = client.get("/api/state").json()
        assert state["progress"] == {
            "items": 5,
            "done": 0,
            "pending": 5,
            "read_by_run": 0,
            "yours": 0,
            "labellers": {},
            "prompts": 2,
            "prompts_done": 0,
        }
        first = state["task"]
        assert sorted(c["pool_index"] for c in first["candidates"]) == [0, 4, 7]
        assert first["prompt_html"] == "<p>Name a colour.</p>\n"
        state = client.post("/api/answer", json=_scores(first, [9, 1, 6])).json()
        assert state["progress"]["done"] == 3 and state["can_undo"]
        second = state["task"]
        assert second["id"] != first["id"] and len(second["candidates"]) == 2
        state = client.post("/api/answer", json={"task": second["id"], "skip": True}).json()
        assert state["task"] is None and state["progress"]["done"] == 5
        counts = state["progress"]["labellers"]["local"]
        assert (counts["answered"], counts["skipped"], state["progress"]["prompts_done"]) == (5, 2, 2)
    # committed to the store: a new process sees them
    first["candidates"] = _queue_order(first)
    assert LabelBook(store).final_scores() == {
        first["candidates"][0]["key"]: 9.0,
        first["candidates"][1]["key"]: 1.0,
        first["candidates"][2]["key"]: 6.0,
        second["candidates"][0]["key"]: None,
        second["candidates"][1]["key"]: None,
    }
    service, outcome = _rerun(store, queue)
    assert outcome.scores == [[9.0, 1.0, 6.0], [None, None]] and outcome.invalid == 2
    assert outcome.paid == 0 and outcome.recovered == 5  # the queued charges become paid, none added
    assert service.spent == 5 and service.store.ledger_summary() == {"paid": 5, "reserved": 0, "queued": 0}
    # read by a run: final, the undo is refused and changes nothing
    with _serve(store, queue) as server, _client(server) as client:
        response = client.post("/api/undo", json={})
        assert response.status_code == 409 and "already read by a run" in response.json()["detail"]
        state = client.get("/api/state").json()
        assert state["progress"]["read_by_run"] == 5 and not state["can_undo"] and state["task"] is None
    assert len(LabelBook(store).answers()) == 5


def test_undo_takes_the_last_answer_back_and_shows_its_task_again(queued):
    store, queue = queued
    with _serve(store, queue) as server, _client(server) as client:
        first = client.get("/api/state").json()["task"]
        second = client.post("/api/answer", json=_scores(first, [2, 3, 4])).json()["task"]
        state = client.post("/api/undo", json={}).json()
        assert state["task"]["id"] == first["id"] and state["progress"]["done"] == 0 and not state["can_undo"]
        assert LabelBook(store).answers() == {}
        state = client.post("/api/answer", json=_scores(first, [5, 6, 7])).json()
        assert state["task"]["id"] == second["id"]
    assert sorted(LabelBook(store).final_scores().values()) == [5.0, 6.0, 7.0]


def test_forged_requests_change_nothing(queued):
    store, queue = queued
    tokens = LabellerTokens({"alice": ALICE, "bob": BOB})
    with _serve(store, queue, tokens=tokens, loopback_only=False) as server:
        anonymous = _client(server)
        for method, path in (("get", "/"), ("get", "/api/state"), ("post", "/api/answer"), ("post", "/api/undo")):
            response = getattr(anonymous, method)(path, **({"json": {}} if method == "post" else {}))
            assert response.status_code == 401, path
        assert _client(server, "not-a-token-at-all").get("/api/state").status_code == 401
        anonymous.cookies.set("aepo_label_session", ALICE)  # the token itself is not a session cookie
        assert anonymous.get("/api/state").status_code == 401
        anonymous.cookies.clear()
        alice = _client(server, ALICE)
        task = alice.get("/api/state").json()["task"]
        keys = [c["key"] for c in task["candidates"]]
        other = _client(server, BOB).get("/api/state").json()["task"]  # bob is kept off alice's task (lease)
        assert other["id"] != task["id"]
        bad = [
            ({"task": "0" * 16, "scores": {}}, 404),
            ({"task": task["id"], "scores": dict.fromkeys(keys[:2], 5)}, 400),  # a candidate missing
            ({"task": task["id"], "scores": {**dict.fromkeys(keys, 5), "f" * 64: 5}}, 400),  # a forged key
            ({"task": task["id"], "scores": dict.fromkeys([c["key"] for c in other["candidates"]], 5)}, 400),
            ({"task": task["id"], "scores": {**dict.fromkeys(keys, 5), keys[0]: 0}}, 400),  # below the scale
            ({"task": task["id"], "scores": {**dict.fromkeys(keys, 5), keys[0]: 10.5}}, 400),
            ({"task": task["id"], "scores": {**dict.fromkeys(keys, 5), keys[0]: True}}, 400),
            ({"task": task["id"], "scores": {**dict.fromkeys(keys, 5), keys[0]: "7"}}, 400),
            ({"task": task["id"], "ranking": keys}, 400),  # not the question asked
            ([1, 2], 400),
        ]
        for body, status in bad:
            response = alice.post("/api/answer", json=body)
            assert response.status_code == status, (body, response.text)
        response = alice.post(
            "/api/answer", content=json.dumps(_scores(task, [5, 5, 5])), headers={"Content-Type": "text/plain"}
        )
        assert response.status_code == 415
        response = alice.post("/api/answer", json=_scores(task, [5, 5, 5]), headers={"Origin": "http://evil.example"})
        assert response.status_code == 403  # a cross-site form or script
        response = _client(server).post("/login", data={"token": BOB}, headers={"Origin": "http://evil.example"})
        assert response.status_code == 403 and "set-cookie" not in response.headers  # no login CSRF
        assert LabelBook(store).answers() == {}
        # a valid answer, then the same answer again: the second changes nothing
        assert alice.post("/api/answer", json=_scores(task, [5, 6, 7])).status_code == 200
        response = alice.post("/api/answer", json=_scores(task, [1, 1, 1]))
        assert response.status_code == 409
        assert sorted(a[0].score for a in LabelBook(store).answers().values()) == [5.0, 6.0, 7.0]
        # bob was never shown alice's task: refused, whatever its state
        response = _client(server, BOB).post("/api/answer", json=_scores(task, [1, 1, 1]))
        assert response.status_code == 403 and "not shown to you" in response.json()["detail"]
        assert {a.labeller for rows in LabelBook(store).answers().values() for a in rows} == {"alice"}


def test_two_labellers_aggregate_and_agreement_by_hand(queued, capsys):
    store, queue = queued
    tokens = LabellerTokens({"alice": ALICE, "bob": BOB, "carol": CAROL})
    with _serve(store, queue, tokens=tokens, settings=LabellingSettings(labels_per_item=2)) as server:
        alice, bob, carol = _client(server, ALICE), _client(server, BOB), _client(server, CAROL)
        task = alice.get("/api/state").json()["task"]
        assert len(task["candidates"]) == 3
        alice.post("/api/answer", json=_scores(task, [8, 3, 5])).raise_for_status()
        bob_view = bob.get("/api/state").json()
        assert bob_view["task"]["id"] == task["id"]  # one label is not enough: bob gets it too
        assert all(set(c) == {"key", "html", "pool_index"} for c in bob_view["task"]["candidates"])  # no answers
        state = bob.post("/api/answer", json=_scores(task, [7, 3, 2])).json()
        assert carol.get("/api/state").json()["task"]["id"] != task["id"]  # two labels: done
        # Krippendorff's alpha (interval) by hand: values (8,7), (3,3), (5,2); n = 6 pairable values.
        # D_o = (1/n) sum_u 1/(m_u-1) sum_{c!=k} (c-k)^2 = (2*1 + 0 + 2*9) / 6
        # D_e = 1/(n(n-1)) sum_{i!=j} (v_i-v_j)^2 = 2 n SS / 30, SS = 160 - 28^2/6 -> 352 / 30
        expected = 1 - (20 / 6) / (352 / 30)
        assert state["agreement"]["alpha"] == pytest.approx(expected) == pytest.approx(0.7159091)
        assert state["agreement"]["labellers"]["alice"]["mean_abs_diff"] == pytest.approx((1 + 0 + 3) / 3)
        assert {name: row["answered"] for name, row in state["progress"]["labellers"].items()} == {
            "alice": 3,
            "bob": 3,
        }
    service = AnnotationService(HumanQueueAnnotator(queue, store=store), AnnotationStore(store))
    outcome = service.annotate(_requests()[:1])
    assert outcome.scores == [[7.5, 3.0, 3.5]] and outcome.paid == 0  # the mean of the two labellers

    from aepo_trainer.cli import main

    assert main(["stats", "--labels", str(store)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "items answered 3  finished 3  read by a run 3" in lines[1]
    assert "Krippendorff's alpha (interval) 0.716 over 3 item(s)" in lines[2]
    assert [line[:63] for line in lines[-2:]] == [
        "alice                     3       3        1.333              -",
        "bob                       3       3        1.333              -",
    ]
    assert lines[-3].endswith("median s/item  gold accuracy")
    assert all(float(line.split()[-2]) >= 0 and line.split()[-1] == "-" for line in lines[-2:])


def test_rankings_and_best_worst_become_borda_points(tmp_path, queued):
    store, queue = queued
    tokens = LabellerTokens({"alice": ALICE, "bob": BOB})
    settings = LabellingSettings(question="ranking", labels_per_item=2)
    with _serve(store, queue, tokens=tokens, settings=settings) as server:
        alice, bob = _client(server, ALICE), _client(server, BOB)
        task = alice.get("/api/state").json()["task"]
        a, b, c = (x["key"] for x in task["candidates"])
        assert alice.post("/api/answer", json={"task": task["id"], "ranking": [a, b]}).status_code == 400
        assert alice.post("/api/answer", json={"task": task["id"], "ranking": [a, a, b]}).status_code == 400
        alice.post("/api/answer", json={"task": task["id"], "ranking": [b, a, c]}).raise_for_status()
        assert bob.get("/api/state").json()["task"]["id"] == task["id"]
        bob.post("/api/answer", json={"task": task["id"], "ranking": [b, c, a]}).raise_for_status()
    # Borda: best of 3 -> 2, then 1, worst 0; the item's score is the mean over the labellers
    assert LabelBook(store).final_scores() == {a: (1 + 0) / 2, b: (2 + 2) / 2, c: (0 + 1) / 2}
    with pytest.raises(ValueError, match="already holds 6 answer"):
        create_app(store, queue, settings=LabellingSettings(question="score"))  # would mix scores and points

    other = tmp_path / "bw"
    other.mkdir()
    store2, queue2 = other / "s.sqlite", other / "q.jsonl"
    with pytest.raises(AnnotationsPending):
        AnnotationService(HumanQueueAnnotator(queue2), AnnotationStore(store2)).annotate(_requests())
    with _serve(store2, queue2, settings=LabellingSettings(question="best_worst")) as server, _client(server) as client:
        task = client.get("/api/state").json()["task"]
        a, b, c = (x["key"] for x in task["candidates"])
        assert client.post("/api/answer", json={"task": task["id"], "best": a, "worst": a}).status_code == 400
        client.post("/api/answer", json={"task": task["id"], "best": c, "worst": a}).raise_for_status()
    assert LabelBook(store2).final_scores() == {a: 0.0, b: 1.0, c: 2.0}


def test_agreement_per_labeller_finds_the_outlier():
    answers = {  # alice and bob agree; carol scores the other way round
        "x": {"alice": 9, "bob": 8, "carol": 2},
        "y": {"alice": 2, "bob": 3, "carol": 9},
        "z": {"alice": 5, "bob": 5, "carol": 5},
        "w": {"alice": 7, "bob": None, "carol": 1},  # bob skipped: missing, not a zero
    }
    out = agreement(answers)
    carol = out["labellers"]["carol"]
    assert out["items"] == 4 and carol["items"] == 4 and out["labellers"]["bob"]["shared"] == 3
    assert carol["alpha_without"] > 0.9 > out["alpha"]  # without carol the others agree almost perfectly
    assert carol["mean_abs_diff"] == pytest.approx((6.5 + 6.5 + 0 + 6) / 4)
    assert agreement({"x": {"alice": 3}})["alpha"] is None  # one labeller: undefined, not a number


def test_tokens_are_never_logged(queued, caplog, capfd):
    store, queue = queued
    tokens = LabellerTokens({"alice": ALICE})
    for name in ("aepo_trainer", "uvicorn", "uvicorn.error", "fastapi", "starlette"):
        caplog.set_level(logging.DEBUG, logger=name)  # the server side (httpx, the test's client, logs its own)
    with _serve(store, queue, tokens=tokens) as server, httpx.Client(base_url=server.url, timeout=30) as browser:
        response = browser.post("/login", data={"token": ALICE}, follow_redirects=False)
        assert response.status_code == 303
        cookie = response.headers["set-cookie"]
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
        assert ALICE not in cookie and "aepo_label_session=" in cookie  # the cookie is not the token
        assert browser.get("/api/state").status_code == 200  # the cookie signs the page's requests
        assert browser.post("/login", data={"token": ALICE + "x"}).status_code == 401
        task = browser.get("/api/state").json()["task"]
        browser.post("/api/answer", json=_scores(task, [4, 4, 4])).raise_for_status()
    captured = capfd.readouterr()
    logged = caplog.text + captured.out + captured.err
    assert "alice signed in from 127.0.0.1" in caplog.text
    assert "a sign-in with an invalid token from 127.0.0.1 was refused" in caplog.text
    assert ALICE not in logged and ALICE[:12] not in logged
    assert "alice" in repr(tokens) and ALICE not in repr(tokens)


def test_loopback_page_refuses_other_host_names(queued):
    store, queue = queued
    with _serve(store, queue) as server, _client(server) as client:
        assert client.get("/api/state").status_code == 200
        assert client.get("/api/state", headers={"Host": "attacker.example"}).status_code == 400  # DNS rebinding
        page = client.get("/")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert client.get("/static/page.js").headers["content-type"].startswith("text/javascript")
        assert client.get("/static/../book.py").status_code == 404


def test_token_files_and_variables(tmp_path, monkeypatch):
    path = tmp_path / "tokens.txt"
    path.write_text(f"# team\nalice:{ALICE}\n\nbob: {BOB}\n")
    assert load_tokens(str(path)).labeller(BOB) == "bob"
    monkeypatch.setenv("AEPO_TOKENS", f"alice:{ALICE},bob:{BOB}")
    tokens = load_tokens("env:AEPO_TOKENS")
    assert tokens.names == ["alice", "bob"] and tokens.labeller(ALICE) == "alice" and tokens.labeller("x") is None
    for text, message in (
        ("alice\n", "line 1: expected `name:token`"),
        ("alice:short\n", "shorter than 12"),
        (f"alice:{ALICE}\nalice:{BOB}\n", "line 2: labeller 'alice' is listed twice"),
        (f"alice:{ALICE}\nbob:{ALICE}\n", "also another labeller's token"),
        (f"al ice:{ALICE}\n", "name 'al ice' is invalid"),
    ):
        path.write_text(text)
        with pytest.raises(ValueError, match=message) as info:
            load_tokens(str(path))
        assert ALICE not in str(info.value)
    with pytest.raises(ValueError, match="AEPO_MISSING is not set"):
        load_tokens("env:AEPO_MISSING")


def test_the_human_annotator_waits_for_the_page(tmp_path):
    store, queue = tmp_path / "s.sqlite", tmp_path / "q.jsonl"
    annotator = HumanQueueAnnotator(queue, store=store, wait_timeout=60, poll_interval=0.05)
    service = AnnotationService(annotator, AnnotationStore(store))
    result = {}
    worker = threading.Thread(target=lambda: result.update(outcome=service.annotate(_requests())))
    worker.start()
    with _serve(store, queue) as server, _client(server) as client:
        deadline = time.monotonic() + 60
        while not queue.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        task = client.get("/api/state").json()["task"]
        task = client.post("/api/answer", json=_scores(task, [1, 2, 3])).json()["task"]
        client.post("/api/answer", json=_scores(task, [10, 1])).raise_for_status()
    worker.join(60)
    assert result["outcome"].scores == [[1.0, 2.0, 3.0], [10.0, 1.0]] and result["outcome"].paid == 5
    # and without labels it stops after its timeout, as before
    late = HumanQueueAnnotator(tmp_path / "q2.jsonl", store=store, wait_timeout=0.2, poll_interval=0.05)
    with pytest.raises(AnnotationsPending, match="5 annotation"):
        AnnotationService(late, AnnotationStore(store)).annotate(
            [AnnotationRequest("Other?", ["a", "b", "c"]), AnnotationRequest("More?", ["d", "e"])]
        )


def test_aepo_label_refuses_a_public_bind_without_auth(queued, capsys):
    from aepo_trainer.cli import main

    store, queue = queued
    assert main(["label", "--store", str(store), "--queue", str(queue), "--host", "0.0.0.0"]) == 2
    assert "pass --auth" in capsys.readouterr().err
    assert main(["label", "--store", str(store), "--auth", "env:AEPO_NOPE", "--host", "0.0.0.0"]) == 2
    assert "AEPO_NOPE is not set" in capsys.readouterr().err
    assert main(["label", "--store", str(store), "--question", "score", "--scale_min", "5", "--scale_max", "5"]) == 2
    assert main(["stats", "--labels", str(store)]) == 0
    assert "no labelling page has run" in capsys.readouterr().out


def test_aepo_select_wait_goes_on_by_itself_once_the_page_has_the_labels(tmp_path, capsys):
    from aepo_trainer.cli import main

    pools = tmp_path / "pools.jsonl"
    with open(pools, "w", encoding="utf-8") as f:
        for p in range(2):
            completions = [f"answer {i} to question {p}" for i in range(3)]
            embeddings = [[1.0 if d == i else 0.0 for d in range(3)] for i in range(3)]
            f.write(
                json.dumps({"prompt": f"question {p}?", "completions": completions, "embeddings": embeddings}) + "\n"
            )
    out = tmp_path / "pairs.jsonl"
    store, queue = Path(f"{out}.annotations.sqlite"), Path(f"{out}.annotation_queue.jsonl")
    argv = ["select", "--input", str(pools), "--output", str(out), "--annotator", "human", "--wait", "300"]
    result = {}
    with _serve(store, queue) as server, _client(server) as client:  # the page first: the queue does not exist yet
        assert client.get("/api/state").json()["task"] is None
        run = threading.Thread(target=lambda: result.update(code=main(argv)))
        run.start()
        labelled, deadline = 0, time.monotonic() + 300
        while run.is_alive() and time.monotonic() < deadline:
            task = client.get("/api/state").json()["task"]
            if task is None:
                time.sleep(0.1)
                continue
            client.post("/api/answer", json=_scores(task, [9, 2])).raise_for_status()
            labelled += 1
        run.join(300)
    assert result["code"] == 0 and labelled == 2  # no exit code 4, no rerun: the run went on by itself
    pairs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(pairs) == 2 and all((p["chosen_score"], p["rejected_score"]) == (9.0, 2.0) for p in pairs)
    assert "annotations: paid 4 " in " ".join(capsys.readouterr().err.split())


def test_aepo_label_serves_with_tokens_and_never_prints_them(queued, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from conftest import REPO_ROOT

    store, queue = queued
    env = {**os.environ, "AEPO_LABELLERS": f"alice:{ALICE},bob:{BOB}", "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "aepo_trainer.cli", "label", "--store", str(store), "--queue", str(queue)]
    command += ["--port", "0", "--auth", "env:AEPO_LABELLERS", "--labels_per_item", "2"]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stderr.readline()
        assert "5 of 5 item(s)" in line and "labellers: alice, bob" in line, line
        url = line.split(" on ", 1)[1].split(" ", 1)[0]
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(url + "api/state").status_code == 401
        state = httpx.get(url + "api/state", headers={"Authorization": f"Bearer {BOB}"}).json()
        assert state["labeller"] == "bob" and state["labels_per_item"] == 2
        httpx.post(url + "login", data={"token": ALICE})
    finally:
        process.send_signal(signal.SIGINT)
        _, rest = process.communicate(timeout=30)
    assert process.returncode == 0
    assert ALICE not in line + rest and BOB not in line + rest


def test_a_csv_queue_with_chat_messages(tmp_path):
    store, queue = tmp_path / "s.sqlite", tmp_path / "q.csv"
    request = AnnotationRequest(
        [{"role": "user", "content": "Say *hi*"}],
        [[{"role": "assistant", "content": "hi"}], [{"role": "assistant", "content": "<b>no</b>"}]],
    )
    with pytest.raises(AnnotationsPending):
        AnnotationService(HumanQueueAnnotator(queue), AnnotationStore(store)).annotate([request])
    with _serve(store, queue) as server, _client(server) as client:
        task = client.get("/api/state").json()["task"]
        assert (
            task["prompt_html"]
            == '<div class="turn"><div class="role">user</div><div class="md"><p>Say <em>hi</em></p>\n</div></div>'
        )
        assert "<p>&lt;b&gt;no&lt;/b&gt;</p>" in _queue_order(task)[1]["html"]
        client.post("/api/answer", json=_scores(task, [6, 4])).raise_for_status()
    outcome = AnnotationService(HumanQueueAnnotator(queue, store=store), AnnotationStore(store)).annotate([request])
    assert outcome.scores == [[6.0, 4.0]] and outcome.paid == 0
