"""vLLM backends (GPU only; import-guarded): the same `generate(prompts, seeds) -> list[GeneratedPool]` interface.

* `VLLMGenerator` — an offline `vllm.LLM` engine loaded from a path or Hub id (`aepo generate --backend vllm`,
  `aepo best-of-n --backend vllm`). Each prompt is one request with its own `SamplingParams(n=N, seed=...)`, so a
  prompt's samples depend only on its seed, never on the batch it was sent with.
* `PolicyVLLMGenerator` — the policy being trained, served by vLLM through TRL's own `VLLMGeneration` (the class
  `GRPOTrainer` uses): `mode='colocate'` (an engine inside the training process, sharing its GPU) or `mode='server'`
  (a `trl vllm-serve` process), weights pushed with `sync_weights()` after each optimizer update. TRL handles the
  engine set-up, PEFT merging, FSDP/DeepSpeed gathering and the weight-update group; this class only adds per-prompt
  seeds and the `GeneratedPool` output. In server mode the server takes one seed per call: the call's seed is derived
  from the prompts' seeds, so a rerun of the same step with the same prompts samples the same completions.

Nothing here runs on CPU; the CPU test suite only checks that a missing vLLM gives a clear error.
"""

from __future__ import annotations

import hashlib

from .local import GeneratedPool, GenerationInputError, PromptEncoder, SamplingSettings

__all__ = ["PolicyVLLMGenerator", "VLLMGenerator", "is_vllm_available", "require_vllm"]


def is_vllm_available() -> bool:
    from .._trl_compat import is_vllm_available as trl_is_vllm_available  # lazy: TRL imports torch

    return bool(trl_is_vllm_available())


def require_vllm(what: str) -> None:
    if not is_vllm_available():
        raise GenerationInputError(f"{what}: vLLM is not installed (pip install 'aepo-trainer[vllm]'; needs a GPU)")


def _sampling_params(settings: SamplingSettings, seed: int, n: int | None = None, **extra):
    from vllm import SamplingParams

    return SamplingParams(
        n=settings.num_generations if n is None else n,
        temperature=settings.temperature,
        top_p=settings.top_p,
        top_k=settings.top_k if settings.top_k else -1,
        min_p=settings.min_p or 0.0,
        repetition_penalty=settings.repetition_penalty,
        max_tokens=settings.max_completion_length,
        seed=int(seed),
        **extra,
    )


def _pools(prompts, encoded, seeds, completion_ids_per_prompt, tokenizer, max_tokens: int) -> list[GeneratedPool]:
    eos = tokenizer.eos_token_id
    pools = []
    for prompt, (ids, conversational), seed, completion_ids in zip(prompts, encoded, seeds, completion_ids_per_prompt):
        completion_ids = [list(c) for c in completion_ids]
        texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        pools.append(
            GeneratedPool(
                prompt=prompt,
                completions=[PromptEncoder.wrap(t, conversational) for t in texts],
                prompt_ids=ids,
                completion_ids=completion_ids,
                truncated=[len(c) >= max_tokens and (not c or c[-1] != eos) for c in completion_ids],
                seed=seed,
                num_tokens=sum(len(c) for c in completion_ids),
            )
        )
    return pools


class VLLMGenerator:
    """An offline vLLM engine over a model path; `generate(prompts, seeds)` samples N completions per prompt."""

    backend = "vllm"

    def __init__(self, llm, tokenizer, settings: SamplingSettings, chat_template_kwargs=None):
        self.llm = llm
        self.settings = settings
        self.prompts = PromptEncoder(tokenizer, settings.use_chat_template, chat_template_kwargs)
        self.tokenizer = self.prompts.tokenizer

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str,
        settings: SamplingSettings,
        *,
        seed: int = 0,
        dtype: str = "auto",
        trust_remote_code: bool = False,
        gpu_memory_utilization: float = 0.9,
        tensor_parallel_size: int = 1,
        max_model_length: int | None = None,
        chat_template_kwargs: dict | None = None,
    ) -> VLLMGenerator:
        require_vllm(f"model {model_name_or_path!r}")
        from transformers import AutoTokenizer
        from vllm import LLM

        tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
        llm = LLM(
            model=model_name_or_path,
            seed=seed,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            max_model_len=max_model_length,
        )
        return cls(llm, tokenizer, settings, chat_template_kwargs=chat_template_kwargs)

    def generate(self, prompts: list, seeds: list[int], model=None) -> list[GeneratedPool]:
        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
        encoded = [self.prompts.encode(p) for p in prompts]
        params = [_sampling_params(self.settings, s) for s in seeds]  # one request per prompt, each with its seed
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids, _ in encoded], params, use_tqdm=False)
        ids = [[o.token_ids for o in out.outputs] for out in outputs]
        return _pools(prompts, encoded, seeds, ids, self.tokenizer, self.settings.max_completion_length)


class PolicyVLLMGenerator:
    """The trained policy served by vLLM (TRL's `VLLMGeneration`): colocate or server mode, weights synced on demand.

    Args:
        model: the policy (PEFT or not) as the trainer holds it.
        accelerator: the trainer's accelerator.
        tokenizer: the policy's tokenizer.
        settings: the `SamplingSettings`.
        mode: `'colocate'` or `'server'` (TRL GRPO's `vllm_mode`).
        vllm_kwargs: the other `VLLMGeneration` arguments (`server_base_url`, `server_host`, `server_port`,
            `server_timeout`, `group_port`, `tensor_parallel_size`, `gpu_memory_utilization`, `max_model_length`,
            `enable_sleep_mode`, `model_impl`, `trust_remote_code`), under TRL's names.
    """

    backend = "vllm"

    def __init__(
        self, model, accelerator, tokenizer, settings: SamplingSettings, mode: str = "colocate", **vllm_kwargs
    ):
        require_vllm("use_vllm=True")
        from .._trl_compat import VLLMGeneration  # lazy: TRL imports torch

        if mode not in ("colocate", "server"):
            raise GenerationInputError(f"vllm_mode={mode!r} is invalid: expected 'colocate' or 'server'")
        self.settings = settings
        self.mode = mode
        self.accelerator = accelerator
        self.prompts = PromptEncoder(tokenizer, settings.use_chat_template)
        self.tokenizer = self.prompts.tokenizer
        self.engine = VLLMGeneration(
            model=model,
            accelerator=accelerator,
            processing_class=tokenizer,
            mode=mode,
            repetition_penalty=settings.repetition_penalty,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=settings.top_k,
            min_p=settings.min_p or 0.0,
            max_completion_length=settings.max_completion_length,
            logprobs=None,
            **vllm_kwargs,
        )
        self._synced_step = None

    def sync_weights(self, step: int) -> None:
        """Push the policy's current weights to vLLM (once per optimizer step; a no-op when already done)."""
        if self._synced_step != step:
            self.engine.sync_weights()
            self._synced_step = step

    def generate(self, prompts: list, seeds: list[int], model=None) -> list[GeneratedPool]:
        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
        encoded = [self.prompts.encode(p) for p in prompts]
        settings = self.settings
        if self.mode == "colocate":
            params = [_sampling_params(settings, s) for s in seeds]
            outputs = self.engine.llm.generate([{"prompt_token_ids": i} for i, _ in encoded], params, use_tqdm=False)
            ids = [[o.token_ids for o in out.outputs] for out in outputs]
        else:
            if not self.accelerator.is_main_process:
                raise RuntimeError("vllm_mode='server': generate on the main process (it owns the vLLM client)")
            call_seed = int.from_bytes(hashlib.sha256(repr(list(seeds)).encode()).digest()[:7], "little")
            output = self.engine.vllm_client.generate(
                prompts=[i for i, _ in encoded],
                n=settings.num_generations,
                repetition_penalty=settings.repetition_penalty,
                temperature=settings.temperature,
                top_p=settings.top_p,
                top_k=settings.top_k,
                min_p=settings.min_p or 0.0,
                max_tokens=settings.max_completion_length,
                logprobs=None,
                generation_kwargs={"seed": call_seed},
            )
            flat = output["completion_ids"]
            n = settings.num_generations
            ids = [flat[p * n : (p + 1) * n] for p in range(len(prompts))]
        return _pools(prompts, encoded, seeds, ids, self.tokenizer, settings.max_completion_length)
