"""Whether two model names (Hugging Face Hub ids or local paths) name the same model.

Shared by the config check and the trainer's check of an annotator object (`AEPOConfig.active_feature_model` must not
be the reward model that annotates: `selection/feature_model.py` says why). A local folder is compared by its real
path (so `./rm`, `rm/` and a symlink to it are one model); a Hub id case-insensitively (the Hub resolves ids so).
"""

from __future__ import annotations

import os

__all__ = ["same_model"]


def _canonical(name: str) -> str:
    text = os.path.expanduser(str(name).strip())
    if os.path.exists(text):
        return "path:" + os.path.realpath(text)
    return "id:" + text.rstrip("/").casefold()


def same_model(first, second) -> bool:
    """True when both are set and name one model."""
    if not first or not second:
        return False
    return _canonical(first) == _canonical(second)
