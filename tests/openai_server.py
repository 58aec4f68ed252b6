"""A real OpenAI-compatible HTTP server for the tests (stdlib `ThreadingHTTPServer`, HTTP/1.1 keep-alive).

It speaks `GET /v1/models`, `POST /v1/chat/completions` and `POST /v1/completions`, and answers deterministically:

* judge prompts (the text holds `[Assistant A]` ... `[Assistant B]` sections): each response's quality is the number
  after `q=` in it; the server prefers the higher one, with a position bias towards A. With logprobs on it returns
  `P(A) = sigmoid(q_A - q_B + BIAS)` as the top logprobs of the first token; without, the letter of the winner
  (a tie says "A").
* rubric prompts (the text holds `[Response]`): the score is `q` clipped to 1..10 (logprobs: all the mass on it).
* Safer-Instruct filter prompts (the text asks for `Verdict: PASS or FAIL`): "Verdict: FAIL" when the text holds
  `reject-me`, else "Verdict: PASS", then a reason line.
* anything else: the reply `echo <n> <first words of the prompt>` for each of the `n` choices, cut at `max_tokens`.

Tokens are counted as whitespace-separated words (prompt: every message's content; completion: the reply), the
server's own tally (`ServerState.prompt_tokens`, `.completion_tokens`) against which the tests check the ledger.

Faults are injected from `ServerState.faults` (consumed one per POST request, in order): `"429"` (with
`Retry-After: <retry_after>`), `"500"`, `"slow"` (sleeps `slow_seconds` first), `"garbage"` (a 200 whose body is not
JSON), `"drop"` (closes the connection without answering), `"unparseable"` (a 200 whose verdict text says nothing).
`ServerState.log` records every POST: receive time, path, body, status, tokens billed.

Run standalone (used by the kill/resume test): `python tests/openai_server.py <port-file> <log-file> [delay]` writes
the port it listens on to <port-file> and appends one JSON line per answered request to <log-file>.
"""

from __future__ import annotations

import json
import math
import re
import socket
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BIAS = 0.5  # the judge's position bias towards A (in logits)
API_KEY = "sk-test-key"
KEY_ENV = "AEPO_TEST_API_KEY"  # the environment variable the tests' clients read the key from


@dataclass
class ServerState:
    api_key: str = API_KEY
    models: tuple = ("judge-model", "gen-model")
    logprobs: bool = True  # return logprobs when the request asks for them
    faults: deque = field(default_factory=deque)
    retry_after: str = "0.2"
    slow_seconds: float = 1.0
    delay: float = 0.0  # every POST sleeps this long (to make kills land mid-run)
    log: list = field(default_factory=list)
    log_path: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def paid(self, path: str | None = None) -> list[dict]:
        """The logged requests that returned a billed 200."""
        return [e for e in self.log if e["status"] == 200 and (path is None or e["path"] == path)]


def _words(text: str) -> int:
    return len(text.split())


def _prompt_text(body: dict) -> str:
    if "messages" in body:
        return "\n".join(str(m.get("content", "")) for m in body["messages"])
    prompt = body.get("prompt", "")
    return prompt if isinstance(prompt, str) else "\n".join(map(str, prompt))


def _quality(text: str) -> int:
    found = re.findall(r"q=(-?\d+)", text)
    return int(found[0]) if found else 0


def _section(text: str, start: str, end: str | None) -> str:
    i = text.find(start)
    if i < 0:
        return ""
    rest = text[i + len(start) :]
    if end is not None and end in rest:
        rest = rest[: rest.index(end)]
    return rest


def _logprob_entry(token: str, probs: dict[str, float]) -> dict:
    top = [{"token": t, "logprob": math.log(max(p, 1e-12)), "bytes": list(t.encode())} for t, p in probs.items()]
    top.sort(key=lambda e: -e["logprob"])
    chosen = next((e for e in top if e["token"] == token), top[0])
    return {"token": token, "logprob": chosen["logprob"], "bytes": list(token.encode()), "top_logprobs": top}


def answer(body: dict, state: ServerState, fault: str | None) -> tuple[list[str], list | None]:
    """The reply texts (one per choice) and, when asked for and enabled, the first-token logprobs of each."""
    text = _prompt_text(body)
    n = int(body.get("n") or 1)
    max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or 16
    wants_logprobs = bool(body.get("logprobs")) and state.logprobs
    if fault == "unparseable":
        return ["I cannot decide."] * n, None
    if "[Assistant A]" in text:
        qa = _quality(_section(text, "[Assistant A]", "[Assistant B]"))
        qb = _quality(_section(text, "[Assistant B]", None))
        p_a = 1.0 / (1.0 + math.exp(-(qa - qb + BIAS)))
        letter = "A" if qa >= qb else "B"
        lp = [_logprob_entry(letter, {"A": p_a * 0.9, "B": (1 - p_a) * 0.9, "The": 0.1})] if wants_logprobs else None
        return [letter] * n, lp
    if "[Response]" in text:
        score = min(10, max(1, _quality(_section(text, "[Response]", None))))
        probs = {str(score): 0.99, "5" if score != 5 else "6": 0.01}
        lp = [_logprob_entry(str(score), probs)] if wants_logprobs else None
        return [str(score)] * n, lp
    if "Verdict: PASS or FAIL" in text:
        verdict = "FAIL" if "reject-me" in text else "PASS"
        return [f"Verdict: {verdict}\nReason: read by the test server"] * n, None
    words = text.split()[:3]
    return [" ".join(["echo", str(i), *words][:max_tokens]) for i in range(n)], None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: ServerState  # set on the subclass made by `start_server`

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, payload, headers: dict | None = None, raw: bytes | None = None):
        data = raw if raw is not None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout): what a real server sees
            self.close_connection = True

    def _authorised(self) -> bool:
        if self.headers.get("Authorization") != f"Bearer {self.state.api_key}":
            self._send(401, {"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error"}})
            return False
        return True

    def do_GET(self):
        if self.path.rstrip("/") != "/v1/models":
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        if not self._authorised():
            return
        self._send(
            200,
            {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "test"} for m in self.state.models]},
        )

    def do_POST(self):
        state = self.state
        received = time.time()
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        path = self.path.rstrip("/")
        with state.lock:
            fault = state.faults.popleft() if state.faults else None
        entry = {
            "t": received,
            "path": path,
            "body": body,
            "fault": fault,
            "status": None,
            "prompt_tokens": 0,
            "completion_tokens": 0,
        }
        with state.lock:
            state.log.append(entry)
        if state.delay:
            time.sleep(state.delay)
        if path not in ("/v1/chat/completions", "/v1/completions"):
            entry["status"] = 404
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        if not self._authorised():
            entry["status"] = 401
            return
        if body.get("model") not in state.models:
            entry["status"] = 404
            self._send(404, {"error": {"message": f"The model {body.get('model')!r} does not exist."}})
            return
        if fault == "429":
            entry["status"] = 429
            self._send(429, {"error": {"message": "Rate limit reached."}}, {"Retry-After": state.retry_after})
            return
        if fault == "500":
            entry["status"] = 500
            self._send(500, {"error": {"message": "internal error"}})
            return
        if fault == "drop":
            entry["status"] = "drop"
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if fault == "slow":
            time.sleep(state.slow_seconds)
        texts, logprobs = answer(body, state, fault)
        prompt_tokens = _words(_prompt_text(body))
        completion_tokens = sum(_words(t) for t in texts)
        chat = path == "/v1/chat/completions"
        choices = []
        for i, t in enumerate(texts):
            if chat:
                choice = {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
                choice["logprobs"] = {"content": logprobs} if logprobs else None
            else:
                choice = {"index": i, "text": t, "finish_reason": "stop", "logprobs": None}
            choices.append(choice)
        payload = {
            "id": f"cmpl-{len(state.log)}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(received),
            "model": body["model"],
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        if fault == "garbage":
            entry["status"] = "garbage"
            self._send(200, None, raw=b"<html>502 Bad Gateway</html>{not json")
            return
        with state.lock:
            entry.update(status=200, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
            state.prompt_tokens += prompt_tokens
            state.completion_tokens += completion_tokens
        self._send(200, payload)
        if state.log_path:
            with state.lock, open(state.log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"path": path, "body": body, "t": received}) + "\n")


def start_server(state: ServerState | None = None) -> tuple[ThreadingHTTPServer, ServerState, str]:
    """Start a server on a free local port in a daemon thread: `(server, state, base_url)`; `server.shutdown()`."""
    state = state or ServerState()
    handler = type("BoundHandler", (Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, state, f"http://127.0.0.1:{server.server_address[1]}/v1"


@contextmanager
def serving():
    """`start_server()` for the length of a `with` block: yields (state, url), then shuts the server and its socket."""
    srv, state, url = start_server()
    try:
        yield state, url
    finally:
        srv.shutdown()
        srv.server_close()


if __name__ == "__main__":
    port_file, log_file = sys.argv[1], sys.argv[2]
    server, state, _ = start_server(
        ServerState(log_path=log_file, delay=float(sys.argv[3]) if len(sys.argv) > 3 else 0)
    )
    with open(port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    import os

    os.replace(port_file + ".tmp", port_file)
    threading.Event().wait()
