"""The labelling page's HTTP application: a FastAPI app over a run's human queue and annotation store.

Why FastAPI and a plain HTML/JS page rather than Gradio (the Hugging Face UI library): the page's hard requirements
are security and crash-safety, not widgets. With a small hand-written app every route is ours to check — a session or
token on every request (401 otherwise), one JSON endpoint per action with its input validated against the store
before anything is written, a strict Content-Security-Policy (no inline script at all: untrusted completions cannot
run code), no third-party assets fetched at page load (the page works offline and leaks nothing), and an answer
committed to SQLite before the response that shows the next item is sent. Gradio's queue, websocket and component
state would each have to be audited for the same guarantees, and its pages are much harder to drive in a browser test.
FastAPI runs on uvicorn (both BSD-licensed, the standard Python ASGI stack), and the app is testable with any HTTP
client.

Routes: `GET /` (the page; without a session: 401 and a sign-in form), `GET|POST /login` (form field `token` -> a
server-side session, `storage/label_sessions.py`, in an HttpOnly, SameSite=Strict cookie; tokens never travel in URLs, which end up
in logs; failed sign-ins are limited per client address), `POST /logout` (ends the session on the server),
`GET /guidelines`, `GET /static/page.js|page.css`, and the JSON API of `api.py`. The API also accepts
`Authorization: Bearer <token>`. In front of every route, `security.RequestGuard`: security headers on every response,
413 for an oversized body before it is read, 403 for a cross-origin POST.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from html import escape
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.middleware.trustedhost import TrustedHostMiddleware

from aepo_trainer.annotation.human import HumanQueueAnnotator
from aepo_trainer.errors import StorageWriteError
from aepo_trainer.storage.annotations import AnnotationStore

from ..storage.label_book import LabelBook, LabellingSettings
from ..storage.label_sessions import LabelSessions
from .auth import LabellerTokens
from .gold import GoldBook, load_gold_items
from .render import render_markdown
from .security import SECURITY_HEADERS, LoginThrottle, RequestError, RequestGuard, ServerLimits
from .tasks import QueueView

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_INSTRUCTIONS", "create_app", "default_queue"]

COOKIE = "aepo_label_session"
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]

DEFAULT_INSTRUCTIONS = {
    "score": "Rate how good each response is as an answer to the prompt (helpful, correct, safe), "
    "from {scale_min} (worst) to {scale_max} (best).",
    "ranking": "Rank the responses from the best answer to the prompt to the worst.",
    "best_worst": "Pick the best and the worst response to the prompt.",
}

_LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>aepo label: sign in</title><link rel="stylesheet" href="static/page.css"></head>
<body><main class="login"><h1>aepo label</h1>
<form method="post" action="login"><label for="token">Your labelling token</label>
<input id="token" name="token" type="password" autocomplete="current-password" autofocus required>
<button type="submit" id="sign-in">Sign in</button></form><p class="error" id="login-error">{message}</p></main>
</body></html>
"""

_GUIDELINES_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>aepo label: guidelines</title><link rel="stylesheet" href="static/page.css"></head>
<body><main class="guidelines"><p><a href="./">&larr; back to labelling</a></p><div class="md" id="guidelines">{html}</div>
</main></body></html>
"""


@dataclass
class PageContext:
    """What the routes share: the run's store and queue, who may label, and the page's settings and limits."""

    store: AnnotationStore
    book: LabelBook
    view: QueueView
    settings: LabellingSettings
    limits: ServerLimits
    tokens: LabellerTokens | None
    sessions: LabelSessions
    throttle: LoginThrottle
    labeller: str
    question: str
    guidelines: str | None
    gold: GoldBook | None = None

    def who(self, request: Request) -> tuple[str, str] | None:
        """`(name, role)` of the caller, or None. Re-reads a changed token file first: a removed labeller's
        sessions end now. A wrong bearer token counts as a failed sign-in of the client's address."""
        if self.tokens is None:
            return self.labeller, "reviewer"  # one person on their own machine leads their own run
        removed = self.tokens.refresh()
        if removed:
            self.sessions.revoke(removed)
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            address = client_address(request)
            if self.throttle.retry_after(address):
                raise HTTPException(status_code=429, detail="too many failed sign-ins from your address; wait")
            name = self.tokens.labeller(header[7:].strip())
            if name is None:
                self.throttle.failed(address)
                logger.warning("labelling page: a request with an invalid token from %s was refused", address)
                return None
        else:
            name = self.sessions.labeller(request.cookies.get(COOKIE))
        role = None if name is None else self.tokens.role(name)
        return None if role is None else (name, role)

    def require(self, request: Request, role: str | None = None) -> str:
        found = self.who(request)
        if found is None:
            raise HTTPException(status_code=401, detail="a valid labelling token is required")
        if role is not None and found[1] != role:
            raise HTTPException(status_code=403, detail=f"only a {role} may do this")
        return found[0]


def client_address(request: Request) -> str:
    """The client's address (the proxy's `X-Forwarded-For` client when the proxy is trusted, see `LabellingServer`)."""
    return request.client.host if request.client else "unknown"


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
    limits: ServerLimits | None = None,
    public_url: str | None = None,
    guidelines: str | os.PathLike | None = None,
    gold_items: str | os.PathLike | None = None,
    gold_every: int = 5,
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
        limits: request size, JSON, sign-in and session limits (`ServerLimits`, documented defaults).
        public_url: the address labellers open (e.g. `https://label.example.org/`, behind a reverse proxy): POSTs
            must come from this origin, scheme included. None: the request's own scheme and `Host`.
        guidelines: a Markdown file shown at `/guidelines` (linked from the page).
        gold_items, gold_every: a JSONL file of honeypot tasks with a known best answer (`gold.load_gold_items`),
            one shown to each labeller after every `gold_every` of their submissions; their accuracy is reported.
    """
    settings = settings or LabellingSettings()
    limits = limits or ServerLimits()
    store = store if isinstance(store, AnnotationStore) else AnnotationStore(store)
    annotator = HumanQueueAnnotator(queue, labels_path=labels_path, store=store)
    book = LabelBook(store)
    book.configure(settings)
    guidelines_text = None
    if guidelines is not None:
        try:
            guidelines_text = Path(guidelines).read_text(encoding="utf-8")
        except OSError as error:
            raise ValueError(f"guidelines {guidelines}: cannot read the file ({error.strerror})") from None
    ctx = PageContext(
        store=store,
        book=book,
        view=QueueView(annotator, book, settings, lease_seconds=lease_seconds),
        settings=settings,
        limits=limits,
        tokens=tokens,
        sessions=LabelSessions(store, limits.session_hours * 3600),
        throttle=LoginThrottle(limits.login_attempts, limits.login_window_seconds),
        labeller=labeller,
        question=(instructions or DEFAULT_INSTRUCTIONS[settings.question]).format(**vars(settings)),
        guidelines=guidelines_text,
        gold=None if gold_items is None else GoldBook(store, load_gold_items(gold_items), gold_every),
    )

    app = FastAPI(title="aepo label", docs_url=None, redoc_url=None, openapi_url=None)
    if loopback_only:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_HOSTS)
    app.add_middleware(RequestGuard, limits=limits, public_url=public_url, log=logger)  # outermost of ours

    def login_page(message: str = "", status: int = 401, headers=None):
        return HTMLResponse(_LOGIN_PAGE.format(message=escape(message)), status_code=status, headers=headers)

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request):
        if ctx.who(request) is None:
            return login_page()
        return HTMLResponse(_static("page.html"))

    @app.get("/login")
    def login_again():  # a reload of the page a failed sign-in answered: back to the form, not a 405
        return RedirectResponse("./", status_code=303)

    @app.post("/login")
    async def login(request: Request):
        if tokens is None:
            return RedirectResponse("./", status_code=303)
        address = client_address(request)
        wait = ctx.throttle.retry_after(address)
        if wait:
            logger.warning("labelling page: a sign-in from %s was refused (too many failed attempts)", address)
            message = f"Too many failed sign-ins from your address: try again in {int(wait) + 1} seconds."
            return login_page(message, status=429, headers={"Retry-After": str(int(wait) + 1)})
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        tokens.refresh()
        name = tokens.labeller((form.get("token") or [""])[0].strip())
        if name is None:
            ctx.throttle.failed(address)
            logger.warning("labelling page: a sign-in with an invalid token from %s was refused", address)
            return login_page("That token is not valid.")
        ctx.throttle.succeeded(address)
        response = RedirectResponse("./", status_code=303)
        response.set_cookie(
            COOKIE,
            ctx.sessions.open(name),
            max_age=int(limits.session_hours * 3600),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        logger.info("labelling page: %s signed in from %s", name, address)
        return response

    @app.post("/logout")
    def logout(request: Request):
        ctx.sessions.close(request.cookies.get(COOKIE))
        response = RedirectResponse("./", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    @app.get("/guidelines", response_class=HTMLResponse)
    def guidelines_page(request: Request):
        ctx.require(request)
        if ctx.guidelines is None:
            raise HTTPException(status_code=404, detail="this page has no guidelines (aepo label --guidelines)")
        return HTMLResponse(_GUIDELINES_PAGE.format(html=render_markdown(ctx.guidelines)))

    @app.get("/static/{name}")
    def static(name: str):
        types = {"page.js": "text/javascript", "page.css": "text/css"}
        if name not in types:
            raise HTTPException(status_code=404)
        return Response(_static(name), media_type=types[name])

    from .api import add_api_routes  # the JSON API (state, answer, undo, review)

    add_api_routes(app, ctx)

    @app.exception_handler(StorageWriteError)
    async def storage_refused(request, exc: StorageWriteError):  # the page stays up; the labeller can submit again
        logger.error("labelling page: an answer was not saved: %s", exc.summary)
        detail = (
            f"Not saved: {exc.summary}. The answers saved before are kept. {exc.fix} (ask whoever runs this page), "
            "then submit again."
        )
        return JSONResponse({"detail": detail}, status_code=507)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestError)
    async def request_error(request, exc: RequestError):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(Exception)
    async def server_error(request, exc: Exception):  # answered outside the guard: the headers are added here
        logger.error("labelling page: %s on %s", type(exc).__name__, request.url.path, exc_info=exc)
        return JSONResponse({"detail": "internal error (logged)"}, status_code=500, headers=SECURITY_HEADERS)

    app.state.view, app.state.book, app.state.settings, app.state.context = ctx.view, book, settings, ctx
    return app


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
