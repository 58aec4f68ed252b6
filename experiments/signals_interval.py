#!/usr/bin/env python
"""What `policy_signals_every` costs in selection quality (issue 33, item 4), measured through `AEPOTrainer`.

With `policy_signals_every = s` the policy signals are computed on every s-th optimizer step only; the prompts of the
other steps are selected by `active_cold_start` (`random` by default). This script trains the tiny digit-sorting
policy of `policy_training.py` (SFT from scratch, pools of N samples from it, the task's gold reward as the paid
annotator) with `selection_strategy="implicit_reward_gap"` at s = 1, 2, 4, 8 and "never" (s larger than the run: every
prompt selected by the fallback), the same seeds, prompts, pools and data order for every s. At every step of every
run it also computes, on the same batch and the same weights, the selection fresh signals would have made (an
instrumented `policy_signals_of_step`: on the steps the run computes its signals these *are* the fresh ones, on the
others the extra pass is timed and left out of the step time), and reports, per s:

* **agreement** — the share of prompts whose selected pair is the fresh-signal pair, over the prompts where the fresh
  signals have spread (at the first step the policy is its reference and every prompt is flat, for every s);
* **pair gold gap** — gold(better) − gold(worse) of the selected pair (what the label teaches: 0 is a tie, which
  forms no pair), with its paired difference to s = 1 on the same prompts (95% t-interval over prompts × seeds);
* **fresh pair's gold gap** on the same prompts (what the policy-aware pick would have bought at that state);
* **held-out gold** of the trained policy (mean over held-out prompts, paired difference to s = 1, 95% t-interval
  over seeds), and the step time relative to s = 1 (same process, side by side, the probe's pass excluded).

    python experiments/signals_interval.py --out experiments/results               # 5 seeds, N = 8
    python experiments/signals_interval.py --out /tmp/si --seeds 1 --train-prompts 32 --quick
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from efficacy_common import fmt_ci, machine_info, machine_line, markdown_table, mean_ci
from policy_lab import (
    SCALES,
    GoldReward,
    build_tokenizer,
    dpo_trainer,
    evaluate,
    pool_dataset,
    prompt_sets,
    sample,
    sft,
)
from tasks import load_task

#: The refresh intervals compared; NEVER stands for "no step after the first computes signals".
INTERVALS = (1, 2, 4, 8)
NEVER = 10**6


def label_of(every: int) -> str:
    return "never" if every >= NEVER else str(every)


class SelectionProbe:
    """Answers `AEPOTrainer.policy_signals_of_step` (overridden by `probed_trainer_class`): computes fresh signals on
    every step, hands them to the step only when the run's interval says so, and records both selections of every
    prompt with the candidates' gold rewards."""

    def __init__(self, task, k: int):
        self.task, self.k = task, k
        self.records: list[dict] = []
        self.probe_seconds = 0.0  # fresh passes the run itself would not have made
        self._pending: list[dict] = []
        self._wrapped = False

    def __call__(self, trainer):
        from aepo_trainer.selection.implicit_reward import implicit_reward_gap_indices
        from aepo_trainer.trainer import policy_signals as ps

        if not self._wrapped:
            self._wrap_select(trainer.pool_reducer)
        due = ps.policy_signals_due(trainer)
        step = int(trainer.state.global_step)

        def signals(batch):
            started = time.perf_counter()
            fresh = ps.compute_policy_signals(trainer, batch)
            if not due:
                self.probe_seconds += time.perf_counter() - started
            mask = batch["pool_mask"].bool()
            indices, informative = implicit_reward_gap_indices(fresh.implicit_rewards.cpu(), self.k, mask.cpu())
            self._pending.append(
                {"step": step, "due": due, "fresh": indices.tolist(), "informative": informative.tolist()}
            )
            return fresh if due else None

        return signals

    def _wrap_select(self, reducer) -> None:
        original = reducer.select

        def select(rows, *args, **kwargs):
            selected = original(rows, *args, **kwargs)
            if kwargs.get("learn", True) and self._pending:
                probe = self._pending.pop(0)
                suffix = self.task.prompt_suffix
                for i, row in enumerate(rows):
                    prompt = row["prompt"][: -len(suffix)] if suffix else row["prompt"]
                    gold = [self.task.gold_reward(prompt, c) for c in row["completions"]]
                    actual, fresh = sorted(selected.subsets[i]), sorted(probe["fresh"][i])
                    self.records.append(
                        {
                            "step": probe["step"],
                            "due": probe["due"],
                            "prompt": prompt,
                            "informative": bool(probe["informative"][i]),
                            "agree": actual == fresh,
                            "gap": _gap(gold, actual),
                            "fresh_gap": _gap(gold, fresh),
                        }
                    )
            return selected

        reducer.select = select
        self._wrapped = True


def _gap(gold: list[float], subset: list[int]) -> float:
    values = [gold[i] for i in subset]
    return max(values) - min(values)


def probed_trainer_class(probe: SelectionProbe):
    """An `AEPOTrainer` whose training steps take their policy signals from `probe` (the trainer's public hook)."""
    from aepo_trainer import AEPOTrainer

    class ProbedAEPOTrainer(AEPOTrainer):
        def policy_signals_of_step(self):
            return probe(self)

    return ProbedAEPOTrainer


def train_with_interval(task, sft_dir, tokenizer, data, every: int, scale, seed: int, workdir: str):
    """One `AEPOTrainer` run (implicit_reward_gap, interval `every`) with the selection probe installed."""
    probe = SelectionProbe(task, scale.k)
    trainer = dpo_trainer(
        sft_dir,
        tokenizer,
        data,
        GoldReward(task),
        scale,
        seed,
        workdir,
        selection_strategy="implicit_reward_gap",
        policy_signals_every=every,
        precompute_pool_ref_logps=True,  # the reference pass is out of the timed steps, as in the benchmark
        trainer_class=probed_trainer_class(probe),
    )
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    steps = int(trainer.state.global_step)
    if steps and not probe.records:  # the probe must have seen every trained step: no silent empty table
        raise RuntimeError(
            f"The selection probe recorded no prompt in {steps} training steps: AEPOTrainer no longer asks "
            "`policy_signals_of_step` for the step's signals, or no longer selects through `pool_reducer.select`."
        )
    return trainer.model.eval(), probe, {"steps": steps, "train_seconds": seconds, "probe_seconds": probe.probe_seconds}


def run_seed(task, scale, seed: int, intervals, log=print) -> list[dict]:
    import transformers
    from datasets.utils.logging import disable_progress_bar
    from efficacy_common import CharNgramEncoder
    from transformers import Qwen2ForCausalLM

    disable_progress_bar()
    transformers.logging.set_verbosity_error()
    tokenizer = build_tokenizer(task.alphabet)
    train, held_out = prompt_sets(task, scale, seed)
    records = []
    with tempfile.TemporaryDirectory(prefix="aepo-signals-interval-") as workdir:
        sft_dir = sft(task, tokenizer, scale, seed, workdir)
        pools = sample(Qwen2ForCausalLM.from_pretrained(sft_dir), tokenizer, task, train, scale.pool_size, seed + 1)
        data = pool_dataset(task, pools, train, CharNgramEncoder())
        for run, every in enumerate(intervals):
            model, probe, cost = train_with_interval(
                task, sft_dir, tokenizer, data, every, scale, seed, f"{workdir}/run{run}"
            )
            ev = evaluate(model, tokenizer, task, held_out, scale)
            records.append(
                {"seed": seed, "every": every, **cost, "held_out_gold": ev["gold"], "prompts": probe.records}
            )
            informative = [r for r in probe.records if r["informative"]]
            log(
                f"  [seed {seed}] every {label_of(every):>5}: agreement "
                f"{np.mean([r['agree'] for r in informative]):.3f} on {len(informative)} prompts, pair gold gap "
                f"{np.mean([r['gap'] for r in informative]):.3f}, held-out gold {np.mean(ev['gold']):.3f}, "
                f"{cost['steps']} steps {cost['train_seconds'] - cost['probe_seconds']:.1f}s"
            )
    return records


# ---------------------------------------------------------------------------------------------------- statistics
def summarize(records: list[dict], intervals) -> list[dict]:
    """Per interval: agreement, gold gaps (paired with s = 1 on the same prompts), held-out gold, step time."""
    by = {(r["seed"], r["every"]): r for r in records}
    seeds = sorted({r["seed"] for r in records})
    base_every = min(intervals)
    rows = []
    for every in intervals:
        agree, gap, fresh_gap, diff, held, held_diff, time_ratio = [], [], [], [], [], [], []
        for seed in seeds:
            run, base = by.get((seed, every)), by.get((seed, base_every))
            if run is None or base is None:
                continue
            base_gap = {(r["step"], r["prompt"]): r["gap"] for r in base["prompts"]}
            # prompts where the fresh signals had spread, in this run and in the s = 1 run
            base_informative = {(r["step"], r["prompt"]) for r in base["prompts"] if r["informative"]}
            for r in run["prompts"]:
                if not r["informative"]:
                    continue
                agree.append(float(r["agree"]))
                gap.append(r["gap"])
                fresh_gap.append(r["fresh_gap"])
                key = (r["step"], r["prompt"])
                if key in base_informative:
                    diff.append(r["gap"] - base_gap[key])
            held.append(float(np.mean(run["held_out_gold"])))
            held_diff.append(float(np.mean(run["held_out_gold"]) - np.mean(base["held_out_gold"])))
            per_step = (run["train_seconds"] - run["probe_seconds"]) / run["steps"]
            per_step_base = (base["train_seconds"] - base["probe_seconds"]) / base["steps"]
            time_ratio.append(per_step / per_step_base)
        rows.append(
            {
                "every": label_of(every),
                "prompts": len(agree),
                "agreement": mean_ci(agree),
                "pair_gold_gap": mean_ci(gap),
                "fresh_pair_gold_gap": mean_ci(fresh_gap),
                "gap_minus_every_1": mean_ci(diff),
                "paired_prompts": len(diff),
                "held_out_gold": mean_ci(held),
                "held_out_minus_every_1": mean_ci(held_diff),
                # median and range over seeds: a shared machine's load spikes make single runs' times outliers
                "step_time_ratio": [float(np.median(time_ratio)), float(min(time_ratio)), float(max(time_ratio))],
            }
        )
    return rows


def results_markdown(rows: list[dict], meta: dict) -> str:
    table = markdown_table(
        [
            "`policy_signals_every`",
            "prompts with spread",
            "agreement with fresh pick",
            "pair gold gap",
            "Δ gap vs every step (paired)",
            "fresh pick's gold gap",
            "held-out gold",
            "Δ held-out vs every step",
            "step time / every step",
        ],
        [
            [
                r["every"],
                str(r["prompts"]),
                fmt_ci(*r["agreement"]),
                fmt_ci(*r["pair_gold_gap"]),
                fmt_ci(*r["gap_minus_every_1"]),
                fmt_ci(*r["fresh_pair_gold_gap"]),
                fmt_ci(*r["held_out_gold"]),
                fmt_ci(*r["held_out_minus_every_1"]),
                "{:.2f}× ({:.2f}–{:.2f})".format(*r["step_time_ratio"]),
            ]
            for r in rows
        ],
    )
    return (
        "# Refresh interval of the policy signals and selection quality\n\n"
        f"Command: `{meta['command']}`  \nMachine: {meta['machine']}  \nWall time: {meta['wall_seconds'] / 60:.1f} min"
        f"  \nScale: {json.dumps(meta['scale'])}\n\n{table}\n\n"
        "Agreement, gold gaps: mean over the prompts whose fresh implicit rewards had spread (all seeds), 95% "
        "t-interval over those prompts; Δ gap pairs each prompt with the same prompt at the same step of the "
        "`every = 1` run of its seed. Held-out gold: mean over seeds, 95% t-interval over seeds. Step time: the run's training time less the probe's extra "
        "passes, per step, over the `every = 1` run's of the same seed: median over seeds (min–max).\n"
    )


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="experiments/results")
    p.add_argument("--task", default="tasks:DigitSort", help="a task plugin 'package.module:Name' (tasks.py)")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--train-prompts", type=int, default=None)
    p.add_argument("--pool-size", type=int, default=None)
    p.add_argument("--intervals", type=int, nargs="+", default=list(INTERVALS))
    p.add_argument("--quick", action="store_true", help="smoke run: the quick scale of policy_lab.py")
    p.add_argument("--tag", default="")
    p.add_argument("--render", metavar="JSON", help="only re-write the Markdown (and rows) from a results JSON")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.render:
        path = Path(args.render)
        results = json.loads(path.read_text(encoding="utf-8"))
        intervals = list(dict.fromkeys(r["every"] for r in results["records"]))
        results["rows"] = summarize(results["records"], intervals)
        path.write_text(json.dumps(results), encoding="utf-8")
        path.with_suffix(".md").write_text(results_markdown(results["rows"], results["meta"]), encoding="utf-8")
        return results["rows"]
    import torch

    torch.set_num_threads(1)
    task = load_task(args.task)
    scale = replace(SCALES["quick" if args.quick else "small"], eval_prompts=128, eval_samples=2)
    if args.train_prompts:
        scale.train_prompts = args.train_prompts
    if args.pool_size:
        scale.pool_size = args.pool_size
    intervals = sorted(set(args.intervals)) + [NEVER]
    load_before = os.getloadavg()
    started = time.time()
    records = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        print(f"[seed {seed}] ({time.time() - started:.0f}s elapsed)", flush=True)
        records += run_seed(task, scale, seed, intervals, log=lambda m: print(m, flush=True))
    meta = {
        "command": "python experiments/signals_interval.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "scale": {**asdict(scale), "seeds": args.seeds, "task": task.name},
        "machine": machine_line(machine_info())
        + f"; load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f}",
        "wall_seconds": time.time() - started,
    }
    rows = summarize(records, intervals)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "signals_interval" + (f"_{args.tag}" if args.tag else ("_quick" if args.quick else ""))
    (out / f"{name}.md").write_text(results_markdown(rows, meta), encoding="utf-8")
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows, "records": records}), encoding="utf-8")
    print(results_markdown(rows, meta))
    return rows


if __name__ == "__main__":
    main()
