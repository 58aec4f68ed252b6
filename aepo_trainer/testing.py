"""Tiny offline models for tests, docs snippets, the demo and benchmarks.

Nothing here touches the Hugging Face Hub: a byte-level BPE tokenizer is trained on a few sentences with `tokenizers`,
given a ChatML chat template, and a small Qwen2 causal LM (or sequence classifier) is built from a config. Both are
saved to a folder and loaded back *by path*, which is how the product loads real models, so tests exercise the same
`from_pretrained` code paths that users hit with Hub ids.
"""

from __future__ import annotations

import os
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Preference optimization aligns language models with human judgements.",
    "Select the most representative and diverse responses before annotating them.",
    "What is the capital of France? The capital of France is Paris.",
    "Write a short poem about the sea, the wind and the stars.",
    "Two plus two equals four, and three times three equals nine.",
    "Answer: yes. Answer: no. Which assistant is more helpful, A or B?",
    "Explain how photosynthesis works in simple terms for a child.",
    "Sure! Here is a list of ideas: 1. read 2. walk 3. cook 4. sleep.",
    "I'm sorry, but I cannot help with that request.",
    "def add(a, b): return a + b  # Python code example",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:!?'\"()[]{}-_+=*/\\<>@#$%^&|~`",
]


def build_tiny_tokenizer(vocab_size: int = 512, corpus: list[str] | None = None):
    """Train a deterministic byte-level BPE tokenizer with ChatML special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(corpus or _CORPUS) * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        bos_token=None,
        unk_token=None,
        additional_special_tokens=["<|im_start|>", "<|endoftext|>"],
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def _qwen2_config(tokenizer, hidden_size: int, num_layers: int, **overrides):
    from transformers import Qwen2Config

    heads = max(2, hidden_size // 16)
    kwargs = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    kwargs.update(overrides)
    return Qwen2Config(**kwargs)


def build_tiny_causal_lm(
    path: str | os.PathLike,
    hidden_size: int = 32,
    num_layers: int = 2,
    seed: int = 0,
    tokenizer=None,
) -> Path:
    """Save a tiny Qwen2 causal LM and its tokenizer to `path` (loadable with `from_pretrained(path)`)."""
    import torch
    from transformers import Qwen2ForCausalLM

    path = Path(path)
    tokenizer = tokenizer or build_tiny_tokenizer()
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(_qwen2_config(tokenizer, hidden_size, num_layers))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_tiny_reward_model(
    path: str | os.PathLike, hidden_size: int = 32, num_layers: int = 2, seed: int = 0, tokenizer=None
) -> Path:
    """Save a tiny Qwen2 sequence-classification model (one logit: a reward) and its tokenizer to `path`."""
    import torch
    from transformers import Qwen2ForSequenceClassification

    path = Path(path)
    tokenizer = tokenizer or build_tiny_tokenizer()
    torch.manual_seed(seed)
    model = Qwen2ForSequenceClassification(_qwen2_config(tokenizer, hidden_size, num_layers, num_labels=1))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
