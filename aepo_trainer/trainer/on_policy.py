"""On-policy pools: prompt-only datasets whose candidates are sampled from the policy inside the training step.

Given a dataset with a `prompt` column and no completions (standard or conversational prompts), `AEPOTrainer` turns
each micro-batch of prompts into a pool batch at the start of the optimizer step, before the usual step-level
reduction (`step.reduce_pool_batches`):

    prompts -> generate N per prompt with the current policy (stored) -> embed -> tokenize like offline pools
            -> pool batch -> select k -> annotate (paid, main process) -> pair -> DPO step

* **Generation** uses `aepo_trainer.generation` (transformers `generate` on the unwrapped policy, or vLLM with
  `use_vllm`), seeded per prompt and generation round (`prompt_seed(seed, prompt, round)`, round =
  `global_step // generate_every`), so what a prompt gets does not depend on its batch.
* **Stored before use** (`CandidateStore`, `<output_dir>/candidates.sqlite` by default): a pool generated once in a
  round is read back whenever the prompt comes again in that round — with `generate_every > 1` a pool serves several
  steps — and a resumed run repeating a step reads the very candidates the killed run had paid labels for, so the
  annotation store recognises them and nothing is paid twice.
* **The sampled tokens are trained on**: each pool keeps the prompt's token ids as fed to the model and every
  completion's ids as generated (up to and including EOS; a completion cut at `max_completion_length` has no EOS, as
  it was sampled), and the step trains on exactly those. Decoding the samples and tokenizing the text again (TRL's
  DPO tokenization) can give other tokens — BPE merges across the prompt/completion boundary, non-canonical samples —
  i.e. train on sequences the policy never produced. Pools without ids (an API backend, an older store) fall back to
  the offline pools' tokenization (`pools.prepare_pool_dataset`).
* **Phase times** (`PhaseTimer`): generate / embed / select / annotate / train, logged as `aepo/time_share/*`.
* **Generated tokens** (compute, not labels): every step logs `aepo/generated_tokens`, the completion tokens sampled
  so far by all processes of this run (EOS included, padding excluded; a pool read back from the store costs none),
  a running total like `num_tokens`: each checkpoint keeps it and a resumed run continues from the checkpoint's value
  (the pools a killed run sampled after its last checkpoint are read back from the store and not counted again).
  `OnPolicyPools.generated_tokens` is this process's count since the process started (not checkpointed).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .._utils.run_ids import default_run_id
from .._utils.timing import PhaseTimer, phase
from ..data.kinds import is_prompt_only_dataset

logger = logging.getLogger(__name__)

__all__ = ["ON_POLICY_ROWS", "OnPolicyPools", "PhaseTimer", "PromptCollator", "is_prompt_only_dataset", "phase"]

ON_POLICY_ROWS = "on_policy_rows"


def validate_prompt_dataset(dataset, dataset_name: str = "train") -> None:
    """Every prompt a non-empty string or a non-empty list of chat messages; the error names the row."""
    for number, prompt in enumerate(dataset["prompt"]):
        if isinstance(prompt, str) and prompt.strip():
            continue
        if isinstance(prompt, list) and prompt and all(isinstance(m, dict) and "content" in m for m in prompt):
            continue
        raise ValueError(
            f"The {dataset_name} dataset is prompt-only (on-policy pools), but row {number}, column 'prompt' is "
            f"{type(prompt).__name__} {str(prompt)[:40]!r}: expected a non-empty string or a list of chat messages."
        )


@dataclass
class PromptCollator:
    """A batch of prompt-only rows, passed through as they are: the pools are generated in the training step.
    Examples of a prepared pool or pair dataset (an eval set) go to `fallback`, the usual collator."""

    fallback: object = None

    def __call__(self, examples: list[dict]) -> dict:
        if self.fallback is not None and examples and "prompt_ids" in examples[0]:
            return self.fallback(examples)
        return {ON_POLICY_ROWS: [dict(example) for example in examples]}


class OnPolicyPools:
    """Generates, stores, embeds and lays out the pools of prompt-only batches for `AEPOTrainer` (see the module)."""

    def __init__(self, trainer):
        import os

        from ..generation.store import CandidateStore

        args = trainer.args
        self.trainer = trainer
        self.settings = args.sampling_settings()
        self.fingerprint = self.settings.fingerprint()
        self.run_id = default_run_id(args)
        rank = trainer.accelerator.process_index
        path = args.generation_store or os.path.join(args.output_dir, "candidates.sqlite")
        if rank > 0:  # each process stores the pools of the prompts it trains on (no shared file needed)
            path = f"{path}.rank{rank}"
        self.store = CandidateStore(path)
        self._generator = None
        self._embedder = None
        self.generated = 0  # pools generated by this process (counters for tests and logs)
        self.reused = 0
        self.generated_tokens = 0  # completion tokens this process sampled (EOS included, no padding)
        self._all_generated_tokens = 0  # the same, summed over every process (the logged running total)

    def export(self) -> dict:
        """What a checkpoint keeps (`run_control.ON_POLICY_STATE_FILE`): the running total of generated tokens, the
        same on every process, so that a resumed run's `aepo/generated_tokens` continues from it."""
        return {"generated_tokens": self._all_generated_tokens}

    def absorb(self, state: dict) -> None:
        """Continue from a checkpoint's `export()` (every process, on resume)."""
        self._all_generated_tokens = int(state.get("generated_tokens", 0))

    # ------------------------------------------------------------------------------------------------ backends
    @property
    def generator(self):
        if self._generator is None:
            args, trainer = self.trainer.args, self.trainer
            if args.use_vllm:
                from ..generation.vllm import PolicyVLLMGenerator

                kwargs = dict(
                    server_base_url=args.vllm_server_base_url,
                    server_host=args.vllm_server_host,
                    server_port=args.vllm_server_port,
                    tensor_parallel_size=args.vllm_tensor_parallel_size,
                    gpu_memory_utilization=args.vllm_gpu_memory_utilization,
                )
                self._generator = PolicyVLLMGenerator(
                    trainer.model,
                    trainer.accelerator,
                    trainer.processing_class,
                    self.settings,
                    args.vllm_mode,
                    **kwargs,
                )
            else:
                from ..generation.local import TransformersGenerator

                per_call = None
                if args.generation_batch_size is not None:
                    per_call = max(1, args.generation_batch_size // self.settings.num_generations)
                self._generator = TransformersGenerator(
                    trainer.model, trainer.processing_class, self.settings, batch_size=per_call or 1_000_000
                )
        return self._generator

    @property
    def embedder(self):
        if self._embedder is None:
            from ..embedding.embedder import Embedder

            args = self.trainer.args
            self._embedder = Embedder.from_config(args, device=self.trainer.accelerator.device)
        return self._embedder

    # ------------------------------------------------------------------------------------------------ the step
    def pool_batches(self, prompt_batches: list[dict]) -> list[dict]:
        """Pool batches (as `AEPODataCollator` makes them) for the prompt batches of one optimizer step."""
        from ..generation.local import prompt_seed

        trainer, args = self.trainer, self.trainer.args
        step = trainer.state.global_step
        round_ = step // args.generate_every
        batches_rows = [batch[ON_POLICY_ROWS] for batch in prompt_batches]
        rows = [row for batch_rows in batches_rows for row in batch_rows]
        from ..generation.store import pool_key

        keys = [pool_key(self.run_id, self.fingerprint, round_, row["prompt"]) for row in rows]
        with phase(trainer.aepo_phase_timer, "generate"):
            stored = self.store.get(list(dict.fromkeys(keys)))
            missing = list(dict.fromkeys(k for k in keys if k not in stored))
            self.reused += len(keys) - len(missing)
            if missing:
                by_key = {k: row["prompt"] for k, row in zip(keys, rows)}
                prompts = [by_key[k] for k in missing]
                seeds = [prompt_seed(args.seed, p, round_) for p in prompts]
                fresh = self._generate(prompts, seeds, step)
                self.store.put(self.run_id, round_, self.fingerprint, dict(zip(missing, fresh)))
                stored.update(zip(missing, fresh))
                self.generated += len(missing)
        fresh_tokens = sum(stored[k].num_tokens for k in missing)
        self.generated_tokens += fresh_tokens
        self._all_generated_tokens += self._sum_over_processes(fresh_tokens)
        trainer._metrics["train"]["aepo/pools_generated"].append(float(len(missing)))
        trainer._metrics["train"]["aepo/generated_tokens"] = [float(self._all_generated_tokens)]  # running total
        out = []
        for batch_rows, start in zip(batches_rows, _offsets(batches_rows)):
            pools = [stored[keys[start + i]] for i in range(len(batch_rows))]
            out.append(self._pool_batch(batch_rows, pools))
        return out

    def _sum_over_processes(self, count: int) -> int:
        """`count` summed over every process (each samples the pools of its own prompts; every process runs this in
        every on-policy step, so the collective is matched)."""
        accelerator = self.trainer.accelerator
        if accelerator.num_processes == 1:
            return count
        import torch

        total = accelerator.reduce(torch.tensor(float(count), device=accelerator.device), "sum")
        return int(total.item())

    def _generate(self, prompts, seeds, step: int):
        trainer = self.trainer
        if trainer.args.use_vllm:
            self.generator.sync_weights(step)
            return self.generator.generate(prompts, seeds)
        from .._trl_compat import unwrap_model_for_generation

        with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator) as model:
            return self.generator.generate(prompts, seeds, model=model)

    def _pool_batch(self, rows: list[dict], pools) -> dict:
        """Embed, tokenize (offline pools' way) and collate one micro-batch of generated pools."""
        import datasets
        from datasets import Dataset
        from trl import DPOTrainer

        from ..data.collator import AEPODataCollator
        from ..data.pools import prepare_pool_dataset

        trainer, args = self.trainer, self.trainer.args
        with phase(trainer.aepo_phase_timer, "embed"):
            embeddings, _ = self.embedder.encode_pools([pool.completions for pool in pools])
        embeddings = embeddings.float().cpu()
        if all(pool.prompt_ids is not None and pool.completion_ids is not None for pool in pools):
            return self._sampled_tokens_batch(rows, pools, embeddings)
        table = [
            {
                **row,
                args.completions_column: pool.completions,
                args.embeddings_column: embeddings[i, : len(pool.completions)].tolist(),
            }
            for i, (row, pool) in enumerate(zip(rows, pools))
        ]
        bars = datasets.utils.logging.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        try:

            def tokenize_pairs(pair_dataset, pair_args):
                return DPOTrainer._prepare_dataset(trainer, pair_dataset, trainer.processing_class, pair_args, "train")

            # An empty sample (the policy stopped at once) is a real response, EOS only: kept, not an input error.
            prepared = prepare_pool_dataset(Dataset.from_list(table), args, tokenize_pairs, "train", allow_empty=True)
        finally:
            if bars:
                datasets.enable_progress_bars()
        prepared = prepared.with_format("torch", columns=[args.embeddings_column], output_all_columns=True)
        collator = AEPODataCollator.from_config(args, pad_token_id=trainer.pad_token_id)
        return collator([prepared[i] for i in range(len(prepared))])

    def _sampled_tokens_batch(self, rows: list[dict], pools, embeddings) -> dict:
        """The pool batch of the tokens as sampled: prompt ids as fed to the model, completion ids as generated."""
        from ..data.collator import AEPODataCollator
        from ..data.pools import COMPLETIONS_IDS, PROMPT_IDS

        trainer, args = self.trainer, self.trainer.args
        examples = []
        for i, (row, pool) in enumerate(zip(rows, pools)):
            fills = args.max_length is not None and len(pool.prompt_ids) >= args.max_length
            if fills and args.truncation_mode == "keep_start":  # as prepared pools: no completion token would be left
                logger.warning(
                    "An on-policy pool was dropped: its prompt alone is %d >= max_length=%d tokens.",
                    len(pool.prompt_ids),
                    args.max_length,
                )
                continue
            examples.append(
                {
                    **row,
                    args.completions_column: pool.completions,
                    args.embeddings_column: embeddings[i, : len(pool.completions)],
                    PROMPT_IDS: list(pool.prompt_ids),
                    COMPLETIONS_IDS: [list(ids) for ids in pool.completion_ids],
                }
            )
        collator = AEPODataCollator.from_config(args, pad_token_id=trainer.pad_token_id)
        return collator(examples)


def _offsets(batches: list[list]) -> list[int]:
    out, total = [], 0
    for b in batches:
        out.append(total)
        total += len(b)
    return out
