"""A feature model for the active strategies' surrogate (`AEPOConfig.active_feature_model`).

The sentence embedder says what a candidate is *about*; the reward a judge gives depends on more (issue 27: on pools of
weak models, MiniLM features carry little of it). ActiveUltraFeedback fits its surrogate on a frozen reward model's
last hidden state. This module does the same with any Hugging Face model (a reward model, an instruct model, an
encoder): the hidden state of its last layer for the text `prompt + "\\n\\n" + completion`, pooled

* at the last non-padding token for causal language models and models built on one (model types of
  `transformers`' causal-LM mapping, which includes decoder reward models: their score head reads that token), with
  the text truncated from the left so that the end of the answer is always seen;
* as the mean over non-padding tokens for the others (encoders).

The result `[B, N, H]` is handed to the selector as the policy-style signal `hidden_states`, which
`surrogate.hidden_state_feature` normalises and appends to the default features. Any other per-candidate feature
matrix (e.g. the trainer's policy hidden states) reaches the surrogate the same way: `signals={"hidden_states": ...}`.

Loading and a probe forward pass happen when the model is built (`FeatureModel.load`, memoised per (model, device)),
so a model that cannot be loaded, or gives no float hidden states, is refused before any pool is embedded or label is
paid. Non-finite features are counted by the selector and never enter the surrogate.
"""

from __future__ import annotations

import functools
import math

import torch

__all__ = ["FeatureModel", "FeatureModelError"]


class FeatureModelError(ValueError):
    """`active_feature_model` names a model that cannot serve as a feature model (the message says why)."""


class FeatureModel:
    """Last-layer hidden states of a Hugging Face model, one vector per candidate."""

    def __init__(self, name_or_path: str, device: str | torch.device = "cpu", batch_size: int = 16, max_length=512):
        from transformers import AutoModel, AutoTokenizer
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        self.name_or_path = str(name_or_path)
        self.device = torch.device(device)
        self.batch_size, self.max_length = int(batch_size), int(max_length)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.name_or_path)
            self.model = AutoModel.from_pretrained(self.name_or_path).to(self.device).eval()
        except Exception as error:
            raise FeatureModelError(
                f"active_feature_model={self.name_or_path!r} cannot be loaded as a Hugging Face model and tokenizer "
                f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
            ) from error
        self.last_token = getattr(self.model.config, "model_type", None) in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.tokenizer.padding_side = "right"
        if self.last_token:
            self.tokenizer.truncation_side = "left"
        probe = self.encode_texts(["probe"])
        if probe.dim() != 2 or probe.shape[1] < 1 or not bool(torch.isfinite(probe).all()):
            raise FeatureModelError(
                f"active_feature_model={self.name_or_path!r} gives no finite hidden state for a probe text"
            )
        self.hidden_size = int(probe.shape[1])

    @classmethod
    def load(cls, name_or_path: str, device: str | torch.device | None = None) -> FeatureModel:
        """The feature model, loaded once per (model, device) in this process."""
        return _load(str(name_or_path), str(torch.device(device or "cpu")))

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """[len(texts), H] float32 pooled last hidden states (CPU)."""
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            try:
                result = self.model(**batch, output_hidden_states=True)
            except Exception as error:
                raise FeatureModelError(
                    f"active_feature_model={self.name_or_path!r}: the forward pass failed ({type(error).__name__}: "
                    f"{error})"
                ) from error
            hidden = getattr(result, "last_hidden_state", None)
            if hidden is None and getattr(result, "hidden_states", None):
                hidden = result.hidden_states[-1]
            if not isinstance(hidden, torch.Tensor) or not hidden.is_floating_point() or hidden.dim() != 3:
                raise FeatureModelError(f"active_feature_model={self.name_or_path!r} returns no hidden states")
            mask = batch["attention_mask"].to(hidden.dtype)
            if self.last_token:
                last = (batch["attention_mask"].sum(1) - 1).clamp_min(0)
                pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
            else:
                pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)
            out.append(pooled.float().cpu())
        return torch.cat(out) if out else torch.zeros(0, 0)

    def encode_pools(self, rows: list[dict], prompt_column: str, completions_column: str, width: int) -> torch.Tensor:
        """[B, width, H] features of every candidate (`prompt + "\\n\\n" + completion`; NaN on padding)."""
        texts, places = [], []
        for b, row in enumerate(rows):
            for i, completion in enumerate(list(row[completions_column])[:width]):
                texts.append(f"{row[prompt_column]}\n\n{completion}")
                places.append((b, i))
        features = torch.full((len(rows), width, self.hidden_size), math.nan)
        if texts:
            encoded = self.encode_texts(texts)
            for (b, i), vector in zip(places, encoded):
                features[b, i] = vector
        return features


@functools.lru_cache(maxsize=4)
def _load(name_or_path: str, device: str) -> FeatureModel:
    return FeatureModel(name_or_path, device)
