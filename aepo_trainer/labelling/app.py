"""The labelling page's HTTP application: a FastAPI app over a run's human queue and annotation store.

Why FastAPI and a plain HTML/JS page rather than Gradio (the Hugging Face UI library): the page's hard requirements
are security and crash-safety, not widgets. With a small hand-written app every route is ours to check — a token on
every request (401 otherwise), one JSON endpoint per action with its input validated against the store before
anything is written, a strict Content-Security-Policy (no inline script at all: untrusted completions cannot run
code), no third-party assets fetched at page load (the page works offline and leaks nothing), and an answer
committed to SQLite before the response that shows the next item is sent. Gradio's queue, websocket and component
state would each have to be audited for the same guarantees, and its pages are much harder to drive in a browser test.
FastAPI runs on uvicorn (both BSD-licensed, the standard Python ASGI stack), and the app is testable with any HTTP
client.

Routes: `GET /` (the page; without a valid token: 401 and a sign-in form), `POST /login` (form field `token` -> an
HttpOnly, SameSite=Strict cookie holding an HMAC under the token, not the token; tokens never travel in URLs, which end
up in logs), `POST /logout`,
`GET /static/page.js|page.css`, `GET /api/state`, `POST /api/answer`, `POST /api/undo`. The API also accepts
`Authorization: Bearer <token>`. Every state answer carries only the caller's own task and counts: one labeller never
sees another's answers.
"""

from __future__ import annotations

import json
import logging
import math
import os
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.middleware.trustedhost import TrustedHostMiddleware

from aepo_trainer.annotation.human import HumanQueueAnnotator
from aepo_trainer.storage.annotations import AnnotationStore

from ..storage.label_book import LabelBook, LabelConflict, LabellingSettings
from .agreement import agreement, best_worst_points, borda_points
from .auth import LabellerTokens
from .render import render_turns
from .tasks import QueueView

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_INSTRUCTIONS", "create_app"]

COOKIE = "aepo_label_token"
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]

DEFAULT_INSTRUCTIONS = {
    "score": "Rate how good each response is as an answer to the prompt (helpful, correct, safe), "
    "from {scale_min} (worst) to {scale_max} (best).",
    "ranking": "Rank the responses from the best answer to the prompt to the worst.",
    "best_worst": "Pick the best and the worst response to the prompt.",
}

_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # not "no-referrer": browsers would then send `Origin: null`
    "Cache-Control": "no-store",
}

_LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>aepo label: sign in</title><link rel="stylesheet" href="static/page.css"></head>
<body><main class="login"><h1>aepo label</h1>
<form method="post" action="login"><label for="token">Your labelling token</label>
<input id="token" name="token" type="password" autocomplete="current-password" autofocus required>
<button type="submit" id="sign-in">Sign in</button></form><p class="error">{message}</p></main></body></html>
"""


def create_app(
    store: AnnotationStore | str | os.PathLike,
    queue: str | os.PathLike,
    labels_path: str | os.PathLike | None = None,
    *,
    settings: LabellingSettings | None = None,
    tokens: LabellerTokens | None = None,
    labeller: str = "local",
    instructions: str | None = None,
    lease_seconds: float = 600.0,
    loopback_only: bool = True,
):
    """The labelling page over `queue` (a `HumanQueueAnnotator` queue file) and `store` (the run's store).

    Args:
        store, queue, labels_path: the run's annotation store, its queue file and (optional) labels file.
        settings: what is asked (`LabellingSettings`); recorded in the store so runs aggregate the same way.
        tokens: the labellers allowed (`auth.load_tokens`); None = no sign-in, every answer is `labeller`'s (only for
            a page bound to 127.0.0.1, see `loopback_only`).
        instructions: the question shown above the prompt (default: one per question type).
        lease_seconds: how long a task shown to one labeller is kept from the others.
        loopback_only: refuse requests whose `Host` is not a loopback name (against DNS rebinding: a web site
            cannot reach an unauthenticated page on 127.0.0.1 through the labeller's browser).
    """
    settings = settings or LabellingSettings()
    store = store if isinstance(store, AnnotationStore) else AnnotationStore(store)
    annotator = HumanQueueAnnotator(queue, labels_path=labels_path, store=store)
    book = LabelBook(store)
    book.configure(settings)
    view = QueueView(annotator, book, settings, lease_seconds=lease_seconds)
    question = (instructions or DEFAULT_INSTRUCTIONS[settings.question]).format(**vars(settings))

    app = FastAPI(title="aepo label", docs_url=None, redoc_url=None, openapi_url=None)
    if loopback_only:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_HOSTS)

    @app.middleware("http")
    async def security_headers(request, call_next):
        if request.method == "POST" and not _same_origin(request):
            logger.warning("labelling page: a cross-site POST to %s was refused", request.url.path)
            return JSONResponse({"detail": "cross-site request refused"}, status_code=403, headers=_SECURITY_HEADERS)
        response = await call_next(request)
        for name, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    def who(request: Request) -> str | None:
        if tokens is None:
            return labeller
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            return tokens.labeller(header[7:].strip())
        return tokens.labeller_of_session(request.cookies.get(COOKIE))

    def require(request: Request) -> str:
        name = who(request)
        if name is None:
            raise HTTPException(status_code=401, detail="a valid labelling token is required")
        return name

    def login_page(message: str = "", status: int = 401):
        return HTMLResponse(_LOGIN_PAGE.format(message=message), status_code=status)

    # ------------------------------------------------------------------------------------------- pages

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request):
        if who(request) is None:
            return login_page()
        return HTMLResponse(_static("page.html"))

    @app.post("/login")
    async def login(request: Request):
        if tokens is None:
            return RedirectResponse("./", status_code=303)
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0].strip()
        name = tokens.labeller(token)
        if name is None:
            logger.warning("labelling page: a sign-in with an invalid token was refused")
            return login_page("That token is not valid.")
        response = RedirectResponse("./", status_code=303)
        response.set_cookie(
            COOKIE,
            tokens.session(name),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        logger.info("labelling page: %s signed in", name)
        return response

    @app.post("/logout")
    def logout():
        response = RedirectResponse("./", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    @app.get("/static/{name}")
    def static(name: str):
        types = {"page.js": "text/javascript", "page.css": "text/css"}
        if name not in types:
            raise HTTPException(status_code=404)
        return Response(_static(name), media_type=types[name])

    # ------------------------------------------------------------------------------------------- API

    def state(name: str) -> dict:
        chosen = view.next_task(name)
        progress = view.progress(name)
        last = book.last_submission(name)
        read = store.annotated([a.key for a in last])
        task = None
        if chosen is not None:
            t, keys = chosen
            by_key = {item["id"]: item for item in t.items}
            task = {
                "id": t.id,
                "prompt_html": render_turns(t.prompt),
                "candidates": [
                    {
                        "key": k,
                        "html": render_turns(by_key[k].get("completion", "")),
                        "pool_index": by_key[k].get("pool_index"),
                    }
                    for k in keys
                ],
            }
        return {
            "labeller": name,
            "signed_in": tokens is not None,
            "question": settings.question,
            "instructions": question,
            "scale": [settings.scale_min, settings.scale_max],
            "labels_per_item": settings.labels_per_item,
            "progress": {
                "items": progress.items,
                "done": progress.done,
                "pending": progress.pending,
                "read_by_run": progress.read_by_run,
                "yours": progress.yours,
                "labellers": progress.labellers,
            },
            "agreement": agreement_of(view),
            "can_undo": bool(last) and not read,
            "task": task,
        }

    @app.get("/api/state")
    def get_state(request: Request):
        return state(require(request))

    @app.post("/api/answer")
    async def answer(request: Request):
        name = require(request)
        body = await _json_body(request)
        return await run_in_threadpool(answer_now, name, body)  # SQLite work off the event loop

    def answer_now(name: str, body: dict) -> dict:
        task = view.task(str(body.get("task", "")))
        if task is None:
            raise HTTPException(status_code=404, detail="no such task in the queue")
        _, done, answers = view.state()
        open_keys = view.open_keys(task, name, done, answers)
        if not open_keys:
            raise HTTPException(status_code=409, detail="nothing is left for you to answer in this task")
        rows = _validated_answer(body, open_keys, settings)
        try:
            book.submit(name, rows, settings.labels_per_item)
        except LabelConflict as error:
            view.release(name, task.id)
            raise HTTPException(status_code=409, detail=f"{error}; here is your next task") from None
        view.release(name, task.id)
        logger.info("labelling page: %s answered %d item(s)", name, len(rows))
        return state(name)

    @app.post("/api/undo")
    async def undo(request: Request):
        name = require(request)
        await _json_body(request)
        return await run_in_threadpool(undo_now, name)

    def undo_now(name: str) -> dict:
        try:
            keys = book.undo(name)
        except LabelConflict as error:
            raise HTTPException(status_code=409, detail=str(error)) from None
        task = view.task_of(keys[0]) if keys else None
        if task is not None:
            view.show_next(name, task.id)
        return state(name)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    app.state.view, app.state.book, app.state.settings = view, book, settings
    return app


def agreement_of(view: QueueView) -> dict:
    """Agreement over the answers of the view's queue (Borda points are ordinal, scores interval)."""
    keys = [k for task in view.tasks() for k in task.keys]
    answers = {k: {a.labeller: a.score for a in rows} for k, rows in view.book.answers(keys).items()}
    level = "interval" if view.settings.question == "score" else "ordinal"
    return agreement(answers, level=level)


def _validated_answer(body: dict, open_keys: list[str], settings: LabellingSettings) -> dict:
    """`{key: (score, raw)}` from a posted answer, or a 400 naming what is wrong. Keys must be exactly the task's
    open items (a forged key, a key of another task or one already answered changes nothing)."""

    def bad(message: str):
        raise HTTPException(status_code=400, detail=message)

    if body.get("skip") is True:
        return {k: (None, {"skip": True}) for k in open_keys}
    if settings.question == "score":
        scores = body.get("scores")
        if not isinstance(scores, dict) or set(scores) != set(open_keys):
            bad("'scores' must give one score for each candidate shown, by key")
        rows = {}
        for key in open_keys:
            value = scores[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                bad(f"the score of candidate {key[:12]} is not a number")
            if not settings.scale_min <= value <= settings.scale_max:
                bad(f"the score of candidate {key[:12]} is outside {settings.scale_min}..{settings.scale_max}")
            rows[key] = (float(value), {"score": value})
        return rows
    if settings.question == "ranking":
        ranking = body.get("ranking")
        if not isinstance(ranking, list) or sorted(map(str, ranking)) != sorted(open_keys):
            bad("'ranking' must list every candidate shown exactly once, best first")
        points = borda_points([str(k) for k in ranking])
        return {k: (points[k], {"rank": ranking.index(k), "of": len(ranking)}) for k in open_keys}
    best, worst = body.get("best"), body.get("worst")
    if best not in open_keys or worst not in open_keys or (best == worst and len(open_keys) > 1):
        bad("'best' and 'worst' must be two different candidates shown")
    points = best_worst_points(open_keys, best, worst)
    return {k: (points[k], {"best": k == best, "worst": k == worst, "of": len(open_keys)}) for k in open_keys}


async def _json_body(request) -> dict:
    """The JSON object of a POST, which must say it is JSON (a cross-site form cannot)."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise HTTPException(status_code=415, detail="send application/json")
    try:
        body = json.loads(await request.body() or b"{}")
    except json.JSONDecodeError:
        raise HTTPException(status_code=400, detail="the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise HTTPException(status_code=400, detail="the body must be a JSON object")
    return body


def _same_origin(request) -> bool:
    """A POST from the page itself: no `Origin` (non-browser clients) or one naming this host. A cross-site form
    could otherwise sign a labeller in under someone else's token (login CSRF) or post answers."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    from urllib.parse import urlsplit

    return urlsplit(origin).netloc.lower() == request.headers.get("host", "").lower()


def _static(name: str) -> str:
    return resources.files("aepo_trainer.labelling").joinpath("static", name).read_text(encoding="utf-8")


def default_queue(store_path: str | os.PathLike) -> Path:
    """The queue file a run pairs with `store_path`: `aepo select`'s `<out>.annotation_queue.jsonl` next to
    `<out>.annotations.sqlite`, or the trainer's `annotation_queue.jsonl` next to `annotations.sqlite`."""
    store_path = Path(store_path)
    name = store_path.name
    if name.endswith(".annotations.sqlite"):
        return store_path.with_name(name[: -len(".annotations.sqlite")] + ".annotation_queue.jsonl")
    return store_path.with_name("annotation_queue.jsonl")
