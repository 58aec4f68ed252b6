"""`RewardFunctionAnnotator`: users' TRL reward functions, unchanged.

TRL's GRPO/RLOO/Online-DPO call reward functions as
`f(prompts=..., completions=..., completion_ids=..., trainer_state=..., log_extra=..., log_metric=..., **columns)`
with one entry per (prompt, completion) and every other dataset column repeated per completion, and accept
`list[float | None]` back. This annotator makes exactly that call on the selected completions only.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import math
import textwrap
from collections.abc import Callable, Sequence

from .base import AnnotationError, AnnotationRequest, Annotator

__all__ = ["RewardFunctionAnnotator", "code_fingerprint"]

# Keywords the annotator sets itself; row columns with these names are not forwarded.
_RESERVED = (
    "prompts",
    "completions",
    "completion_ids",
    "prompt",
    "completion",
    "trainer_state",
    "log_extra",
    "log_metric",
)


def _noop(*args, **kwargs):
    return None


class RewardFunctionAnnotator(Annotator):
    """Scores completions with one or several TRL-style reward functions.

    Args:
        reward_funcs: a callable `f(prompts, completions, **kwargs) -> list[float | None]` (sync or async), or a
            list of them.
        weights: one weight per function (default 1.0 each). With several functions the score is the weighted sum
            of the non-None rewards, as in TRL (None is ignored); None when every function returned None.
        name: the identity's name part (default: the functions' `module.qualname`s). The identity also holds a hash
            of each function's source code (`code_fingerprint`), so editing a function re-annotates instead of reusing
            the scores of the old code; behaviour that the source does not show (a model file it loads, a global it
            reads) is versioned with `AEPOConfig.annotator_version`.
        tokenizer: optional; when given, `completion_ids` are the tokenized completions (otherwise None).
        columns: forward the row's other columns as keyword lists, as TRL does (default True).
    """

    def __init__(
        self,
        reward_funcs: Callable | Sequence[Callable],
        weights: Sequence[float] | None = None,
        name: str | None = None,
        tokenizer=None,
        columns: bool = True,
    ):
        funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        if not funcs:
            raise ValueError("RewardFunctionAnnotator needs at least one reward function.")
        for f in funcs:
            if isinstance(f, str) or not callable(f):
                raise TypeError(
                    f"RewardFunctionAnnotator takes callables, got {f!r}. For a reward *model* (a path or Hub id) use "
                    "RewardModelAnnotator."
                )
        if weights is None:
            weights = [1.0] * len(funcs)
        weights = [float(w) for w in weights]
        if len(weights) != len(funcs) or not all(math.isfinite(w) for w in weights):
            raise ValueError(f"weights must be {len(funcs)} finite numbers, got {weights!r}.")
        self.reward_funcs = funcs
        self.weights = weights
        self.tokenizer = tokenizer
        self.columns = columns
        self.trainer_state = None  # set by the trainer, forwarded like TRL does
        self.log_extra = _noop
        self.log_metric = _noop
        self.names = [_callable_name(f) for f in funcs]
        base = name if name is not None else "+".join(self.names)
        if len(funcs) > 1 and any(w != 1.0 for w in weights):
            base += "|w=" + ",".join(f"{w:g}" for w in weights)
        #: The identity without the code hash: annotations stored under the same family but another hash were made
        #: by an older version of the code (`AnnotationService` says so and does not reuse them).
        self.identity_family = f"reward_function:{base}"
        self.code_hash = hashlib.sha256("\n".join(code_fingerprint(f) for f in funcs).encode()).hexdigest()[:16]
        self.identity = f"{self.identity_family}@{self.code_hash}"

    def score(self, requests: list[AnnotationRequest]) -> list[list[float | None]]:
        prompts, completions, rows = [], [], []
        for req in requests:
            for c in req.completions:
                prompts.append(req.prompt)
                completions.append(c)
                rows.append(req.row or {})
        if not completions:
            return [[] for _ in requests]
        kwargs = {}
        if self.columns:
            names = dict.fromkeys(k for row in rows for k in row if k not in _RESERVED)
            kwargs = {k: [row.get(k) for row in rows] for k in names}
        completion_ids = None
        if self.tokenizer is not None:
            completion_ids = [self.tokenizer(_plain(c), add_special_tokens=False)["input_ids"] for c in completions]
        per_func = []
        for f, fname in zip(self.reward_funcs, self.names):
            out = f(
                prompts=prompts,
                completions=completions,
                completion_ids=completion_ids,
                trainer_state=self.trainer_state,
                log_extra=self.log_extra,
                log_metric=self.log_metric,
                **kwargs,
            )
            if inspect.isawaitable(out):
                out = _run_awaitable(out)
            out = list(out) if out is not None else None
            if out is None or len(out) != len(completions):
                raise AnnotationError(
                    f"Reward function {fname!r} returned {'None' if out is None else len(out)} rewards for "
                    f"{len(completions)} (prompt, completion) pairs; it must return one reward per completion."
                )
            per_func.append(out)
        totals = []
        for j in range(len(completions)):
            values = [(w, fo[j]) for w, fo in zip(self.weights, per_func) if _finite(fo[j])]
            if len(self.reward_funcs) == 1:
                totals.append(per_func[0][j])  # keep the raw value: the service counts None/NaN/inf as invalid
            else:
                totals.append(sum(w * float(v) for w, v in values) if values else None)
        out, start = [], 0
        for req in requests:
            out.append(totals[start : start + len(req.completions)])
            start += len(req.completions)
        return out


async def _await(awaitable):
    return await awaitable


def _run_awaitable(awaitable):
    """Result of an async reward function, also from code already running an event loop (notebooks)."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_await(awaitable))
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, _await(awaitable)).result()


def _finite(value) -> bool:
    try:
        return value is not None and not isinstance(value, bool) and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _plain(completion) -> str:
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content", "") if isinstance(m, dict) else str(m) for m in completion)


def _simple(value) -> bool:
    """Values whose repr is stable across processes (no memory addresses)."""
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return True
    if isinstance(value, (tuple, list, frozenset)):
        return all(_simple(v) for v in value)
    if isinstance(value, dict):
        return all(_simple(k) and _simple(v) for k, v in value.items())
    return False


def _stable_repr(value) -> str:
    return repr(value) if _simple(value) else f"<{type(value).__module__}.{type(value).__qualname__}>"


def _source_digest(target) -> str | None:
    """The source of a function or class, normalised through the AST (comments and formatting do not count)."""
    try:
        source = textwrap.dedent(inspect.getsource(target))
    except (OSError, TypeError):
        return None
    try:
        return ast.dump(ast.parse(source))
    except SyntaxError:  # a lambda's source is its whole line, which may not parse on its own
        return source


def code_fingerprint(f) -> str:
    """What a reward function computes, as text: its source (`inspect.getsource`, AST-normalised), else its code
    object's bytes and constants (a callable instance: its class), plus the arguments bound by `functools.partial`
    and the simple values its closure captures. Cached annotations are keyed by a hash of this, so they cannot outlive an edit of the function."""
    parts = []
    while isinstance(f, functools.partial):
        parts.append(_stable_repr((f.args, sorted((f.keywords or {}).items()))))
        f = f.func
    target = f if (inspect.isfunction(f) or inspect.ismethod(f) or inspect.isclass(f)) else type(f)
    function = getattr(f, "__func__", f)
    if target is type(f) and not inspect.isbuiltin(f):  # a callable instance: its class's code (state may change)
        function = vars(type(f)).get("__call__") or type(f).__call__
    digest = _source_digest(target)
    code = getattr(inspect.unwrap(function), "__code__", None) if function is not None else None
    if digest is None:
        digest = f"{code.co_code.hex()}|{_stable_repr(code.co_consts)}" if code is not None else _callable_name(f)
    parts.append(digest)
    closure = getattr(inspect.unwrap(function), "__closure__", None) if function is not None else None
    for cell in closure or ():
        try:
            parts.append(_stable_repr(cell.cell_contents))
        except ValueError:  # an empty cell
            parts.append("<empty>")
    return "\n".join(parts)


def _callable_name(f) -> str:
    while isinstance(f, functools.partial):
        f = f.func
    name = getattr(f, "__qualname__", None) or getattr(f, "__name__", None)
    if name is None:  # callable instance
        name = type(f).__qualname__
        module = type(f).__module__
    else:
        module = getattr(f, "__module__", None)
    return f"{module}.{name}" if module and module != "__main__" else name
