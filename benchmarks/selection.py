"""Side-by-side benchmark of AEPO subset selection.

On the same pools (B prompts x N candidates x D dims, unit-norm fp32 embeddings) it times
  (a) `aepo_trainer.select_subsets` (the fused batched kernel),
  (b) a plain per-prompt NumPy implementation of the reference algorithm's shape: greedy forward selection plus 20
      rounds of local search (drop a random member, re-add the best, keep if not worse), the full objective
      re-evaluated for every candidate (as `diverse_mbr.py` does, minus its defects),
  (c) the batched similarity GEMM alone (`torch.bmm(E, E^T)`): the floor,
and prints the ratios for N in {8, 32, 128, 512} and k in {2, 4}. (b) is a Python loop over prompts, so it is timed on
as many prompts as fit in a time budget and scaled linearly to B (the row says on how many). Then it times embed +
select end to end on the real AlpacaEval pools (../shared/data/alpaca_eval_pools.jsonl.gz, N = 32), and the
embedder's texts/s per CPU backend (`--backends`: torch, onnx, onnx-int8, openvino, openvino-int8, static) on the same
2,000 pool texts with the share of prompts whose AEPO selection is identical to the torch backend's (the static row's
export+load column is its distillation from the model; its vectors live in another space, so no cosine to torch).

Runs on CUDA when available (`--device` to force); the GEMM then runs in true fp32 (TF32 off), like the kernel.

    python benchmarks/selection.py            # full run (about 3-4 min on 2 CPU cores, most of it embedding,
                                              # plus ~13 min for the backend rows; --no-backends skips them)
    python benchmarks/selection.py --quick    # smaller budgets, fewer end-to-end prompts
    python benchmarks/selection.py --backends # only the CPU embedding-backend rows (torch, onnx, openvino, int8, static)
    python benchmarks/selection.py --backends torch openvino static   # the static row beside torch and OpenVINO
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from aepo_trainer.selection import select_subsets  # noqa: E402

DEFAULT_POOLS = REPO_ROOT.parent / "shared" / "data" / "alpaca_eval_pools.jsonl.gz"


# ------------------------------------------------------------------------------------------------ (b) reference
def reference_select(E: np.ndarray, k: int, lam: float, rng: np.random.Generator, rounds: int = 20):
    """One prompt, the reference algorithm's shape: greedy + `rounds` rounds of drop-one/re-add-best local search,
    the full objective re-evaluated for every candidate subset. Self-similarity excluded, seeded RNG."""
    n = E.shape[0]
    M = E @ E.T
    np.fill_diagonal(M, 0.0)

    def f(S):
        S = np.asarray(S)
        rep = M[S].sum() / (len(S) * (n - 1))
        if len(S) < 2:
            return rep
        return rep - lam * M[np.ix_(S, S)].sum() / (len(S) * (len(S) - 1))

    def best_addition(base: list[int]) -> tuple[float, int]:
        """The candidate whose addition to `base` maximises the full objective (re-evaluated, as the reference)."""
        best, best_c = -np.inf, -1
        for c in range(n):
            if c not in base:
                v = f(base + [c])
                if v > best:
                    best, best_c = v, c
        return best, best_c

    S: list[int] = []
    for _ in range(k):
        S.append(best_addition(S)[1])
    cur = f(S)
    for _ in range(rounds):
        p = int(rng.integers(k))
        rest = S[:p] + S[p + 1 :]
        best, best_c = best_addition(rest)
        if best >= cur:
            S, cur = rest + [best_c], best
    return sorted(S), float(cur)


def time_reference(E: np.ndarray, k: int, lam: float, budget_s: float):
    """Run (b) prompt by prompt until the budget is spent (at least 2 prompts); returns (seconds per prompt,
    number of prompts timed, their objectives)."""
    rng = np.random.default_rng(0)
    objectives = []
    start = time.perf_counter()
    for b in range(E.shape[0]):
        objectives.append(reference_select(E[b], k, lam, rng)[1])
        if b >= 1 and time.perf_counter() - start > budget_s:
            break
    elapsed = time.perf_counter() - start
    return elapsed / len(objectives), len(objectives), np.array(objectives)


# ------------------------------------------------------------------------------------------------ timing helpers
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_of(fns: dict, device, repeats: int, min_time: float = 0.0) -> dict:
    """Interleaved timing: each repeat runs every function once (so load on a shared machine hits all of them
    alike); returns the minimum and median seconds per function."""
    for fn in fns.values():  # warm-up
        fn()
    sync(device)
    samples = {name: [] for name in fns}
    start = time.perf_counter()
    r = 0
    while r < repeats or (time.perf_counter() - start < min_time and r < 50 * repeats):
        for name, fn in fns.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            samples[name].append(time.perf_counter() - t)
        r += 1
    return {name: (min(s), statistics.median(s)) for name, s in samples.items()}


def clustered_unit_pools(B, N, D, seed, device):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(B, 4, D, generator=g)
    assign = torch.randint(0, 4, (B, N), generator=g)
    X = centers.gather(1, assign[..., None].expand(B, N, D)) + 1.5 * torch.randn(B, N, D, generator=g)
    return torch.nn.functional.normalize(X, dim=-1).to(device)


def ieee_fp32():
    torch.set_float32_matmul_precision("highest")


# ------------------------------------------------------------------------------------------------ benchmark parts
def kernel_table(args, device):
    rows = []
    print(
        f"\n(a) select_subsets  vs  (b) per-prompt NumPy reference  vs  (c) bmm floor;  B={args.batch} "
        f"D={args.dim} lambda={args.lam}, times = min over interleaved repeats"
    )
    header = (
        f"{'N':>4} {'k':>2} | {'(a) select':>11} {'(c) GEMM':>10} {'(b) NumPy':>10} {'b timed on':>10} | "
        f"{'a/c':>6} {'b/a':>8} | {'obj a-b':>8}"
    )
    print(header)
    print("-" * len(header))
    for N in args.sizes:
        E = clustered_unit_pools(args.batch, N, args.dim, seed=N, device=device)
        E_np = E.cpu().numpy().astype(np.float64)
        for k in args.ks:
            fns = {
                "a": lambda: select_subsets(E, k, args.lam, compile=args.compile),
                "c": lambda: torch.bmm(E, E.transpose(1, 2)),
            }
            t = best_of(fns, device, args.repeats, min_time=args.min_time)
            per_prompt, n_ref, ref_obj = time_reference(E_np, k, args.lam, args.ref_budget)
            t_b = per_prompt * args.batch
            res = select_subsets(E, k, args.lam)
            obj_gap = float(res.objective[:n_ref].double().cpu().numpy().mean() - ref_obj.mean())
            row = dict(
                N=N,
                k=k,
                a=t["a"][0],
                a_median=t["a"][1],
                c=t["c"][0],
                c_median=t["c"][1],
                b=t_b,
                b_prompts=n_ref,
                a_over_c=t["a"][0] / t["c"][0],
                b_over_a=t_b / t["a"][0],
                objective_a_minus_b=obj_gap,
            )
            rows.append(row)
            print(
                f"{N:>4} {k:>2} | {fmt(row['a']):>11} {fmt(row['c']):>10} {fmt(t_b):>10} {n_ref:>10} | "
                f"{row['a_over_c']:>5.2f}x {row['b_over_a']:>7.0f}x | {obj_gap:>+8.1e}"
            )
    return rows


def fmt(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


def end_to_end(args, device):
    from aepo_trainer.embedding import Embedder

    path = Path(args.pools)
    if not path.exists():
        print(f"\nend-to-end: {path} not found, skipped")
        return None
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    n_prompts = len(rows) if args.e2e_prompts <= 0 else min(args.e2e_prompts, len(rows))
    rows = rows[:n_prompts]
    pools = [r["completions"] for r in rows]
    t0 = time.perf_counter()
    embedder = Embedder(device=device, batch_size=args.embed_batch_size, show_progress=False)
    embedder.model
    t_load = time.perf_counter() - t0
    sync(device)
    t0 = time.perf_counter()
    E, mask = embedder.encode_pools(pools)
    sync(device)
    t_embed = time.perf_counter() - t0
    E = E.to(device)
    mask = mask.to(device)
    select_subsets(E, 2, args.lam, mask=mask)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    res = select_subsets(E, 2, args.lam, mask=mask)
    sync(device)
    t_select = time.perf_counter() - t0
    n_texts = sum(len(p) for p in pools)
    n_unique = len({c for p in pools for c in p})
    out = dict(
        prompts=n_prompts,
        texts=n_texts,
        unique_texts=n_unique,
        load_s=t_load,
        embed_s=t_embed,
        select_s=t_select,
        texts_per_s=n_texts / t_embed,
        full_805_estimate_s=(805 * 32) / (n_texts / t_embed) + t_select * 805 / n_prompts,
    )
    print(
        f"\nend to end on real AlpacaEval pools ({n_prompts} of 805 prompts, N = 32, {n_texts} texts, "
        f"{n_unique} distinct), k = 2, device {device}:"
    )
    print(
        f"  load embedder {t_load:.2f} s | embed {t_embed:.2f} s ({out['texts_per_s']:.1f} texts/s) | "
        f"select {t_select * 1e3:.2f} ms | selection share {t_select / (t_embed + t_select):.2%}"
    )
    if n_prompts < 805:
        print(f"  all 805 prompts at this rate: ~{out['full_805_estimate_s']:.0f} s (embedding dominates)")
    print(f"  mean objective {float(res.objective.mean()):.4f}, mean diversity {float(res.diversity.mean()):.4f}")
    out["active"] = active_overhead(rows, pools, E, mask, t_embed, device)
    return out


def active_overhead(rows, pools, E, mask, t_embed, device, labels: int = 1600):
    """Surrogate fit + safety rule + acquisition of an active strategy for the embedded batch vs its embedding time.

    For each surrogate (Bayesian linear, ensemble) and each test of the safety rule (`choices.SAFETY_TESTS`:
    cross-validated, the default, refits the surrogate once per fold on every new label set): the surrogate is first given `labels` labels (the end of a run at
    B = 1600: real features of the embedded candidates and gold scores, repeated under distinct keys when there are
    fewer), then timed on one more update of fresh prompts (`observe`: the out-of-sample test that feeds the safety
    rule + its record + the refit) and one `select` (the rule's decision + posterior + DeltaUCB; the rule is made to
    follow so that the acquisition, its most expensive branch, is what is timed)."""
    from aepo_trainer.choices import SAFETY_TESTS
    from aepo_trainer.selection import ActiveSelector

    scores = [[float(s) for s in r["scores"]] for r in rows]
    subsets = [list(range(len(p))) for p in pools]
    batch_rows = [{"prompt": r["prompt"], "completions": p} for r, p in zip(rows, pools)]
    out = {}
    for surrogate, test in [(s, t) for s in ("bayesian_linear", "ensemble") for t in SAFETY_TESTS]:
        selector = ActiveSelector("delta_ucb", 2, warmup_annotations=0, surrogate=surrogate, safety_test=test)
        copies = 0
        while len(selector.surrogate) < labels:  # fill: the same candidates under new prompt texts
            fake = [{"prompt": f"{copies}:{r['prompt']}", "completions": p} for r, p in zip(rows, pools)]
            selector.observe(fake, E, mask, None, subsets, scores)
            copies += 1
        best = {"select": float("inf"), "observe": float("inf")}
        for repeat in range(3):
            fresh = [{"prompt": f"fresh{repeat}:{r['prompt']}", "completions": p} for r, p in zip(rows, pools)]
            t0 = time.perf_counter()
            selector.observe(fresh, E, mask, None, [[0, 1]] * len(rows), [s[:2] for s in scores])
            best["observe"] = min(best["observe"], time.perf_counter() - t0)
            selector.safety.enabled = False  # decide "follow": time the acquisition
            sync(device)
            t0 = time.perf_counter()
            selector.select(batch_rows, E, mask)
            sync(device)
            best["select"] = min(best["select"], time.perf_counter() - t0)
            selector.safety.enabled = True
        share = (best["select"] + best["observe"]) / t_embed
        print(
            f"  active (delta_ucb, {surrogate}, {test} safety test): test + safety + fit on {len(selector.surrogate)} labels "
            f"{best['observe'] * 1e3:.1f} ms + decision + acquisition {best['select'] * 1e3:.1f} ms for these "
            f"{len(rows)} prompts = {share:.2%} of their embedding time "
            f"[target <= 10%: {'met' if share <= 0.10 else 'NOT met'}]"
        )
        out[f"{surrogate}/{test}"] = dict(
            labels=len(selector.surrogate), observe_s=best["observe"], select_s=best["select"], share_of_embed=share
        )
    return out


BACKEND_ROWS = ("torch", "onnx", "onnx-int8", "openvino", "openvino-int8", "static")


def _backend_settings(row: str) -> dict:
    """'onnx-int8@128' -> backend onnx, quantized, max_length 128 (the `Embedder` arguments of a benchmark row)."""
    name, _, length = row.partition("@")
    backend, _, quant = name.partition("-")
    if quant not in ("", "int8"):
        raise SystemExit(f"--backends: unknown row {row!r} (expected e.g. {', '.join(BACKEND_ROWS)}, or onnx@128)")
    return dict(backend=backend, quantized=quant == "int8", max_length=int(length) if length else None)


def backend_table(args):
    """texts/s of each embedding backend on the same real pool texts (CPU), and the share of prompts whose AEPO
    selection (`select_subsets`, k = 2 and 4) is identical to the torch backend's."""
    import tempfile

    from aepo_trainer.embedding import Embedder
    from aepo_trainer.embedding.backends import backend_problem

    path = Path(args.pools)
    if not path.exists():
        print(f"\nbackends: {path} not found, skipped")
        return None
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for _, line in zip(range(args.backend_prompts), f)]
    pools = [r["completions"][: args.backend_n] for r in rows]
    n_texts = sum(len(p) for p in pools)
    n_unique = len({c for p in pools for c in p})
    export_dir = args.export_dir or tempfile.mkdtemp(prefix="aepo_onnx_")  # a fresh export is part of the row
    names = args.backends or list(BACKEND_ROWS)
    if "torch" not in names:
        names = ["torch", *names]  # the reference of the agreement columns
    print(f"\nload average before the backend rows: {_load()}")
    print(
        f"\nembedding backends on CPU ({torch.get_num_threads()} threads): {len(pools)} AlpacaEval prompts x "
        f"{args.backend_n} candidates = {n_texts} texts ({n_unique} distinct), batch {args.embed_batch_size}; "
        "agreement = share of prompts whose selected k equals the torch backend's"
    )
    header = (
        f"{'backend':<16} | {'export+load':>11} | {'embed':>8} | {'texts/s':>8} | {'vs torch':>8} | "
        f"{'cos min':>7} {'cos mean':>8} | {'same k=2':>8} {'same k=4':>8} | {'texts/CPU-s':>11} {'vs torch':>8}"
    )
    print(header)
    print("-" * len(header))
    embedders, loads = {}, {}
    for name in names:  # load (and export) every backend first
        settings = _backend_settings(name)
        problem = backend_problem(settings["backend"], settings["quantized"])
        if problem is not None:
            print(f"{name:<16} | skipped: {problem}")
            continue
        t0 = time.perf_counter()
        embedders[name] = Embedder(
            device="cpu", batch_size=args.embed_batch_size, show_progress=False, export_dir=export_dir, **settings
        )
        embedders[name].encode(["warm-up"])  # loads (and for onnx/openvino exports) the model
        loads[name] = time.perf_counter() - t0
    # Interleaved: every chunk of prompts is embedded by every backend in turn (the order rotating), so the load of
    # a shared machine hits all backends alike; each backend's time is the sum over its chunks.
    seconds = dict.fromkeys(embedders, 0.0)
    cpu_seconds = dict.fromkeys(embedders, 0.0)  # CPU time of this process (all threads): robust to others' load
    parts = {name: [] for name in embedders}
    chunk = max(1, args.backend_chunk)
    for c, start in enumerate(range(0, len(pools), chunk)):
        order = list(embedders)[c % len(embedders) :] + list(embedders)[: c % len(embedders)]
        for name in order:
            t0, c0 = time.perf_counter(), time.process_time()
            parts[name].append(embedders[name].encode_pools(pools[start : start + chunk])[0])
            seconds[name] += time.perf_counter() - t0
            cpu_seconds[name] += time.process_time() - c0
    mask = torch.tensor([[j < len(p) for j in range(args.backend_n)] for p in pools])
    out, ref = [], None
    for name in embedders:
        E = torch.cat([torch.nn.functional.pad(e, (0, 0, 0, args.backend_n - e.shape[1])) for e in parts[name]])
        t_embed = seconds[name]
        picks = {k: select_subsets(E, k, args.lam, mask=mask).tolist() for k in (2, 4)}
        if ref is None:
            ref = dict(E=E, picks=picks, texts_per_s=n_texts / t_embed, texts_per_cpu_s=n_texts / cpu_seconds[name])
        same_space = E.shape[-1] == ref["E"].shape[-1]  # a static table (PCA 256) is another space
        cos = (E * ref["E"]).sum(-1)[mask] if same_space else torch.full((1,), float("nan"))
        row = dict(
            backend=name,
            texts=n_texts,
            export_load_s=loads[name],
            embed_s=t_embed,
            texts_per_s=n_texts / t_embed,
            speedup=(n_texts / t_embed) / ref["texts_per_s"],
            cpu_s=cpu_seconds[name],
            texts_per_cpu_s=n_texts / cpu_seconds[name],
            cpu_speedup=(n_texts / cpu_seconds[name]) / ref["texts_per_cpu_s"],
            cos_min=float(cos.min()),
            cos_mean=float(cos.mean()),
            **{f"same_k{k}": sum(a == b for a, b in zip(picks[k], ref["picks"][k])) / len(pools) for k in (2, 4)},
        )
        out.append(row)
        print(
            f"{name:<16} | {row['export_load_s']:>9.1f} s | {t_embed:>6.1f} s | {row['texts_per_s']:>8.1f} | "
            f"{row['speedup']:>7.2f}x | {row['cos_min']:>7.4f} {row['cos_mean']:>8.5f} | "
            f"{row['same_k2']:>8.1%} {row['same_k4']:>8.1%} | {row['texts_per_cpu_s']:>11.1f} "
            f"{row['cpu_speedup']:>7.2f}x"
        )
    print("target: >= 3x torch's texts/s with >= 95% identical selections (static: >= 100x torch's texts/s)")
    print(f"load average after the backend rows: {_load()}")
    return out


def _load() -> str:
    """The 1/5/15-minute load averages: a shared machine slows every row; the ratios are measured side by side."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" (on {os.cpu_count()} CPUs)"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller time budgets and 4 end-to-end prompts")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's default)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--sizes", type=int, nargs="+", default=[8, 32, 128, 512])
    p.add_argument("--ks", type=int, nargs="+", default=[2, 4])
    p.add_argument("--lam", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--compile", action="store_true", help="select_subsets(compile=True) for the k=2 pair kernel")
    p.add_argument("--pools", default=str(DEFAULT_POOLS))
    p.add_argument(
        "--e2e-prompts",
        type=int,
        default=None,
        help="prompts embedded end to end (0 = all 805; default all on CUDA, 16 on CPU, 4 with --quick)",
    )
    p.add_argument("--embed-batch-size", type=int, default=64)
    p.add_argument("--no-e2e", action="store_true")
    p.add_argument(
        "--backends",
        nargs="*",
        default=None,
        metavar="ROW",
        help="run only the embedding-backend rows: the named ones (torch, onnx, onnx-int8, openvino, openvino-int8, "
        "static; "
        "'@N' sets embedding_max_length, e.g. onnx@128), or all of them when none is named",
    )
    p.add_argument("--no-backends", action="store_true", help="skip the embedding-backend rows of a full run")
    p.add_argument(
        "--backend-prompts",
        type=int,
        default=None,
        help="prompts embedded per backend row (default 125, 5 with --quick)",
    )
    p.add_argument("--backend-n", type=int, default=16, help="candidates per prompt in the backend rows")
    p.add_argument("--backend-chunk", type=int, default=5, help="prompts per interleaved timing chunk")
    p.add_argument("--export-dir", default=None, help="ONNX export cache of the backend rows (default: a fresh one)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    ieee_fp32()
    args.repeats = args.repeats or (3 if args.quick else 5)
    args.min_time = 0.5 if args.quick else 2.0
    args.ref_budget = 0.5 if args.quick else 2.0
    if args.backend_prompts is None:
        args.backend_prompts = 5 if args.quick else 125
    if args.e2e_prompts is None:
        args.e2e_prompts = 4 if args.quick else (0 if device.type == "cuda" else 16)

    machine = dict(
        device=str(device),
        cpu=platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        torch=torch.__version__,
        numpy=np.__version__,
        gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    )
    print("machine:", json.dumps(machine))
    if device.type == "cpu":
        print("note: no CUDA device here, CPU timings only (the script runs the same on CUDA when present)")
    if args.backends is not None:  # the backend rows alone
        backends = backend_table(args)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(dict(machine=machine, backends=backends), f, indent=2)
        return
    rows = kernel_table(args, device)
    print("\ntargets (CPU): b/a >= 100x at N=128, k=4; a/c <= 2x for k=2")
    for r in rows:
        if (r["N"], r["k"]) == (128, 4):
            print(f"  N=128 k=4: (b)/(a) = {r['b_over_a']:.0f}x  [{'met' if r['b_over_a'] >= 100 else 'NOT met'}]")
    for r in rows:
        if r["k"] == 2:
            print(f"  N={r['N']} k=2: (a)/(c) = {r['a_over_c']:.2f}x  [{'met' if r['a_over_c'] <= 2 else 'NOT met'}]")
    e2e = None if args.no_e2e else end_to_end(args, device)
    backends = None if args.no_backends else backend_table(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(machine=machine, kernel=rows, end_to_end=e2e, backends=backends), f, indent=2)


if __name__ == "__main__":
    main()
