"""`ChatResult`: one request's outcome, and how a server's `ChatCompletion` / `Completion` becomes one.

Kept apart from the client so the shape of a result (what the cache stores and what callers read) is one small,
dependency-free module: it does not import `openai`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["ChatResult", "normalise", "stored_form"]


@dataclass
class ChatResult:
    """One request's outcome.

    Attributes:
        texts: one text per sampled choice (`n`); empty when the request failed.
        logprobs: per choice, the generated tokens as `{"token", "logprob", "top": {token: logprob}}` (None when the
            server returned no logprobs).
        prompt_tokens, completion_tokens: the usage the server reported for this call (for a cached result: when it
            was paid, earlier; it costs nothing now).
        model: the model that answered.
        cached: served from the store: a call completed earlier (maybe before a crash), not paid again.
        attempts: HTTP attempts made for this result (0 when cached).
        error: why the request failed for good (None on success); `budget_exhausted` says it was not sent for budget.
        latency: seconds the successful HTTP attempt took (0 when cached or failed).
    """

    texts: list[str] = field(default_factory=list)
    logprobs: list | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str = ""
    cached: bool = False
    attempts: int = 0
    error: str | None = None
    budget_exhausted: bool = False
    latency: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def text(self) -> str:
        """The first choice's text ("" when the request failed)."""
        return self.texts[0] if self.texts else ""


def normalise(response, model: str, attempts: int) -> ChatResult:
    """A `ChatCompletion` / `Completion` as a `ChatResult` (raises on a response without choices)."""
    choices = sorted(response.choices, key=lambda c: c.index)
    if not choices:
        raise ValueError("the response has no choices")
    texts, logprobs, any_logprobs = [], [], False
    for choice in choices:
        message = getattr(choice, "message", None)
        if message is not None:
            texts.append(message.content or "")
            content = getattr(getattr(choice, "logprobs", None), "content", None)
            tokens = (
                [
                    {"token": t.token, "logprob": t.logprob, "top": {e.token: e.logprob for e in t.top_logprobs or []}}
                    for t in content
                ]
                if content
                else None
            )
        else:
            texts.append(choice.text or "")
            lp = getattr(choice, "logprobs", None)
            tokens = None
            if lp is not None and getattr(lp, "tokens", None):
                tops = lp.top_logprobs or [{}] * len(lp.tokens)
                tokens = [
                    {"token": t, "logprob": v, "top": dict(top or {})}
                    for t, v, top in zip(lp.tokens, lp.token_logprobs, tops)
                ]
        any_logprobs = any_logprobs or tokens is not None
        logprobs.append(tokens)
    usage = getattr(response, "usage", None)
    return ChatResult(
        texts=texts,
        logprobs=logprobs if any_logprobs else None,
        prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
        completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        model=getattr(response, "model", None) or model,
        attempts=attempts,
    )


def stored_form(result: ChatResult) -> dict:
    """What the cache keeps of a result (everything but the per-call bookkeeping)."""
    data = asdict(result)
    for name in ("cached", "attempts", "error", "budget_exhausted", "latency"):
        data.pop(name)
    return data
