"""Text generators: the one interface through which every Safer-Instruct stage calls a model.

A *text generator* turns prompts into `n` sampled texts each and counts what that cost:

    generator.identity                          # model + every setting that changes outputs (part of cache keys)
    generator.generate(prompts, n, sampling)    # -> list[list[str]]: n texts per prompt, in order
    generator.usage                             # cumulative `Usage`: calls, tokens, cost in USD

A prompt is a string (sent as is, e.g. the reversal prompt to the reversed model) or a list of chat messages (sent
through the tokenizer's chat template, e.g. to the judge and the expert). Implementations here: `TransformersGenerator`
(local, batched `generate`), `VLLMGenerator` (GPU, import-guarded) and `FunctionGenerator` (wraps a plain function: a
remote API client, a rule, a fake in tests). The OpenAI-compatible service of `aepo_trainer.generation` (issue 16)
plugs in through the same protocol.

Stages never call a generator without the stage checkpoint (`checkpoint.StageCheckpoint`) in front of it, so a
finished row is never generated, judged or paid twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "FunctionGenerator",
    "OpenAIChatGenerator",
    "Prompt",
    "SamplingConfig",
    "TextGenerator",
    "TransformersGenerator",
    "Usage",
    "VLLMGenerator",
    "estimate_tokens",
]

Prompt = str | list[dict[str, Any]]


@dataclass(frozen=True)
class SamplingConfig:
    """How texts are sampled; recorded in every row's provenance and part of every cache key.

    `temperature=0` is greedy decoding. `seed` makes local sampling reproducible (each batch is seeded from it and
    the batch's rows).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    seed: int = 0

    def __post_init__(self):
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.max_new_tokens < 1:
            raise ValueError(
                f"invalid sampling settings {self}: temperature >= 0, top_p in (0, 1], top_k >= 0 and "
                "max_new_tokens >= 1 are required"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Usage:
    """What a generator has consumed so far. `cost_usd` is 0 for local models unless prices are given."""

    calls: int = 0
    prompts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def copy(self) -> Usage:
        return dataclasses.replace(self)

    def minus(self, other: Usage) -> Usage:
        return Usage(*(getattr(self, f.name) - getattr(other, f.name) for f in dataclasses.fields(self)))

    def add(self, other: Usage) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@runtime_checkable
class TextGenerator(Protocol):
    """Anything that samples `n` texts per prompt (see the module docstring)."""

    identity: str
    usage: Usage

    def generate(self, prompts: Sequence[Prompt], n: int, sampling: SamplingConfig) -> list[list[str]]: ...


def estimate_tokens(text: str | list) -> int:
    """A tokenizer-free token estimate (4 characters per token, the usual English average) for cost forecasts."""
    if not isinstance(text, str):
        text = " ".join(str(m.get("content") or "") for m in text)
    return max(1, math.ceil(len(text) / 4))


@dataclass
class _Prices:
    input_per_1m: float = 0.0
    output_per_1m: float = 0.0

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_1m + completion_tokens * self.output_per_1m) / 1e6


class FunctionGenerator:
    """A text generator around a function `fn(prompts, n, sampling) -> list[list[str]]`.

    Use it for remote APIs you already have a client for, for rule-based stand-ins, and in tests (a fake expert that
    counts its calls). Token usage is estimated from characters (`estimate_tokens`) unless `fn` returns
    `(texts, Usage)`.

    Args:
        fn: the function.
        identity: a name that changes whenever the outputs would (model id, version, settings).
        price_input_per_1m, price_output_per_1m: USD per million prompt / completion tokens.
    """

    def __init__(
        self,
        fn: Callable[[list, int, SamplingConfig], Any],
        identity: str,
        price_input_per_1m: float = 0.0,
        price_output_per_1m: float = 0.0,
    ):
        self.fn = fn
        self.identity = identity
        self.usage = Usage()
        self.prices = _Prices(price_input_per_1m, price_output_per_1m)

    def generate(self, prompts: Sequence[Prompt], n: int, sampling: SamplingConfig) -> list[list[str]]:
        prompts = list(prompts)
        result = self.fn(prompts, n, sampling)
        usage = None
        if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], Usage):
            result, usage = result
        texts = _check_output(result, len(prompts), n, self.identity)
        if usage is None:
            usage = Usage(
                calls=1,
                prompts=len(prompts),
                prompt_tokens=sum(estimate_tokens(p) for p in prompts) * n,
                completion_tokens=sum(estimate_tokens(t) for row in texts for t in row),
            )
            usage.cost_usd = self.prices.cost(usage.prompt_tokens, usage.completion_tokens)
        self.usage.add(usage)
        return texts


class OpenAIChatGenerator:
    """A text generator served by an OpenAI-compatible API (OpenAI, `vllm serve`, TGI, llama.cpp, Ollama), through
    the package's one client layer, `generation.ChatClient`: bounded concurrency, rate limits, counted retries that
    honour `Retry-After`, a fail-fast probe of the key, URL and model.

    String prompts are sent as one user message; chat prompts as they are. Each prompt gets its own seed (from
    `sampling.seed` and the prompt), so a rerun asks the same. Usage comes from what the server reports; cost from
    the given prices. Paying twice is prevented one level up: every finished row is in the stage checkpoint before
    the next batch is sent, and a rerun skips it.

    Args:
        client: a `ChatClient` (its `model` is the expert/judge model).
        price_input_per_1m, price_output_per_1m: USD per million prompt / completion tokens.
        identity: the cache identity (default `openai:<base_url>:<model>`).
    """

    def __init__(
        self, client, price_input_per_1m: float = 0.0, price_output_per_1m: float = 0.0, identity: str | None = None
    ):
        self.client = client
        self.identity = identity or f"openai:{client.base_url}:{client.model}"
        self.usage = Usage()
        self.prices = _Prices(price_input_per_1m, price_output_per_1m)

    def generate(self, prompts: Sequence[Prompt], n: int, sampling: SamplingConfig) -> list[list[str]]:
        prompts = list(prompts)
        messages = [p if isinstance(p, list) else [{"role": "user", "content": p}] for p in prompts]
        results = self.client.complete_chat(
            messages,
            per_request=[{"seed": _batch_seed(sampling.seed, [p]) % 2**31} for p in prompts],
            n=n,
            max_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
        )
        failed = [(i, r.error) for i, r in enumerate(results) if r.error]
        if failed:
            i, error = failed[0]
            raise RuntimeError(
                f"text generator {self.identity!r}: {len(failed)} of {len(prompts)} request(s) failed (first: prompt "
                f"{i}: {error}); the rows finished so far are saved, rerun to go on"
            )
        fresh = [r for r in results if not r.cached]
        usage = Usage(
            calls=len(fresh),
            prompts=len(prompts),
            prompt_tokens=sum(r.prompt_tokens for r in fresh),
            completion_tokens=sum(r.completion_tokens for r in fresh),
        )
        usage.cost_usd = self.prices.cost(usage.prompt_tokens, usage.completion_tokens)
        self.usage.add(usage)
        return _check_output([list(r.texts) for r in results], len(prompts), n, self.identity)


def _check_output(result, n_prompts: int, n: int, name: str) -> list[list[str]]:
    if not isinstance(result, list) or len(result) != n_prompts:
        raise RuntimeError(f"text generator {name!r} returned {type(result).__name__}, not {n_prompts} lists of texts")
    for row in result:
        if not isinstance(row, list) or len(row) != n or not all(isinstance(t, str) for t in row):
            raise RuntimeError(f"text generator {name!r} must return {n} strings per prompt, got {row!r:.200}")
    return result


def _batch_seed(seed: int, prompts: list) -> int:
    digest = hashlib.sha256(f"{seed}:{prompts!r}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:7], "little")


class TransformersGenerator:
    """Batched sampling from a local causal LM with `transformers` (`model.generate`, left padding).

    String prompts are tokenized as they are (as `SFTTrainer` tokenized the reversed prompts); chat-message prompts go
    through the tokenizer's chat template with the generation prompt. Prompts longer than `max_prompt_tokens`
    (default: the model's context minus `max_new_tokens`) keep their last tokens, and are counted in
    `truncated_prompts`.

    Args:
        model: a path / Hub id, or a loaded model (then pass `tokenizer`).
        tokenizer: its tokenizer (default: loaded from the model's path).
        device: "auto" (cuda when available), "cpu", "cuda:0", ...
        dtype: "auto" (bfloat16 on GPU, float32 on CPU), "float32", "bfloat16", "float16".
        batch_size: prompts per `generate` call (each call samples batch_size x n sequences).
        price_input_per_1m, price_output_per_1m: optional USD prices (e.g. your GPU-hour cost per token).
    """

    def __init__(
        self,
        model,
        tokenizer=None,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 8,
        max_prompt_tokens: int | None = None,
        trust_remote_code: bool = False,
        price_input_per_1m: float = 0.0,
        price_output_per_1m: float = 0.0,
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if isinstance(model, str):
            name = model
            dtype = dtype if dtype != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")
            model = AutoModelForCausalLM.from_pretrained(
                name, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code
            )
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
        else:
            name = model.config._name_or_path or type(model).__name__
            if tokenizer is None:
                tokenizer = AutoTokenizer.from_pretrained(name)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = device
        self.batch_size = int(batch_size)
        self.max_prompt_tokens = max_prompt_tokens
        self.identity = f"transformers:{name}"
        self.usage = Usage()
        self.prices = _Prices(price_input_per_1m, price_output_per_1m)
        self.truncated_prompts = 0

    @property
    def context_length(self) -> int | None:
        config = self.model.config.get_text_config() if hasattr(self.model.config, "get_text_config") else None
        return getattr(config or self.model.config, "max_position_embeddings", None)

    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids of one prompt, exactly as `generate` feeds them (chat template for chat-message prompts)."""
        if isinstance(prompt, str):
            return self.tokenizer(prompt)["input_ids"]
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                f"{self.identity}: the prompts are chat messages but the tokenizer has no chat template; use a chat "
                "(instruct) model as judge/expert"
            )
        text = self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def generate(self, prompts: Sequence[Prompt], n: int, sampling: SamplingConfig) -> list[list[str]]:
        out: list[list[str]] = []
        for start in range(0, len(prompts), self.batch_size):
            out.extend(self._generate_batch(list(prompts[start : start + self.batch_size]), n, sampling))
        return out

    def _generate_batch(self, prompts: list, n: int, sampling: SamplingConfig) -> list[list[str]]:
        torch, tok = self.torch, self.tokenizer
        limit = self.max_prompt_tokens
        if limit is None and self.context_length:
            limit = self.context_length - sampling.max_new_tokens
        encoded = []
        for prompt in prompts:
            ids = self.encode(prompt)
            if limit is not None and len(ids) > limit:
                ids = ids[-max(1, limit) :]
                self.truncated_prompts += 1
            encoded.append(ids)
        width = max(len(ids) for ids in encoded)
        pad = tok.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in encoded], device=self.device)
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded], device=self.device)
        options = dict(
            do_sample=sampling.temperature > 0,
            num_return_sequences=n if sampling.temperature > 0 else 1,
            max_new_tokens=sampling.max_new_tokens,
            pad_token_id=pad,
        )
        if sampling.temperature > 0:
            options.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k)
        else:  # greedy: silence the model's own sampling defaults
            options.update(temperature=None, top_p=None, top_k=None)
        torch.manual_seed(_batch_seed(sampling.seed, prompts))
        with torch.inference_mode():
            output = self.model.generate(input_ids=input_ids, attention_mask=attention, **options)
        new = output[:, width:]
        texts = tok.batch_decode(new, skip_special_tokens=True)
        specials = torch.tensor([i for i in (pad, tok.eos_token_id) if i is not None], device=new.device)
        usage = Usage(
            calls=1,
            prompts=len(prompts),
            prompt_tokens=sum(len(ids) for ids in encoded) * (n if sampling.temperature > 0 else 1),
            completion_tokens=int((~torch.isin(new, specials)).sum()),
        )
        usage.cost_usd = self.prices.cost(usage.prompt_tokens, usage.completion_tokens)
        self.usage.add(usage)
        if sampling.temperature == 0:  # greedy: one decode per prompt, the same text n times
            return [[texts[i].strip()] * n for i in range(len(prompts))]
        return [[t.strip() for t in texts[i * n : (i + 1) * n]] for i in range(len(prompts))]


class VLLMGenerator:
    """Sampling with vLLM on a GPU (`pip install 'aepo-trainer[vllm]'`); same prompts and outputs as
    `TransformersGenerator`. Extra keyword arguments go to `vllm.LLM`."""

    def __init__(
        self,
        model: str,
        price_input_per_1m: float = 0.0,
        price_output_per_1m: float = 0.0,
        trust_remote_code: bool = False,
        **llm_kwargs,
    ):
        try:
            from vllm import LLM
        except ImportError:
            raise ImportError("VLLMGenerator needs vLLM: pip install 'aepo-trainer[vllm]' (GPU only)") from None
        self.llm = LLM(model=model, trust_remote_code=trust_remote_code, **llm_kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.identity = f"vllm:{model}"
        self.usage = Usage()
        self.prices = _Prices(price_input_per_1m, price_output_per_1m)

    def generate(self, prompts: Sequence[Prompt], n: int, sampling: SamplingConfig) -> list[list[str]]:
        from vllm import SamplingParams

        encoded = []
        for prompt in prompts:
            if isinstance(prompt, str):
                encoded.append(self.tokenizer(prompt)["input_ids"])
            else:
                text = self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
                encoded.append(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        params = SamplingParams(
            n=n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k or -1,
            max_tokens=sampling.max_new_tokens,
            seed=_batch_seed(sampling.seed, list(prompts)),
        )
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in encoded], params, use_tqdm=False)
        usage = Usage(
            calls=1,
            prompts=len(encoded),
            prompt_tokens=sum(len(ids) for ids in encoded) * n,
            completion_tokens=sum(len(o.token_ids) for out in outputs for o in out.outputs),
        )
        usage.cost_usd = self.prices.cost(usage.prompt_tokens, usage.completion_tokens)
        self.usage.add(usage)
        return [[o.text.strip() for o in out.outputs] for out in outputs]
