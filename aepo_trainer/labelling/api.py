"""The labelling page's JSON API: `GET /api/state`, `POST /api/answer`, `POST /api/undo`, `GET|POST /api/review`.

Every state answer carries only the caller's own task and counts: one labeller never sees another's answers. A
labeller may answer only a task the page showed them (403 otherwise), with exactly its open candidates. Reviewers
(`role` `reviewer` in the token file) also see the finished items with their labels and accept or override them.
"""

from __future__ import annotations

import logging
import time

from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool

from ..storage.label_book import LabelConflict
from .agreement import agreement
from .answers import AnswerError, validated_answer
from .gold import gold_accuracy
from .render import render_turns
from .security import RequestError, parse_json_body

logger = logging.getLogger(__name__)

__all__ = ["add_api_routes", "agreement_of"]


def agreement_of(view) -> dict:
    """Agreement over the answers of the view's queue (Borda points are ordinal, scores interval)."""
    keys = [k for task in view.tasks() for k in task.keys]
    answers = {k: {a.labeller: a.score for a in rows} for k, rows in view.book.answers(keys).items()}
    level = "interval" if view.settings.question == "score" else "ordinal"
    return agreement(answers, level=level)


def add_api_routes(app, ctx) -> None:
    """Register the API routes of `create_app` on `app` (`ctx`: the app's `PageContext`)."""
    view, book, settings, store = ctx.view, ctx.book, ctx.settings, ctx.store

    async def json_body(request: Request) -> dict:
        """The JSON object of a POST, which must say it is JSON (a cross-site form cannot)."""
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise HTTPException(status_code=415, detail="send application/json")
        body = parse_json_body(await request.body(), ctx.limits)
        if not isinstance(body, dict):
            raise RequestError(400, "the body must be a JSON object")
        return body

    def next_task(name: str):
        """A gold task when one is due (`gold.py`), else the queue's next task for `name`."""
        if ctx.gold is not None:
            gold = ctx.gold.due(name, book.submissions(name))
            if gold is not None:
                return gold.task, gold.task.keys
        return view.next_task(name)

    def state(name: str, role: str) -> dict:
        chosen = next_task(name)
        progress = view.progress(name)
        labellers = progress.labellers
        if role == "reviewer" and ctx.gold is not None:  # accuracy on gold items: for the leads only
            labellers = {n: {**row, **gold_accuracy(store).get(n, {})} for n, row in labellers.items()}
        last = book.last_submission(name)
        read = store.annotated([a.key for a in last])
        task = None
        if chosen is not None:
            t, keys = chosen
            view.mark_shown(name, t.id)
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
                    for k in view.order(name, t, keys)
                ],
            }
        return {
            "labeller": name,
            "role": role,
            "signed_in": ctx.tokens is not None,
            "question": settings.question,
            "instructions": ctx.question,
            "scale": [settings.scale_min, settings.scale_max],
            "labels_per_item": settings.labels_per_item,
            "options": {
                "tie": settings.allow_tie,
                "all_bad": settings.allow_all_bad,
                "rationale": settings.rationale,
                "max_rationale_chars": ctx.limits.max_rationale_chars,
            },
            "guidelines": ctx.guidelines is not None,
            "progress": {
                "items": progress.items,
                "done": progress.done,
                "pending": progress.pending,
                "prompts": progress.prompts,
                "prompts_done": progress.prompts_done,
                "read_by_run": progress.read_by_run,
                "yours": progress.yours,
                "labellers": labellers,
            },
            "agreement": agreement_of(view),
            "can_undo": bool(last) and not read,
            "task": task,
        }

    def caller(request: Request) -> tuple[str, str]:
        name = ctx.require(request)
        return name, ctx.tokens.role(name) if ctx.tokens is not None else "reviewer"

    @app.get("/api/state")
    def get_state(request: Request):
        return state(*caller(request))

    @app.post("/api/answer")
    async def answer(request: Request):
        name, role = caller(request)
        body = await json_body(request)
        return await run_in_threadpool(answer_now, name, role, body)  # SQLite work off the event loop

    def answer_now(name: str, role: str, body: dict) -> dict:
        task_id = str(body.get("task", ""))
        gold = ctx.gold.by_id.get(task_id) if ctx.gold is not None else None
        task = gold.task if gold is not None else view.task(task_id)
        if task is None:
            raise HTTPException(status_code=404, detail="no such task in the queue")
        shown_at = view.shown_at(name, task.id)
        if shown_at is None:
            raise HTTPException(status_code=403, detail="this task was not shown to you: answer the one on your page")
        if gold is not None:
            return answer_gold(name, role, gold, body, shown_at)
        _, done, answers = view.state()
        open_keys = view.order(name, task, view.open_keys(task, name, done, answers))
        if not open_keys:
            raise HTTPException(status_code=409, detail="nothing is left for you to answer in this task")
        try:
            rows = validated_answer(body, open_keys, settings, ctx.limits.max_rationale_chars)
        except AnswerError as error:
            raise HTTPException(status_code=400, detail=str(error)) from None
        seconds = round(time.time() - shown_at, 3)
        rows = {key: (score, {**raw, "seconds": seconds}) for key, (score, raw) in rows.items()}
        try:
            book.submit(name, rows, settings.labels_per_item)
        except LabelConflict as error:
            view.release(name, task.id)
            raise HTTPException(status_code=409, detail=f"{error}; here is your next task") from None
        view.release(name, task.id)
        logger.info("labelling page: %s answered %d item(s)", name, len(rows))
        return state(name, role)

    def answer_gold(name: str, role: str, gold, body: dict, shown_at: float) -> dict:
        if gold.task.id in ctx.gold.answered(name):
            raise HTTPException(status_code=409, detail="nothing is left for you to answer in this task")
        keys = view.order(name, gold.task, gold.task.keys)
        try:
            rows = validated_answer(body, keys, settings, ctx.limits.max_rationale_chars)
        except AnswerError as error:
            raise HTTPException(status_code=400, detail=str(error)) from None
        seconds = round(time.time() - shown_at, 3)
        ctx.gold.record(name, gold, {k: (score, {**raw, "seconds": seconds}) for k, (score, raw) in rows.items()})
        logger.info("labelling page: %s answered a gold task", name)  # the log is the lead's: the page tells nothing
        return state(name, role)

    @app.post("/api/undo")
    async def undo(request: Request):
        name, role = caller(request)
        await json_body(request)
        return await run_in_threadpool(undo_now, name, role)

    def undo_now(name: str, role: str) -> dict:
        try:
            keys = book.undo(name)
        except LabelConflict as error:
            raise HTTPException(status_code=409, detail=str(error)) from None
        task = view.task_of(keys[0]) if keys else None
        if task is not None:
            view.show_next(name, task.id)
            view.forget_shown(name, task.id)  # its time is counted again from now
        return state(name, role)

    # ------------------------------------------------------------------------------------------- review

    def review_list() -> dict:
        """The finished items not yet read by a run, grouped by prompt, with every labeller's score: the ones the
        labellers disagree on first (largest spread)."""
        tasks = view.tasks()
        keys = [k for t in tasks for k in t.keys]
        answers = book.answers(keys)
        read = store.annotated(keys)
        reviews = book.reviews()
        out = []
        for t in tasks:
            by_key = {item["id"]: item for item in t.items}
            for key in t.keys:
                rows = answers.get(key, [])
                if key in read or len(rows) < settings.labels_per_item:
                    continue
                values = [a.score for a in rows if a.score is not None]
                spread = max(values) - min(values) if values else 0.0
                if not settings.require_review and spread == 0 and len(rows) > 1:
                    continue  # unanimous: nothing to adjudicate unless every item needs a review
                review = reviews.get(key)
                out.append(
                    {
                        "key": key,
                        "task": t.id,
                        "prompt_html": render_turns(t.prompt),
                        "html": render_turns(by_key[key].get("completion", "")),
                        "labels": [
                            {"labeller": a.labeller, "score": a.score, "rationale": a.raw.get("rationale")}
                            for a in rows
                        ],
                        "spread": spread,
                        "review": None
                        if review is None
                        else {"reviewer": review.reviewer, "decision": review.decision, "score": review.score},
                    }
                )
        out.sort(key=lambda item: (item["review"] is not None, -item["spread"]))
        return {"require_review": settings.require_review, "items": out}

    @app.get("/api/review")
    def get_review(request: Request):
        ctx.require(request, role="reviewer")
        return review_list()

    @app.post("/api/review")
    async def post_review(request: Request):
        name = ctx.require(request, role="reviewer")
        body = await json_body(request)
        key, decision, score = body.get("key"), body.get("decision"), body.get("score")
        if not isinstance(key, str) or view.task_of(key) is None:
            raise HTTPException(status_code=404, detail="'key' is not an item of the queue")
        if decision not in ("accept", "override"):
            raise HTTPException(status_code=400, detail="'decision' must be accept or override")
        if decision == "override":
            low, high = (settings.scale_min, settings.scale_max) if settings.question == "score" else (0, 10**6)
            if isinstance(score, bool) or not isinstance(score, (int, float)) or not low <= score <= high:
                raise HTTPException(status_code=400, detail=f"'score' must be a number in {low}..{high}")
            score = float(score)
        elif score is not None:
            raise HTTPException(status_code=400, detail="an accept takes no 'score'")
        try:
            await run_in_threadpool(book.review, name, key, decision, score)
        except LabelConflict as error:
            raise HTTPException(status_code=409, detail=str(error)) from None
        logger.info("labelling page: %s reviewed an item (%s)", name, decision)
        return review_list()
