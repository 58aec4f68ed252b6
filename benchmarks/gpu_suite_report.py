"""The Markdown report of `benchmarks/gpu_suite.py`: one table per part, built from the JSON report alone (so a JSON
report brought back from a device can be re-rendered here: `python benchmarks/gpu_suite_report.py gpu_suite.json`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def num(value, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"
    return str(value)


def size(parameters: int) -> str:
    return f"{parameters / 1e9:.2f} B" if parameters >= 1e8 else f"{parameters / 1e6:.2f} M"


def ms(seconds) -> str:
    return "—" if seconds is None else f"{seconds * 1e3:.2f} ms"


def table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def job_lines(jobs: list[dict]) -> list[str]:
    rows = [
        [j["name"], j["status"], j.get("reason") or "", num(j.get("wall_s"), 1), num(j.get("cap_s"), 0)] for j in jobs
    ]
    return table(["job", "status", "reason", "wall s", "cap s"], rows)


def memory_lines(jobs: list[dict]) -> list[str]:
    rows = []
    for j in jobs:
        for r in j.get("rows", []):
            peak = (
                num(r.get("peak_allocated_gib"))
                if "peak_allocated_gib" in r
                else f"RSS {num(r.get('peak_rss_mib'), 0)} MiB"
            )
            docs = r.get("docs_computed_total_gib")
            rows.append(
                [
                    f"{r['model']}{', tiny' if r.get('tiny') else ''} ({size(r['parameters'])})",
                    "QLoRA (NF4 + double quant)" if r["method"] == "qlora" else "LoRA (bf16)",
                    r["max_length"],
                    r["sequences_per_step"],
                    peak,
                    num(r.get("peak_reserved_gib")),
                    num(r.get("peak_device_gib")),
                    num(r.get("fits_24gb_card")),
                    "—" if docs is None else f"~{docs} total, ~{r['docs_computed_tensors_gib']} tensors",
                    num(r.get("s_per_step"), 3),
                    num(r.get("trainable_parameters")),
                ]
            )
    header = ["model", "method", "max length", "sequences/step", "peak allocated GiB", "peak reserved GiB",
              "peak GPU use GiB (reserved + context)", "< 24 GiB card", "docs (computed) GiB", "s/step", "LoRA parameters"]  # fmt: skip
    notes = sorted({n for j in jobs for n in j.get("notes", [])})
    return table(header, rows) + [f"* {n}" for n in notes] + ([""] if notes else [])


def overhead_lines(jobs: list[dict]) -> list[str]:
    rows = []
    for j in jobs:
        for r in j.get("rows", []):
            rows.append(
                [
                    f"{r['model_parameters'] / 1e6:.1f} M",
                    "bf16" if r.get("bf16") else "fp32",
                    f"{r['batch_size']} prompts x k={r['k']} of N={r['N']}, max_length {r['max_length']}",
                    num(1 / r["dpo_steps_per_s"], 4),
                    num(1 / r["aepo_steps_per_s"], 4),
                    num(r["time_ratio_aepo_over_dpo"], 3),
                    num(r.get("data_ms_per_step_aepo"), 1),
                    num(r.get("goal_met")),
                ]
            )
    header = ["model", "precision", "batch", "DPO s/step", "AEPO s/step", "ratio AEPO/DPO", "AEPO data ms/step",
              "<= 1.02"]  # fmt: skip
    return table(header, rows)


def embedding_lines(jobs: list[dict]) -> list[str]:
    lines = []
    for j in jobs:
        if j.get("weights"):
            lines.append(f"Embedder: {j['weights']}; mean {num(j.get('mean_tokens_per_text'), 0)} tokens per text.")
            lines.append("")
        rows = [
            [r["batch_size"], r["texts"], r["dtype"], num(r["seconds"], 2), num(r["texts_per_s"], 0)]
            for r in j.get("rows", [])
        ]
        lines += table(["batch size", "texts", "dtype", "seconds", "texts/s"], rows)
    return lines


def selection_lines(jobs: list[dict]) -> list[str]:
    rows = [
        [r.get("B"), r["N"], r["k"], ms(r["a"]), ms(r["c"]), num(r["a_over_c"]), ms(r["b"]), f"{r['b_over_a']:.0f}x"]
        for j in jobs
        for r in j.get("rows", [])
    ]
    header = [
        "B",
        "N",
        "k",
        "select_subsets",
        "GEMM floor",
        "select / GEMM",
        "NumPy reference (scaled)",
        "ref / select",
    ]
    return table(header, rows)


def generation_lines(jobs: list[dict]) -> list[str]:
    rows, notes = [], set()
    for j in jobs:
        notes.update(j.get("notes", []))
        for r in j.get("rows", []):
            if r.get("status") != "ran":
                rows.append([r["backend"], r["batch"], r["new_tokens"], "—", "—", f"{r['status']}: {r['reason']}"])
            else:
                rows.append([r["backend"], r["batch"], r["new_tokens"], num(r["seconds"], 3), num(r["tokens_per_s"], 0),
                             f"warm-up {num(r['warmup_s'], 1)} s"])  # fmt: skip
    lines = table(["backend", "batch", "new tokens", "seconds", "tokens/s", "note"], rows)
    return lines + [f"* {n}" for n in sorted(notes)] + ([""] if notes else [])


RENDERERS = {
    "memory": ("QLoRA / LoRA peak memory", memory_lines),
    "overhead": ("AEPOTrainer step vs DPOTrainer step", overhead_lines),
    "embedding": ("Embedding throughput", embedding_lines),
    "selection": ("Selection vs the GEMM floor", selection_lines),
    "generation": ("Generation throughput (transformers)", generation_lines),
}


def markdown(report: dict) -> str:
    env = report.get("environment", {})
    versions = ", ".join(f"{k} {v}" for k, v in env.items() if k not in ("cpu_count", "cuda_available") and v)
    lines = [
        "# aepo-trainer GPU suite report",
        "",
        f"* started {report['started']}, {num(report.get('wall_s'), 0)} s of a {num(report['budget_s'], 0)} s budget",
        f"* device: **{report['device']}** (mode {report['mode']})",
        f"* command: `{report['command']}`",
        f"* {versions}",
        "",
    ]
    for part, entry in report["parts"].items():
        title, render = RENDERERS[part]
        lines += [f"## {title}", "", f"Status: **{entry['status']}**", ""]
        try:
            lines += render(entry["jobs"])
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as err:  # a report is never lost to its rendering
            lines += [f"(rows not rendered: {type(err).__name__}: {err}; see gpu_suite.json)", ""]
        lines += job_lines(entry["jobs"])
    return "\n".join(lines)


if __name__ == "__main__":
    report = json.loads(Path(sys.argv[1]).read_text())
    print(markdown(report))
