"""A feature model for the active strategies' surrogate (`AEPOConfig.active_feature_model`).

The sentence embedder says what a candidate is *about*; the reward a judge gives depends on more (issue 27: on pools of
weak models, MiniLM features carry little of it). ActiveUltraFeedback fits its surrogate on a frozen reward model's
last hidden state. This module does the same with any Hugging Face model (a reward model, an instruct model, an
encoder): `AutoModel` loads its backbone, and the feature of a candidate is the backbone's last-layer hidden state at

* **the token a reward model's score head reads**, for a sequence-classification checkpoint (`architectures` ends in
  `ForSequenceClassification`, e.g. a reward model saved with `save_pretrained`; `AutoModel` loads its backbone and
  drops the head): for a decoder, the rightmost token that is not the config's `pad_token_id` (`transformers`' rule);
  for an encoder, the first token (`[CLS]`, which the classifier's pooler reads). The reward model's own score of a
  candidate is then its head applied to this feature (tested);
* the last non-padding token for other decoders (model types of `transformers`' causal-LM mapping that are not
  masked-LM ones too: BERT and RoBERTa have a causal-LM head but are encoders);
* the mean over non-padding tokens for other encoders.

A checkpoint that leaves weights of the backbone uninitialised (missing keys) is refused: random weights give random
features. The pooler `AutoModel` adds to BERT-like encoders is the exception: no feature reads it, and RoBERTa and
XLM-R reward models (`RobertaForSequenceClassification`) are saved without one (tested). Decoders see the text truncated from the left, so that the end of the answer is always read.

**What the model reads.** The candidate as a reward model reads it (`RewardModelAnnotator`'s rule): the conversation
(prompt as the user's turn, completion as the assistant's) rendered with the model's chat template when its tokenizer
has one; otherwise the text pair (prompt, completion) for encoders and `prompt + "\\n\\n" + completion` for decoders.
Chat-message prompts and completions are rendered as messages, never as a Python repr.

**Tokenizers.** The feature model reads *text* (the pool rows' prompts and completions, in `aepo select` and in the
trainer alike: `PoolReducer.select` hands it the rows, never token ids) and tokenizes it with its own tokenizer, so it
need not share the policy's tokenizer or vocabulary (tested with a feature model of another vocabulary in a training
run). Nothing here reads the policy's token ids; a path that did would have to refuse a mismatch.

**Not the annotator's reward model.** When the labels come from a reward model (`annotator='reward_model'`), issue 27
suggests its hidden state of each candidate as the feature. That is refused (`config_checks`, and the trainer for an
annotator object): the surrogate ranks the *unscored* candidates, so it needs the features of all N; the annotator's
hidden state of a candidate costs the same forward pass as its label, and the label is one linear map of that state —
computing the features of all N pays for every label, and selection is moot. Use a different, cheaper reward model as
the feature model, or score every candidate (best-of-N). The hidden states of the candidates the annotator *does*
score come at no extra cost, but they are not captured: the surrogate would learn on the annotator's features and
predict on another model's (a mismatch no posterior accounts for), and on the scored candidates the label is already
known — they add nothing to what the label gives.

The result `[B, N, H]` is handed to the selector as the signal `hidden_states`, which `surrogate.hidden_state_feature`
normalises and appends to the default features. In `aepo select` and in `AEPOTrainer` alike it is computed by
`PoolReducer.select`, after the pool is embedded and before it is selected (in the training step or the CLI loop,
never in a DataLoader worker). Loading and a probe forward pass happen when the model is built (`FeatureModel.load`,
memoised per (model, device)), so a model that cannot be loaded, or gives no finite hidden states, is refused before
any pool is embedded or label is paid. Non-finite features are counted by the selector and never enter the surrogate.
"""

from __future__ import annotations

import functools
import math

import torch

from ..embedding.embedder import completion_text

__all__ = ["FeatureModel", "FeatureModelError"]


#: Weights `AutoModel` may build that no feature reads: their absence from a checkpoint is not refused.
_UNUSED_PREFIXES = ("pooler.",)


class FeatureModelError(ValueError):
    """`active_feature_model` names a model that cannot serve as a feature model (the message says why)."""


def _messages(x, role: str) -> list[dict]:
    if isinstance(x, str):
        return [{"role": role, "content": x}]
    if isinstance(x, dict):
        return [x]
    return list(x)


class FeatureModel:
    """Last-layer hidden states of a Hugging Face model, one vector per candidate."""

    def __init__(self, name_or_path: str, device: str | torch.device = "cpu", batch_size: int = 16, max_length=512):
        from transformers import AutoModel, AutoTokenizer
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
            MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        )

        self.name_or_path = str(name_or_path)
        self.device = torch.device(device)
        self.batch_size, self.max_length = int(batch_size), int(max_length)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.name_or_path)
            model, info = AutoModel.from_pretrained(self.name_or_path, output_loading_info=True)
        except Exception as error:
            raise FeatureModelError(
                f"active_feature_model={self.name_or_path!r} cannot be loaded as a Hugging Face model and tokenizer "
                f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
            ) from error
        # A pooler is built by `AutoModel` for BERT-like encoders but read by no feature (they are hidden states): a
        # `RobertaForSequenceClassification` / XLM-R reward model has none (its head reads the first token itself).
        missing = sorted(k for k in info.get("missing_keys") or () if not k.startswith(_UNUSED_PREFIXES))
        if missing:
            raise FeatureModelError(
                f"active_feature_model={self.name_or_path!r}: the checkpoint lacks {len(missing)} weights of its "
                f"backbone ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); they would be random, and "
                "so would the features"
            )
        self.model = model.to(self.device).eval()
        config = self.model.config
        self.reward_model = any(str(a).endswith("ForSequenceClassification") for a in config.architectures or ())
        model_type = getattr(config, "model_type", None)
        # decoders: causal-LM model types that are not also masked-LM ones (BERT, RoBERTa, ... have a causal-LM head
        # too but read both ways), or an encoder configured as a decoder
        causal = model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and (
            model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES or bool(getattr(config, "is_decoder", False))
        )
        self.pooling = "last_token" if causal else "first_token" if self.reward_model else "mean"
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        # the token a decoder reward model's score head reads is the rightmost one that is not its pad token
        self.head_pad_token_id = getattr(text_config, "pad_token_id", None) if self.reward_model and causal else None
        self.chat_template = bool(getattr(self.tokenizer, "chat_template", None))
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.tokenizer.padding_side = "right"
        if causal:
            self.tokenizer.truncation_side = "left"
        probe = self.encode_candidates([("probe", "probe")])
        if probe.dim() != 2 or probe.shape[1] < 1 or not bool(torch.isfinite(probe).all()):
            raise FeatureModelError(
                f"active_feature_model={self.name_or_path!r} gives no finite hidden state for a probe text"
            )
        self.hidden_size = int(probe.shape[1])

    @property
    def last_token(self) -> bool:
        return self.pooling == "last_token"

    @classmethod
    def load(cls, name_or_path: str, device: str | torch.device | None = None) -> FeatureModel:
        """The feature model, loaded once per (model, device) in this process."""
        return _load(str(name_or_path), str(torch.device(device or "cpu")))

    def tokenize(self, pairs: list[tuple]) -> dict:
        """The padded model inputs of (prompt, completion) pairs, read as a reward model reads them (module doc)."""
        common = dict(padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        if self.chat_template:
            texts = [
                self.tokenizer.apply_chat_template(_messages(p, "user") + _messages(c, "assistant"), tokenize=False)
                for p, c in pairs
            ]
            return self.tokenizer(texts, add_special_tokens=False, **common)
        prompts = [completion_text(p) for p, _ in pairs]
        completions = [completion_text(c) for _, c in pairs]
        if self.last_token:
            return self.tokenizer([f"{p}\n\n{c}" for p, c in zip(prompts, completions)], **common)
        return self.tokenizer(prompts, completions, **common)

    @torch.no_grad()
    def encode_candidates(self, pairs: list[tuple]) -> torch.Tensor:
        """[len(pairs), H] float32 pooled last hidden states (CPU) of (prompt, completion) pairs."""
        out = []
        for start in range(0, len(pairs), self.batch_size):
            out.append(self._pooled(self.tokenize(pairs[start : start + self.batch_size]).to(self.device)))
        return torch.cat(out) if out else torch.zeros(0, 0)

    def _pooled(self, batch) -> torch.Tensor:
        try:
            result = self.model(**batch, output_hidden_states=True)
        except Exception as error:
            raise FeatureModelError(
                f"active_feature_model={self.name_or_path!r}: the forward pass failed ({type(error).__name__}: {error})"
            ) from error
        hidden = getattr(result, "last_hidden_state", None)
        if hidden is None and getattr(result, "hidden_states", None):
            hidden = result.hidden_states[-1]
        if not isinstance(hidden, torch.Tensor) or not hidden.is_floating_point() or hidden.dim() != 3:
            raise FeatureModelError(f"active_feature_model={self.name_or_path!r} returns no hidden states")
        mask = batch["attention_mask"].bool()
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        if self.pooling == "last_token":
            readable = mask
            if self.head_pad_token_id is not None:
                readable = mask & (batch["input_ids"] != self.head_pad_token_id)
                readable = torch.where(readable.any(1, keepdim=True), readable, mask)
            positions = torch.arange(hidden.shape[1], device=hidden.device)
            pooled = hidden[rows, (positions * readable).argmax(-1)]
        elif self.pooling == "first_token":
            pooled = hidden[:, 0]
        else:
            weights = mask.to(hidden.dtype)[..., None]
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return pooled.float().cpu()

    def encode_pools(self, rows: list[dict], prompt_column: str, completions_column: str, width: int) -> torch.Tensor:
        """[B, width, H] features of every candidate (NaN on padding)."""
        pairs, places = [], []
        for b, row in enumerate(rows):
            for i, completion in enumerate(list(row[completions_column])[:width]):
                pairs.append((row[prompt_column], completion))
                places.append((b, i))
        features = torch.full((len(rows), width, self.hidden_size), math.nan)
        if pairs:
            encoded = self.encode_candidates(pairs)
            for (b, i), vector in zip(places, encoded):
                features[b, i] = vector
        return features


@functools.lru_cache(maxsize=4)
def _load(name_or_path: str, device: str) -> FeatureModel:
    return FeatureModel(name_or_path, device)
