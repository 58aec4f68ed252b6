"""Generation: clients of LLM servers (today: any OpenAI-compatible HTTP API) and the money they cost.

* `ChatClient` (`openai_client`): concurrent, rate-limited, retried requests with a sync API; used by the
  `api_judge` annotator, `aepo generate --backend openai` and the Safer-Instruct expert stages.
* `UsageLedger`, `PriceTable`, `CostBudgetExhausted` (`ledger`): every call's tokens and dollars in the annotation
  store, the cost budget, and the response cache that makes a completed call free after a crash.
* `RateLimiter`, `backoff_delay`, `parse_retry_after` (`limits`): the politeness rules.

Importing this package imports neither torch nor `openai` (the client imports `openai` on first use; install it with
`pip install "aepo-trainer[api]"`).
"""

from .ledger import CostBudgetExhausted, PriceTable, UsageLedger
from .limits import RateLimiter, backoff_delay, parse_retry_after
from .openai_client import ApiConfigError, ChatClient
from .results import ChatResult

__all__ = [
    "ApiConfigError",
    "ChatClient",
    "ChatResult",
    "CostBudgetExhausted",
    "PriceTable",
    "RateLimiter",
    "UsageLedger",
    "backoff_delay",
    "parse_retry_after",
]
