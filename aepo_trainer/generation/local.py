"""Local sampling of candidate pools with `transformers` `generate`: N samples per prompt, seeded per prompt.

Why not `torch.manual_seed(seed); model.generate(do_sample=True)`: the random stream is then shared by every row of
the batch, so a prompt's samples depend on which other prompts share its batch, on the batch size, and on how many
batches ran before. A resumed run, a different `generation_batch_size`, or the trainer seeing the prompt at another
position would sample differently. Here every prompt owns a `torch.Generator` seeded from `(seed, prompt, step)`
(`prompt_seed`), and sampling is done with the Gumbel-max trick inside a logits processor: the warped log-probabilities
(temperature, top-k, top-p, min-p — transformers' own warpers) plus Gumbel noise drawn from the prompt's generator,
then greedy decoding picks the argmax, which is an exact sample from the warped distribution. `repetition_penalty` is
applied by `generate` itself before our processor, exactly as in ordinary sampling.

The same interface (`generate(prompts, seeds) -> list[GeneratedPool]`) is implemented by the vLLM backend
(`aepo_trainer.generation.vllm`) and by any other backend a caller plugs in.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "GeneratedPool",
    "GenerationInputError",
    "PromptEncoder",
    "SamplingSettings",
    "TransformersGenerator",
    "load_transformers_generator",
    "prompt_seed",
]


class GenerationInputError(ValueError):
    """A prompt, a tokenizer or a setting cannot be used for generation (raised before any sampling)."""


@dataclass(frozen=True)
class SamplingSettings:
    """Everything that changes what is sampled (besides the model weights and the seed).

    The names follow TRL's `GRPOConfig` (`num_generations`, `max_completion_length`, `temperature`, `top_p`, `top_k`,
    `min_p`, `repetition_penalty`), so the same values mean the same thing in both. `fingerprint()` is stored with
    generated candidates: a rerun with other settings never reuses candidates sampled with these.
    """

    num_generations: int = 8
    max_completion_length: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float | None = None
    repetition_penalty: float = 1.0
    use_chat_template: str = "auto"

    def __post_init__(self):
        checks = [
            (isinstance(self.num_generations, int) and self.num_generations >= 1, "num_generations", "an integer >= 1"),
            (
                isinstance(self.max_completion_length, int) and self.max_completion_length >= 1,
                "max_completion_length",
                "an integer >= 1",
            ),
            (_number(self.temperature) and self.temperature >= 0, "temperature", "a number >= 0 (0 = greedy)"),
            (_number(self.top_p) and 0 < self.top_p <= 1, "top_p", "a number in (0, 1]"),
            (isinstance(self.top_k, int) and self.top_k >= 0, "top_k", "an integer >= 0 (0 = off)"),
            (self.min_p is None or (_number(self.min_p) and 0 <= self.min_p <= 1), "min_p", "None or in [0, 1]"),
            (_number(self.repetition_penalty) and self.repetition_penalty > 0, "repetition_penalty", "a number > 0"),
            (self.use_chat_template in ("auto", "true", "false"), "use_chat_template", "'auto', 'true' or 'false'"),
        ]
        for ok, name, allowed in checks:
            if not ok:
                raise GenerationInputError(
                    f"sampling setting {name}={getattr(self, name)!r} is invalid: expected {allowed}."
                )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def fingerprint(self) -> str:
        """A short stable digest of the settings (part of the identity of stored candidates)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class GeneratedPool:
    """The N samples of one prompt.

    Attributes:
        prompt: the prompt as given (string or chat messages).
        completions: N completions, strings for string prompts, `[{"role": "assistant", "content": ...}]` for
            conversational prompts (the pool format `AEPOTrainer` and `aepo select` read).
        prompt_ids: the prompt's token ids as fed to the model (chat template applied), or None (API backends).
        completion_ids: per completion, the generated token ids up to and including the EOS token (no padding), or
            None when the backend does not return ids.
        truncated: per completion, True when it hit `max_completion_length` without an EOS.
        seed: the seed it was sampled with.
        num_tokens: generated tokens (EOS included, padding excluded), for throughput reports.
    """

    prompt: Any
    completions: list
    prompt_ids: list[int] | None = None
    completion_ids: list[list[int]] | None = None
    truncated: list[bool] = field(default_factory=list)
    seed: int | None = None
    num_tokens: int = 0


def prompt_seed(seed: int, prompt: Any, step: int = 0) -> int:
    """The seed of one prompt's samples: a hash of the run seed, the prompt's canonical JSON and the step.

    Independent of batch composition and order, so the same prompt at the same step samples the same completions in
    a rerun, a resumed run and a run with another batch size. `step` distinguishes the generation rounds of a
    training run (and repeated occurrences of a prompt in `aepo generate`).
    """
    from .._utils.hashing import canonical_json

    text = f"aepo-generation:{int(seed)}:{int(step)}:{canonical_json(prompt)}"
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:7], "little")


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x and abs(x) != float("inf")


# --------------------------------------------------------------------------------------------------- prompts
class PromptEncoder:
    """Turns prompts into token ids: the chat template for conversational prompts (or always, `'true'`).

    Args:
        tokenizer: a `transformers` tokenizer; a missing pad token is set to the EOS token.
        use_chat_template: `'auto'` (conversational prompts only), `'true'` (string prompts become one user message)
            or `'false'` (never; conversational prompts are then an error).
        chat_template_kwargs: extra keyword arguments of `apply_chat_template` (e.g. `{"enable_thinking": False}`).
    """

    def __init__(self, tokenizer, use_chat_template: str = "auto", chat_template_kwargs: dict | None = None):
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if tokenizer.pad_token_id is None:
            raise GenerationInputError(
                f"the tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has neither a pad nor an EOS token"
            )
        self.tokenizer = tokenizer
        self.mode = use_chat_template
        self.chat_template_kwargs = dict(chat_template_kwargs or {})

    def encode(self, prompt) -> tuple[list[int], bool]:
        """`(token ids, conversational)` of one prompt."""
        conversational = not isinstance(prompt, str)
        name = getattr(self.tokenizer, "name_or_path", "") or "the tokenizer"
        if self.mode == "true" or (self.mode == "auto" and conversational):
            if not getattr(self.tokenizer, "chat_template", None):
                raise GenerationInputError(
                    f"the tokenizer of {name!r} has no chat template, but "
                    + ("the prompts are conversational" if conversational else "use_chat_template='true'")
                    + " (pass plain-text prompts, or a model with a chat template)"
                )
            messages = prompt if conversational else [{"role": "user", "content": prompt}]
            text = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False, **self.chat_template_kwargs
            )
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]), conversational
        if conversational:
            raise GenerationInputError(
                "conversational prompts need a chat template; do not set use_chat_template='false'"
            )
        return list(self.tokenizer(prompt)["input_ids"]), False

    @staticmethod
    def wrap(text: str, conversational: bool):
        """A completion in the pool format: a string, or one assistant message for conversational prompts."""
        return [{"role": "assistant", "content": text}] if conversational else text


# --------------------------------------------------------------------------------------------------- sampling
def _gumbel_sampling_processor(settings: SamplingSettings, seeds: list[int], num_generations: int):
    """A `LogitsProcessor` that turns greedy decoding into seeded per-prompt sampling (Gumbel-max trick)."""
    import torch
    from transformers import LogitsProcessor
    from transformers.generation.logits_process import (
        MinPLogitsWarper,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    warpers = []
    if settings.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(settings.temperature))
    if settings.top_k:
        warpers.append(TopKLogitsWarper(top_k=settings.top_k))
    if settings.top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=settings.top_p))
    if settings.min_p:
        warpers.append(MinPLogitsWarper(min_p=settings.min_p))

    class SeededGumbelSampling(LogitsProcessor):
        def __init__(self):
            self.generators = None

        def __call__(self, input_ids, scores):
            scores = scores.float()
            for warper in warpers:
                scores = warper(input_ids, scores)
            logp = torch.log_softmax(scores, dim=-1)
            if self.generators is None:
                self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in seeds]
            vocab = scores.shape[-1]
            uniform = torch.cat(
                [torch.rand((num_generations, vocab), generator=g, device=scores.device) for g in self.generators]
            )
            gumbel = -torch.log(-torch.log(uniform.clamp_(min=1e-20, max=1.0 - 1e-7)))
            return logp + gumbel

    return SeededGumbelSampling()


class TransformersGenerator:
    """Samples `settings.num_generations` completions per prompt with `model.generate`, batched, seeded per prompt.

    Args:
        model: a causal LM (PEFT models included); `generate(..., model=...)` may pass another one per call (the
            trainer passes its unwrapped policy).
        tokenizer: its tokenizer.
        settings: the `SamplingSettings`.
        batch_size: prompts per `generate` call (each call runs `batch_size × num_generations` sequences).
        chat_template_kwargs: extra arguments of the chat template.
    """

    backend = "transformers"

    def __init__(
        self,
        model,
        tokenizer,
        settings: SamplingSettings,
        batch_size: int = 4,
        chat_template_kwargs: dict | None = None,
    ):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise GenerationInputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.model = model
        self.settings = settings
        self.batch_size = batch_size
        self.prompts = PromptEncoder(tokenizer, settings.use_chat_template, chat_template_kwargs)
        self.tokenizer = self.prompts.tokenizer

    def generate(self, prompts: list, seeds: list[int], model=None) -> list[GeneratedPool]:
        """One `GeneratedPool` per prompt, in order. Every prompt is encoded (and checked) before any sampling."""
        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
        encoded = [self.prompts.encode(p) for p in prompts]
        model = self.model if model is None else model
        out: list[GeneratedPool] = []
        for start in range(0, len(prompts), self.batch_size):
            stop = start + self.batch_size
            out.extend(self._generate_batch(model, prompts[start:stop], encoded[start:stop], seeds[start:stop]))
        return out

    def _generate_batch(self, model, prompts, encoded, seeds) -> list[GeneratedPool]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        settings, tok = self.settings, self.tokenizer
        n = settings.num_generations
        device = next(model.parameters()).device
        width = max(len(ids) for ids, _ in encoded)
        pad = tok.pad_token_id
        # Rows are [prompt 0 × n, prompt 1 × n, ...] (greedy: one row per prompt, copied n times afterwards). The
        # rows are expanded here because greedy `generate` refuses `num_return_sequences > 1`.
        copies = 1 if settings.greedy else n
        input_ids = torch.tensor(
            [[pad] * (width - len(ids)) + ids for ids, _ in encoded for _ in range(copies)], device=device
        )
        attention = torch.tensor(
            [[0] * (width - len(ids)) + [1] * len(ids) for ids, _ in encoded for _ in range(copies)], device=device
        )
        eos = _eos_ids(model, tok)
        config = GenerationConfig(
            do_sample=False,  # sampling is done by the seeded Gumbel processor; greedy takes its argmax
            max_new_tokens=settings.max_completion_length,
            repetition_penalty=settings.repetition_penalty,
            pad_token_id=pad,
            eos_token_id=eos,
        )
        processors = LogitsProcessorList()
        if not settings.greedy:
            processors.append(_gumbel_sampling_processor(settings, seeds, n))
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                output = model.generate(
                    input_ids=input_ids,
                    attention_mask=attention,
                    generation_config=config,
                    logits_processor=processors,
                )
        finally:
            model.train(was_training)
        new = output[:, width:].tolist()
        if settings.greedy:
            new = [row for row in new for _ in range(n)]
        pools = []
        for p, (prompt, (ids, conversational), seed) in enumerate(zip(prompts, encoded, seeds)):
            completion_ids, truncated = [], []
            for row in new[p * n : (p + 1) * n]:
                cut = next((i + 1 for i, t in enumerate(row) if t in eos), None)
                completion_ids.append(row[:cut] if cut is not None else _strip_pad(row, pad))
                truncated.append(cut is None)
            texts = tok.batch_decode(completion_ids, skip_special_tokens=True)
            pools.append(
                GeneratedPool(
                    prompt=prompt,
                    completions=[self.prompts.wrap(t, conversational) for t in texts],
                    prompt_ids=ids,
                    completion_ids=completion_ids,
                    truncated=truncated,
                    seed=seed,
                    num_tokens=sum(len(c) for c in completion_ids),
                )
            )
        return pools


def _eos_ids(model, tokenizer) -> list[int]:
    """The model's EOS ids (generation config first: chat models often stop on several tokens), else the tokenizer's."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if ids is None:
        ids = tokenizer.eos_token_id
    if ids is None:
        return []
    return [int(i) for i in (ids if isinstance(ids, (list, tuple)) else [ids])]


def _strip_pad(row: list[int], pad: int) -> list[int]:
    end = len(row)
    while end and row[end - 1] == pad:
        end -= 1
    return row[:end]


def load_transformers_generator(
    model_name_or_path: str,
    settings: SamplingSettings,
    *,
    batch_size: int = 4,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    chat_template_kwargs: dict | None = None,
) -> TransformersGenerator:
    """Load a causal LM and its tokenizer by path or Hub id and wrap them in a `TransformersGenerator`.

    `device='auto'` picks CUDA when available; `dtype='auto'` is bfloat16 on GPU, float32 on CPU.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise GenerationInputError(f"model {model_name_or_path!r}: cannot load its tokenizer ({error})") from None
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    try:
        model = AutoModelForCausalLM.from_pretrained(
            model_name_or_path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as error:
        raise GenerationInputError(f"model {model_name_or_path!r}: cannot load it as a causal LM ({error})") from None
    model.to(device).eval()
    return TransformersGenerator(
        model, tokenizer, settings, batch_size=batch_size, chat_template_kwargs=chat_template_kwargs
    )
