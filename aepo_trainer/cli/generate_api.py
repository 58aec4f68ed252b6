"""`aepo generate --backend openai`: sample the pools from an OpenAI-compatible server through `ChatClient`.

Each prompt is one request with `n = --num_completions` (the server samples the N completions in one go), all the
prompts of a `--batch_size` batch in flight together (at most `--api_concurrency`). Every call's usage and response
is recorded in `--annotation_store` (default `<output>.api.sqlite`): a rerun after an interruption pays no completed
call again, and `aepo stats --annotation_store ...` reports the tokens and dollars. `--annotation_cost_budget` stops
the run (exit code 3) before a call that might not fit; finished batches are kept, so raising it resumes.
"""

from __future__ import annotations

from .errors import EXIT_BUDGET_EXHAUSTED, CLIError, InputError

__all__ = ["OpenAISampler"]


class BudgetStop(CLIError):
    """The cost budget cannot cover the next call: exit code 3, finished batches kept."""

    exit_code = EXIT_BUDGET_EXHAUSTED


class OpenAISampler:
    """`sampler(prompts, seed) -> (pools, completion_tokens)` over a `ChatClient` (the interface of the local ones)."""

    def __init__(self, args, run_id: str | None = None):
        """`run_id`: the dollar ledger the calls are charged to (default `generate:<output>`); `aepo best-of-n` passes
        its own, so that sampling and judging share one `--annotation_cost_budget`."""
        try:
            from aepo_trainer.generation import ApiConfigError, ChatClient, UsageLedger
        except ImportError:
            raise InputError("--backend openai needs the `openai` package: pip install 'aepo-trainer[api]'") from None
        self.args = args
        store = args.annotation_store or f"{args.output}.api.sqlite"
        try:
            ledger = UsageLedger(
                store,
                run_id=run_id or f"generate:{args.output}",
                prices=args.api_prices,
                budget=args.annotation_cost_budget,
            )
            self.client = ChatClient(
                args.api_base,
                args.model_name_or_path,
                api_key_env=args.api_key_env,
                concurrency=args.api_concurrency,
                requests_per_minute=args.api_requests_per_minute,
                tokens_per_minute=args.api_tokens_per_minute,
                timeout=args.api_timeout,
                max_retries=args.api_max_retries,
                ledger=ledger,
                progress=True,
            )
            self.client.probe()
        except (ValueError, ApiConfigError) as error:
            raise InputError(str(error)) from None

    def generate(self, prompts: list, seeds: list[int], model=None) -> list:
        """The generation backends' interface (`aepo_trainer.generation`): one `GeneratedPool` per prompt, each prompt
        asked with its own seed."""
        from aepo_trainer.generation import GeneratedPool

        pools, tokens = self(prompts, list(seeds))
        return [
            GeneratedPool(prompt=p, completions=c, seed=s, num_tokens=tokens if i == 0 else 0)
            for i, (p, c, s) in enumerate(zip(prompts, pools, seeds))
        ]

    def __call__(self, prompts: list, seed: int | list[int]) -> tuple[list[list], int]:
        args = self.args
        params = dict(n=args.num_completions, max_tokens=args.max_new_tokens, temperature=args.temperature)
        if args.top_p < 1:
            params["top_p"] = args.top_p
        if args.top_k > 0:
            params["extra_body"] = {"top_k": args.top_k}
        conversational = [not isinstance(p, str) for p in prompts]
        if isinstance(seed, list):  # one seed per prompt (`generation.prompt_seed`)
            seeds = [{"seed": s % 2**31} for s in seed]
        else:
            seeds = [{"seed": (seed + i) % 2**31} for i in range(len(prompts))]  # one per prompt: a rerun asks the same
        from aepo_trainer.generation import CostBudgetExhausted

        try:
            if args.api_endpoint == "completions":
                if any(conversational):
                    raise InputError("--api_endpoint completions needs plain-text prompts; use --api_endpoint chat")
                results = self.client.complete_text(prompts, per_request=seeds, desc="generate", **params)
            else:
                messages = [p if c else [{"role": "user", "content": p}] for p, c in zip(prompts, conversational)]
                results = self.client.complete_chat(messages, per_request=seeds, desc="generate", **params)
            if any(r.budget_exhausted for r in results):
                self.client.check_budget()  # raises CostBudgetExhausted with the account
        except CostBudgetExhausted as error:
            raise BudgetStop(str(error)) from None
        pools, tokens = [], 0
        for prompt, conv, result in zip(prompts, conversational, results):
            if not result.ok:
                raise CLIError(f"the request for prompt {str(prompt)[:60]!r} failed for good: {result.error}")
            if len(result.texts) != args.num_completions:
                raise CLIError(
                    f"the server returned {len(result.texts)} completions instead of n={args.num_completions} "
                    "(does it support `n`?)"
                )
            pools.append([[{"role": "assistant", "content": t}] if conv else t for t in result.texts])
            tokens += 0 if result.cached else result.completion_tokens
        return pools, tokens
