"""`PairwiseJudgeAnnotator`: any causal LM as a pairwise judge (SELF-JUDGE, arXiv 2402.11253).

One judgment = one forward pass over the judge prompt (question, response A, response B) and a read of the next-token
probabilities of "A" and "B", renormalised over the two: `q(a, b) = P(A) / (P(A) + P(B))`. Position bias is removed by
judging both orders: `pref(a ≻ b) = (q(a, b) + 1 − q(b, a)) / 2` (= `(P_A(a,b) + P_B(b,a)) / 2` of the paper with
renormalised probabilities), so `pref(a ≻ b) + pref(b ≻ a) = 1`.

Scores (one annotation = one completion scored; a judged subset of k costs k):

* k = 2: `[pref(a ≻ b), pref(b ≻ a)]` — the debiased preference itself, gap `2·pref − 1`.
* k > 2: a single-elimination tournament over the subset in order (k − 1 matches, each judged in both orders; an odd
  one out gets a bye). Score = rounds survived (byes count) + the debiased probability of winning the last match it
  played. Going one round further always scores higher; among completions knocked out in the same round, the closer
  loss scores higher. The champion scores highest.
* k = 1: nothing to compare: the score is None (invalid, never paired).

The judge is either frozen or the policy being trained:

* Frozen (the SELF-JUDGE paper's choice during training, `annotator='judge'`): given a PEFT model, judging runs with
  the adapter disabled (`disable_adapter=True`); given a plain model, it is used as is (pass the frozen reference
  model), or copied and frozen once with `copy_model=True`. Its identity is fixed, so its judgments are reused from
  the annotation store forever.
* Live (`annotator='self_judge'`, `tracks_policy=True`; a PEFT model with `disable_adapter=False` is live too): the
  current policy judges, so the same question can get another answer after an update. Its identity carries the
  policy's version — `policy_version` when the trainer sets one (`set_policy_version`, e.g. the run and the global
  step), else a SHA-256 digest of the trainable weights (recomputed only when a parameter changed in place). Judgments
  are reused only by the same weights: a resumed run repeating a step from its checkpoint has byte-identical weights,
  so it reuses what it paid for; a later step pays again, as it must.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from contextlib import contextmanager, nullcontext

from .base import AnnotationRequest, Annotator, to_text

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_JUDGE_TEMPLATE", "PairwiseJudgeAnnotator", "debiased", "render_judge_prompt", "tournament_scores"]

DEFAULT_JUDGE_TEMPLATE = (
    "Which is the more helpful, harmless, and honest assistant response to the user's question?\n\n"
    "[Question]\n{prompt}\n\n"
    "[Assistant A]\n{response_a}\n\n"
    "[Assistant B]\n{response_b}\n\n"
    "Please choose either A or B."
)


def debiased(q_ab: float | None, q_ba: float | None) -> float | None:
    """`pref(a ≻ b)` from the judge's P(first wins) in both orders: `(q(a, b) + 1 − q(b, a)) / 2` (None if either is)."""
    if q_ab is None or q_ba is None:
        return None
    return (q_ab + 1.0 - q_ba) / 2.0


def tournament_scores(requests: list[AnnotationRequest], preferences) -> list[list[float | None]]:
    """Scores of every request's completions from pairwise preferences (the rules in the module docstring).

    `preferences(triples)` returns the debiased `pref(a ≻ b)` of each `(prompt, a, b)`; all matches of a round, over
    all requests, are asked for in one call (one batch for a local model, one concurrent burst for an API). A `None`
    preference (an unparseable verdict) makes its whole request invalid — every score None, never a silent 0.5 —
    and ends that request's tournament.
    """
    state = []  # per request: alive positions, rounds survived, probability of its last match
    for req in requests:
        k = len(req.completions)
        state.append({"alive": list(range(k)), "survived": [0] * k, "last": [None] * k, "invalid": False})
    while True:
        matches = []
        for r, st in enumerate(state):
            alive = st["alive"]
            for m in range(0, len(alive) - 1, 2):
                matches.append((r, alive[m], alive[m + 1]))
        if not matches:
            break
        prefs = preferences(
            [(requests[r].prompt, requests[r].completions[i], requests[r].completions[j]) for r, i, j in matches]
        )
        winners: dict[int, list[int]] = {}
        for (r, i, j), p in zip(matches, prefs):
            st = state[r]
            if p is None:
                st["invalid"] = True
                continue
            st["last"][i], st["last"][j] = p, 1.0 - p
            w = i if p >= 0.5 else j  # exact tie: the earlier position wins
            st["survived"][w] += 1
            winners.setdefault(r, []).append(w)
        for r, st in enumerate(state):
            alive = st["alive"]
            if len(alive) < 2:
                continue
            if st["invalid"]:
                st["alive"] = []
                continue
            nxt = winners.get(r, [])
            if len(alive) % 2 == 1:  # bye
                st["survived"][alive[-1]] += 1
                nxt.append(alive[-1])
            st["alive"] = sorted(nxt)
    out = []
    for req, st in zip(requests, state):
        k = len(req.completions)
        if k < 2 or st["invalid"]:
            out.append([None] * k)
        elif k == 2:
            out.append([st["last"][0], st["last"][1]])
        else:
            out.append([st["survived"][i] + st["last"][i] for i in range(k)])
    return out


class PairwiseJudgeAnnotator(Annotator):
    """Pairwise LLM judge with position debiasing and a tournament for k > 2 (see the module docstring).

    Args:
        model: a causal LM (PEFT or not), or a path / Hub id loaded lazily with `AutoModelForCausalLM`.
        tokenizer: its tokenizer (default: loaded from the model's path).
        template: judge prompt with `{prompt}`, `{response_a}`, `{response_b}` placeholders (plain substitution, other
            braces are kept). Sent as one user message through the chat template when the tokenizer has one,
            followed by `answer_prefix` otherwise.
        choices: the two answer strings (their single-token encodings, with and without a leading space, are summed).
        debias: judge both orders (2 forward passes per match). False = one order only (cheaper, position-biased).
        batch_size: judge prompts per forward pass.
        max_prompt_tokens, max_response_tokens: truncate the question / each response to this many tokens.
        disable_adapter: judge with a PEFT model's adapter disabled (the frozen starting model).
        copy_model: judge with a frozen deep copy of a non-PEFT model made on first use.
        name: identity name (default: the model's `_name_or_path`).
        tracks_policy: the model is the policy being trained (judged as it is now): the identity includes the
            policy version (see the module docstring). Implied by a PEFT model with `disable_adapter=False`.
        policy_version: the initial policy version of a live judge (default: a digest of its trainable weights).
    """

    relative = True

    def __init__(
        self,
        model,
        tokenizer=None,
        template: str = DEFAULT_JUDGE_TEMPLATE,
        choices=("A", "B"),
        debias: bool = True,
        batch_size: int = 8,
        device: str | None = None,
        dtype=None,
        max_prompt_tokens: int | None = None,
        max_response_tokens: int | None = None,
        use_chat_template: bool | None = None,
        answer_prefix: str = "\nAnswer:",
        disable_adapter: bool = True,
        copy_model: bool = False,
        name: str | None = None,
        tracks_policy: bool = False,
        policy_version: str | None = None,
    ):
        for placeholder in ("{prompt}", "{response_a}", "{response_b}"):
            if placeholder not in template:
                raise ValueError(f"The judge template must contain {placeholder}.")
        if len(choices) != 2 or choices[0] == choices[1]:
            raise ValueError(f"choices must be two different strings, got {choices!r}.")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
        model = _unwrap(model)
        self._model = None if isinstance(model, str) else model
        self._path = model if isinstance(model, str) else _name_or_path(model)
        self.tokenizer = tokenizer
        self.template = template
        self.choices = tuple(choices)
        self.debias = debias
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.max_prompt_tokens = max_prompt_tokens
        self.max_response_tokens = max_response_tokens
        self.use_chat_template = use_chat_template
        self.answer_prefix = answer_prefix
        self.disable_adapter = disable_adapter
        self.copy_model = copy_model
        self._frozen = None
        self._choice_ids = None
        label = name or self._path
        if not label:
            label = f"<in-memory {type(model).__name__}>"
            logger.warning(
                "PairwiseJudgeAnnotator: in-memory model without a name; pass `name=` so cached "
                "judgments are not shared with a different model."
            )
        settings = repr(
            (template, self.choices, debias, use_chat_template, answer_prefix, max_prompt_tokens, max_response_tokens)
        )
        digest = hashlib.sha256(settings.encode("utf-8")).hexdigest()[:12]
        self.live = bool(tracks_policy) or (not disable_adapter and _is_peft(model))
        if self.live and copy_model:
            raise ValueError("copy_model=True freezes the judge; it cannot also track the policy (tracks_policy).")
        mode = "live-adapter" if self.live and _is_peft(model) else ("live" if self.live else "frozen")
        self._identity = f"judge:{label}|{mode}|{digest}"
        self.policy_version = policy_version
        self._weights_digest = (None, None)  # (parameter version counters, digest)

    @property
    def identity(self) -> str:
        """Store identity; a live judge's includes the policy version (weights digest by default)."""
        if not self.live:
            return self._identity
        return f"{self._identity}|policy@{self.policy_version or self.weights_digest()}"

    def set_policy_version(self, version: str | None) -> None:
        """Name the live policy's current weights (e.g. `f"{run_id}:step={global_step}"`); None = weights digest.

        The trainer calls this before annotating a step, which spares hashing the weights: the version must change
        whenever the weights do, and must be the same for the same weights (a resumed run at the same step)."""
        if not self.live:
            raise ValueError("set_policy_version: this judge is frozen (tracks_policy=False); its identity is fixed.")
        self.policy_version = None if version is None else str(version)

    def weights_digest(self) -> str:
        """SHA-256 (16 hex digits) of the judged model's trainable parameters (all parameters if none is trainable).

        Cached against the parameters' in-place version counters, so it is recomputed only after an update."""
        import torch

        model = self.model
        params = [p for p in model.parameters() if p.requires_grad] or list(model.parameters())
        versions = tuple(p._version for p in params)
        if self._weights_digest[0] != versions:
            h = hashlib.sha256()
            for p in params:
                h.update(str(p.dtype).encode())
                h.update(p.detach().contiguous().view(-1).view(torch.uint8).cpu().numpy().tobytes())
            self._weights_digest = (versions, h.hexdigest()[:16])
        return self._weights_digest[1]

    # ------------------------------------------------------------------------------------------- model

    @property
    def model(self):
        if self._model is None:
            import torch
            from transformers import AutoModelForCausalLM

            device = torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
            dtype = self.dtype
            if isinstance(dtype, str):
                dtype = getattr(torch, dtype)
            if dtype is None:
                dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
            self._model = AutoModelForCausalLM.from_pretrained(self._path, dtype=dtype).to(device)
            self._model.eval()
            self._model.requires_grad_(False)
        if self.copy_model and not _is_peft(self._model):
            if self._frozen is None:
                self._frozen = copy.deepcopy(self._model).eval().requires_grad_(False)
            return self._frozen
        return self._model

    def _tok(self):
        if self.tokenizer is None:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(self._path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        return self.tokenizer

    @contextmanager
    def _judging(self, model):
        """Eval mode, no grad, and (PEFT) the adapter disabled; everything restored afterwards."""
        import torch

        ctx = nullcontext()
        hf_adapters = False
        if self.disable_adapter:
            if _is_peft(model):
                ctx = model.disable_adapter()
            elif getattr(model, "_hf_peft_config_loaded", False):  # transformers' own adapter integration
                hf_adapters = True
        was_training = model.training
        model.eval()
        try:
            if hf_adapters:
                model.disable_adapters()
            with ctx, torch.no_grad():
                yield
        finally:
            if hf_adapters:
                model.enable_adapters()
            model.train(was_training)

    # ------------------------------------------------------------------------------------------- scoring

    def score(self, requests: list[AnnotationRequest]) -> list[list[float | None]]:
        return tournament_scores(requests, self.preferences)

    def preferences(self, triples: list[tuple]) -> list[float]:
        """Debiased `pref(a ≻ b)` for each `(prompt, a, b)` (a single order when `debias=False`)."""
        if not triples:
            return []
        texts = [self._judge_text(p, a, b) for p, a, b in triples]
        if self.debias:
            texts += [self._judge_text(p, b, a) for p, a, b in triples]
        q = self._choice_probs(texts)
        n = len(triples)
        if not self.debias:
            return q
        return [debiased(q[t], q[n + t]) for t in range(n)]

    def _truncate(self, text: str, limit: int | None) -> str:
        if limit is None:
            return text
        tok = self._tok()
        ids = tok(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= limit else tok.decode(ids[:limit])

    def _judge_text(self, prompt, a, b) -> str:
        filled = render_judge_prompt(
            self.template,
            self._truncate(to_text(prompt), self.max_prompt_tokens),
            self._truncate(to_text(a), self.max_response_tokens),
            self._truncate(to_text(b), self.max_response_tokens),
        )
        tok = self._tok()
        use_template = self.use_chat_template
        if use_template is None:
            use_template = bool(getattr(tok, "chat_template", None))
        if use_template:
            return tok.apply_chat_template(
                [{"role": "user", "content": filled}], tokenize=False, add_generation_prompt=True
            )
        return filled + self.answer_prefix

    def _choice_token_ids(self) -> tuple[list[int], list[int]]:
        if self._choice_ids is None:
            tok = self._tok()
            ids = []
            for choice in self.choices:
                found = []
                for variant in (choice, " " + choice):
                    enc = tok(variant, add_special_tokens=False)["input_ids"]
                    if len(enc) == 1 and enc[0] not in found:
                        found.append(enc[0])
                if not found:
                    enc = tok(choice, add_special_tokens=False)["input_ids"]
                    logger.warning("Judge choice %r is not a single token; using its first token.", choice)
                    found = enc[:1]
                ids.append(found)
            if set(ids[0]) & set(ids[1]):
                raise ValueError(f"Judge choices {self.choices!r} share a token; pick distinct answer strings.")
            self._choice_ids = (ids[0], ids[1])
        return self._choice_ids

    def _choice_probs(self, texts: list[str]) -> list[float]:
        """`P(A) / (P(A) + P(B))` at the next token of each judge text."""
        import torch

        model, tok = self.model, self._tok()
        ids_a, ids_b = self._choice_token_ids()
        encoded = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        order = sorted(range(len(encoded)), key=lambda j: len(encoded[j]))
        device = next(model.parameters()).device
        out = [0.5] * len(encoded)
        with self._judging(model):
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                width = max(len(encoded[j]) for j in idx)
                input_ids = torch.full((len(idx), width), tok.pad_token_id, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for row, j in enumerate(idx):  # left padding: the next token is always at the last position
                    seq = encoded[j]
                    input_ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
                    mask[row, width - len(seq) :] = 1
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                inputs = dict(
                    input_ids=input_ids.to(device),
                    attention_mask=mask.to(device),
                    position_ids=positions.to(device),
                    use_cache=False,
                )
                try:
                    logits = model(**inputs, logits_to_keep=1).logits[:, -1]
                except TypeError:  # models without `logits_to_keep`
                    logits = model(**inputs).logits[:, -1]
                logp = torch.log_softmax(logits.float(), dim=-1)
                la = torch.logsumexp(logp[:, ids_a], dim=-1)
                lb = torch.logsumexp(logp[:, ids_b], dim=-1)
                q = torch.sigmoid(la - lb).cpu().tolist()
                for j, v in zip(idx, q):
                    out[j] = float(v)
        return out


def render_judge_prompt(template: str, prompt, response_a, response_b) -> str:
    """The judge's question: `template` with `{prompt}`, `{response_a}`, `{response_b}` replaced (plain substitution,
    other braces kept; chat messages become `role: content` lines). Shared by the judge and the JSFT builder, so a
    model is trained on exactly the text it is later asked."""
    return (
        template.replace("{prompt}", to_text(prompt))
        .replace("{response_a}", to_text(response_a))
        .replace("{response_b}", to_text(response_b))
    )


def _unwrap(model):
    """The model inside a (Distributed)DataParallel wrapper: the adapter switch lives on the PEFT model itself."""
    while type(model).__name__ in ("DistributedDataParallel", "DataParallel") and hasattr(model, "module"):
        model = model.module
    return model


def _is_peft(model) -> bool:
    return (
        model is not None
        and not isinstance(model, str)
        and hasattr(model, "peft_config")
        and hasattr(model, "disable_adapter")
        and hasattr(model, "base_model")
    )


def _name_or_path(model) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "_name_or_path", "") or ""
