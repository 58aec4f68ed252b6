"""`ApiJudgeAnnotator`: an LLM behind an OpenAI-compatible API as judge — pairwise (debiased, tournament) or rubric.

**Pairwise** (`mode="pairwise"`, the default): the same judgments as the local `PairwiseJudgeAnnotator` — the same
template, both orders judged and combined by `debiased`, the same `tournament_scores` for k > 2 — sent as chat
requests. The verdict of one order, `q = P(first response wins)`, is read

1. from the token logprobs when the server returns them (`logprobs=True, top_logprobs=5`): at the first generated
   token whose alternatives include a choice, `q = P(A) / (P(A) + P(B))` over the top alternatives whose stripped text
   is "A" / "B";
2. otherwise from the text, deterministically: the reply stripped of whitespace, quotes, brackets, `*` and `#`
   starts with a choice as a whole word (`"A"`, `"B."`, `"[[B]]"`, `"**A**"`), or else exactly one of the two choices
   occurs as a whole word (`"Assistant B is better"`) → `q` is 1 or 0; anything else is unparseable.

An unparseable verdict is asked again up to `parse_retries` times (with `seed = attempt` and
`retry_temperature`, so it is a new request, not the cached answer); then that match — and its whole request — is
invalid: every score None, counted by `AnnotationService` and never paired, never a silent 0.5. A request that fails
for good at the HTTP level (after the client's retries) is invalid the same way.

**Rubric** (`mode="rubric"`): each completion is scored alone, 1–10, against `DEFAULT_RUBRIC` (in the prompt, so the
judge and the reader see the same scale): logprobs → the expected score over the numeric alternatives of the first
numeric token, renormalised; text → the first whole number from 1 to 10 in the reply. Pointwise scores do not depend
on the rivals (`relative=False`): a completion is judged once, whatever subset it lands in; k > 2 costs k calls, not
2(k − 1) pairwise ones.

Money: every call goes through the `ChatClient` and its `UsageLedger` (tokens and dollars in the annotation store,
`annotation_cost_budget` enforced with reserve-then-settle). When the cost budget stops a batch, `score` raises
`CostBudgetExhausted` with `partial_scores` (the requests it finished); `AnnotationService` saves those and skips the
rest. The identity names the model, the mode and a hash of every setting that changes a verdict, so caches never mix.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re

from ..generation import ChatClient
from ..storage.usage import CostBudgetExhausted, UsageLedger
from .base import AnnotationRequest, Annotator, canonical_json, to_text
from .judge import DEFAULT_JUDGE_TEMPLATE, debiased, tournament_scores

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_RUBRIC", "DEFAULT_RUBRIC_TEMPLATE", "ApiJudgeAnnotator", "parse_choice", "parse_score"]

DEFAULT_RUBRIC = (
    "10 = fully correct, complete, clear and safe; nothing to improve.\n"
    "8-9 = correct and helpful, with minor omissions or style issues.\n"
    "6-7 = mostly correct and relevant, but missing something the user needed.\n"
    "4-5 = partly relevant or partly wrong; the user would need another answer.\n"
    "2-3 = mostly wrong, off-topic or unhelpful.\n"
    "1 = harmful, empty, or entirely wrong."
)

DEFAULT_RUBRIC_TEMPLATE = (
    "Rate the assistant response to the user's question on a scale of 1 to 10.\n\n"
    "Rubric:\n{rubric}\n\n"
    "[Question]\n{prompt}\n\n"
    "[Response]\n{response}\n\n"
    "Reply with the number only."
)

_STRIP = " \t\r\n\"'`*#[](){}<>:.,;!"


def parse_choice(text: str, choices=("A", "B")) -> int | None:
    """0 or 1 for the choice a judge's reply names (rules in the module docstring), None when it names neither/both."""
    cleaned = text.strip(_STRIP)
    for i, choice in enumerate(choices):
        if re.match(rf"{re.escape(choice)}\b", cleaned):
            return i
    found = {i for i, choice in enumerate(choices) if re.search(rf"(?<!\w){re.escape(choice)}(?!\w)", text)}
    return found.pop() if len(found) == 1 else None


def parse_score(text: str, low: int = 1, high: int = 10) -> float | None:
    """The first whole number in [low, high] in a reply ("7", "Score: 8/10" -> 8), None when there is none."""
    for match in re.finditer(r"(?<![\d.])(\d+)(?![\d.]\d)", text):
        value = int(match.group(1))
        if low <= value <= high:
            return float(value)
    return None


class ApiJudgeAnnotator(Annotator):
    """LLM judge over an OpenAI-compatible API (see the module docstring).

    Args:
        client: a `ChatClient` (its model is the judge; its ledger records the money).
        mode: "pairwise" (relative, tournament for k > 2) or "rubric" (pointwise 1–10).
        template: pairwise prompt with `{prompt}`, `{response_a}`, `{response_b}` (default: the local judge's).
        rubric_template: rubric prompt with `{rubric}`, `{prompt}`, `{response}`; `rubric`: the scale shown in it.
        choices: the two answer strings of the pairwise template.
        debias: judge both orders (2 calls per match).
        max_tokens: tokens the judge may generate (1 suffices with logprobs; allow a few for chatty models).
        logprobs: ask for token logprobs (servers that do not return them are read from the text).
        parse_retries: new attempts for an unparseable verdict before the match is invalid.
        retry_temperature: sampling temperature of those new attempts (the first attempt is greedy).
        system_prompt: optional system message sent before the judge prompt.
    """

    def __init__(
        self,
        client,
        mode: str = "pairwise",
        template: str = DEFAULT_JUDGE_TEMPLATE,
        rubric_template: str = DEFAULT_RUBRIC_TEMPLATE,
        rubric: str = DEFAULT_RUBRIC,
        choices=("A", "B"),
        debias: bool = True,
        max_tokens: int = 1,
        logprobs: bool = True,
        parse_retries: int = 2,
        retry_temperature: float = 0.7,
        system_prompt: str | None = None,
    ):
        from ..choices import JUDGE_MODES

        if mode not in JUDGE_MODES:
            raise ValueError(f"mode must be one of {', '.join(map(repr, JUDGE_MODES))}, got {mode!r}.")
        needed = ("{prompt}", "{response_a}", "{response_b}") if mode == "pairwise" else ("{prompt}", "{response}")
        for placeholder in needed:
            if placeholder not in (template if mode == "pairwise" else rubric_template):
                raise ValueError(f"The {mode} judge template must contain {placeholder}.")
        if len(choices) != 2 or choices[0] == choices[1]:
            raise ValueError(f"choices must be two different strings, got {choices!r}.")
        if not isinstance(parse_retries, int) or parse_retries < 0:
            raise ValueError(f"parse_retries must be an integer >= 0, got {parse_retries!r}.")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {max_tokens!r}.")
        self.client = client
        self.mode = mode
        self.template, self.rubric_template, self.rubric = template, rubric_template, rubric
        self.choices = tuple(choices)
        self.debias = debias
        self.max_tokens = max_tokens if mode == "pairwise" else max(max_tokens, 2)  # "10" may be two tokens
        self.logprobs = logprobs
        self.parse_retries = parse_retries
        self.retry_temperature = retry_temperature
        self.system_prompt = system_prompt
        self.relative = mode == "pairwise"
        self._blocked: set[str] = set()
        self.invalid_verdicts = 0  # matches / completions that ended invalid (unparseable or failed), this process
        self.parse_retries_used = 0
        prompt = (template, self.choices, debias) if mode == "pairwise" else (rubric_template, rubric)
        settings = canonical_json(
            [mode, prompt, self.max_tokens, logprobs, parse_retries, retry_temperature, system_prompt]
        )
        self.identity = f"api_judge:{client.model}|{mode}|{hashlib.sha256(settings.encode()).hexdigest()[:12]}"

    @classmethod
    def from_config(cls, args, store, run_id: str = "default", probe: bool = True) -> ApiJudgeAnnotator:
        """The judge an `AEPOConfig` describes, metered in `store` under `run_id`; probes the server first."""
        ledger = UsageLedger(store, run_id=run_id, prices=args.api_prices, budget=args.annotation_cost_budget)
        client = ChatClient.from_config(args, ledger=ledger, progress=True)
        if probe:
            client.probe()
        return cls(
            client,
            mode=args.judge_mode,
            max_tokens=args.judge_max_tokens,
            parse_retries=args.judge_parse_retries,
        )

    # ------------------------------------------------------------------------------------------- scoring

    def score(self, requests: list[AnnotationRequest]) -> list[list[float | None]]:
        self._blocked: set[str] = set()
        if self.mode == "pairwise":
            scores = tournament_scores(requests, self.preferences)
        else:
            scores = self._rubric_scores(requests)
        if self._blocked:
            partial = []
            for req, row in zip(requests, scores):
                keys = self._request_keys(req)
                partial.append(None if keys & self._blocked else row)
            ledger = self.client.ledger
            raise CostBudgetExhausted(
                f"{self.budget_message()} {sum(p is None for p in partial)} of {len(requests)} request(s) of this "
                "batch were not judged.",
                spent=ledger.spent,
                budget=ledger.budget,
                run_id=ledger.run_id,
                partial_scores=partial,
            )
        return scores

    def budget_message(self) -> str | None:
        """The account of the cost budget once it stopped a call (None before): what `AnnotationService` reports."""
        ledger = self.client.ledger
        if not self.client.budget_exhausted or ledger is None:
            return None
        return (
            f"annotation_cost_budget exhausted: ${ledger.spent:.6f} of ${ledger.budget:.6f} spent for run "
            f"'{ledger.run_id}' (store {ledger.store.path}). Every completed call is saved and will not be paid "
            "again: raise `annotation_cost_budget` (same run) to continue."
        )

    def _request_keys(self, req: AnnotationRequest) -> set[str]:
        if self.mode == "rubric":
            return {canonical_json([req.prompt, c]) for c in req.completions}
        cs = req.completions
        return {canonical_json([req.prompt, a, b]) for a in cs for b in cs}

    def preferences(self, triples: list[tuple]) -> list[float | None]:
        """Debiased `pref(a ≻ b)` for each `(prompt, a, b)`; None = invalid (unparseable or failed)."""
        texts = [self._pair_text(p, a, b) for p, a, b in triples]
        if self.debias:
            texts += [self._pair_text(p, b, a) for p, a, b in triples]
        q = self._verdicts(texts, self._read_choice)
        n = len(triples)
        for t, (p, a, b) in enumerate(triples):
            if q[t] is _BLOCKED or (self.debias and q[n + t] is _BLOCKED):
                self._blocked.add(canonical_json([p, a, b]))
        q = [None if v is _BLOCKED else v for v in q]
        prefs = [debiased(q[t], q[n + t]) for t in range(n)] if self.debias else q
        self.invalid_verdicts += sum(p is None for p in prefs)
        return prefs

    def _rubric_scores(self, requests: list[AnnotationRequest]) -> list[list[float | None]]:
        items = [(req.prompt, c) for req in requests for c in req.completions]
        texts = [
            self.rubric_template.replace("{rubric}", self.rubric)
            .replace("{prompt}", to_text(p))
            .replace("{response}", to_text(c))
            for p, c in items
        ]
        values = self._verdicts(texts, self._read_score)
        flat = []
        for (p, c), v in zip(items, values):
            if v is _BLOCKED:
                self._blocked.add(canonical_json([p, c]))
                v = None
            flat.append(v)
        self.invalid_verdicts += sum(v is None for v in flat)
        out, start = [], 0
        for req in requests:
            out.append(flat[start : start + len(req.completions)])
            start += len(req.completions)
        return out

    def _pair_text(self, prompt, a, b) -> str:
        return (
            self.template.replace("{prompt}", to_text(prompt))
            .replace("{response_a}", to_text(a))
            .replace("{response_b}", to_text(b))
        )

    def _verdicts(self, texts: list[str], read) -> list:
        """One verdict per judge text: a float, None (invalid) or `_BLOCKED` (not sent: cost budget)."""
        out: list = [None] * len(texts)
        todo = list(range(len(texts)))
        for attempt in range(self.parse_retries + 1):
            if not todo:
                break
            if attempt:
                self.parse_retries_used += len(todo)
            params = dict(max_tokens=self.max_tokens, temperature=0.0 if attempt == 0 else self.retry_temperature)
            if attempt:
                params["seed"] = attempt
            if self.logprobs:
                params.update(logprobs=True, top_logprobs=5)
            messages = [
                ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else [])
                + [{"role": "user", "content": texts[i]}]
                for i in todo
            ]
            results = self.client.complete_chat(messages, desc=f"judging ({self.mode})", **params)
            retry = []
            for i, result in zip(todo, results):
                if result.budget_exhausted:
                    out[i] = _BLOCKED
                elif not result.ok:  # failed for good at the HTTP level (already retried by the client)
                    out[i] = None
                else:
                    value = read(result)
                    if value is None:
                        retry.append(i)
                    out[i] = value
            todo = retry
        if todo:
            logger.warning(
                "API judge %s: %d verdict(s) still unparseable after %d attempt(s); marked invalid.",
                self.client.model,
                len(todo),
                self.parse_retries + 1,
            )
        return out

    def _read_choice(self, result) -> float | None:
        """`q = P(first response wins)` from logprobs, else from the text (1.0 / 0.0), else None."""
        tokens = (result.logprobs or [None])[0]
        a, b = self.choices
        for entry in tokens or []:
            alternatives = {**entry["top"], entry["token"]: entry["logprob"]}
            pa = sum(math.exp(lp) for t, lp in alternatives.items() if t.strip(_STRIP) == a)
            pb = sum(math.exp(lp) for t, lp in alternatives.items() if t.strip(_STRIP) == b)
            if pa + pb > 0:
                return pa / (pa + pb)
        choice = parse_choice(result.text, self.choices)
        return None if choice is None else float(choice == 0)

    def _read_score(self, result) -> float | None:
        """Expected 1–10 score from logprobs, else the number in the text, else None."""
        tokens = (result.logprobs or [None])[0]
        for entry in tokens or []:
            alternatives = {**entry["top"], entry["token"]: entry["logprob"]}
            numeric = {}
            for t, lp in alternatives.items():
                value = parse_score(t.strip(_STRIP)) if t.strip(_STRIP).isdigit() else None
                if value is not None:
                    numeric[value] = numeric.get(value, 0.0) + math.exp(lp)
            if numeric:
                stated = parse_score(result.text)
                if stated is not None and stated not in numeric:  # e.g. "10" split into "1" + "0": trust the text
                    return stated
                total = sum(numeric.values())
                return sum(v * p for v, p in numeric.items()) / total
        return parse_score(result.text)


class _Blocked:
    def __repr__(self) -> str:
        return "BLOCKED"


_BLOCKED = _Blocked()
