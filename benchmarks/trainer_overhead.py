"""Overhead of on-the-fly AEPO in the training loop: AEPOTrainer on pools vs DPOTrainer on the same, already-selected
pairs, same model (>= 10M parameters), same batches, same sequences.

    python benchmarks/trainer_overhead.py                      # CPU, a few minutes on 2 cores
    python benchmarks/trainer_overhead.py --steps 30 --max_length 256
    python benchmarks/trainer_overhead.py --bf16 --hidden 2048 --layers 12 --max_length 512   # on a GPU

`main(argv)` returns the results dict, so other scripts (benchmarks/gpu_suite.py) run this benchmark by importing it.

What is timed: the wall time of training steps (DataLoader + collation + forward/backward + optimizer step), after
`--warmup` steps. By default the two trainers' steps are interleaved (one AEPO step, one DPO step, ...) so that both
see the same load on a shared machine; `--mode sequential` times `trainer.train()` of each instead. The AEPO run does, in every step, what it does in real training:
stack the batch's pool embeddings ([B, N=32, D=384]), `select_subsets` (k = 2), annotate the selected candidates with
the dataset-scores annotator through the SQLite annotation store (every score written before use), pair, lay out the
group batch, and compute the loss once per response. The DPO run trains on the pairs the same `PoolReducer` forms
offline, in the same order (same seed, same sampler), so both runs train on identical sequences.

Not timed (one-time preparation, reported separately): tokenization and the sentence embeddings, which are computed
once per dataset and cached. This benchmark uses random 384-d embeddings (the selection cost does not depend on
their values) unless `--real_embeddings` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
# the project's shared data sits beside the checkout (`/work/main` -> `/work/shared`), also for nested worktrees
SHARED_POOLS = next(
    (p / "shared" / "data" / "alpaca_eval_pools.jsonl.gz" for p in REPO.parents if (p / "shared" / "data").is_dir()),
    REPO.parent / "shared" / "data" / "alpaca_eval_pools.jsonl.gz",
)
DEMO_POOLS = REPO / "aepo_trainer" / "data" / "alpaca_eval_pools_demo.jsonl"


def load_pools(num_prompts: int, pool_size: int) -> tuple[list[dict], str]:
    """Real AlpacaEval pools with N = 32 when the project's shared data is there; else pools of N completions built
    from the packaged demo sample (each prompt's 8 completions plus those of the next prompts)."""
    import gzip

    if SHARED_POOLS.exists() and pool_size <= 32:
        rows = []
        with gzip.open(SHARED_POOLS, "rt", encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                rows.append(
                    {
                        "prompt": row["prompt"],
                        "completions": row["completions"][:pool_size],
                        "scores": row["scores"][:pool_size],
                    }
                )
                if len(rows) == num_prompts:
                    break
        return rows, f"{SHARED_POOLS.name} (real AlpacaEval pools)"
    demo = [json.loads(line) for line in DEMO_POOLS.read_text(encoding="utf-8").splitlines()]
    rows = []
    for i in range(num_prompts):
        completions, scores = [], []
        j = i
        while len(completions) < pool_size:
            completions += demo[j % len(demo)]["completions"]
            scores += demo[j % len(demo)]["scores"]
            j += 1
        rows.append(
            {
                "prompt": demo[i % len(demo)]["prompt"],
                "completions": completions[:pool_size],
                "scores": scores[:pool_size],
            }
        )
    return rows, f"{DEMO_POOLS.name} (packaged sample, pools widened to N={pool_size})"


def build_model(path: Path, hidden: int, layers: int) -> int:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from aepo_trainer.testing import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=max(1, hidden // 128),
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


class Stepper:
    """One training step of `trainer` per call (DataLoader + collation + `get_batch_samples` + `training_step` +
    optimizer); returns its wall time in seconds."""

    def __init__(self, trainer, total_steps: int):
        trainer.create_optimizer_and_scheduler(num_training_steps=total_steps)
        trainer.current_gradient_accumulation_steps = 1  # set by `Trainer.train`'s loop otherwise
        self.trainer = trainer
        self.iterator = self._recording(iter(trainer.get_train_dataloader()))
        self.last_pool_batch = None  # the batch as the DataLoader gave it (AEPO: the pool batch, before selection)
        self.data_seconds: list[float] = []  # fetch + collate (AEPO: + select + annotate + pair) of each step
        self.last_batch = None  # the batch the last step trained on (AEPO: the group batch of the selected pairs)
        trainer.model.train()

    def _recording(self, iterator):
        for batch in iterator:
            self.last_pool_batch = batch
            yield batch

    def __call__(self) -> float:
        trainer = self.trainer
        start = time.perf_counter()
        # As `Trainer`'s loop fetches a step's batches: AEPOTrainer reduces its pool batches there (select, annotate,
        # pair), so that it pays only for the batches the step trains on.
        batches, num_items = trainer.get_batch_samples(self.iterator, 1, trainer.args.device)
        self.data_seconds.append(time.perf_counter() - start)
        if not batches:
            raise SystemExit(
                f"the training data ran out after {trainer.state.global_step} steps: raise --prompts (pools whose "
                "prompt fills max_length are dropped) or lower --steps/--warmup"
            )
        self.last_batch = batches[0]
        trainer.training_step(trainer.model, batches[0], num_items)
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        trainer.model.zero_grad(set_to_none=True)
        trainer.state.global_step += 1  # as `Trainer`'s loop does (`policy_signals_every` counts optimizer steps)
        return time.perf_counter() - start


class StepTimer:
    def __init__(self, warmup: int):
        from transformers import TrainerCallback

        timer = self

        class _Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                timer.stamps.append(time.perf_counter())

        self.warmup = warmup
        self.stamps: list[float] = []
        self.callback = _Callback()

    def steps_per_second(self) -> float:
        stamps = self.stamps[self.warmup :]
        return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def main(argv: list[str] | None = None) -> dict:
    from aepo_trainer.choices import POLICY_SIGNALS_DTYPES

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--pool_size", type=int, default=32, help="N")
    parser.add_argument("--num_annotations", type=int, default=2, help="k")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument(
        "--mode",
        choices=["alternate", "sequential"],
        default="alternate",
        help="'alternate' (default): interleave AEPO and DPO steps so both see the same machine load; "
        "'sequential': time `trainer.train()` of AEPO, then of DPO.",
    )
    parser.add_argument("--bf16", action="store_true", help="Train both models in bf16 mixed precision (GPU).")
    parser.add_argument("--real_embeddings", action="store_true", help="Embed with the real sentence embedder.")
    parser.add_argument("--json", default=None, help="Also write the results to this JSON file.")
    parser.add_argument(
        "--policy_signals",
        nargs="+",
        choices=list(SIGNAL_SETTINGS),
        default=None,
        help="Instead of the overhead row: time AEPO steps that compute these policy signals over all N candidates "
        "against DPOTrainer steps on the very pairs each AEPO step selected (interleaved), for every --pool_sizes.",
    )
    parser.add_argument("--pool_sizes", type=int, nargs="+", default=[8, 32], help="N of the --policy_signals rows.")
    parser.add_argument(
        "--check_today_up_to",
        type=int,
        default=32,
        help="Compare the implicit rewards with the whole-sequence pass used before issue 33 (one batch) for N up to "
        "this (the old pass is slow at large N).",
    )
    parser.add_argument("--policy_signals_every", type=int, nargs="+", default=[1], help="Rows per refresh interval.")
    parser.add_argument(
        "--agreement_batches", type=int, default=4, help="bfloat16 rows: pool batches compared with float32."
    )
    parser.add_argument(
        "--policy_signals_dtype",
        nargs="+",
        default=["auto"],
        choices=list(POLICY_SIGNALS_DTYPES),
        help="--policy_signals rows per precision of the signals pass (AEPOConfig.policy_signals_dtype); bfloat16 rows "
        "also report how many prompts select as the float32 pass does.",
    )
    parser.add_argument(
        "--lazy_reference",
        action="store_true",
        help="--policy_signals rows: compute reference log-probs in the steps (first epoch) instead of before training.",
    )
    opts = parser.parse_args(argv)
    if opts.policy_signals:
        return policy_signals_main(opts)

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from aepo_trainer import AEPOConfig, AEPOTrainer
    from aepo_trainer.annotation.dataset_scores import DatasetScoresAnnotator
    from aepo_trainer.annotation.service import AnnotationService
    from aepo_trainer.reduction import PoolReducer

    tmp = Path(tempfile.mkdtemp(prefix="aepo-overhead-"))
    num_params = build_model(tmp / "model", opts.hidden, opts.layers)
    rows, source = load_pools(opts.prompts, opts.pool_size)
    common = dict(
        bf16=opts.bf16,
        report_to="none",
        per_device_train_batch_size=opts.batch_size,
        max_steps=opts.warmup + opts.steps,
        logging_steps=10_000,
        save_strategy="no",
        learning_rate=1e-5,
        activation_checkpointing=False,
        seed=0,
        disable_tqdm=True,
        max_length=opts.max_length,
        dataloader_num_workers=0,
    )

    t = time.perf_counter()
    pools = Dataset.from_list(rows)
    if opts.real_embeddings:
        from aepo_trainer.embedding import embed_pools

        pools = embed_pools(pools)
    else:
        g = torch.Generator().manual_seed(0)
        pools = pools.add_column(
            "embeddings", [torch.randn(len(r["completions"]), 384, generator=g).tolist() for r in rows]
        )
    embed_s = time.perf_counter() - t

    def load(path):
        return AutoModelForCausalLM.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)

    # ---- the pairs AEPO forms, computed offline by the same PoolReducer, in the dataset order
    args = AEPOConfig(
        output_dir=str(tmp / "offline"), num_annotations=opts.num_annotations, bf16=False, report_to="none", seed=0
    )
    reducer = PoolReducer(args, AnnotationService(DatasetScoresAnnotator(), tmp / "offline.sqlite"))
    reduced = reducer.reduce(rows, torch.tensor(pools["embeddings"]))
    # Prompts whose two selected candidates tie give no pair: leave them out of both runs, so that both train on the
    # same batches (selection and pairing of a prompt do not depend on its batch).
    keep = sorted(p.row for p in reduced.pairs)
    tied = len(rows) - len(keep)
    pools = pools.select(keep)
    pairs = Dataset.from_list(
        [
            {
                "prompt": rows[p.row]["prompt"],
                "chosen": rows[p.row]["completions"][reduced.subsets[p.row][p.chosen]],
                "rejected": rows[p.row]["completions"][reduced.subsets[p.row][p.rejected]],
            }
            for p in reduced.pairs
        ]
    )

    # ---- both trainers, same model initialisation, same batch size, same data order (same seed, same length)
    total = opts.warmup + opts.steps
    model, ref = load(tmp / "model")
    t = time.perf_counter()
    aepo = AEPOTrainer(
        model=model,
        ref_model=ref,
        train_dataset=pools,
        processing_class=AutoTokenizer.from_pretrained(tmp / "model"),
        args=AEPOConfig(output_dir=str(tmp / "aepo"), num_annotations=opts.num_annotations, **common),
    )
    prepare_s = time.perf_counter() - t
    model, ref = load(tmp / "model")
    dpo = DPOTrainer(
        model=model,
        ref_model=ref,
        train_dataset=pairs,
        processing_class=AutoTokenizer.from_pretrained(tmp / "model"),
        args=DPOConfig(output_dir=str(tmp / "dpo"), **common),
    )

    if opts.mode == "sequential":
        timings = {}
        for name, trainer in (("aepo", aepo), ("dpo", dpo)):
            timer = StepTimer(opts.warmup)
            trainer.add_callback(timer.callback)
            trainer.train()
            timings[name] = timer.steps_per_second()
        aepo_sps, dpo_sps = timings["aepo"], timings["dpo"]
    else:
        # Alternate one AEPO step and one DPO step, so that both see the same machine load (a shared CPU's load
        # drifts over minutes). A step is what `Trainer` does per step without gradient accumulation: fetch and
        # collate the batch, `training_step` (forward + backward), optimizer and scheduler step.
        step_aepo, step_dpo = Stepper(aepo, total), Stepper(dpo, total)
        times = {"aepo": [], "dpo": []}
        for i in range(total):
            for name, stepper in (
                (("aepo", step_aepo), ("dpo", step_dpo)) if i % 2 == 0 else (("dpo", step_dpo), ("aepo", step_aepo))
            ):
                seconds = stepper()
                if i >= opts.warmup:
                    times[name].append(seconds)
        aepo_sps, dpo_sps = len(times["aepo"]) / sum(times["aepo"]), len(times["dpo"]) / sum(times["dpo"])
        data_ms = {
            name: 1000 * sum(st.data_seconds[opts.warmup :]) / opts.steps
            for name, st in (("aepo", step_aepo), ("dpo", step_dpo))
        }

    if opts.mode == "sequential":
        data_ms = {"aepo": float("nan"), "dpo": float("nan")}
    ratio = dpo_sps / aepo_sps
    results = {
        "device": "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
        "torch_threads": torch.get_num_threads(),
        "bf16": opts.bf16,
        "model_parameters": num_params,
        "data": source,
        "prompts": opts.prompts,
        "N": opts.pool_size,
        "k": opts.num_annotations,
        "batch_size": opts.batch_size,
        "max_length": opts.max_length,
        "timed_steps": opts.steps,
        "mode": opts.mode,
        "aepo_steps_per_s": aepo_sps,
        "dpo_steps_per_s": dpo_sps,
        "time_ratio_aepo_over_dpo": ratio,
        "overhead_percent": 100 * (ratio - 1),
        "data_ms_per_step_aepo": data_ms["aepo"],
        "data_ms_per_step_dpo": data_ms["dpo"],
        "one_time_embedding_s": embed_s,
        "one_time_prepare_s": prepare_s,
        "annotations_paid": aepo.annotation_service.spent,
        "tied_prompts_left_out": tied,
    }
    print(json.dumps(results, indent=2))
    print(f"\nAEPOTrainer on pools: {aepo_sps:.3f} steps/s | DPOTrainer on the selected pairs: {dpo_sps:.3f} steps/s")
    if opts.mode == "alternate":
        print(
            f"data per step (fetch + collate; AEPO also selects, annotates, pairs): AEPO {data_ms['aepo']:.1f} ms, "
            f"DPO {data_ms['dpo']:.1f} ms"
        )
    print(f"time ratio AEPO/DPO = {ratio:.3f}  (overhead {100 * (ratio - 1):+.1f}%; target <= +5% on CPU)")
    if opts.json:
        Path(opts.json).write_text(json.dumps(results, indent=2))
    return results


# ----------------------------------------------------------------------------------------------- policy signals
#: AEPOConfig settings of each --policy_signals row ("off": random selection, no policy pass: the baseline of issue 33).
SIGNAL_SETTINGS = {
    "off": {"selection_strategy": "random"},
    "implicit_reward": {"selection_strategy": "implicit_reward_gap"},
    "active_no_policy": {"selection_strategy": "delta_ucb"},  # the surrogate's own cost, without policy signals
    "policy_features": {
        "selection_strategy": "delta_ucb",
        "active_implicit_reward_feature": True,
        "active_policy_features": True,
    },
}


def _pair_batch(group: dict) -> dict:
    """DPOTrainer's batch ([chosen; rejected] rows, trimmed to their width) for the pairs of an AEPO group batch."""
    index = __import__("torch").cat([group["pair_chosen_rows"], group["pair_rejected_rows"]])
    width = int(group["attention_mask"][index].sum(1).max())
    return {name: group[name][index, :width] for name in ("input_ids", "attention_mask", "completion_mask")}


def _today_agreement(trainer, batch) -> dict:
    """Implicit rewards of the new pass against the whole-sequence pass used before issue 33, on one batch."""
    from aepo_trainer.selection.implicit_reward import implicit_reward_gap_indices
    from aepo_trainer.trainer.implicit_rewards import pool_implicit_rewards
    from aepo_trainer.trainer.policy_signals import compute_policy_signals

    new = compute_policy_signals(trainer, batch).implicit_rewards
    old = pool_implicit_rewards(trainer, batch)
    mask = batch["pool_mask"].bool()
    same = implicit_reward_gap_indices(new, 2, mask)[0].eq(implicit_reward_gap_indices(old, 2, mask)[0]).all(1)
    return {"max_abs_diff": float((new - old).abs().max()), "same_selection": f"{int(same.sum())}/{len(same)}"}


def _precision_agreement(trainer, num_batches: int) -> dict:
    """After the timed steps: the bf16 signals against the float32 pass on the same weights, over `num_batches`
    pool batches (same selection = the same k = 2 candidates of a prompt)."""
    from aepo_trainer.selection.implicit_reward import implicit_reward_gap_indices
    from aepo_trainer.trainer.policy_signals import compute_policy_signals

    same = total = 0
    worst = 0.0
    for _, batch in zip(range(num_batches), iter(trainer.get_train_dataloader())):
        fast = compute_policy_signals(trainer, batch).implicit_rewards
        exact = compute_policy_signals(trainer, batch, signals_dtype="auto").implicit_rewards  # float32, to compare
        mask = batch["pool_mask"].bool()
        picks = [implicit_reward_gap_indices(r, 2, mask)[0] for r in (fast, exact)]
        same += int(picks[0].eq(picks[1]).all(1).sum())
        total += len(picks[0])
        worst = max(worst, float((fast - exact).abs().max()))
    return {"max_abs_diff": worst, "same_selection": f"{same}/{total}"}


def _signals_pass_seconds(trainer, batch) -> float:
    """Wall time of the policy-signals pass alone (no-grad policy pass over every candidate, cached reference)."""
    from aepo_trainer.trainer.policy_signals import compute_policy_signals

    start = time.perf_counter()
    compute_policy_signals(trainer, batch)
    return time.perf_counter() - start


def _reference_pass_seconds(dpo, batch) -> float:
    """Wall time of DPOTrainer's reference forward on its pair batch (no grad, as TRL runs it)."""
    import torch

    start = time.perf_counter()
    with torch.no_grad():
        dpo.ref_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float().log_softmax(
            -1
        )
    return time.perf_counter() - start


def _token_counts(trainer, pool_batch, pair_batch) -> dict:
    """Tokens the signals pass runs forward (each prompt once, every candidate's completion, as kept by TRL's
    truncation) and tokens in the DPO step's batch (chosen and rejected rows, prompt included; the DPO step runs them
    forward, backward, and through the reference)."""
    from aepo_trainer.trainer.candidate_scoring import kept_lengths

    mask = pool_batch["pool_mask"].bool()
    tokens = 0
    for b, prompt_len in enumerate(pool_batch["pool_prompt_lengths"].tolist()):
        lens = [int(c) for c, ok in zip(pool_batch["pool_completion_lengths"][b].tolist(), mask[b].tolist()) if ok]
        kept = kept_lengths(prompt_len, lens, trainer.args.max_length, trainer.args.truncation_mode)
        tokens += max(pk for _, pk, _ in kept) + sum(ck for _, _, ck in kept)
    return {"pass": tokens, "dpo_batch": int(pair_batch["attention_mask"].sum())}


def policy_signals_main(opts) -> dict:
    """AEPO steps with policy signals vs DPO steps on the pairs they selected, per N and signal (issue 33 item 6)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from aepo_trainer import AEPOConfig, AEPOTrainer
    from aepo_trainer.trainer.policy_signals import prepare_reference_cache
    from aepo_trainer.trainer.reference_cache import reference_weights_digest

    tmp = Path(tempfile.mkdtemp(prefix="aepo-signals-"))
    num_params = build_model(tmp / "model", opts.hidden, opts.layers)
    tokenizer = AutoTokenizer.from_pretrained(tmp / "model")
    total = opts.warmup + opts.steps
    common = dict(
        bf16=opts.bf16, report_to="none", per_device_train_batch_size=opts.batch_size, max_steps=total,
        logging_steps=10_000, save_strategy="no", learning_rate=1e-5, activation_checkpointing=False, seed=0,
        disable_tqdm=True, max_length=opts.max_length, dataloader_num_workers=0,
    )  # fmt: skip
    load_before = os.getloadavg()
    print(
        f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f} ({os.cpu_count()} CPUs)"
    )
    rows_out = []
    for n in opts.pool_sizes:
        rows, source = load_pools(opts.prompts, n)
        g = torch.Generator().manual_seed(0)
        pools = Dataset.from_list(rows).add_column(
            "embeddings", [torch.randn(len(r["completions"]), 384, generator=g).tolist() for r in rows]
        )
        pairs = Dataset.from_list(
            [{"prompt": r["prompt"], "chosen": r["completions"][0], "rejected": r["completions"][1]} for r in rows[:8]]
        )
        for kind in opts.policy_signals:
            everies = opts.policy_signals_every if kind == "implicit_reward" else [1]
            dtypes = opts.policy_signals_dtype if kind in ("implicit_reward", "policy_features") else ["auto"]
            for every, dtype in [(e, d) for e in everies for d in dtypes]:
                settings = {**SIGNAL_SETTINGS[kind], "policy_signals_every": every}
                if kind in ("implicit_reward", "policy_features"):
                    settings["precompute_pool_ref_logps"] = not opts.lazy_reference
                    settings["policy_signals_dtype"] = dtype
                else:
                    settings.pop("policy_signals_every")
                aepo = AEPOTrainer(
                    model=AutoModelForCausalLM.from_pretrained(tmp / "model"),
                    ref_model=AutoModelForCausalLM.from_pretrained(tmp / "model"),
                    train_dataset=pools,
                    processing_class=tokenizer,
                    args=AEPOConfig(
                        output_dir=str(tmp / f"aepo-{n}-{kind}-{every}-{dtype}"),
                        num_annotations=2,
                        **common,
                        **settings,
                    ),
                )
                dpo = DPOTrainer(
                    model=AutoModelForCausalLM.from_pretrained(tmp / "model"),
                    ref_model=AutoModelForCausalLM.from_pretrained(tmp / "model"),
                    train_dataset=pairs,
                    processing_class=tokenizer,
                    args=DPOConfig(output_dir=str(tmp / "dpo"), **common),
                )
                t = time.perf_counter()
                reference_weights_digest(aepo)  # the reference cache's key: a hash of the full weights, once a run
                digest_s = time.perf_counter() - t
                t = time.perf_counter()
                if "precompute_pool_ref_logps" in settings:  # one-time, like the embeddings: each candidate's ref
                    prepare_reference_cache(aepo, None)
                precompute_s = time.perf_counter() - t
                row_load = os.getloadavg()[0]
                step_aepo = Stepper(aepo, total)
                dpo.create_optimizer_and_scheduler(num_training_steps=total)
                dpo.current_gradient_accumulation_steps = 1  # set by `Trainer.train`'s loop otherwise
                dpo.model.train()

                def dpo_step(batch):
                    start = time.perf_counter()
                    dpo.training_step(dpo.model, batch)
                    dpo.optimizer.step()
                    dpo.lr_scheduler.step()
                    dpo.model.zero_grad(set_to_none=True)
                    return time.perf_counter() - start

                times = {"aepo": [], "dpo": [], "pass": [], "ref": []}
                pending = None
                # The floor of a policy-signals step (issue 33 item 3): the no-grad pass over every candidate of the
                # step's own pool batch, timed alone right after the step, and DPO's reference pass on its pairs.
                probe = kind in ("implicit_reward", "policy_features")
                tokens = {"pass": 0, "dpo_batch": 0}
                for i in range(total):
                    # alternate which goes first; DPO trains on the pairs of the latest AEPO step
                    if i % 2 == 1 and pending is not None:
                        d = dpo_step(pending)
                        a = step_aepo()
                    else:
                        a = step_aepo()
                        pending = _pair_batch(step_aepo.last_batch)
                        d = dpo_step(pending)
                    pending = _pair_batch(step_aepo.last_batch)
                    if i >= opts.warmup:
                        times["aepo"].append(a)
                        times["dpo"].append(d)
                        if probe:
                            times["pass"].append(_signals_pass_seconds(aepo, step_aepo.last_pool_batch))
                            times["ref"].append(_reference_pass_seconds(dpo, pending))
                            counted = _token_counts(aepo, step_aepo.last_pool_batch, pending)
                            tokens = {name: tokens[name] + counted[name] for name in tokens}
                agreement = None  # after the timed steps: the policy has moved away from its reference
                if kind == "implicit_reward" and every == 1 and n <= opts.check_today_up_to:
                    agreement = _today_agreement(aepo, next(iter(aepo.get_train_dataloader())))
                vs_float32 = _precision_agreement(aepo, opts.agreement_batches) if dtype == "bfloat16" else None
                aepo_s = sum(times["aepo"]) / len(times["aepo"])
                dpo_s = sum(times["dpo"]) / len(times["dpo"])
                signal_ms = 1000 * sum(step_aepo.data_seconds[opts.warmup :]) / opts.steps
                pass_s = sum(times["pass"]) / len(times["pass"]) if times["pass"] else None
                ref_s = sum(times["ref"]) / len(times["ref"]) if times["ref"] else None
                row = {
                    "N": n, "signals": kind if dtype == "auto" else f"{kind} ({dtype})", "every": every, "aepo_s_per_step": aepo_s, "dpo_s_per_step": dpo_s,
                    "ratio": aepo_s / dpo_s, "aepo_data_ms_per_step": signal_ms, "precompute_s": precompute_s,
                    "weights_digest_s": digest_s,
                    "load_at_start": row_load, "load_at_end": os.getloadavg()[0], "vs_today": agreement, "vs_float32": vs_float32,
                    "annotations_paid": aepo.annotation_service.spent, "data": source,
                    "signals_pass_s": pass_s, "dpo_reference_pass_s": ref_s,
                    "floor_ratio": None if pass_s is None else (dpo_s - ref_s + pass_s) / dpo_s,
                    "tokens": tokens if probe else None,
                }  # fmt: skip
                rows_out.append(row)
                print(json.dumps(row), flush=True)
    load_after = os.getloadavg()
    print(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    print(
        f"\nmodel {num_params / 1e6:.1f} M parameters, batch {opts.batch_size} prompts, k = 2, max_length "
        f"{opts.max_length}, {opts.steps} timed steps after {opts.warmup} warm-up, torch threads {torch.get_num_threads()}"
    )
    print(
        "| N | signals | every | AEPO s/step | DPO on its pairs s/step | ratio | AEPO select phase ms | precompute s "
        "| weights digest s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows_out:
        print(
            f"| {r['N']} | {r['signals']} | {r['every']} | {r['aepo_s_per_step']:.3f} | {r['dpo_s_per_step']:.3f} | "
            f"**{r['ratio']:.2f}x** | {r['aepo_data_ms_per_step']:.0f} | {r['precompute_s']:.1f} | "
            f"{r['weights_digest_s']:.2f} |"
        )
    floor_rows = [r for r in rows_out if r["signals_pass_s"] is not None]
    if floor_rows:
        print(
            "\nThe floor (issue 33 item 3): an AEPO step with fresh signals = the DPO step without its reference pass"
            "\n(the pairs' reference log-probs come from the cache) + the no-grad pass over all N candidates' tokens (the"
            "\npairs' policy log-probs are needed with gradients, in train mode, so the pass's cannot stand in). Each timed"
            "\nalone right after each step, on that step's own batches: floor = (DPO - DPO reference pass + pass) / DPO."
        )
        print(
            "| N | signals | every | signals pass s | DPO step s | of which reference pass s | floor "
            "| measured AEPO / DPO | tokens per step: pass / DPO batch | bf16 vs float32: same selection, max diff |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in floor_rows:
            tok = r["tokens"]
            print(
                f"| {r['N']} | {r['signals']} | {r['every']} | {r['signals_pass_s']:.3f} | {r['dpo_s_per_step']:.3f} | "
                f"{r['dpo_reference_pass_s']:.3f} | {r['floor_ratio']:.2f}x | {r['ratio']:.2f}x | "
                f"{tok['pass'] // opts.steps} / {tok['dpo_batch'] // opts.steps} | "
                + (
                    f"{r['vs_float32']['same_selection']}, {r['vs_float32']['max_abs_diff']:.4f} |"
                    if r["vs_float32"]
                    else "– |"
                )
            )
    results = {"rows": rows_out, "load_before": load_before, "load_after": load_after, "parameters": num_params}
    if opts.json:
        Path(opts.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
