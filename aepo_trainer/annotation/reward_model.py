"""`RewardModelAnnotator`: an `AutoModelForSequenceClassification` reward model, batched.

The paper annotates with `OpenAssistant/reward-model-deberta-v3-large-v2`, whose tokenizer has no chat template and
which reads (question, answer) as a text pair; chat reward models (Skywork, ArmoRM-style, Qwen RMs) read the
conversation rendered with their chat template. Both are handled: the chat template is used when the reward
tokenizer has one (`use_chat_template=None`), the text-pair encoding otherwise.
"""

from __future__ import annotations

import logging

from .base import AnnotationRequest, Annotator, as_messages, to_text

logger = logging.getLogger(__name__)

__all__ = ["RewardModelAnnotator"]


class RewardModelAnnotator(Annotator):
    """Scores each (prompt, completion) with the logit `label_index` of a sequence-classification model.

    Args:
        model: a Hub id / local path (loaded lazily on first use), or a loaded model.
        tokenizer: its tokenizer (default: loaded from `model`).
        batch_size: sequences per forward pass (sorted by length to limit padding).
        device: "auto" (CUDA when available, else CPU) or a device string. A model passed already loaded stays where
            it is unless an explicit device is given.
        dtype: torch dtype or its name; None = bfloat16 on CUDA when supported, float32 on CPU.
        max_length: truncate inputs to this many tokens (default: the tokenizer's `model_max_length` when it is a
            real limit).
        use_chat_template: None = use it when the tokenizer has one; True/False to force.
        label_index: which logit is the reward (0 for one-logit reward models).
        name: identity name (default: the model's path / `config._name_or_path`).
    """

    def __init__(
        self,
        model,
        tokenizer=None,
        batch_size: int = 16,
        device: str | None = "auto",
        dtype=None,
        max_length: int | None = None,
        use_chat_template: bool | None = None,
        label_index: int = 0,
        name: str | None = None,
        model_kwargs: dict | None = None,
    ):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
        self._model = None if isinstance(model, str) else model
        self.model_name_or_path = (
            model if isinstance(model, str) else getattr(getattr(model, "config", None), "_name_or_path", "") or ""
        )
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.max_length = max_length
        self.use_chat_template = use_chat_template
        self.label_index = label_index
        self.model_kwargs = dict(model_kwargs or {})
        label = name or self.model_name_or_path or f"<in-memory {type(model).__name__}>"
        if not (name or self.model_name_or_path):
            logger.warning(
                "RewardModelAnnotator: in-memory model without a name; pass `name=` so cached "
                "annotations are not shared with a different model."
            )
        self.identity = f"reward_model:{label}" + (f"#{label_index}" if label_index else "")

    # ------------------------------------------------------------------------------------------- loading

    @property
    def model(self):
        if self._model is None:
            self._load()
        return self._model

    def _load(self) -> None:
        from transformers import AutoModelForSequenceClassification

        device = self._resolve_device()
        dtype = self._resolve_dtype(device)
        self._model = AutoModelForSequenceClassification.from_pretrained(
            self.model_name_or_path, dtype=dtype, **self.model_kwargs
        ).to(device)
        self._model.eval()
        self._model.requires_grad_(False)

    def _resolve_device(self):
        import torch

        if self.device in (None, "auto"):
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def _resolve_dtype(self, device):
        import torch

        if self.dtype is None:
            if device.type == "cuda" and torch.cuda.is_bf16_supported():
                return torch.bfloat16
            return torch.float32
        return getattr(torch, self.dtype) if isinstance(self.dtype, str) else self.dtype

    def _tok(self):
        if self.tokenizer is None:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(self.model_name_or_path or self.model.config._name_or_path)
        tok = self.tokenizer
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return tok

    # ------------------------------------------------------------------------------------------- scoring

    def score(self, requests: list[AnnotationRequest]) -> list[list[float]]:
        import torch

        model, tok = self.model, self._tok()
        if self._model is not None and self.device not in (None, "auto") and model.device != torch.device(self.device):
            model.to(self.device)
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tok.pad_token_id
        pairs = [(req.prompt, c) for req in requests for c in req.completions]
        encoded = [self._encode(tok, p, c) for p, c in pairs]
        order = sorted(range(len(encoded)), key=lambda j: len(encoded[j]["input_ids"]))
        flat: list[float] = [0.0] * len(encoded)
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                for start in range(0, len(order), self.batch_size):
                    idx = order[start : start + self.batch_size]
                    batch = tok.pad([encoded[j] for j in idx], padding=True, return_tensors="pt")
                    batch = {k: v.to(device) for k, v in batch.items()}
                    logits = model(**batch).logits
                    values = logits[:, self.label_index].float().cpu().tolist()
                    for j, v in zip(idx, values):
                        flat[j] = v
        finally:
            model.train(was_training)
        out, start = [], 0
        for req in requests:
            out.append(flat[start : start + len(req.completions)])
            start += len(req.completions)
        return out

    def _limit(self, tok) -> int | None:
        if self.max_length is not None:
            return self.max_length
        limit = getattr(tok, "model_max_length", None)
        return limit if isinstance(limit, int) and limit < 1_000_000 else None

    def _encode(self, tok, prompt, completion) -> dict:
        limit = self._limit(tok)
        use_template = self.use_chat_template
        if use_template is None:
            use_template = bool(getattr(tok, "chat_template", None))
        if use_template:
            messages = as_messages(prompt, "user") + as_messages(completion, "assistant")
            text = tok.apply_chat_template(messages, tokenize=False)
            enc = tok(text, add_special_tokens=False, truncation=limit is not None, max_length=limit)
        else:
            enc = tok(
                to_text(prompt), to_text(completion), truncation="longest_first" if limit else False, max_length=limit
            )
        return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
