"""The one per-prompt key: what makes a prompt's random choices independent of batching, processes and devices.

Selection (`select_subsets(row_keys=...)`), pairing (`make_pairs(row_keys=...)`), the trainer, `aepo select` and the
experiments all key their randomness by `prompt_key(prompt)`, so the same data and seed give the same choices
everywhere.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["prompt_key"]


def prompt_key(prompt: Any) -> int:
    """A stable non-negative int64 per prompt: the first 8 bytes of sha256 of its canonical JSON (63 bits).

    Works for standard (string) and conversational (list of messages) prompts alike.
    """
    text = json.dumps(prompt, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return (
        int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:8], "big")
        & 0x7FFF_FFFF_FFFF_FFFF
    )
