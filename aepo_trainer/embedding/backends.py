"""CPU runtimes for the embedder: the sentence-transformers model exported once to ONNX, run by ONNX Runtime or
OpenVINO, optionally with int8-quantized weights.

Why not `SentenceTransformer(..., backend="onnx")`: that path goes through Hugging Face `optimum` (`optimum-onnx`,
`optimum-intel`), whose releases pin transformers versions this package does not support (optimum-onnx 0.1 needs
transformers < 4.58, optimum-intel 2.2 pins 5.5). Here only the transformer body is exported, with
`torch.onnx.export`; tokenization, pooling and normalisation stay the sentence-transformers modules, so every
backend pools exactly as the torch model does. The runtimes are small wheels: `onnxruntime` (+ `onnx` for export and
quantization) and, for OpenVINO, `openvino`; `pip install aepo-trainer[fast-cpu]` installs them.

Exports are written under a cache directory (default `<HF datasets cache>/aepo_trainer/onnx/<key>`), never next to
the model (which may live read-only in site-packages), once per model and setting; later runs load the file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import tempfile

import numpy as np
import torch

from ..choices import EMBEDDING_BACKENDS

logger = logging.getLogger(__name__)

__all__ = ["RuntimeEncoder", "backend_problem", "export_onnx", "export_path", "model_signature", "transformer_module"]

_EXPORT_VERSION = "aepo-onnx-v1"
_OPSET = 17
#: What each backend imports (module names); quantization also needs ONNX Runtime's quantizer.
_REQUIRED = {"torch": (), "static": ("tokenizers",), "onnx": ("onnxruntime", "onnx"), "openvino": ("openvino", "onnx")}
_PIP = {"tokenizers": "tokenizers", "onnxruntime": "onnxruntime", "onnx": "onnx", "openvino": "openvino"}


def backend_problem(backend, quantized=False) -> str | None:
    """Why `backend` (with `quantized`) cannot run here, or None. Cheap (no import): checked before any model is
    loaded or any text embedded, so a missing runtime is reported at once, naming the setting."""
    if backend not in EMBEDDING_BACKENDS:
        return f"unknown embedding backend {backend!r}: expected one of {', '.join(map(repr, EMBEDDING_BACKENDS))}"
    if quantized and backend in ("torch", "static"):
        return "embedding_quantized=True needs embedding_backend 'onnx' or 'openvino' (the int8 export is an ONNX file)"
    needed = list(_REQUIRED[backend]) + (["onnxruntime"] if quantized else [])
    missing = [name for name in dict.fromkeys(needed) if importlib.util.find_spec(name) is None]
    if missing:
        return (
            f"embedding_backend={backend!r} needs the package(s) {', '.join(missing)}: "
            f"`pip install {' '.join(_PIP[m] for m in missing)}` or `pip install aepo-trainer[fast-cpu]`"
        )
    return None


def transformer_module(st_model):
    """The sentence-transformers `Transformer` module (first module) whose HF model is exported."""
    first = st_model[0] if len(st_model) else None
    if first is None or not hasattr(first, "tokenizer") or not hasattr(first, "auto_model"):
        raise ValueError(
            "embedding_backend 'onnx'/'openvino' needs a sentence-transformers model whose first module is a "
            f"text Transformer, got {type(first).__name__}; use embedding_backend='torch'"
        )
    return first


def model_signature(name_or_path: str) -> str:
    """Names the weights: a local directory by its absolute path plus size and mtime of its files (a changed model
    gets a new export), a Hub id by the id."""
    if not os.path.isdir(name_or_path):
        return name_or_path
    parts = [os.path.abspath(name_or_path)]
    for entry in sorted(os.listdir(name_or_path)):
        path = os.path.join(name_or_path, entry)
        if os.path.isfile(path) and entry.endswith((".safetensors", ".bin", ".json")):
            stat = os.stat(path)
            parts.append(f"{entry}:{stat.st_size}:{int(stat.st_mtime)}")
    return "|".join(parts)


def export_path(name_or_path: str, quantized: bool, export_dir: str | None = None) -> str:
    """The cached `.onnx` file of a model: `<export_dir>/<key>/model[_qint8].onnx`."""
    if export_dir is None:
        import datasets

        export_dir = os.path.join(str(datasets.config.HF_DATASETS_CACHE), "aepo_trainer", "onnx")
    key = hashlib.sha256(f"{_EXPORT_VERSION}|{_OPSET}|{model_signature(name_or_path)}".encode()).hexdigest()[:24]
    return os.path.join(export_dir, key, "model_qint8.onnx" if quantized else "model.onnx")


class _Body(torch.nn.Module):
    """The HF transformer body with positional inputs and one output (token embeddings), for `torch.onnx.export`."""

    def __init__(self, model, names):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *inputs):
        return self.model(**dict(zip(self.names, inputs)), return_dict=True).last_hidden_state


def _atomic_write(target: str, write) -> None:
    """`write(tmp_path)` then rename onto `target`, so a crashed or concurrent export never leaves half a file."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=os.path.dirname(target))
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is shared like the datasets cache
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def export_onnx(st_model, path: str, quantized: bool = False) -> str:
    """Export the transformer body of `st_model` to `path` (fp32), or its int8 dynamic quantization (weights int8
    per channel, activations quantized on the fly by ONNX Runtime). Returns `path`; an existing file is reused."""
    if os.path.isfile(path):
        return path
    if quantized:
        fp32 = export_onnx(st_model, os.path.join(os.path.dirname(path), "model.onnx"))
        from onnxruntime.quantization import QuantType, quantize_dynamic

        logger.info("quantizing %s to int8 (once; cached at %s)", fp32, path)
        _atomic_write(path, lambda tmp: quantize_dynamic(fp32, tmp, weight_type=QuantType.QInt8, per_channel=True))
        return path
    module = transformer_module(st_model)
    names = [n for n in module.tokenizer.model_input_names if n in ("input_ids", "attention_mask", "token_type_ids")]
    sample = module.tokenizer(["an example", "a second, longer example text"], padding=True, return_tensors="pt")
    body = _Body(module.auto_model, names).eval().to("cpu")
    logger.info("exporting the embedder to ONNX (once; cached at %s)", path)
    dynamic = {n: {0: "batch", 1: "tokens"} for n in [*names, "token_embeddings"]}

    def write(tmp):
        import warnings

        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                body,
                tuple(sample[n] for n in names),
                tmp,
                input_names=names,
                output_names=["token_embeddings"],
                dynamic_axes=dynamic,
                opset_version=_OPSET,
                dynamo=False,
            )

    if next(module.auto_model.parameters()).dtype != torch.float32 or module.auto_model.device.type != "cpu":
        raise ValueError("export_onnx: the sentence-transformers model must be a CPU fp32 model")
    _atomic_write(path, write)
    return path


class RuntimeEncoder:
    """Runs the exported transformer body with ONNX Runtime or OpenVINO; tokenization and pooling (the modules after
    the transformer: Pooling, Normalize, Dense ...) are the sentence-transformers model's own.

    `encode` sorts texts by length (longest first, like `SentenceTransformer.encode`) so each batch pads to similar
    lengths, and returns rows in the input order.
    """

    def __init__(self, st_model, backend: str, path: str, threads: int | None = None):
        self.st_model, self.backend, self.path = st_model, backend, path
        self.module = transformer_module(st_model)
        self.names = [
            n for n in self.module.tokenizer.model_input_names if n in ("input_ids", "attention_mask", "token_type_ids")
        ]
        threads = threads or torch.get_num_threads()
        if backend == "onnx":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            self._run = lambda feed: session.run(None, feed)[0]
        elif backend == "openvino":
            import openvino as ov

            compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": threads})
            self._run = lambda feed: compiled(feed)[0]
        else:
            raise ValueError(f"RuntimeEncoder: backend must be 'onnx' or 'openvino', got {backend!r}")

    def encode(self, texts: list[str], batch_size: int, max_length: int | None) -> torch.Tensor:
        """Sentence embeddings `[len(texts), D]` (fp32, not yet L2-normalised by us; the model's own Normalize
        module, if any, has run)."""
        max_length = max_length or self.module.max_seq_length
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out: list[torch.Tensor | None] = [None] * len(texts)
        tail = list(self.st_model)[1:]
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            enc = self.module.tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True, max_length=max_length, return_tensors="np"
            )
            hidden = self._run({n: enc[n].astype(np.int64) for n in self.names})
            features = {
                "token_embeddings": torch.from_numpy(np.ascontiguousarray(hidden, dtype=np.float32)),
                "attention_mask": torch.from_numpy(enc["attention_mask"].astype(np.int64)),
            }
            for module in tail:
                features = module(features)
            for row, i in zip(features["sentence_embedding"], idx):
                out[i] = row
        return torch.stack(out)
