"""The labelling page's walls in front of every route: response headers, request size, origin, JSON, sign-in attempts.

Why a pure ASGI middleware (`RequestGuard`) rather than FastAPI's `@app.middleware("http")`: the guard must answer
**413 before the body is read** (an unauthenticated 250 MB POST must not be buffered), count the bytes of a streamed
body without a `Content-Length`, and put the security headers on *every* response — the 4xx it sends itself, the
app's errors, the static files. A `BaseHTTPMiddleware` only sees a response after the app built it, and a body
already being read.

Limits are `ServerLimits` fields with documented defaults (`aepo label --max_body_kb` etc., docs/labelling-team.md).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = ["SECURITY_HEADERS", "LoginThrottle", "RequestGuard", "ServerLimits", "origin_of", "parse_json_body"]

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # not "no-referrer": browsers would then send `Origin: null`
    "Cache-Control": "no-store",
}

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class ServerLimits:
    """What one request may carry and how sessions and sign-ins are bounded (every field is an `aepo label` flag).

    Attributes:
        max_body_bytes: largest request body (bytes); a bigger one gets 413 before it is read. An answer with a
            rationale is a few KB; 64 KiB leaves room for long rationales.
        max_json_depth: deepest nesting of a posted JSON body (an answer needs 3).
        max_number_chars: longest number literal in a posted JSON body (a score needs a few characters).
        max_rationale_chars: longest free-text rationale kept with an answer.
        login_attempts: failed sign-ins allowed per client address within `login_window_seconds`; then 429.
        login_window_seconds: the window of `login_attempts`.
        session_hours: how long a sign-in lasts (the session is stored server-side and expires then).
    """

    max_body_bytes: int = 64 * 1024
    max_json_depth: int = 8
    max_number_chars: int = 24
    max_rationale_chars: int = 2000
    login_attempts: int = 10
    login_window_seconds: float = 300.0
    session_hours: float = 12.0

    def __post_init__(self):
        for name in ("max_body_bytes", "max_json_depth", "max_number_chars", "max_rationale_chars", "login_attempts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        for name in ("login_window_seconds", "session_hours"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}.")


class RequestError(Exception):
    """A request refused by the guard or the JSON parser: an HTTP status and a reason for the client."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


class _BodyTooLarge(Exception):
    pass


def origin_of(url: str) -> tuple[str, str, int] | None:
    """`(scheme, host, port)` of an origin or URL, default ports filled in; None when it is not http(s)."""
    try:
        parts = urlsplit(url.strip())
        scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        return None
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    return scheme, host, port


class RequestGuard:
    """Pure ASGI middleware: security headers on every response; 413 for a body over `limits.max_body_bytes`
    (declared or streamed); 403 for a POST whose `Origin` is not this page's origin.

    The page's origin is `public_url`'s when set (the address labellers type, behind a reverse proxy that may
    rewrite `Host`), else the request's own scheme (https when a trusted proxy says `X-Forwarded-Proto: https`,
    see `LabellingServer(trusted_proxies=...)`) and `Host`. Scheme, host and port must all match.
    """

    def __init__(self, app, limits: ServerLimits, public_url: str | None = None, log=None):
        self.app = app
        self.limits = limits
        self.public_origin = origin_of(public_url) if public_url else None
        if public_url and self.public_origin is None:
            raise ValueError(f"public_url {public_url!r} is not an http(s) URL")
        self.log = log

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def send_guarded(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [
                    (name.lower().encode("latin-1"), value.encode("latin-1"))
                    for name, value in SECURITY_HEADERS.items()
                    if name.lower().encode("latin-1") not in present
                ]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        if scope["method"] == "POST" and not self._same_origin(scope, headers):
            if self.log:
                self.log.warning("labelling page: a cross-site POST to %s was refused", scope.get("path"))
            return await _send_json(send_guarded, 403, "cross-site request refused")
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limits.max_body_bytes):
            return await _send_json(send_guarded, 413, self._too_large())
        received = 0

        async def receive_limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limits.max_body_bytes:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, receive_limited, send_guarded)
        except _BodyTooLarge:
            if started:
                raise
            await _send_json(send_guarded, 413, self._too_large())

    def _too_large(self) -> str:
        return f"the request body is larger than {self.limits.max_body_bytes} bytes"

    def _same_origin(self, scope, headers) -> bool:
        """A POST from the page itself: no `Origin` (non-browser clients) or this page's origin, scheme included.
        A cross-site form could otherwise sign a labeller in under someone else's token or post answers."""
        origin = headers.get("origin")
        if origin is None:
            return True
        presented = origin_of(origin)
        if presented is None:
            return False
        if self.public_origin is not None:
            return presented == self.public_origin
        return presented == origin_of(f"{scope.get('scheme', 'http')}://{headers.get('host', '')}")


async def _send_json(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def parse_json_body(raw: bytes, limits: ServerLimits):
    """The JSON value of a request body, or `RequestError(400)` naming what is wrong: invalid JSON, nested deeper than
    `max_json_depth`, a number literal longer than `max_number_chars`, NaN/Infinity. Never a 500 (no
    `RecursionError`, `OverflowError` or int-conversion `ValueError` escapes)."""

    def number(kind):
        def parse(text: str):
            if len(text) > limits.max_number_chars:
                raise RequestError(400, f"a number in the body has more than {limits.max_number_chars} characters")
            return kind(text)

        return parse

    def constant(text: str):
        raise RequestError(400, f"{text} is not a number")

    if _depth_over(raw, limits.max_json_depth):
        raise RequestError(400, f"the body is nested deeper than {limits.max_json_depth} levels")
    try:
        return json.loads(raw or b"{}", parse_int=number(int), parse_float=number(float), parse_constant=constant)
    except RequestError:
        raise
    except (ValueError, RecursionError, OverflowError):
        raise RequestError(400, "the body is not valid JSON") from None


def _depth_over(raw: bytes, limit: int) -> bool:
    """True when brackets outside strings nest deeper than `limit` (checked before parsing: a 100,000-deep body
    never reaches the recursive parser)."""
    depth, in_string, escaped = 0, False, False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


@dataclass
class LoginThrottle:
    """Failed sign-ins per client address in a sliding window: after `attempts` failures within `window` seconds the
    address gets 429 until the oldest failure leaves the window. Memory is bounded: addresses without a recent
    failure are dropped."""

    attempts: int
    window: float
    _failures: dict[str, deque] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def retry_after(self, address: str) -> float:
        """Seconds until `address` may try again (0: it may now)."""
        now = time.monotonic()
        with self._lock:
            failures = self._failures.get(address)
            if not failures:
                return 0.0
            while failures and failures[0] <= now - self.window:
                failures.popleft()
            if len(failures) < self.attempts:
                return 0.0
            return max(0.0, failures[0] + self.window - now)

    def failed(self, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._failures) > 10_000:  # drop addresses whose failures are all out of the window
                self._failures = {a: f for a, f in self._failures.items() if f and f[-1] > now - self.window}
            self._failures.setdefault(address, deque(maxlen=self.attempts)).append(now)

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failures.pop(address, None)
