"""Generation: sampling candidate pools (local `transformers`, vLLM) and clients of LLM servers (any OpenAI-compatible
HTTP API) with the money they cost.

* `TransformersGenerator`, `SamplingSettings`, `prompt_seed`, `GeneratedPool` (`local`): N samples per prompt with
  `generate`, seeded per prompt. Every sampling backend implements `generate(prompts, seeds) -> list[GeneratedPool]`
  with one seed per prompt, so what a prompt gets never depends on the batch it was sampled in (`vllm`: the vLLM
  backends; `aepo generate --backend openai` adapts the API client to the same interface).
* `ChatClient` (`openai_client`): concurrent, rate-limited, retried requests with a sync API; used by the
  `api_judge` annotator, `aepo generate --backend openai` and the Safer-Instruct expert stages.
* `UsageLedger`, `PriceTable`, `CostBudgetExhausted` (`ledger`): every call's tokens and dollars in the annotation
  store, the cost budget, and the response cache that makes a completed call free after a crash.
* `RateLimiter`, `backoff_delay`, `parse_retry_after` (`limits`): the politeness rules.

Importing this package imports neither torch nor `openai` (the client imports `openai` on first use; install it with
`pip install "aepo-trainer[api]"`).
"""

from ..storage.usage import CostBudgetExhausted, PriceTable, UsageLedger
from .limits import RateLimiter, backoff_delay, parse_retry_after
from .local import (
    GeneratedPool,
    GenerationInputError,
    PromptEncoder,
    SamplingSettings,
    TransformersGenerator,
    load_transformers_generator,
    prompt_seed,
)
from .openai_client import ApiConfigError, ChatClient
from .results import ChatResult

__all__ = [
    "ApiConfigError",
    "ChatClient",
    "ChatResult",
    "CostBudgetExhausted",
    "GeneratedPool",
    "GenerationInputError",
    "PriceTable",
    "PromptEncoder",
    "RateLimiter",
    "SamplingSettings",
    "TransformersGenerator",
    "UsageLedger",
    "backoff_delay",
    "load_transformers_generator",
    "parse_retry_after",
    "prompt_seed",
]
