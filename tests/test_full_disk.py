"""A full disk (or a read-only one) mid-run is one clear message, exit code 2 — and the rerun resumes, paying nothing
twice. One fault-injection test per writer; the disk is a small tmpfs (`faults.small_disk`) that the test fills at a
chosen moment, then frees, as a user would."""

from __future__ import annotations

import json
import re

import pytest
from faults import small_tmpfs
from test_cli import read_jsonl, write_jsonl

from aepo_trainer.errors import StorageWriteError

PROMPTS, K = 24, 2


def pool_rows(n=PROMPTS, size=4):
    return [
        {
            "prompt": f"Question {i}?",
            "completions": [f" answer {i}.{j}" for j in range(size)],
            "scores": [float((j * 7 + i) % size) for j in range(size)],
            "embeddings": [[1.0, float(j), float((i * j) % 5)] for j in range(size)],
        }
        for i in range(n)
    ]


class Meter:
    """Counts the items the annotator is paid for, and fills the disk at a chosen moment."""

    def __init__(self, monkeypatch, disk):
        from aepo_trainer.annotation import AnnotationStore, DatasetScoresAnnotator

        self.paid = 0
        self.writes = 0
        self.fill_after_write = None  # fill once the n-th annotation batch is committed
        self.fill_in_call = None  # fill while the n-th annotator call is running (its scores cannot be stored)
        self.fill_before_assembly = False  # fill once every chunk is written
        self.calls = 0
        score, write = DatasetScoresAnnotator.score, AnnotationStore.write

        def counting_score(annotator, requests):
            self.calls += 1
            self.paid += sum(len(r.completions) for r in requests)
            if self.calls == self.fill_in_call:
                disk.fill()
            return score(annotator, requests)

        def filling_write(store, run_id, rows):
            write(store, run_id, rows)
            self.writes += 1
            if self.writes == self.fill_after_write:
                disk.fill()

        from aepo_trainer.cli.streaming import ChunkedOutput

        assemble = ChunkedOutput.assemble

        def filling_assemble(output, count):
            if self.fill_before_assembly:
                self.fill_before_assembly = False  # once: the rerun has room
                disk.fill()
            return assemble(output, count)

        monkeypatch.setattr(ChunkedOutput, "assemble", filling_assemble)
        monkeypatch.setattr(DatasetScoresAnnotator, "score", counting_score)
        monkeypatch.setattr(AnnotationStore, "write", filling_write)


def _select(input_path, output, *extra):
    from aepo_trainer.cli import main

    args = ["select", "--input", str(input_path), "--output", str(output), "--num_annotations", str(K)]
    return main([*args, "--chunk_size", "8", "--batch_size", "4", "--annotation_batch_size", "8", *extra])


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs that the test fills (or makes read-only) at a chosen moment."""
    root = tmp_path / "disk"
    root.mkdir()
    with small_tmpfs(root) as disk:
        yield disk


@pytest.fixture
def pools(tmp_path):
    return write_jsonl(tmp_path / "pools.jsonl", pool_rows())


@pytest.fixture
def reference(tmp_path, pools):
    """The pairs of an uninterrupted run on a roomy disk."""
    out = tmp_path / "reference" / "pairs.jsonl"
    assert _select(pools, out) == 0
    return read_jsonl(out)


def _one_paragraph(err: str, command: str = "select") -> str:
    """The error line of `aepo <command>`: one paragraph, no traceback."""
    assert "Traceback" not in err and "During handling" not in err, err
    lines = [line for line in re.split(r"[\r\n]", err) if line.startswith(f"aepo {command}: error:")]
    assert len(lines) == 1, err
    return lines[0]


# 3 chunks of 2 batches of 4 prompts: write 3 is chunk 1's first batch, write 4 its last
@pytest.mark.parametrize(
    "moment, writer",
    [
        ({"fill_after_write": 3}, r"annotations\.sqlite"),  # the next batch's reservation (the store) is refused
        ({"fill_after_write": 4}, r"pairs\.jsonl\.chunks/chunk-000001\.jsonl"),  # a finished chunk's file
        ({"fill_before_assembly": True}, r"pairs\.jsonl(?!\.)"),  # the final assembly of the output
        ({"fill_in_call": 3}, r"annotations\.sqlite"),  # the scores of the call in flight cannot be committed
    ],
    ids=["store", "chunk", "assembly", "during-a-paid-call"],
)
def test_select_on_a_disk_that_fills_up_stops_clearly_and_resumes(
    tmp_path, small_disk, monkeypatch, capsys, pools, reference, moment, writer
):
    out = small_disk.root / "pairs.jsonl"
    capsys.readouterr()
    meter = Meter(monkeypatch, small_disk)
    for name, value in moment.items():
        setattr(meter, name, value)

    assert _select(pools, out) == 2
    message = _one_paragraph(capsys.readouterr().err)
    assert re.search(rf"cannot write \S*{writer}\S*: the disk \(or a quota or file-size limit\) is full", message)
    assert "ENOSPC" in message or "disk is full" in message
    assert re.search(r"Kept: \d+ paid annotation\(s\) committed in \S+annotations\.sqlite", message), message
    assert re.search(r"\d+ finished chunk\(s\) of pairs in \S+pairs\.jsonl\.chunks", message), message
    assert "rerun the same command: it resumes where it stopped and pays for nothing twice" in message
    kept = int(re.search(r"Kept: (\d+) paid", message).group(1))
    assert kept == K * 4 * min(meter.writes, 6)  # what the store says it kept is what was committed
    paid_first = meter.paid

    small_disk.free()
    assert _select(pools, out) == 0
    assert read_jsonl(out) == reference  # the same pairs as an uninterrupted run
    from aepo_trainer.annotation import AnnotationStore

    store = AnnotationStore(f"{out}.annotations.sqlite")
    assert len(store) == K * PROMPTS and store.spent(f"aepo-select:{out}") == K * PROMPTS  # charged once each
    lost_in_flight = 4 * K if "fill_in_call" in moment else 0  # paid, but the full disk refused to store them
    assert meter.paid == K * PROMPTS + lost_in_flight
    assert meter.paid - paid_first == K * PROMPTS - kept  # the rerun paid only what was not kept


@pytest.mark.parametrize("on_the_read_only_disk", ["output", "store"])
def test_select_onto_a_read_only_disk_says_so_before_paying(
    tmp_path, small_disk, monkeypatch, capsys, pools, reference, on_the_read_only_disk
):
    """A read-only location is refused before the first paid call (the store and the chunks folder are opened
    first); once writable, the same command pays each annotation once. (A disk cannot be remounted read-only while
    the run holds files open for writing, so the fault is there from the start.)"""
    out = (small_disk.root if on_the_read_only_disk == "output" else tmp_path) / "pairs.jsonl"
    store = (tmp_path if on_the_read_only_disk == "output" else small_disk.root) / "store.sqlite"
    meter = Meter(monkeypatch, small_disk)
    small_disk.read_only()
    capsys.readouterr()
    assert _select(pools, out, "--annotation_store", str(store)) == 2
    message = _one_paragraph(capsys.readouterr().err)
    where = re.escape(str(small_disk.root))
    assert re.search(rf"cannot write {where}\S*: the location is read-only \(", message), message
    assert "Make the location writable (or remount it read-write), then rerun the same command" in message
    assert meter.paid == 0

    small_disk.writable()
    assert _select(pools, out, "--annotation_store", str(store)) == 0
    assert read_jsonl(out) == reference and meter.paid == K * PROMPTS


def test_verbose_prints_the_traceback_too(small_disk, monkeypatch, capsys, pools):
    from aepo_trainer.cli import main

    out = small_disk.root / "pairs.jsonl"
    small_disk.fill()
    argv = ["select", "--input", str(pools), "--output", str(out)]
    assert main(["--verbose", *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "aepo select: error: cannot write" in err


def test_the_library_raises_the_package_error(small_disk):
    """Without the CLI: `AnnotationStore` raises `StorageWriteError` (an `AEPOError`), with the path and the reason."""
    from aepo_trainer import AEPOError
    from aepo_trainer.annotation import AnnotationStore

    store = AnnotationStore(small_disk.root / "store.sqlite")
    reservation = store.reserve("run", [["a", "b"]], budget=None, owner="me")[0]
    store.write("run", [(k, "ann", json.dumps("p"), json.dumps(k), 1.0, 1, None) for k in reservation.to_annotate])
    small_disk.fill()
    with pytest.raises(StorageWriteError) as raised:
        store.reserve("run", [["c"]], budget=None, owner="me")
    assert isinstance(raised.value, AEPOError)
    assert raised.value.reason == "full" and raised.value.path == str(small_disk.root / "store.sqlite")
    assert raised.value.kept == {"annotations": f"2 paid annotation(s) committed in {store.path}"}
    small_disk.free()
    assert store.reserve("run", [["c"]], budget=None, owner="me")[0].charged == ["c"]  # the connection still works
    assert store.spent("run") == 3


# ----------------------------------------------------------------------------------------------------- generate
def test_generate_on_a_disk_that_fills_up_keeps_whole_batches_and_resumes(
    tmp_path, small_disk, monkeypatch, capsys, tiny_model_path
):
    from aepo_trainer.cli import generate, io, main

    # a long extra column: each batch needs new disk blocks (a short one would fit in the file's last block)
    rows = [{"prompt": f"Say {i}", "notes": "n" * 5000} for i in range(6)]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", rows)
    common = ["generate", "--model", tiny_model_path, "--input", str(prompts), "--num_completions", "2"]
    common += ["--max_new_tokens", "4", "--batch_size", "2", "--seed", "3"]
    assert main([*common, "--output", str(tmp_path / "reference.jsonl")]) == 0

    sampled, appended = [], []
    make, append = generate.make_generator, io.append_jsonl

    def counting_generator(args):
        generator = make(args)
        original = generator.generate

        def counted(batch, seeds):
            sampled.extend(batch)
            return original(batch, seeds)

        generator.generate = counted
        return generator

    def filling_append(path, rows):
        if len(appended) == 1:  # the second batch finds the disk full
            small_disk.fill()
        appended.append(len(rows))
        return append(path, rows)

    monkeypatch.setattr(generate, "make_generator", counting_generator)
    monkeypatch.setattr(io, "append_jsonl", filling_append)
    out = small_disk.root / "pools.jsonl"
    capsys.readouterr()
    assert main([*common, "--output", str(out)]) == 2
    message = _one_paragraph(capsys.readouterr().err, "generate")
    assert f"cannot write {out}: the disk (or a quota or file-size limit) is full (ENOSPC" in message, message
    assert f"Kept: 2 finished pool(s) in {out}" in message
    assert len(read_jsonl(out)) == 2  # whole batches only: the refused batch left no half line behind

    small_disk.free()
    assert main([*common, "--output", str(out)]) == 0
    assert read_jsonl(out) == read_jsonl(tmp_path / "reference.jsonl")
    assert (small_disk.root / "pools.jsonl.README.md").exists()  # the dataset card too
    assert sorted(sampled) == sorted([f"Say {i}" for i in range(6)] + ["Say 2", "Say 3"])  # the refused batch again


# ----------------------------------------------------------------------------------------------- safer-instruct
def test_safer_instruct_checkpoint_on_a_disk_that_fills_up_resumes(
    tmp_path, small_disk, monkeypatch, capsys, tiny_model_path
):
    from aepo_trainer.cli import main
    from aepo_trainer.synthesis.checkpoint import StageCheckpoint

    texts = write_jsonl(
        tmp_path / "texts.jsonl", [{"id": f"t{i}", "text": f"The sea is calm, day {i}."} for i in range(6)]
    )
    work = small_disk.root / "work"
    argv = ["safer-instruct", "induce", "--work_dir", str(work), "--texts", str(texts), "--id_column", "id"]
    argv += ["--reverse_model", tiny_model_path, "--num_instructions", "1", "--induce_max_new_tokens", "4"]
    argv += ["--synthesis_batch_size", "2", "--backend", "transformers", "--disable_tqdm", "true"]
    puts = []
    put = StageCheckpoint.put

    def filling_put(checkpoint, stage, items, usage=None):
        if len(puts) == 1:  # the second batch's outputs find the disk full
            small_disk.fill()
        puts.append(len(items))
        return put(checkpoint, stage, items, usage)

    monkeypatch.setattr(StageCheckpoint, "put", filling_put)
    capsys.readouterr()
    assert main(argv) == 2
    message = _one_paragraph(capsys.readouterr().err, "safer-instruct")
    checkpoint = work / "checkpoint.sqlite"
    assert f"cannot write {checkpoint}: the disk (or a quota or file-size limit) is full (sqlite3:" in message, message
    assert f"Kept: finished rows (2 induce) in {checkpoint}" in message

    small_disk.free()
    assert main(argv) == 0
    assert "induce: 4 rows computed, 2 served from the checkpoint" in " ".join(capsys.readouterr().err.split())
    assert len((work / "induced.jsonl").read_text().splitlines()) == 6
    assert StageCheckpoint(checkpoint, read_only=True).count("induce") == 6


# ---------------------------------------------------------------------------------------------------- label page
def test_the_labelling_page_answers_507_on_a_full_disk_and_stays_up(small_disk):
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    from test_labelling import _requests, _rerun, _scores

    from aepo_trainer.annotation import AnnotationService, AnnotationsPending, AnnotationStore, HumanQueueAnnotator
    from aepo_trainer.labelling import LabelBook, LabellingServer, create_app

    store, queue = small_disk.root / "annotations.sqlite", small_disk.root / "queue.jsonl"
    with pytest.raises(AnnotationsPending):  # a human run queued 5 items (2 prompts)
        AnnotationService(HumanQueueAnnotator(queue), AnnotationStore(store)).annotate(_requests())
    with LabellingServer(create_app(store, queue)) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        first = client.get("/api/state").json()["task"]
        small_disk.fill()
        refused = client.post("/api/answer", json=_scores(first, [9, 1, 6]))
        assert refused.status_code == 507
        detail = refused.json()["detail"]
        assert detail.startswith(f"Not saved: cannot write {store}: the disk (or a quota or file-size limit) is full")
        assert "The answers saved before are kept. Free some space there" in detail and "submit again" in detail
        state = client.get("/api/state")  # still up, and nothing counts as answered
        assert state.status_code == 200 and state.json()["progress"]["done"] == 0
        assert state.json()["task"]["id"] == first["id"]

        small_disk.free()
        state = client.post("/api/answer", json=_scores(first, [9, 1, 6]))  # the same answer again: saved now
        assert state.status_code == 200 and state.json()["progress"]["done"] == 3
        second = state.json()["task"]
        assert client.post("/api/answer", json={"task": second["id"], "skip": True}).status_code == 200
    assert len(LabelBook(store).answers()) == 5
    service, outcome = _rerun(store, queue)  # the run reads the labels: nothing new is charged
    assert outcome.paid == 0 and service.store.ledger_summary() == {"paid": 5, "reserved": 0, "queued": 0}


# ------------------------------------------------------------------------------------------------------- trainer
def test_the_trainer_stops_with_the_package_error_and_a_rerun_pays_nothing_twice(
    tmp_path, small_disk, monkeypatch, tiny_model_path
):
    from conftest import tiny_training_kwargs
    from test_exact_pay import CountingReward, pools, trainer_for

    from aepo_trainer.annotation import AnnotationStore, RewardFunctionAnnotator

    reward = CountingReward()
    store = small_disk.root / "annotations.sqlite"
    writes = []
    write = AnnotationStore.write

    def filling_write(self, run_id, rows):
        write(self, run_id, rows)
        writes.append(len(rows))
        if len(writes) == 2:  # steps 1 and 2 are committed, then the disk is full
            small_disk.fill()

    monkeypatch.setattr(AnnotationStore, "write", filling_write)
    rows = pools(8)  # 4 steps of 2 prompts, k = 2: 16 annotations in all

    def trainer(output_dir):
        options = {**tiny_training_kwargs(output_dir), "max_steps": 4, "num_annotations": K}
        return trainer_for(
            tiny_model_path, options, rows, annotator=RewardFunctionAnnotator(reward), annotation_store=str(store)
        )

    with pytest.raises(StorageWriteError) as raised:
        trainer(small_disk.root / "out").train()
    assert raised.value.reason == "full" and raised.value.path == str(store)
    assert raised.value.kept == {"annotations": f"8 paid annotation(s) committed in {store}"}
    assert len(reward.calls) == 8

    small_disk.free()
    rerun = trainer(small_disk.root / "out")
    assert rerun.train().global_step == 4
    assert len(reward.calls) == 16 and len(set(reward.calls)) == 16  # the first 2 steps came from the store
    assert AnnotationStore(store).spent(rerun.annotation_service.run_id) == 16

    small_disk.fill()  # the model card (TRL's, then AEPO's section) is refused the same way
    with pytest.raises(StorageWriteError) as raised:
        rerun.create_model_card(model_name="out")
    assert raised.value.path == str(small_disk.root / "out" / "README.md") and raised.value.reason == "full"
    small_disk.free()
    rerun.create_model_card(model_name="out")
    assert "## AEPO" in (small_disk.root / "out" / "README.md").read_text()


# -------------------------------------------------------------------------------------------------- usage ledger
def test_the_usage_ledger_on_a_full_disk_stops_before_the_next_paid_call(small_disk, monkeypatch):
    """The money ledger (API calls) lives in the store: a reservation the disk refuses stops before the HTTP call;
    completed calls keep their responses, so the rerun asks the server only for the others."""
    pytest.importorskip("openai")
    from api_judge_worker import requests as worker_requests
    from openai_server import API_KEY, start_server
    from test_api_judge import KEY_ENV, body_key, make_judge

    from aepo_trainer.annotation import AnnotationService
    from aepo_trainer.generation import UsageLedger

    monkeypatch.setenv(KEY_ENV, API_KEY)
    server, state, url = start_server()
    try:
        settled = []
        settle = UsageLedger.settle

        def filling_settle(ledger, *args, **kwargs):
            cost = settle(ledger, *args, **kwargs)
            settled.append(cost)
            if len(settled) == 5:  # mid-batch: 5 calls are settled, then the disk is full
                small_disk.fill()
            return cost

        monkeypatch.setattr(UsageLedger, "settle", filling_settle)
        store = small_disk.root / "s.sqlite"
        reqs = worker_requests(6, k=2)  # one call per prompt and order: 12 paid calls in all

        def annotate():
            ledger = UsageLedger(store, run_id="r", prices={"*": [1.0, 1.0]}, budget=1.0)
            service = AnnotationService(make_judge(url, ledger=ledger), ledger.store, run_id="r", batch_size=4)
            return service.annotate(reqs)

        with pytest.raises(StorageWriteError) as raised:
            annotate()
        assert raised.value.reason == "full" and raised.value.path == str(store)
        assert re.fullmatch(
            r"5 completed API call\(s\) \(\$0\.\d{4}\) with their responses in the usage ledger",
            raised.value.kept["usage"],
        ), raised.value.kept
        assert len(state.paid()) == 5  # the sixth call was refused its reservation: never sent

        small_disk.free()
        outcome = annotate()
        assert not outcome.skipped and all(None not in s for s in outcome.scores)
        keys = [body_key(e["body"]) for e in state.paid()]
        assert len(keys) == len(set(keys)) == 2 * len(reqs)  # every call paid exactly once over both runs
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------------------- a file-size limit (no root)
PAYING_SELECT = """
import sys
from aepo_trainer.annotation import DatasetScoresAnnotator
score = DatasetScoresAnnotator.score
def paying_score(self, requests):
    with open(sys.argv[1], "a") as log:
        log.write(f"{sum(len(r.completions) for r in requests)}\\n")
    return score(self, requests)
DatasetScoresAnnotator.score = paying_score
from aepo_trainer.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_a_file_size_limit_mid_run_is_the_same_clear_error(tmp_path, monkeypatch, pools, reference):
    """`ulimit -f` (RLIMIT_FSIZE, SIGXFSZ ignored so writes fail with EFBIG): needs neither root nor a mount. SQLite
    reports EFBIG as "disk I/O error", the message says so; the rerun without the limit finishes, each annotation
    charged once."""
    import resource
    import signal
    import subprocess
    import sys

    from test_cli import ENV, REPO_ROOT

    from aepo_trainer.annotation import AnnotationStore

    out, paid_log = tmp_path / "out" / "pairs.jsonl", tmp_path / "paid.log"
    argv = [sys.executable, "-c", PAYING_SELECT, str(paid_log), "select", "--input", str(pools), "--output", str(out)]
    argv += ["--num_annotations", str(K), "--chunk_size", "8", "--batch_size", "4", "--annotation_batch_size", "8"]

    def file_size_limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer instead of failing the write
        resource.setrlimit(resource.RLIMIT_FSIZE, (128 << 10, 128 << 10))

    run = dict(capture_output=True, text=True, env=ENV, cwd=REPO_ROOT, timeout=300)
    limited = subprocess.run(argv, preexec_fn=file_size_limit, **run)
    assert limited.returncode == 2, limited.stderr[-3000:]
    message = _one_paragraph(limited.stderr)
    assert re.search(
        r"cannot write \S+annotations\.sqlite: the disk refused the write \(an I/O error: a full disk, "
        r"a file-size limit, or failing storage\) \(sqlite3: disk I/O error\)",
        message,
    ), message
    kept = int(re.search(r"Kept: (\d+) paid annotation\(s\)", message).group(1))
    assert 0 < kept < K * PROMPTS and kept % (4 * K) == 0  # whole batches, committed before the limit was hit

    meter = Meter(monkeypatch, disk=None)  # the rerun, in this process, without the limit
    assert _select(pools, out) == 0
    assert read_jsonl(out) == reference
    store = AnnotationStore(f"{out}.annotations.sqlite")
    assert len(store) == K * PROMPTS and store.spent(f"aepo-select:{out}") == K * PROMPTS  # each charged once
    paid = sum(int(n) for n in paid_log.read_text().split()) + meter.paid
    assert paid - K * PROMPTS in (0, 4 * K)  # at most the batch whose scores the limit kept from the store


# ------------------------------------------------------------------------------------------ the one translation
@pytest.mark.parametrize(
    "error, reason",
    [
        (OSError(28, "No space left on device"), "full"),
        (OSError(122, "Disk quota exceeded"), "full"),
        (OSError(27, "File too large"), "full"),  # EFBIG: a file-size limit, handled like a full disk
        (OSError(30, "Read-only file system"), "read-only"),
        (OSError("Error writing bytes to file. Detail: [errno 28] No space left on device"), "full"),  # pyarrow
        (__import__("sqlite3").OperationalError("database or disk is full"), "full"),
        (__import__("sqlite3").OperationalError("attempt to write a readonly database"), "read-only"),
        (__import__("sqlite3").OperationalError("disk I/O error"), "io"),
        (OSError(2, "No such file or directory"), None),  # not a refused write: unchanged
        (__import__("sqlite3").OperationalError("database is locked"), None),
        (ValueError("No space left on device"), None),
    ],
)
def test_what_counts_as_a_refused_write(tmp_path, error, reason):
    from aepo_trainer.errors import storage_error_of, storage_guard

    translated = storage_error_of(error, tmp_path / "x")
    assert (translated and translated.reason) == reason
    expected = StorageWriteError if reason else type(error)
    with pytest.raises(expected) as raised, storage_guard(tmp_path / "x", kept=lambda: {"chunks": "3 finished chunks"}):
        raise error
    if reason:
        assert raised.value.__cause__ is error and raised.value.path == str(tmp_path / "x")
        assert str(raised.value).startswith(f"cannot write {tmp_path / 'x'}: ")
        assert "Kept: 3 finished chunks; nothing already paid for is lost." in str(raised.value)
    else:
        assert raised.value is error


def test_permission_denied_names_the_cause(tmp_path):
    """EACCES is "permission" on a writable filesystem; `filename` of the OSError wins over the guarded path."""
    from aepo_trainer.errors import storage_error_of

    error = PermissionError(13, "Permission denied", str(tmp_path / "locked.jsonl"))
    translated = storage_error_of(error, tmp_path / "other")
    assert translated.reason == "permission" and translated.path == str(tmp_path / "locked.jsonl")
    assert "this user may not write there (EACCES: Permission denied)" in str(translated)
    assert "Give this user write permission there, then rerun the same command" in str(translated)
