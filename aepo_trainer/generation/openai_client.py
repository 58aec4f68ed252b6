"""`ChatClient`: many requests to one OpenAI-compatible server (OpenAI, `vllm serve`, TGI, llama.cpp, Ollama, ...).

The one client layer of the package, on the official `openai` package (`AsyncOpenAI(base_url=..., api_key=...)`);
the API judge, `aepo generate --backend openai` and the Safer-Instruct expert stages all go through it. Synchronous
code calls it like this::

    client = ChatClient("http://localhost:8000/v1", "Qwen/Qwen2.5-7B-Instruct", api_key_env="VLLM_API_KEY",
                        concurrency=16, requests_per_minute=600, ledger=UsageLedger("run/annotations.sqlite"))
    client.probe()                      # fails fast on a bad key / unknown model / wrong base URL
    results = client.complete_chat([[{"role": "user", "content": "Hi"}], ...], max_tokens=64, temperature=0)
    results[0].text, results[0].prompt_tokens, client.stats

What one batch call does: every request runs concurrently (at most `concurrency` in flight), each waits for the
requests-per-minute and tokens-per-minute buckets, reserves its upper-bound cost in the ledger, and is retried with
exponential backoff and jitter on 429 / 5xx / timeouts / dropped connections / non-JSON bodies, honouring
`Retry-After` (the `openai` client's own retries are off: `max_retries=0`, so every retry is counted in `stats`).
Results come back in input order; a request that fails for good returns a `ChatResult` with `error` set instead of
raising, so one bad request never loses a batch. A 401/403/404 is a configuration error and raises `ApiConfigError`
at once. The API key is read from the environment variable `api_key_env` and is never logged or stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
import time
from collections import Counter

from .._utils.hashing import canonical_json
from ..storage.usage import CostBudgetExhausted, UsageLedger
from .limits import RateLimiter, backoff_delay, parse_retry_after
from .results import ChatResult, normalise, stored_form

logger = logging.getLogger(__name__)

__all__ = ["ApiConfigError", "ChatClient"]

OPENAI_BASE_URL = "https://api.openai.com/v1"


class ApiConfigError(RuntimeError):
    """The server refused the configuration (bad API key, unknown model, wrong base URL): fix it, do not retry."""


class ChatClient:
    """Concurrent, rate-limited, retried and metered requests to an OpenAI-compatible server.

    Args:
        base_url: the API root, e.g. `https://api.openai.com/v1`, `http://localhost:8000/v1` (vllm serve),
            `http://localhost:11434/v1` (Ollama).
        model: the model name the server knows.
        api_key_env: environment variable holding the API key. Unset: local servers get the placeholder "EMPTY";
            the OpenAI API itself is refused before any request.
        concurrency: requests in flight at once.
        requests_per_minute, tokens_per_minute: rate limits (None = unlimited); tokens are charged with the request's
            upper bound (prompt bytes + `max_tokens · n`) and corrected with the reported usage.
        timeout: seconds per HTTP attempt.
        max_retries: retries per request after the first attempt (429, 5xx, timeouts, connection errors, bad JSON).
        ledger: a `UsageLedger`: records every attempt's usage and cost, caches completed responses, enforces the
            cost budget. None = nothing recorded (and no cache).
        progress: show a tqdm bar over the requests of each batch.
        backoff_base, backoff_max: exponential backoff parameters (seconds).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        timeout: float = 60.0,
        max_retries: int = 5,
        ledger: UsageLedger | None = None,
        progress: bool = False,
        backoff_base: float = 0.5,
        backoff_max: float = 60.0,
    ):
        if not base_url or not str(base_url).startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL such as {OPENAI_BASE_URL!r}, got {base_url!r}.")
        if not model:
            raise ValueError("model is required: the name of the model on the server.")
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be an integer >= 1, got {concurrency!r}.")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {max_retries!r}.")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}.")
        self.base_url = str(base_url).rstrip("/")
        self.model = str(model)
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.ledger = ledger
        self.progress = progress
        self.backoff_base, self.backoff_max = float(backoff_base), float(backoff_max)
        self._rpm = RateLimiter(requests_per_minute)
        self._tpm = RateLimiter(tokens_per_minute)
        if ledger is not None and ledger.budget is not None:
            ledger.prices.require(self.model)
        self.stats: Counter = Counter()  # requests, retries, retry:<reason>, failed, cached, prompt/completion tokens
        self.budget_exhausted = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client = None
        self._semaphore: asyncio.Semaphore | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, args, ledger: UsageLedger | None = None, **overrides) -> ChatClient:
        """The judge's client from an `AEPOConfig` (`judge_api_base`, `judge_model`, `judge_api_key_env`, `api_*`)."""
        kwargs = dict(
            base_url=args.judge_api_base,
            model=args.judge_model,
            api_key_env=args.judge_api_key_env,
            concurrency=args.api_concurrency,
            requests_per_minute=args.api_requests_per_minute,
            tokens_per_minute=args.api_tokens_per_minute,
            timeout=args.api_timeout,
            max_retries=args.api_max_retries,
            ledger=ledger,
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    def __repr__(self) -> str:  # never the key
        return f"ChatClient(base_url={self.base_url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    # ------------------------------------------------------------------------------------------- event loop

    def _api_key(self) -> str:
        key = os.environ.get(self.api_key_env or "", "")
        if key:
            return key
        if "api.openai.com" in self.base_url:
            raise ApiConfigError(
                f"No API key: the environment variable {self.api_key_env!r} is not set (needed by {self.base_url})."
            )
        return "EMPTY"  # the vLLM / Ollama convention for servers started without --api-key

    def _run(self, coro):
        """Run a coroutine on the client's own event loop thread (works from sync code and inside notebooks)."""
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever, name="aepo-chat-client", daemon=True)
                self._thread.start()
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:  # Ctrl-C in the caller: stop the batch too (in-flight calls are settled as unknown)
            future.cancel()
            raise

    def _openai(self):
        if self._client is None:
            import openai

            self._client = openai.AsyncOpenAI(
                base_url=self.base_url, api_key=self._api_key(), max_retries=0, timeout=self.timeout
            )
        return self._client

    def close(self) -> None:
        """Close the HTTP connections and stop the loop thread (the client can be used again afterwards)."""
        if self._loop is not None and not self._loop.is_closed():
            if self._client is not None:
                self._run(self._client.close())
                self._client = None
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._loop.close()
        self._loop = None
        self._semaphore = None  # asyncio primitives belong to the loop that first used them
        self._rpm._lock = self._tpm._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------------------------------- probe

    def probe(self) -> None:
        """Fail fast, before any paid call: `ApiConfigError` on a bad key (401), forbidden (403), wrong base URL or
        unknown model (404), or an unreachable server."""
        self._run(self._aprobe())

    async def _aprobe(self) -> None:
        import openai

        client = self._openai()
        try:
            page = await client.models.list(timeout=min(self.timeout, 30.0))
            ids = [m.id for m in page.data]
        except openai.NotFoundError:
            ids = None  # some servers have no /models: one tiny request below tells the same things
        except openai.APIStatusError as error:
            raise self._config_error(error) from None
        except (openai.APIConnectionError, ValueError) as error:
            raise ApiConfigError(
                f"Cannot reach an OpenAI-compatible API at {self.base_url} ({type(error).__name__}: {error}); check "
                "the base URL (it usually ends in /v1) and that the server is running."
            ) from None
        if ids is not None:
            if self.model not in ids:
                shown = ", ".join(ids[:20]) + (" ..." if len(ids) > 20 else "")
                raise ApiConfigError(f"Unknown model {self.model!r} at {self.base_url}; the server serves: {shown}.")
            return
        probe = [{"messages": [{"role": "user", "content": "Say OK."}]}]
        result = (await self._abatch("chat", probe, max_tokens=1))[0]
        if result.error and not result.budget_exhausted:
            raise ApiConfigError(f"The probe request to {self.base_url} (model {self.model!r}) failed: {result.error}")

    def _config_error(self, error) -> ApiConfigError:
        status = getattr(error, "status_code", None)
        detail = str(getattr(error, "message", error))[:300]
        if status == 401:
            where = (
                f"the environment variable {self.api_key_env!r}"
                if os.environ.get(self.api_key_env or "")
                else f"no key: {self.api_key_env!r} is not set"
            )
            return ApiConfigError(f"Bad API key for {self.base_url} (401 Unauthorized; key from {where}): {detail}")
        if status == 403:
            return ApiConfigError(
                f"Forbidden (403) at {self.base_url}: the key from {self.api_key_env!r} may not use model "
                f"{self.model!r}: {detail}"
            )
        if status == 404:
            return ApiConfigError(
                f"Not found (404) at {self.base_url}: unknown model {self.model!r} or wrong base URL (it usually ends "
                f"in /v1): {detail}"
            )
        return ApiConfigError(f"{self.base_url} answered {status}: {detail}")

    # ------------------------------------------------------------------------------------------- public calls

    def complete_chat(
        self, messages_list: list[list[dict]], *, per_request: list[dict] | None = None, desc: str = "chat", **params
    ) -> list[ChatResult]:
        """`/chat/completions` for each conversation (synchronous); one `ChatResult` per input, in order.

        `params` are sent with every request as they are (`n`, `max_tokens`, `temperature`, `top_p`, `seed`, `stop`,
        `logprobs`, `top_logprobs`, `extra_body`, ...); `per_request` (one dict per input) adds or overrides some per
        request (e.g. a seed each). Raises `ApiConfigError` on 401/403/404; other failures come back as
        `ChatResult.error`; when the cost budget stops the batch, the unsent requests have `budget_exhausted=True`.
        """
        return self._run(self.achat(messages_list, per_request=per_request, desc=desc, **params))

    def complete_text(
        self, prompts: list[str], *, per_request: list[dict] | None = None, desc: str = "completions", **params
    ) -> list[ChatResult]:
        """`/completions` (raw text prompts, no chat template on the server) for each prompt (synchronous)."""
        return self._run(self.acomplete(prompts, per_request=per_request, desc=desc, **params))

    async def achat(self, messages_list, *, per_request=None, desc: str = "chat", **params) -> list[ChatResult]:
        """Async `complete_chat` (must run on this client's loop: prefer the synchronous methods)."""
        bodies = [{"messages": m} for m in messages_list]
        return await self._abatch("chat", bodies, per_request, desc=desc, **params)

    async def acomplete(self, prompts, *, per_request=None, desc: str = "completions", **params) -> list[ChatResult]:
        bodies = [{"prompt": p} for p in prompts]
        return await self._abatch("completions", bodies, per_request, desc=desc, **params)

    # ------------------------------------------------------------------------------------------- internals

    async def _abatch(
        self, endpoint: str, bodies: list[dict], per_request: list[dict] | None = None, desc: str = "", **params
    ) -> list[ChatResult]:
        if per_request is not None and len(per_request) != len(bodies):
            raise ValueError(f"per_request has {len(per_request)} entries for {len(bodies)} requests.")
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.concurrency)
        bar = None
        if self.progress and len(bodies) > 1:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(bodies), desc=f"{desc} ({self.model})", unit="req", leave=False)
        extra = per_request or [{}] * len(bodies)
        tasks = [asyncio.ensure_future(self._one(endpoint, {**b, **params, **x}, bar)) for b, x in zip(bodies, extra)]
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in pending:  # a configuration error: stop the rest (their reservations are settled)
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()
            return [task.result() for task in tasks]
        finally:
            if bar is not None:
                bar.close()

    def _key(self, endpoint: str, request: dict) -> str:
        """The cache key of a request: what was asked of which model (not where: a model served elsewhere is the
        same model)."""
        payload = canonical_json({"endpoint": endpoint, "model": self.model, **request})
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def _upper_tokens(self, request: dict) -> tuple[int, int]:
        """Upper bounds of (prompt, completion) tokens: UTF-8 bytes (every byte-level BPE token is >= 1 byte) plus
        chat-template overhead, and `max_tokens · n`."""
        if "messages" in request:
            text = "".join(str(m.get("content", "")) for m in request["messages"])
            overhead = 16 * len(request["messages"]) + 16
        else:
            text, overhead = str(request.get("prompt", "")), 16
        max_tokens = request.get("max_tokens", request.get("max_completion_tokens"))
        if max_tokens is None:
            if self.ledger is not None and self.ledger.budget is not None:
                raise ValueError("A cost budget is set: every request needs `max_tokens` to bound its cost.")
            max_tokens = 4096
        return len(text.encode("utf-8")) + overhead, int(max_tokens) * int(request.get("n") or 1)

    async def _one(self, endpoint: str, request: dict, bar) -> ChatResult:
        try:
            return await self._attempts(endpoint, request)
        finally:
            if bar is not None:
                bar.update(1)

    async def _attempts(self, endpoint: str, request: dict) -> ChatResult:
        import openai

        key = self._key(endpoint, request)
        ledger = self.ledger
        if ledger is not None:
            stored = ledger.cached(key)
            if stored is not None:
                self.stats["cached"] += 1
                return ChatResult(**{**stored, "cached": True, "attempts": 0})
        up_prompt, up_completion = self._upper_tokens(request)
        upper_cost = 0.0 if ledger is None else ledger.prices.cost(self.model, up_prompt, up_completion)
        create = self._openai().chat.completions.create if endpoint == "chat" else self._openai().completions.create
        attempt = 0
        async with self._semaphore:
            while True:
                if self.budget_exhausted:
                    return ChatResult(model=self.model, error="cost budget exhausted", budget_exhausted=True)
                await self._rpm.acquire(1)
                await self._tpm.acquire(up_prompt + up_completion)
                row = None
                if ledger is not None:
                    row = ledger.reserve(key, self.model, endpoint, upper_cost)
                    if row is None:
                        self.budget_exhausted = True
                        self._tpm.refund(up_prompt + up_completion)
                        return ChatResult(model=self.model, error="cost budget exhausted", budget_exhausted=True)
                attempt += 1
                self.stats["requests"] += 1
                retry_after, reason = None, None
                started = time.perf_counter()
                try:
                    response = await create(model=self.model, **request)
                    result = normalise(response, self.model, attempt)
                    result.latency = time.perf_counter() - started
                except asyncio.CancelledError:
                    if row is not None:
                        ledger.fail(row, billed_unknown=True, error="cancelled")
                    raise
                except openai.APIStatusError as error:
                    status = error.status_code
                    if row is not None:
                        ledger.fail(row, billed_unknown=False, error=f"HTTP {status}")
                    if status in (401, 403, 404):
                        raise self._config_error(error) from None
                    if status == 429 or status >= 500 or status in (408, 409):
                        reason = str(status)
                        retry_after = parse_retry_after(error.response.headers)
                    else:  # 400, 413, 422...: this request is wrong; retrying cannot help
                        self.stats["failed"] += 1
                        return ChatResult(model=self.model, attempts=attempt, error=f"HTTP {status}: {error.message}")
                except Exception as error:  # timeout, dropped connection, non-JSON body, malformed response
                    if row is not None:
                        ledger.fail(row, billed_unknown=True, error=f"{type(error).__name__}: {error}")
                    reason = _reason(error)
                else:
                    if row is not None:
                        ledger.settle(
                            row, stored_form(result), result.prompt_tokens, result.completion_tokens, self.model
                        )
                    self._tpm.refund(up_prompt + up_completion - result.prompt_tokens - result.completion_tokens)
                    self.stats["prompt_tokens"] += result.prompt_tokens
                    self.stats["completion_tokens"] += result.completion_tokens
                    return result
                if attempt > self.max_retries:
                    self.stats["failed"] += 1
                    logger.warning("%s: request failed after %d attempts (%s).", self.base_url, attempt, reason)
                    return ChatResult(
                        model=self.model, attempts=attempt, error=f"failed after {attempt} attempts: {reason}"
                    )
                self.stats["retries"] += 1
                self.stats[f"retry:{reason}"] += 1
                await asyncio.sleep(backoff_delay(attempt, retry_after, self.backoff_base, self.backoff_max))

    def check_budget(self) -> None:
        """Raise `CostBudgetExhausted` when an earlier batch was stopped by the cost budget."""
        if self.budget_exhausted and self.ledger is not None:
            raise CostBudgetExhausted(
                f"annotation_cost_budget exhausted: ${self.ledger.spent:.6f} of ${self.ledger.budget:.6f} spent for "
                f"run '{self.ledger.run_id}' (store {self.ledger.store.path}); raise it (same run) to continue — "
                "every completed call is stored and will not be paid again.",
                spent=self.ledger.spent,
                budget=self.ledger.budget,
                run_id=self.ledger.run_id,
            )


def _reason(error: Exception) -> str:
    import openai

    if isinstance(error, openai.APITimeoutError):
        return "timeout"
    if isinstance(error, openai.APIConnectionError):
        return "connection"
    return "bad_response"
