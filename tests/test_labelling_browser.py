"""The labelling page in a real headless browser: Debian's Chromium, driven by Selenium (no browser download).

Each test starts the real server on a free local port (`LabellingServer`, uvicorn in a thread) and uses the page as a
labeller would — keyboard shortcuts, sign-in form, reload. Covered: `aepo select --annotator human` queues the items,
three prompts are labelled on the page (with an undo), a reload shows them done, and the rerun of `aepo select`
finishes with zero new paid annotations and pairs by those labels; two labellers with tokens, the aggregate and
Krippendorff's alpha against a hand computation (and the page's screenshot for docs/labelling.md); a completion
carrying `<script>`, an `onerror` and a `javascript:` link renders as text and runs nothing.

Skipped, with the reason, where Chromium, chromedriver or Selenium are missing (`.ci/run` installs them). One browser
for the whole module, headless, in a small window, to spare the CPU. Set AEPO_UPDATE_SCREENSHOTS=1 to refresh
docs/assets/labelling-page.png.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import REPO_ROOT

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("krippendorff")
httpx = pytest.importorskip("httpx")
pytest.importorskip("selenium", reason="the browser tests need Selenium (pip install selenium)")

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip(
        f"no headless browser: {CHROMIUM} and {CHROMEDRIVER} are needed (apt-get install -y chromium chromium-driver)",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

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
    create_app,
)

ALICE, BOB = "alice-token-0123456789", "bob-token-9876543210"
ASSETS = REPO_ROOT / "docs" / "assets"
SCREENSHOT = ASSETS / "labelling-page.png"


def _save_for_docs(driver, name: str) -> None:
    """With AEPO_UPDATE_SCREENSHOTS=1, the page as the test sees it becomes docs/assets/<name>."""
    if os.environ.get("AEPO_UPDATE_SCREENSHOTS") == "1":
        driver.save_screenshot(str(ASSETS / name))


@pytest.fixture(scope="module")
def browser():
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never try to download a driver or a browser
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-extensions",
        "--disable-background-networking",
        "--no-first-run",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    except Exception as error:  # a broken install: say so instead of failing every test
        pytest.skip(f"headless Chromium does not start: {error}")
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _renders(driver) -> int:
    return int(driver.execute_script("return Number(document.body.dataset.renders || 0)"))


def _open(driver, url):
    driver.delete_all_cookies()
    driver.get(url)


def _wait_render(driver, after: int):
    WebDriverWait(driver, 30).until(lambda d: _renders(d) > after)


def _keys(driver, *keys):
    ActionChains(driver).send_keys(*keys).perform()


def _task(driver) -> tuple[str, list[dict]]:
    """The task on screen: its id and the candidates (key, text)."""
    task = driver.find_element(By.ID, "task")
    cards = driver.find_elements(By.CSS_SELECTOR, "#candidates .card")
    return task.get_attribute("data-id"), [
        {"key": c.get_attribute("data-key"), "text": c.find_element(By.CSS_SELECTOR, ".md").text} for c in cards
    ]


def _answer_with_keys(driver, scores) -> None:
    """Score the candidates with the digit shortcuts and submit with Enter; wait for the next render."""
    before = _renders(driver)
    _keys(driver, *[str(s % 10) for s in scores], Keys.ENTER)
    _wait_render(driver, before)


def _sign_in(driver, url, token):
    _open(driver, url)
    field = driver.find_element(By.ID, "token")
    field.send_keys(token)
    driver.find_element(By.ID, "sign-in").click()
    WebDriverWait(driver, 30).until(lambda d: _renders(d) > 0)


# ------------------------------------------------------------------------------------------------- the tests


def _pools(path: Path) -> Path:
    """3 prompts x 4 candidates with fixed embeddings (nothing to embed), Markdown in the texts."""
    rows = []
    for p, topic in enumerate(["sorting", "hash maps", "recursion"]):
        completions = [
            f"**{topic}**, answer {i}: " + ["a list", "`code`", "a table", "plain words"][i] for i in range(4)
        ]
        embeddings = [[1.0 if d == i else 0.1 * p for d in range(4)] for i in range(4)]
        rows.append(
            {"prompt": f"Explain {topic} in one sentence.", "completions": completions, "embeddings": embeddings}
        )
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return path


def test_label_three_prompts_reload_then_select_pays_nothing(browser, tmp_path, capsys):
    from aepo_trainer.cli import main

    out = tmp_path / "pairs.jsonl"
    argv = ["select", "--input", str(_pools(tmp_path / "pools.jsonl")), "--output", str(out)]
    argv += ["--annotator", "human", "--num_annotations", "2"]
    assert main(argv) == 4  # 3 prompts x 2 selected items queued
    store, queue = Path(f"{out}.annotations.sqlite"), Path(f"{out}.annotation_queue.jsonl")
    assert AnnotationStore(store).ledger_summary(f"aepo-select:{out}") == {"paid": 0, "reserved": 0, "queued": 6}
    capsys.readouterr()

    shown = {}  # prompt task id -> the candidate scored 8 (the other gets 3)
    with LabellingServer(create_app(store, queue)) as server:
        _open(browser, server.url)
        _wait_render(browser, 0)
        assert "0 / 3 prompts done" in browser.find_element(By.ID, "progress").text
        first_id, first = _task(browser)
        _answer_with_keys(browser, [5, 5])
        assert _task(browser)[0] != first_id
        before = _renders(browser)
        _keys(browser, "u")  # undo: the first prompt comes back, its answer deleted
        _wait_render(browser, before)
        assert _task(browser)[0] == first_id and "0 / 3 prompts done" in browser.find_element(By.ID, "progress").text
        for _ in range(3):
            task_id, candidates = _task(browser)
            assert len(candidates) == 2 and all(
                c["text"].startswith(("sorting", "hash maps", "recursion")) for c in candidates
            )
            shown[task_id] = candidates[0]["key"]
            _answer_with_keys(browser, [8, 3])
        assert len(shown) == 3
        browser.refresh()  # nothing lives in the page: the server has every answer
        WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "finished").is_displayed())
        assert "3 / 3 prompts done · you answered 6" in browser.find_element(By.ID, "progress").text
        assert not browser.find_element(By.ID, "task").is_displayed()

    assert main(argv) == 0  # the rerun reads the page's labels
    err = " ".join(capsys.readouterr().err.split())
    assert "annotations: paid 0 " in err and "pairs 3" in err
    assert "labels read 6 (charged when queued)" in err  # the rerun says what it read from the page
    ledger = AnnotationStore(store).ledger_summary(f"aepo-select:{out}")
    assert ledger == {"paid": 6, "reserved": 0, "queued": 0}  # charged once, when queued; now paid
    items = {item["id"]: item for item in map(json.loads, queue.read_text().splitlines())}
    pairs = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(p["chosen"] for p in pairs) == sorted(items[k]["completion"] for k in shown.values())
    assert all((p["chosen_score"], p["rejected_score"]) == (8.0, 3.0) for p in pairs)


def _screenshot_task() -> list[AnnotationRequest]:
    return [
        AnnotationRequest(
            "What does a **hash map** do, and when should I use one?",
            [
                "A hash map stores *key → value* pairs. It hashes the key to find a bucket, so lookups, inserts and "
                "deletes take **O(1)** time on average.\n\n```python\nages = {'ada': 36}\nages['alan'] = 41\n```",
                "It is a list that you search from the start until you find the key.",
                "Use one when you need fast lookups by key:\n\n- counting words\n- caching results\n- indexing "
                "records by id\n\nAvoid it when you need the keys in order (use a sorted tree).",
            ],
        )
    ]


def test_two_labellers_with_tokens_aggregate_and_agreement(browser, tmp_path):
    store, queue = tmp_path / "s.sqlite", tmp_path / "q.jsonl"
    with pytest.raises(AnnotationsPending):
        AnnotationService(HumanQueueAnnotator(queue), AnnotationStore(store)).annotate(_screenshot_task())
    tokens = LabellerTokens({"alice": ALICE, "bob": BOB})
    # queue order for both (no shuffle): the hand computation below pairs alice's and bob's scores by position
    settings = LabellingSettings(labels_per_item=2, shuffle_seed=None, allow_tie=True, rationale=True)
    app = create_app(store, queue, tokens=tokens, settings=settings)
    with LabellingServer(app) as server:
        assert httpx.get(server.url + "api/state").status_code == 401  # no token, no data
        assert httpx.get(server.url).status_code == 401
        _open(browser, server.url)
        assert browser.find_element(By.ID, "token").get_attribute("type") == "password"  # the sign-in form

        _sign_in(browser, server.url, ALICE)
        assert browser.find_element(By.ID, "who").text == "alice"
        _keys(browser, "8", "3", "5")
        outputs = [o.text for o in browser.find_elements(By.CSS_SELECTOR, ".rate output")]
        assert outputs == ["8", "3", "5"]
        badges = [b.text for b in browser.find_elements(By.CSS_SELECTOR, "#candidates .badge")]
        assert badges == ["8 / 10", "3 / 10", "5 / 10"]  # the score at the top of each card too
        browser.find_element(By.ID, "rationale").send_keys("2 is wrong: a list is not a hash map")
        browser.find_element(By.TAG_NAME, "body").click()
        if os.environ.get("AEPO_UPDATE_SCREENSHOTS") == "1":
            browser.save_screenshot(str(SCREENSHOT))
        browser.save_screenshot(str(tmp_path / "page.png"))
        assert (tmp_path / "page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        before = _renders(browser)
        _keys(browser, Keys.ENTER)
        _wait_render(browser, before)
        assert browser.find_element(By.ID, "finished").is_displayed()

        _sign_in(browser, server.url, BOB)  # another labeller: a fresh sign-in, the same item, none of alice's answers
        assert browser.find_element(By.ID, "who").text == "bob"
        assert [o.text for o in browser.find_elements(By.CSS_SELECTOR, ".rate output")] == ["–", "–", "–"]
        _answer_with_keys(browser, [7, 3, 2])
        assert browser.find_element(By.ID, "finished").is_displayed()
        browser.find_element(By.CSS_SELECTOR, "#stats summary").click()
        agreement_text = browser.find_element(By.ID, "agreement").text
        rows = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#labellers tbody tr")]
    # Krippendorff's alpha (interval) by hand for (8,7), (3,3), (5,2): 1 - D_o/D_e = 1 - (20/6) / (352/30)
    expected = 1 - (20 / 6) / (352 / 30)
    assert f"{expected:.3f}" == "0.716" and "over all labellers: 0.716 (3 items" in agreement_text
    # name, answered, skipped, median seconds per item (timing: any number), mean |difference| (1 + 0 + 3) / 3, alpha
    cells = [row.split() for row in rows]
    assert [c[:3] + c[4:] for c in cells] == [["alice", "3", "0", "1.333", "–"], ["bob", "3", "0", "1.333", "–"]]
    assert all(float(c[3]) >= 0 for c in cells)
    outcome = AnnotationService(HumanQueueAnnotator(queue, store=store), AnnotationStore(store)).annotate(
        _screenshot_task()
    )
    assert outcome.scores == [[7.5, 3.0, 3.5]] and outcome.paid == 0  # the mean of alice's and bob's scores
    rationales = {a.labeller: a.raw.get("rationale") for rows in LabelBook(store).answers().values() for a in rows}
    assert rationales == {"alice": "2 is wrong: a list is not a hash map", "bob": None}


def test_a_script_in_a_completion_renders_as_text(browser, tmp_path):
    store, queue = tmp_path / "s.sqlite", tmp_path / "q.jsonl"
    evil = [
        "<script>window.__aepo_pwned = 'script'</script> tail",
        '<img src="x" onerror="window.__aepo_pwned = \'img\'"> and [a link](javascript:window.__aepo_pwned=1)',
    ]
    request = AnnotationRequest("Prompt <script>window.__aepo_pwned = 'prompt'</script>", evil)
    with pytest.raises(AnnotationsPending):
        AnnotationService(HumanQueueAnnotator(queue), AnnotationStore(store)).annotate([request])
    with LabellingServer(create_app(store, queue)) as server:
        _open(browser, server.url)
        _wait_render(browser, 0)
        _, candidates = _task(browser)
        assert candidates[0]["text"] == "<script>window.__aepo_pwned = 'script'</script> tail"
        assert candidates[1]["text"].startswith('<img src="x" onerror=')
        assert "<script>" in browser.find_element(By.ID, "prompt").text
        assert browser.execute_script("return typeof window.__aepo_pwned") == "undefined"  # nothing ran
        assert not browser.find_elements(By.CSS_SELECTOR, "#task script, #task img, #task [onerror]")
        for link in browser.find_elements(By.CSS_SELECTOR, "#task a"):
            assert not (link.get_attribute("href") or "").startswith("javascript:")
        _answer_with_keys(browser, [2, 9])
        assert browser.execute_script("return typeof window.__aepo_pwned") == "undefined"
    outcome = AnnotationService(HumanQueueAnnotator(queue, store=store), AnnotationStore(store)).annotate([request])
    assert outcome.scores == [[2.0, 9.0]]  # stored as usual


@pytest.mark.parametrize(
    "question, keys, expected",
    [
        ("ranking", ["2", "3"], [0.0, 2.0, 1.0]),  # 2 best, then 3; 1 is last by itself: Borda 2, 1, 0
        ("best_worst", ["3", "1"], [0.0, 1.0, 2.0]),  # 3 best, 1 worst, 2 in between
    ],
)
def test_ranking_and_best_worst_with_the_keyboard(browser, tmp_path, question, keys, expected):
    store, queue = tmp_path / "s.sqlite", tmp_path / "q.jsonl"
    request = AnnotationRequest("Which is best?", ["first", "second", "third"])
    with pytest.raises(AnnotationsPending):
        AnnotationService(HumanQueueAnnotator(queue), AnnotationStore(store)).annotate([request])
    settings = LabellingSettings(question=question, shuffle_seed=None)  # badges checked by position
    with LabellingServer(create_app(store, queue, settings=settings)) as server:
        _open(browser, server.url)
        _wait_render(browser, 0)
        submit = browser.find_element(By.ID, "submit")
        _keys(browser, keys[0])
        assert not submit.is_enabled()  # incomplete: Enter would do nothing
        _keys(browser, Keys.BACKSPACE, keys[0], keys[1])
        if question == "ranking":  # Backspace takes back the labeller's last pick with the page's fill-in
            _keys(browser, Keys.BACKSPACE)
            badges = [b.text for b in browser.find_elements(By.CSS_SELECTOR, "#candidates .badge")]
            assert badges == ["", "#1", ""]
            _keys(browser, keys[1])
        badges = [b.text for b in browser.find_elements(By.CSS_SELECTOR, "#candidates .badge")]
        assert badges == (["#3", "#1", "#2"] if question == "ranking" else ["worst", "", "best"])
        before = _renders(browser)
        _keys(browser, Keys.ENTER)
        _wait_render(browser, before)
        assert browser.find_element(By.ID, "finished").is_displayed()
    human = HumanQueueAnnotator(queue, store=store)
    assert AnnotationService(human, AnnotationStore(store)).annotate([request]).scores == [expected]


def _long_task() -> list[AnnotationRequest]:
    long = "\n\n".join(f"Paragraph {i}: a hash map hashes the key to find its bucket." for i in range(12))
    return [
        AnnotationRequest(
            "What does a **hash map** do?", [long, "It is a list you search from the start.", long + "\n\nThe end."]
        ),
        AnnotationRequest("And a **set**?", ["A hash map without values.", "A list."]),
    ]


def test_on_a_phone_the_page_fits_and_every_input_registers(browser, tmp_path):
    """Issue 30, items 8-10, 12, 13 at 390 px: sliders show no score until touched and a click where the thumb sits
    counts; Enter with a score missing says which; a mouse Submit shows the next prompt from the top; nothing is cut
    or wider than the screen; no keyboard hints; /login reloads to the form; an unreachable server says "not saved"."""
    store, queue = tmp_path / "s.sqlite", tmp_path / "q.jsonl"
    with pytest.raises(AnnotationsPending):
        AnnotationService(HumanQueueAnnotator(queue), AnnotationStore(store)).annotate(_long_task())
    tokens = LabellerTokens({"alice": ALICE, "bob": BOB})
    browser.set_window_size(390, 844)
    try:
        server = LabellingServer(create_app(store, queue, tokens=tokens, settings=LabellingSettings(labels_per_item=2)))
        with server:
            _open(browser, server.url + "login")  # a GET of /login (a reload after a failed sign-in): the form
            assert browser.find_element(By.ID, "token").is_displayed()
            browser.find_element(By.ID, "token").send_keys("wrong-token-000000")
            browser.find_element(By.ID, "sign-in").click()
            assert browser.find_element(By.ID, "login-error").text == "That token is not valid."
            _open(browser, server.url + "login")
            assert browser.find_element(By.ID, "token").is_displayed() and "405" not in browser.page_source
            _sign_in(browser, server.url, ALICE)
            sliders = browser.find_elements(By.CSS_SELECTOR, ".rate input")
            assert all("unset" in s.get_attribute("class") for s in sliders)  # no thumb: no score given yet
            assert [o.text for o in browser.find_elements(By.CSS_SELECTOR, ".rate output")] == ["–", "–", "–"]
            middle = sliders[0].get_attribute("value")
            browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", sliders[0])
            ActionChains(browser).move_to_element(sliders[0]).click().perform()  # where the hidden thumb sits
            first = browser.find_elements(By.CSS_SELECTOR, ".rate output")[0].text
            assert first == sliders[0].get_attribute("value") and first in {middle, str(int(middle) - 1)}
            assert "unset" not in sliders[0].get_attribute("class")
            assert browser.find_element(By.CSS_SELECTOR, "#candidate-1 .badge").text == f"{first} / 10"
            _keys(browser, Keys.ENTER)  # two scores missing: nothing sent, and the page says what is missing
            message = browser.find_element(By.ID, "message").text
            assert message == "Not submitted: score every response first (missing: response 2, 3)."
            browser.execute_script("document.getElementById('candidate-2').click()")
            _keys(browser, "3", "7")
            rows = browser.execute_script(  # the distinct lines the header's visible parts sit on
                "const tops = [...document.querySelectorAll('header > *')].filter((e) => e.offsetParent !== null)"
                ".map((e) => Math.round(e.getBoundingClientRect().bottom / 8)); return new Set(tops).size"
            )
            assert rows <= 2  # the header takes at most two lines
            assert not browser.find_element(By.ID, "keys").is_displayed()
            assert not any(k.is_displayed() for k in browser.find_elements(By.TAG_NAME, "kbd"))
            browser.find_element(By.CSS_SELECTOR, "#stats summary").click()
            fits = "return document.documentElement.scrollWidth <= window.innerWidth"
            assert browser.execute_script(fits)  # nothing wider than the screen
            browser.execute_script("window.scrollTo(0, 0)")
            _save_for_docs(browser, "labelling-phone.png")
            submit = browser.find_element(By.ID, "submit")
            browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", submit)
            assert browser.execute_script("return window.scrollY") > 300
            before = _renders(browser)
            submit.click()  # the mouse, far down the page
            _wait_render(browser, before)
            assert browser.find_element(By.ID, "prompt").text == "And a set?"
            assert browser.execute_script("return window.scrollY") == 0  # the new prompt is in view
            table = browser.find_element(By.ID, "labellers")
            assert browser.execute_script(fits) and table.rect["x"] >= 0
            _keys(browser, "9")
        _keys(browser, "2", Keys.ENTER)  # the server is gone
        WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "message").text)
        assert browser.find_element(By.ID, "message").text.startswith("Not saved: the server cannot be reached")
    finally:
        browser.set_window_size(1280, 900)
    answers = LabelBook(store).answers()
    assert sorted(a.score for rows in answers.values() for a in rows) == sorted([float(first), 3.0, 7.0])


def test_a_reviewer_overrides_a_disagreement(browser, tmp_path):
    store, queue = tmp_path / "s.sqlite", tmp_path / "q.jsonl"
    with pytest.raises(AnnotationsPending):
        AnnotationService(HumanQueueAnnotator(queue), AnnotationStore(store)).annotate(_screenshot_task())
    tokens_file = tmp_path / "team.txt"
    tokens_file.write_text(f"alice:{ALICE}\nbob:{BOB}\nrita:rita-token-1212121212:reviewer\n")
    tokens_file.chmod(0o600)
    from aepo_trainer.labelling import load_tokens

    settings = LabellingSettings(labels_per_item=2, require_review=True)
    with LabellingServer(create_app(store, queue, tokens=load_tokens(str(tokens_file)), settings=settings)) as server:
        for token, scores in ((ALICE, [9, 2, 5]), (BOB, [3, 2, 5])):
            with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as client:
                task = client.get("api/state").json()["task"]
                ordered = sorted(task["candidates"], key=lambda c: c["pool_index"])
                answer = {"task": task["id"], "scores": {c["key"]: v for c, v in zip(ordered, scores)}}
                client.post("api/answer", json=answer).raise_for_status()
        _sign_in(browser, server.url, "rita-token-1212121212")
        assert browser.find_element(By.ID, "who").text == "rita (reviewer)"
        browser.find_element(By.CSS_SELECTOR, "#review summary").click()
        WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".review-item"))
        first = browser.find_element(By.ID, "review-1")
        assert first.find_element(By.CSS_SELECTOR, ".labels").text == "alice: 9 · bob: 3"  # largest spread first
        first.find_element(By.CSS_SELECTOR, ".override-score").send_keys("8")
        browser.execute_script("document.getElementById('review').scrollIntoView()")
        _save_for_docs(browser, "labelling-review.png")
        first.find_element(By.CSS_SELECTOR, "button.override").click()
        WebDriverWait(browser, 30).until(lambda d: "override by rita" in d.find_element(By.ID, "review-items").text)
    assert list(LabelBook(store).final_scores().values()) == [8.0]  # only the reviewed item is final
